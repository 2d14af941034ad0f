// llama2.c legacy checkpoints: the bundled stories260K reads with the right config and raw weights,
// writing reproduces it, and damaged files give typed errors naming the file before any tensor read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundledModelPath } from '../src/cli/paths.js';
import { FluteError } from '../src/errors.js';
import type { LlamaConfig } from '../src/model/config.js';
import { LLAMA2C_HEADER_BYTES, openLlama2c, writeLlama2c } from '../src/format/llama2c.js';
import { openSafetensors, serializeSafetensors, typedArrayBytes, type SafetensorsEntry } from '../src/format/safetensors.js';
import { memorySource } from '../src/format/source.js';
import { randn, rng } from './helpers.js';

// Found from the package root, so the test runs from test/ (tsx) and from dist/test alike.
const MODEL = bundledModelPath();

const isCode = (code: string, ...res: RegExp[]) => (e: unknown) => {
  assert.ok(e instanceof FluteError, `expected a FluteError, got ${e}`);
  assert.equal(e.code, code, e.message);
  for (const re of res) assert.match(e.message, re);
  return true;
};

function scratch(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'flute-l2c-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The raw f32 values at a byte offset of a file, read independently of the reader. */
function rawF32(bytes: Uint8Array, offset: number, n: number): Float32Array {
  return new Float32Array(bytes.slice(offset, offset + 4 * n).buffer);
}

const LAYER_SUFFIXES = [
  'input_layernorm.weight', 'self_attn.q_proj.weight', 'self_attn.k_proj.weight', 'self_attn.v_proj.weight', 'self_attn.o_proj.weight',
  'post_attention_layernorm.weight', 'mlp.gate_proj.weight', 'mlp.down_proj.weight', 'mlp.up_proj.weight',
];

test('stories260K: config, tensor list and shapes', async (t) => {
  const r = await openLlama2c(MODEL);
  t.after(() => r.close());
  assert.equal(r.file, MODEL);
  assert.deepEqual(r.config, {
    dim: 64, hiddenDim: 172, nLayers: 5, nHeads: 8, nKvHeads: 4, headDim: 8, vocabSize: 512, seqLen: 512,
    normEps: 1e-5, ropeTheta: 10000, ropeLayout: 'interleaved', tiedEmbeddings: true,
  });
  const names = r.list().map((x) => x.name);
  assert.equal(names.length, 1 + 5 * 9 + 1);
  assert.deepEqual(names, [
    'model.embed_tokens.weight',
    ...[0, 1, 2, 3, 4].flatMap((i) => LAYER_SUFFIXES.map((s) => `model.layers.${i}.${s}`)),
    'model.norm.weight',
  ]);
  assert.equal(r.has('lm_head.weight'), false);
  assert.equal(r.has('freq_cis_real'), false);
  const shapes: Record<string, number[]> = {
    'model.embed_tokens.weight': [512, 64], 'model.norm.weight': [64],
    'model.layers.3.input_layernorm.weight': [64], 'model.layers.3.self_attn.q_proj.weight': [64, 64],
    'model.layers.3.self_attn.k_proj.weight': [32, 64], 'model.layers.3.self_attn.v_proj.weight': [32, 64],
    'model.layers.3.self_attn.o_proj.weight': [64, 64], 'model.layers.3.post_attention_layernorm.weight': [64],
    'model.layers.3.mlp.gate_proj.weight': [172, 64], 'model.layers.3.mlp.down_proj.weight': [64, 172],
    'model.layers.3.mlp.up_proj.weight': [172, 64],
  };
  for (const [name, shape] of Object.entries(shapes)) {
    const info = r.info(name);
    assert.deepEqual(info.shape, shape, name);
    assert.equal(info.dtype, 'F32');
    assert.equal(info.byteLength, 4 * shape.reduce((a, b) => a * b, 1));
  }
  assert.throws(() => r.info('lm_head.weight'), isCode('E_NOT_FOUND', /stories260K\.bin/, /lm_head/));
});

test('stories260K: weights are the raw f32 at their file offsets (no q/k permutation)', async (t) => {
  const bytes = new Uint8Array(readFileSync(MODEL));
  const r = await openLlama2c(MODEL);
  t.after(() => r.close());
  const emb = await r.readF32('model.embed_tokens.weight');
  assert.deepEqual(emb.subarray(0, 8), rawF32(bytes, 28, 8));
  assert.ok(Math.abs(emb[0] - -0.29475) < 1e-4); // bytes 50 e9 96 be
  const d = 64;
  // wq of layer 1: after the embedding, rms_att of every layer, and wq of layer 0.
  const q1 = LLAMA2C_HEADER_BYTES + 4 * (512 * d + 5 * d + d * d);
  assert.deepEqual(await r.readF32('model.layers.1.self_attn.q_proj.weight'), rawF32(bytes, q1, d * d));
  // The final norm sits just before the two RoPE tables (512 x 4 each) at the end of the file.
  assert.deepEqual(await r.readF32('model.norm.weight'), rawF32(bytes, bytes.length - 4 * (d + 2 * 512 * 4), d));
  // w3 (up_proj) of the last layer ends where the final norm begins.
  const up4 = await r.readF32('model.layers.4.mlp.up_proj.weight');
  assert.deepEqual(up4, rawF32(bytes, bytes.length - 4 * (d + 2 * 512 * 4 + 172 * d), 172 * d));
  assert.deepEqual(await r.readRaw('model.layers.4.mlp.up_proj.weight'), typedArrayBytes(up4));
});

test('writeLlama2c reproduces stories260K (weights byte-exact, RoPE tables to f32 rounding)', async (t) => {
  const dir = scratch(t);
  const p = join(dir, 'copy.bin');
  const r = await openLlama2c(MODEL);
  t.after(() => r.close());
  const size = await writeLlama2c(p, r.config, r);
  const orig = new Uint8Array(readFileSync(MODEL));
  const copy = new Uint8Array(readFileSync(p));
  assert.equal(size, orig.length);
  assert.equal(copy.length, orig.length);
  const ropeStart = orig.length - 2 * 512 * 4 * 4;
  assert.deepEqual(copy.subarray(0, ropeStart), orig.subarray(0, ropeStart));
  const a = rawF32(orig, ropeStart, 2 * 512 * 4);
  const b = rawF32(copy, ropeStart, 2 * 512 * 4);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 2 ** -23, `RoPE table value ${i}: ${a[i]} vs ${b[i]}`);
  assert.deepEqual(readdirSync(dir), ['copy.bin']);
});

