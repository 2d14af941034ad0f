// The quantized checkpoint: quantize -> save -> load -> dequantize round-trips exactly, metadata is
// validated, and loading a checkpoint gives a runnable model.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FluteError } from '../src/errors.js';
import { bundledModelPath, packageRoot } from '../src/cli/paths.js';
import { openCheckpoint } from '../src/format/checkpoint.js';
import { openSafetensors, serializeSafetensors, type SafetensorsEntry } from '../src/format/safetensors.js';
import { memorySource } from '../src/format/source.js';
import { openModelFile } from '../src/model/open.js';
import { loadModel } from '../src/model/load.js';
import { quantizeModel, DECODER_LINEAR } from '../src/quant/quantize-model.js';
import { quantizeRtn } from '../src/quant/rtn.js';
import { dequantize } from '../src/quant/linear.js';

let dir = '';
before(() => { dir = mkdtempSync(join(tmpdir(), 'flute-ckpt-')); });
after(() => rmSync(dir, { recursive: true, force: true }));

const isCode = (code: string, re?: RegExp) => (e: unknown) => e instanceof FluteError && e.code === code && (!re || re.test(e.message));

test('quantize -> save -> load -> dequantize round-trips exactly (ragged groups, f16 and f32 scales)', async () => {
  for (const [bits, g, scaleDtype, kind] of [[4, 32, 'f16', 'nf'], [3, 50, 'f32', 'int'], [2, 172, 'f16', 'nf'], [4, 64, 'f16', 'fp4']] as const) {
    const out = join(dir, `rt-${bits}-${g}.safetensors`);
    const src = await openModelFile(bundledModelPath());
    const report = await quantizeModel(src, out, { bits, groupSize: g, tableKind: kind, scaleDtype });
    assert.equal(report.layers.length, 35);
    const ck = await openCheckpoint(out);
    assert.deepEqual(ck.config, src.config);
    assert.equal(Object.keys(ck.quantization).length, 35);
    for (const t of src.tensors.list()) {
      const w = await src.tensors.readF32(t.name);
      if (DECODER_LINEAR.test(t.name)) {
        const [n, k] = t.shape;
        const direct = quantizeRtn(w, n, k, { bits, groupSize: g, tableKind: kind, scaleDtype }).layer;
        const loaded = await ck.readQuantized(t.name.replace(/\.weight$/, ''));
        const id = `${t.name} bits=${bits} g=${g} ${scaleDtype}`;
        assert.deepEqual(loaded.packed, direct.packed, id);
        assert.deepEqual(loaded.scales, direct.scales, id);
        assert.deepEqual(loaded.table, direct.table, id);
        assert.deepEqual([loaded.n, loaded.k, loaded.bits, loaded.groupSize, loaded.tableKind, loaded.scaleDtype], [n, k, bits, g, kind, scaleDtype]);
        assert.deepEqual(dequantize(loaded), dequantize(direct), id);
      } else {
        assert.deepEqual(await ck.tensors.readF32(t.name), w, t.name);
      }
    }
    assert.deepEqual(await ck.readTokenizer(), new Uint8Array(readFileSync(join(packageRoot(), 'models', 'stories260K', 'tok512.bin'))));
    await ck.close();
    await src.close();
  }
});

test('a checkpoint runs, and --quantize-output on a tied model quantizes a separate lm_head', async () => {
  const out = join(dir, 'qout.safetensors');
  const src = await openModelFile(bundledModelPath());
  await quantizeModel(src, out, { bits: 4, groupSize: 32, tableKind: 'nf', quantizeOutput: true });
  await src.close();
  const ck = await openCheckpoint(out);
  assert.equal(ck.config.tiedEmbeddings, false);
  assert.ok(ck.quantization['lm_head']);
  assert.ok(ck.dense.includes('model.embed_tokens.weight'));
  await ck.close();
  const m = await loadModel(out, { backend: 'ref' });
  const logits = m.model.forward([1, 403, 407], 0);
  assert.equal(logits.length, 512);
  assert.ok(logits.every(Number.isFinite));
  m.dispose();
  // Re-quantizing a quantized checkpoint is refused before anything is written.
  const again = await openModelFile(out);
  await assert.rejects(quantizeModel(again, join(dir, 'again.safetensors'), { bits: 4, groupSize: 32, tableKind: 'nf' }), isCode('E_OPTION', /already quantized/));
  await again.close();
  assert.equal(existsSync(join(dir, 'again.safetensors')), false);
});

test('bad options fail before any file is created', async () => {
  const src = await openModelFile(bundledModelPath());
  const out = join(dir, 'never.safetensors');
  await assert.rejects(quantizeModel(src, out, { bits: 9, groupSize: 32, tableKind: 'nf' }), isCode('E_OPTION', /bits/));
  await assert.rejects(quantizeModel(src, out, { bits: 4, groupSize: 0, tableKind: 'nf' }), isCode('E_OPTION', /group size/));
  await assert.rejects(quantizeModel(src, out, { bits: 2, groupSize: 8, tableKind: 'custom', tableValues: [1, 2] }), isCode('E_SHAPE', /needs 4 values/));
  await src.close();
  assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('never') || f.endsWith('.tmp')), []);
});

test('checkpoint metadata is validated', async () => {
  const out = join(dir, 'meta.safetensors');
  const src = await openModelFile(bundledModelPath());
  await quantizeModel(src, out, { bits: 4, groupSize: 64, tableKind: 'nf' });
  await src.close();
  const st = await openSafetensors(out);
  const entries: SafetensorsEntry[] = [];
  for (const t of st.list()) entries.push({ name: t.name, dtype: t.dtype, shape: t.shape, data: await st.readRaw(t.name) });
  const md = st.metadata;
  await st.close();
  const open = async (metadata: Record<string, string>) => openCheckpoint(memorySource(await serializeSafetensors(entries, metadata), 'edited.safetensors'));
  await assert.rejects(open({ ...md, format_version: '2' }), isCode('E_FORMAT', /edited\.safetensors.*format_version/));
  await assert.rejects(open({ ...md, format: 'other' }), isCode('E_FORMAT', /not a flute-engine checkpoint/));
  const { config: _c, ...noConfig } = md;
  await assert.rejects(open(noConfig), isCode('E_BAD_HEADER', /"config" is missing/));
  const q = JSON.parse(md.quantization);
  q['model.layers.0.mlp.up_proj'].bits = 9;
  await assert.rejects(open({ ...md, quantization: JSON.stringify(q) }), isCode('E_BAD_HEADER', /up_proj.*bits must be 1\.\.8/));
  q['model.layers.0.mlp.up_proj'].bits = 3; // disagrees with the stored tensor sizes
  const ck = await open({ ...md, quantization: JSON.stringify(q) });
  await assert.rejects(ck.readQuantized('model.layers.0.mlp.up_proj'), isCode('E_SHAPE', /up_proj\.qweight/));
  await ck.close();
  // NaN scale in the file: refused when the layer is read.
  const bad = entries.map((e) => {
    if (e.name !== 'model.layers.1.self_attn.k_proj.scales') return e;
    const d = new Uint8Array(e.data as Uint8Array);
    d[0] = 0x00; d[1] = 0x7e; // f16 NaN
    return { ...e, data: d };
  });
  const ck2 = await openCheckpoint(memorySource(await serializeSafetensors(bad, md), 'nan.safetensors'));
  await assert.rejects(ck2.readQuantized('model.layers.1.self_attn.k_proj'), isCode('E_NONFINITE', /nan\.safetensors.*k_proj/));
  await ck2.close();
});
