// FLUTE checkpoints: the tileP = 32 packing of flute.md 1.4 against an independent transcription of its
// formulas, exact round trips for 2/3/4 bits at legal shapes, refusal of shapes FLUTE cannot hold, the
// tables2 pair table (checked, and rebuilt when damaged), and a checkpoint folder written and read back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FluteError } from '../src/errors.js';
import { openFluteModel, readFluteLayer, writeFluteCheckpoint, type FluteOpenedModel } from '../src/format/flute-checkpoint.js';
import { fluteShapeProblem, fluteTables2, packFlute, unpackFlute } from '../src/format/flute-pack.js';
import { serializeLlama2cTokenizer } from '../src/format/gguf-llama.js';
import { f32ArrayToF16, f16ArrayToF32 } from '../src/format/half.js';
import { writeLlama2c } from '../src/format/llama2c.js';
import { openSafetensors, writeSafetensors, type SafetensorsEntry } from '../src/format/safetensors.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import { loadModel } from '../src/model/load.js';
import { openModelFile } from '../src/model/open.js';
import { dequantize, type QuantizedLinear } from '../src/quant/linear.js';
import { unpackIndices } from '../src/quant/packing.js';
import { permuteRows, ropePermutation } from '../src/quant/permute.js';
import { quantizeRtn } from '../src/quant/rtn.js';
import { syntheticConfig, syntheticReader } from '../bench/synthetic.js';
import { syntheticVocab } from '../bench/vs-llama-cpp.js';
import { rng } from './helpers.js';

function repoFile(rel: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return join(dir, rel);
}