const SMALL: LlamaConfig = {
  dim: 16, hiddenDim: 24, nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 4, vocabSize: 10, seqLen: 8,
  normEps: 1e-5, ropeTheta: 10000, ropeLayout: 'interleaved', tiedEmbeddings: false,
};

/** A random model with the given config, as an in-memory safetensors reader (its tensors are F16 to exercise conversion). */
async function randomModel(c: LlamaConfig) {
  const r = rng(7);
  const kv = c.nKvHeads * c.headDim;
  const shapes: [string, number[]][] = [['model.embed_tokens.weight', [c.vocabSize, c.dim]], ['model.norm.weight', [c.dim]]];
  if (!c.tiedEmbeddings) shapes.push(['lm_head.weight', [c.vocabSize, c.dim]]);
  for (let i = 0; i < c.nLayers; i++) {
    const s: Record<string, number[]> = {
      'input_layernorm.weight': [c.dim], 'self_attn.q_proj.weight': [c.dim, c.dim], 'self_attn.k_proj.weight': [kv, c.dim],
      'self_attn.v_proj.weight': [kv, c.dim], 'self_attn.o_proj.weight': [c.dim, c.dim], 'post_attention_layernorm.weight': [c.dim],
      'mlp.gate_proj.weight': [c.hiddenDim, c.dim], 'mlp.down_proj.weight': [c.dim, c.hiddenDim], 'mlp.up_proj.weight': [c.hiddenDim, c.dim],
    };
    for (const [k, v] of Object.entries(s)) shapes.push([`model.layers.${i}.${k}`, v]);
  }
  const entries: SafetensorsEntry[] = shapes.map(([name, shape]) => ({
    name, dtype: 'F32', shape, data: typedArrayBytes(randn(r, shape.reduce((a, b) => a * b, 1))),
  }));
  return openSafetensors(memorySource(await serializeSafetensors(entries), 'random'));
}

test('a random untied model round trips: negative vocab_size, lm_head after the RoPE tables', async (t) => {
  const dir = scratch(t);
  const p = join(dir, 'small.bin');
  const src = await randomModel(SMALL);
  await writeLlama2c(p, SMALL, src);
  const bytes = new Uint8Array(readFileSync(p));
  assert.equal(new DataView(bytes.buffer).getInt32(20, true), -10);
  const r = await openLlama2c(memorySource(bytes, 'small.bin'));
  assert.deepEqual(r.config, SMALL);
  assert.equal(r.list().length, 1 + 9 * 2 + 2);
  assert.equal(r.list().at(-1)?.name, 'lm_head.weight');
  assert.equal(r.info('lm_head.weight').offset + 4 * 10 * 16, bytes.length);
  for (const t of src.list()) assert.deepEqual(await r.readF32(t.name), await src.readF32(t.name), t.name);
});