const tmp = mkdtempSync(join(tmpdir(), 'flute-format-test-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));
const isFlute = (code: string, mention?: string) => (e: unknown) => e instanceof FluteError && e.code === code && (mention === undefined || e.message.includes(mention));

function randomIndices(r: () => number, n: number, k: number, bits: number): Uint8Array {
  return Uint8Array.from({ length: n * k }, () => Math.floor(r() * 2 ** bits));
}

// ---------------------------------------------------------------------------------------------
// flute.md 1.4, transcribed independently: where does index Q[n, k] live?

/** The (row p, column k of weight[P, K], bit offset) of Q[n, k] under tileP = 32, written from the prose of flute.md 1.4. */
function locate(n: number, k: number, bits: number, N: number): { p: number; col: number; shift: number }[] {
  const kk = Math.floor(k / 2);
  const odd = k % 2 === 1;
  if (bits === 4) {
    // weight[p, 2kk+c] holds columns n_a = blk*128 + 2c*32 + t (nibbles 0, 1) and n_b = n_a + 32 (nibbles 2, 3), odd k first.
    const blk = Math.floor(n / 128), j = Math.floor((n % 128) / 32), t = n % 32;
    const c = j >> 1;
    const nib = (j & 1) * 2 + (odd ? 0 : 1);
    return [{ p: blk * 32 + t, col: 2 * kk + c, shift: 4 * nib }];
  }
  if (bits === 2) {
    // value s of weight[p, 2kk+c]: column blk*256 + (4c + s/2)*32 + t, row 2kk+1 for even s.
    const blk = Math.floor(n / 256), g = Math.floor((n % 256) / 32), t = n % 32;
    const c = g >> 2;
    const s = (g % 4) * 2 + (odd ? 0 : 1);
    return [{ p: blk * 32 + t, col: 2 * kk + c, shift: 2 * s }];
  }
  // 3-bit: slot s -> group [0,3,6,9,12,1,4,7,10,13,2,5,8,11,14,15][s]; v_2s = Q[n, 2kk+1], v_2s+1 = Q[n, 2kk];
  // v_i = stream bits 3i..3i+2; stream = bits 0..29 of w0, w1, w2, then (w0 b30, b31, w1 b30, b31, w2 b30, b31).
  const order = [0, 3, 6, 9, 12, 1, 4, 7, 10, 13, 2, 5, 8, 11, 14, 15];
  const blk = Math.floor(n / 512), g = Math.floor((n % 512) / 32), t = n % 32;
  const s = order.indexOf(g);
  const v = 2 * s + (odd ? 0 : 1);
  const P1 = N / 16;
  const rows = [blk * 32 + t, P1 + blk * 64 + t, P1 + blk * 64 + 32 + t];
  return [0, 1, 2].map((b) => {
    const bit = 3 * v + b; // stream bit
    const word = bit < 90 ? Math.floor(bit / 30) : (bit - 90) >> 1;
    const wbit = bit < 90 ? bit % 30 : 30 + ((bit - 90) & 1);
    return { p: rows[word], col: 2 * kk + (wbit >= 16 ? 1 : 0), shift: wbit % 16 };
  });
}

test('FLUTE packing puts every index where flute.md 1.4 says (an independent transcription), 2/3/4 bits', () => {
  const r = rng(31);
  for (const [bits, N, K] of [[4, 256, 64], [2, 512, 64], [3, 1024, 64]] as const) {
    const q = randomIndices(r, N, K, bits);
    const w = packFlute(q, N, K, bits);
    for (let i = 0; i < 400; i++) {
      const n = Math.floor(r() * N), k = Math.floor(r() * K);
      const parts = locate(n, k, bits, N);
      const per = bits === 3 ? 1 : bits;
      let v = 0;
      parts.forEach((loc, b) => { v |= ((w[loc.p * K + loc.col] >> loc.shift) & ((1 << per) - 1)) << (b * per); });
      assert.equal(v, q[n * K + k], `pack(bits=${bits},N=${N},K=${K}) Q[${n},${k}]`);
    }
  }
});

test('FLUTE pack then unpack returns the input, and unpack then pack the packed words, at every legal shape tried', () => {
  const r = rng(32);
  for (const bits of [2, 3, 4]) {
    for (const N of [512, 1024]) {
      for (const K of [64, 128, 192, 256]) {
        const id = `flute(bits=${bits},N=${N},K=${K})`;
        const q = randomIndices(r, N, K, bits);
        const w = packFlute(q, N, K, bits, id);
        assert.equal(w.length, (N * bits / 16) * K, id);
        assert.deepEqual(unpackFlute(w, N, K, bits, id), q, id);
        const words = Uint16Array.from({ length: w.length }, () => Math.floor(r() * 65536));
        assert.deepEqual(packFlute(unpackFlute(words, N, K, bits, id), N, K, bits, id), words, `${id}: every u16 pattern is a layout`);
      }
    }
  }
  // The smallest row blocks: 128 rows at 4 bits, 256 at 2.
  for (const [bits, N] of [[4, 128], [2, 256]]) {
    const q = randomIndices(r, N, 2, bits);
    assert.deepEqual(unpackFlute(packFlute(q, N, 2, bits), N, 2, bits), q);
  }
});

test('shapes FLUTE cannot hold are refused with the rule and the tensor named', () => {
  const q = new Uint8Array(384 * 64);
  assert.throws(() => packFlute(q, 384, 64, 3, 'layer X'), isFlute('E_SHAPE', 'multiple of 512'));
  assert.throws(() => packFlute(new Uint8Array(100 * 64), 100, 64, 4, 'layer X'), isFlute('E_SHAPE', 'layer X'));
  assert.throws(() => packFlute(new Uint8Array(128 * 63), 128, 63, 4), isFlute('E_SHAPE', 'even K'));
  assert.throws(() => packFlute(new Uint8Array(128 * 64), 128, 64, 5), isFlute('E_OPTION', '2, 3 or 4 bits'));
  assert.throws(() => packFlute(Uint8Array.of(16, ...new Uint8Array(128 * 64 - 1)), 128, 64, 4), isFlute('E_OPTION', 'does not fit in 4 bits'));
  assert.match(fluteShapeProblem(512, 96, 4, 64) ?? '', /multiple of the group size 64/);
  assert.match(fluteShapeProblem(512, 96, 4, 32) ?? '', /K tile 64/);
  assert.match(fluteShapeProblem(512, 128, 4, 48) ?? '', /group size must be one of 32, 64, 128, 256/);
  assert.equal(fluteShapeProblem(256, 128, 2, 128), null);
});

test('tables2: word [i][j] = bits16(T[i]) | bits16(T[j]) << 16', () => {
  const t = f32ArrayToF16(Float32Array.of(-1, 0.5, 2, 0));
  const t2 = fluteTables2(t);
  assert.equal(t2.length, 16);
  assert.equal(t2[1 * 4 + 2], (0x3800 | (0x4000 << 16)) >>> 0); // 0.5 low, 2 high
  assert.equal(t2[0], (0xbc00 | (0xbc00 << 16)) >>> 0); // -1, -1
});

// ---------------------------------------------------------------------------------------------
// A checkpoint folder

/** LLaMA-shaped, every linear a multiple of 512 rows and 64 columns, so 2, 3 and 4 bits all fit. */
const config = syntheticConfig({ dim: 512, hiddenDim: 1024, nLayers: 1, nHeads: 8, nKvHeads: 8, vocabSize: 300, seqLen: 64 });

/** A llama2.c file (interleaved RoPE) with its tokenizer, the source of the exports below. */
async function sourceModel(): Promise<string> {
  const path = join(tmp, 'src.bin');
  if (!existsSync(path)) {
    await writeLlama2c(path, config, syntheticReader(config, 7));
    const { writeFileSync } = await import('node:fs');
    writeFileSync(join(tmp, 'tokenizer.bin'), serializeLlama2cTokenizer(syntheticVocab(config.vocabSize)));
  }
  return path;
}

/** What a FLUTE export of `name` should hold: RTN of the half-layout weight, table rounded to f16 as FLUTE stores it. */
async function expectedLayer(name: string, bits: number, g: number): Promise<QuantizedLinear> {
  const [n, k] = name.includes('mlp.down') ? [config.dim, config.hiddenDim] : name.includes('mlp') ? [config.hiddenDim, config.dim] : [config.dim, config.dim];
  let w = await syntheticReader(config, 7).readF32(name);
  if (/(q|k)_proj/.test(name)) w = (permuteRows({ kind: 'dense', n, k, weight: w }, ropePermutation(8, 64, 'interleaved', 'half')) as { weight: Float32Array }).weight;
  const q = quantizeRtn(w, n, k, { bits, groupSize: g, tableKind: 'nf' }).layer;
  return { ...q, table: f16ArrayToF32(f32ArrayToF16(q.table)) };
}

test('FLUTE checkpoint: written from a llama2.c model at 2/3/4 bits, read back layer for layer, and rewritten byte for byte', async () => {
  const src = await openModelFile(await sourceModel());
  try {
    for (const [bits, g] of [[4, 64], [3, 128], [2, 256]]) {
      const dir = join(tmp, `flute-w${bits}g${g}`);
      const report = await writeFluteCheckpoint(src, dir, { bits, groupSize: g });
      assert.equal(report.layers.length, 7);
      assert.deepEqual(report.files.slice(0, 3), ['model.safetensors', 'config.json', 'flute_config.json']);
      const cfg = JSON.parse(readFileSync(join(dir, 'flute_config.json'), 'utf8'));
      assert.deepEqual(cfg, { version: '0.3.0', num_sms: 108, num_bits: bits, group_size: g });
      const hf = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      assert.deepEqual([hf.architectures[0], hf.hidden_size, hf.tie_word_embeddings, hf.torch_dtype], ['LlamaForCausalLM', 512, true, 'float16']);
      // The tensors FLUTE's FluteLinear registers, with its dtypes and shapes.
      const st = await openSafetensors(join(dir, 'model.safetensors'));
      const t = (s: string) => st.info(`model.layers.0.mlp.gate_proj.${s}`);
      assert.deepEqual([t('weight').dtype, [...t('weight').shape]], ['I16', [1024 * bits / 16, 512]]);
      assert.deepEqual([t('scales').dtype, [...t('scales').shape]], ['F16', [1024, 512 / g]]);
      assert.deepEqual([t('tables').dtype, [...t('tables').shape]], ['F16', [2 ** bits]]);
      assert.deepEqual([t('tables2').dtype, [...t('tables2').shape]], ['F32', [2 ** bits, 2 ** bits, 1]]);
      assert.equal(st.has('model.embed_tokens.weight') && st.info('model.embed_tokens.weight').dtype, 'F32');
      await st.close();

      const m = await openModelFile(dir) as FluteOpenedModel;
      assert.equal(m.format, 'flute');
      assert.equal(m.config.ropeLayout, 'half');
      for (const name of ['model.layers.0.self_attn.q_proj.weight', 'model.layers.0.self_attn.k_proj.weight', 'model.layers.0.mlp.down_proj.weight']) {
        const got = await m.readQuantized(name);
        const want = await expectedLayer(name, bits, g);
        const id = `${name} w${bits}g${g}`;
        assert.deepEqual(unpackIndices(got.packed, got.n, got.k, bits), unpackIndices(want.packed, want.n, want.k, bits), id);
        assert.deepEqual(got.scales, want.scales, id);
        assert.deepEqual(got.table, want.table, id);
        assert.equal(got.tableKind, 'nf', id);
        assert.equal(m.tables2.get(name), 'match', id);
      }
      // The folder exported again reuses every layer: the same model.safetensors, byte for byte.
      const again = join(tmp, `flute-w${bits}g${g}-again`);
      const r2 = await writeFluteCheckpoint(m, again, { bits, groupSize: g });
      assert.ok(r2.layers.every((l) => l.how === 'reused'));
      assert.deepEqual(readFileSync(join(again, 'model.safetensors')), readFileSync(join(dir, 'model.safetensors')), `w${bits}g${g}: rewrite`);
      await m.close();
    }
  } finally {
    await src.close();
  }
});

test('FLUTE checkpoint runs: the same logits as the source model with the same (f16-table) layers', async () => {
  const dir = join(tmp, 'flute-w4g64');
  if (!existsSync(dir)) {
    const src = await openModelFile(await sourceModel());
    await writeFluteCheckpoint(src, dir, { bits: 4, groupSize: 64 });
    await src.close();
  }
  const backend = createRefBackend();
  const flute = await loadModel(dir, { backend });
  // The source, with each layer quantized as the export did and left in its own (interleaved) layout.
  const src = await loadModel(await sourceModel(), { backend });
  const prompt = [1, 270, 280, 290];
  const a = flute.model.forward(prompt, 0).slice();
  const fluteLayers = await openFluteModel(dir);
  const srcOpen = await openModelFile(await sourceModel());
  const { loadLlamaWeights } = await import('../src/model/weights.js');
  const { LlamaModel } = await import('../src/model/llama.js');
  const inv = ropePermutation(8, 64, 'half', 'interleaved');
  const weights = await loadLlamaWeights(srcOpen.tensors, config, async (name) => {
    if (!fluteLayers.quantized.has(name)) return undefined;
    const l = await fluteLayers.readQuantized(name);
    return /(q|k)_proj/.test(name) ? permuteRows(l, inv) : l;
  });
  const b = new LlamaModel(config, weights, backend).forward(prompt, 0);
  let maxDiff = 0;
  for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
  assert.ok(maxDiff < 1e-4, `half-RoPE FLUTE model vs interleaved source: max logit difference ${maxDiff}`);
  flute.dispose();
  src.dispose();
  await fluteLayers.close();
  await srcOpen.close();
});

test('FLUTE tables2: a damaged pair table (the f16 cast of FLUTE issue #14) is rebuilt; a HIGGS-style one is refused', async () => {
  const dir = join(tmp, 'flute-w4g64');
  const st = await openSafetensors(join(dir, 'model.safetensors'));
  const base = 'model.layers.0.mlp.up_proj';
  // Rewrite the checkpoint with tables2 numerically cast to f16 and back, as transformers did.
  const entries: SafetensorsEntry[] = [];
  for (const t of st.list()) {
    let data = await st.readRaw(t.name);
    if (t.name === `${base}.tables2`) {
      const f = new Float32Array(data.slice().buffer);
      data = new Uint8Array(f16ArrayToF32(f32ArrayToF16(f)).buffer);
    }
    entries.push({ name: t.name, dtype: t.dtype, shape: t.shape, data });
  }
  await st.close();
  const damaged = join(tmp, 'damaged');
  const { cpSync } = await import('node:fs');
  cpSync(dir, damaged, { recursive: true });
  await writeSafetensors(join(damaged, 'model.safetensors'), entries);
  const m = await openModelFile(damaged) as FluteOpenedModel;
  const good = await openModelFile(dir) as FluteOpenedModel;
  const layer = await m.readQuantized(`${base}.weight`);
  assert.equal(m.tables2.get(`${base}.weight`), 'rebuilt');
  assert.deepEqual(dequantize(layer), dequantize(await good.readQuantized(`${base}.weight`)));
  // tables = arange with its own tables2 is a 2-D codebook, which one table per layer cannot express.
  const higgs = entries.map((e) => (e.name === `${base}.tables` ? { ...e, data: new Uint8Array(f32ArrayToF16(Float32Array.from({ length: 16 }, (_, i) => i)).buffer) } : e));
  const st2 = join(tmp, 'higgs.safetensors');
  await writeSafetensors(st2, higgs);
  const hr = await openSafetensors(st2);
  await assert.rejects(readFluteLayer(hr, base, { num_bits: 4, group_size: 64 }, 'higgs'), isFlute('E_FORMAT', 'HIGGS'));
  await hr.close();
  await m.close();
  await good.close();
});

test('FLUTE export refuses what FLUTE cannot hold, naming the tensor and the rule', async () => {
  const stories = await openModelFile(repoFile('models/stories260K/stories260K.bin'));
  try {
    await assert.rejects(writeFluteCheckpoint(stories, join(tmp, 'nope'), { bits: 4, groupSize: 64 }),
      isFlute('E_SHAPE', 'model.layers.0.self_attn.q_proj.weight [64, 64]: 4-bit FLUTE needs N (out features) to be a multiple of 128'));
    await assert.rejects(writeFluteCheckpoint(stories, join(tmp, 'nope'), { bits: 5, groupSize: 64 }), isFlute('E_OPTION', '--bits'));
    await assert.rejects(writeFluteCheckpoint(stories, join(tmp, 'nope'), { bits: 4, groupSize: 100 }), isFlute('E_OPTION', '--group-size'));
    assert.equal(existsSync(join(tmp, 'nope')), false);
  } finally {
    await stories.close();
  }
  // A quantized source at other settings is not quantized twice.
  const src = await openModelFile(join(tmp, 'flute-w4g64'));
  await assert.rejects(writeFluteCheckpoint(src, join(tmp, 'nope'), { bits: 3, groupSize: 64 }), isFlute('E_OPTION', 'already quantized'));
  await src.close();
});