test('writeLlama2c refuses configs and shapes the format cannot hold, leaving no file', async (t) => {
  const dir = scratch(t);
  const p = join(dir, 'x.bin');
  const src = await randomModel(SMALL);
  await assert.rejects(writeLlama2c(p, { ...SMALL, ropeLayout: 'half' }, src), isCode('E_OPTION', /x\.bin/, /interleaved/));
  await assert.rejects(writeLlama2c(p, { ...SMALL, normEps: 1e-6 }, src), isCode('E_OPTION'));
  await assert.rejects(writeLlama2c(p, { ...SMALL, nKvHeads: 3 }, src), isCode('E_OPTION', /n_kv_heads/));
  // Shapes that disagree with the config fail part-way through writing: nothing is left behind.
  await assert.rejects(writeLlama2c(p, { ...SMALL, hiddenDim: 20 }, src), isCode('E_SHAPE', /random/, /gate_proj/));
  // A tensor the config needs but the reader lacks.
  await assert.rejects(writeLlama2c(p, { ...SMALL, nLayers: 3 }, src), isCode('E_NOT_FOUND', /model\.layers\.2\./));
  assert.equal(existsSync(p), false);
  assert.deepEqual(readdirSync(dir), []);
});

test('truncated copies of stories260K are E_TRUNCATED naming the file and both sizes', async (t) => {
  const dir = scratch(t);
  const orig = readFileSync(MODEL);
  const p = join(dir, 'cut.bin');
  for (const cut of [0, 3, 27]) {
    writeFileSync(p, orig.subarray(0, cut));
    await assert.rejects(openLlama2c(p), isCode('E_TRUNCATED', /cut\.bin/, /28-byte/), `cut at ${cut}`);
  }
  for (const cut of [28, 1000, orig.length / 2, orig.length - 1]) {
    writeFileSync(p, orig.subarray(0, cut));
    await assert.rejects(openLlama2c(p), isCode('E_TRUNCATED', /cut\.bin/, new RegExp(`needs ${orig.length} bytes`), new RegExp(`only ${cut} bytes`)), `cut at ${cut}`);
  }
  // Extra trailing bytes are tolerated, as in llama2.c.
  writeFileSync(p, Buffer.concat([orig, Buffer.alloc(5)]));
  await (await openLlama2c(p)).close();
});

test('garbage and inconsistent headers are E_BAD_HEADER naming the file', async () => {
  const header = (...v: number[]) => {
    const b = new Uint8Array(1 << 16);
    v.forEach((x, i) => new DataView(b.buffer).setInt32(4 * i, x, true));
    return memorySource(b, 'garbage.bin');
  };
  const cases: [number[], RegExp][] = [
    [[0, 172, 5, 8, 4, 512, 512], /dim must be/],
    [[64, -172, 5, 8, 4, 512, 512], /hidden_dim/],
    [[64, 172, 5, 8, 4, 0, 512], /vocab_size/],
    [[64, 172, 5, 7, 7, 512, 512], /multiple of n_heads/],
    [[64, 172, 5, 8, 3, 512, 512], /multiple of n_kv_heads/],
    [[64, 172, 5, 64, 64, 512, 512], /even/],
    [[2 ** 30, 172, 5, 8, 4, 512, 512], /dim must be/],
    [[64, 172, 5, 8, 4, -(2 ** 31), 512], /vocab_size/],
    [[0x464c457f, 0x10102, 0, 0, 0x3e0002, 1, 0x4000], /dim must be/], // an ELF binary's first bytes
  ];
  for (const [h, re] of cases) await assert.rejects(openLlama2c(header(...h)), isCode('E_BAD_HEADER', /garbage\.bin/, re), h.join(','));
  // Random bytes: some field is out of range.
  const r = rng(3);
  const bytes = Uint8Array.from({ length: 4096 }, () => Math.floor(r() * 256));
  await assert.rejects(openLlama2c(memorySource(bytes, 'random.bin')), isCode('E_BAD_HEADER', /random\.bin/));
  // A plausible header whose tensors would need terabytes: size check, no allocation.
  await assert.rejects(openLlama2c(header(1 << 16, 1 << 18, 1000, 256, 256, 1 << 20, 1 << 20)), isCode('E_TRUNCATED', /garbage\.bin/));
});

test('a version-1 export (magic "ak42") is E_FORMAT; a missing file is E_NOT_FOUND', async (t) => {
  const b = new Uint8Array(256);
  new DataView(b.buffer).setUint32(0, 0x616b3432, true);
  new DataView(b.buffer).setInt32(4, 1, true);
  await assert.rejects(openLlama2c(memorySource(b, 'v1.bin')), isCode('E_FORMAT', /v1\.bin/, /legacy \(version 0\)/));
  await assert.rejects(openLlama2c(join(scratch(t), 'nope.bin')), isCode('E_NOT_FOUND', /nope\.bin/));
});
