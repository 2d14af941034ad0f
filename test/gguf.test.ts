// GGUF in and out: stories260K.gguf against llama.cpp's own output (greedy text, tokenizer ids), the
// block layouts against an independent dequantizer written from llama.cpp's formulas, the writer's
// bit-for-bit round trips for every type it writes, and mutated files that must fail with typed
// errors, quickly and without allocating more than the file could hold.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FluteError } from '../src/errors.js';
import {
  blocksToLinear, GGML_TYPES, ggmlTensorBytes, ggmlToF32, linearToBlocks, q8_0ToLinear, quantizeQ8_0, quantizeToLutBlocks, type LutBlockType,
} from '../src/format/ggml-types.js';
import { ggufCopySpec, openGguf, serializeGguf, type GgufValue } from '../src/format/gguf.js';
import { GGUF_WRITE_TYPES, isGgufModel, openGgufModel, writeLlamaGguf } from '../src/format/gguf-llama.js';
import { f16BitsToF32 } from '../src/format/half.js';
import { memorySource } from '../src/format/source.js';
import { createBackend } from '../src/kernels/registry.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import type { KernelBackend } from '../src/kernels/types.js';
import { LlamaModel } from '../src/model/llama.js';
import { loadModel } from '../src/model/load.js';
import { estimateModelMemory } from '../src/model/memory-budget.js';
import { openModelFile, type OpenedModel } from '../src/model/open.js';
import { embeddingRow, loadLlamaWeights } from '../src/model/weights.js';
import { dequantize, type QuantizedLinear } from '../src/quant/linear.js';
import { permuteRows, ropePermutation } from '../src/quant/permute.js';
import { IQ4NL_VALUES } from '../src/quant/tables.js';
import { Llama2cTokenizer } from '../src/tokenizer/llama2c.js';
import { rng } from './helpers.js';

/** A repository file, whether this test runs from test/ (tsx) or dist/test/ (compiled). */
function repoFile(rel: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return join(dir, rel);
}

const GGUF_FILE = repoFile('models/stories260K/stories260K.gguf');
const REFERENCE = JSON.parse(readFileSync(repoFile('data/greedy-reference.json'), 'utf8')) as { continuation: string };
const tmp = mkdtempSync(join(tmpdir(), 'flute-gguf-test-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));
const isFlute = (code?: string) => (e: unknown) => e instanceof FluteError && (code === undefined || e.code === code);
const ids = (s: string) => s.split(',').map(Number);

/** Greedy decode of `n` tokens after `prompt` (ties to the lowest id, as llama.cpp's argmax). */
async function greedy(path: string, backend: KernelBackend, prompt: number[], n: number): Promise<number[]> {
  const loaded = await loadModel(path, { backend });
  try {
    let logits = loaded.model.forward(prompt, 0);
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      let best = 0;
      for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
      out.push(best);
      if (i + 1 < n) logits = loaded.model.forward([best], prompt.length + i);
    }
    return out;
  } finally {
    loaded.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's own outputs, recorded with node-llama-cpp 3.22.1 (prebuilt CPU binary, 1 thread,
// temperature 0) on this repository's files; see README "GGUF and llama.cpp".

/** `model.tokenize(text)` of stories260K.gguf in llama.cpp. */
const LLAMA_CPP_TOKENS: [string, string][] = [
  ['Once upon a time', '403,407,261,378'],
  ['Lily saw a big dog. "Hi!" she said.\nThe end.', '317,394,261,370,400,428,426,313,440,417,443,436,358,336,426,13,434,260,344,264,426'],
  ['  two  spaces', '410,410,259,424,414,410,262,427,412,331,419'],
  ['Ünïcødé 🙂 tab\tx', '410,198,159,416,198,178,429,198,187,418,485,410,243,162,156,133,259,412,430,12,444'],
];

/**
 * greedy-reference.json came from node-llama-cpp's LlamaCompletion, which tokenizes the prompt with
 * "trimLeadingSpace" (no SentencePiece dummy prefix): BOS, "O", "n", "ce", " upon", " a", " time".
 */
const REFERENCE_PROMPT = [1, 441, 416, 331, 407, 261, 378];

/** llama.cpp's 200 greedy tokens from BOS + "Once upon a time" ([1, 403, 407, 261, 378]), per file. */
const LLAMA_CPP_GREEDY = {
  // stories260K.gguf itself (and our F32 rewrite of it)
  F32: ids('432,383,286,261,376,298,315,421,395,317,426,338,401,396,267,337,410,408,419,292,411,322,265,282,295,433,426,385,328,432,358,394,261,370,432,352,266,268,388,426,338,391,266,267,337,335,312,432,398,312,286,267,414,270,333,415,426,13,438,310,439,419,357,336,432,313,438,310,432,278,316,439,419,298,414,267,265,282,295,433,426,436,317,286,296,418,269,279,292,416,439,413,409,416,327,263,415,294,267,400,426,338,336,432,313,442,391,267,337,335,364,420,268,388,432,398,359,280,303,439,413,272,417,264,312,426,436,13,438,310,286,296,418,269,279,292,416,439,413,409,416,327,263,415,294,267,400,426,338,336,432,313,442,439,423,262,304,420,422,432,317,426,359,279,292,416,439,413,409,416,327,263,415,294,267,400,426,436,13,438,310,279,292,416,439,413,391,267,281,421,427,311,357,432,384,358,336,432,313,442'),
  // `flute quantize stories260K.gguf --type q4_0` (sha256 below)
  Q4_0: ids('432,383,286,261,376,298,315,421,395,317,426,338,401,396,267,337,410,408,419,292,411,322,265,262,379,426,385,328,432,358,272,277,264,261,262,423,388,268,414,444,373,282,412,427,285,353,265,298,420,277,264,426,338,286,384,393,269,282,420,277,418,373,311,372,421,431,426,13,438,310,286,384,393,269,308,303,355,311,357,343,387,329,299,384,262,425,420,427,420,293,266,426,338,336,432,313,442,401,360,262,425,402,261,262,425,420,427,420,293,411,387,364,426,436,410,13,438,310,286,393,267,300,360,261,404,424,374,426,338,282,420,412,429,413,417,429,266,265,282,412,427,285,269,282,323,265,282,412,427,285,322,265,282,412,427,285,426,338,286,384,393,351,358,282,420,412,429,413,417,429,266,311,282,412,427,285,269,336,432,313,434,415,303,433,364,432,317,443,436,410,13,438,310,286,393,351,358,280,389,281'),
  // `flute quantize stories260K.gguf --type iq4_nl`
  IQ4_NL: ids('432,383,286,261,376,298,315,421,395,317,426,338,401,396,267,337,410,408,419,292,411,322,265,282,295,433,426,385,328,432,358,394,261,280,294,395,274,287,426,274,287,286,399,280,425,325,277,419,426,346,391,266,267,337,335,312,426,346,391,266,267,337,335,312,426,13,438,310,336,432,313,446,287,343,432,280,303,359,337,335,364,420,280,294,450,436,274,287,336,432,313,452,406,432,398,359,280,303,439,413,337,335,312,426,436,317,286,399,296,418,426,338,391,266,267,337,335,274,287,426,338,261,419,355,274,287,432,313,448,415,294,261,276,364,400,299,450,436,274,287,336,432,313,442,439,423,262,304,420,422,432,317,426,359,263,290,421,281,421,427,364,426,436,13,438,310,286,296,418,426,338,336,432,313,442,439,423,262,304,420,422,432,274,287,343,426,359,263,290,421,281,421,427,364,426,359,263,290,421,298'),
};
const WRITTEN_SHA256 = {
  q4_0: 'ac1ba95fb7b047af04577de1d40f183e79128bccfc3b390f29b0d46f66b84241',
  iq4_nl: '9cf8451e589b10d364f508a91c0b837e57900719a5ed1618605e188b263170f8',
};

// ---------------------------------------------------------------------------------------------
// Block layouts

test('ggml block sizes, computed by hand from the structs in ggml-common.h', () => {
  assert.equal(GGML_TYPES.Q4_0.blockBytes, 2 + 32 / 2); // f16 d + 32 nibbles
  assert.equal(GGML_TYPES.IQ4_NL.blockBytes, 2 + 32 / 2); // same layout, other table
  assert.equal(GGML_TYPES.Q8_0.blockBytes, 2 + 32); // f16 d + 32 int8
  assert.deepEqual([GGML_TYPES.F32.blockBytes, GGML_TYPES.F16.blockBytes, GGML_TYPES.BF16.blockBytes], [4, 2, 2]);
  assert.deepEqual([GGML_TYPES.Q4_0.id, GGML_TYPES.Q8_0.id, GGML_TYPES.IQ4_NL.id, GGML_TYPES.BF16.id], [2, 8, 20, 30]);
  assert.equal(ggmlTensorBytes(GGML_TYPES.Q4_0, [64, 3], 't'), 2 * 18 * 3);
  assert.throws(() => ggmlTensorBytes(GGML_TYPES.Q4_0, [48, 3], 't'), isFlute('E_SHAPE'));
});

/** llama.cpp's dequantize_row_q4_0 / _iq4_nl / _q8_0, written from the formulas, nothing shared with src. */
function dequantRef(type: 'Q4_0' | 'IQ4_NL' | 'Q8_0', bytes: Uint8Array): Float32Array {
  const bb = type === 'Q8_0' ? 34 : 18;
  const out = new Float32Array((bytes.length / bb) * 32);
  for (let b = 0; b < bytes.length / bb; b++) {
    const o = b * bb;
    const d = f16BitsToF32(bytes[o] | (bytes[o + 1] << 8));
    for (let j = 0; j < 32; j++) {
      if (type === 'Q8_0') {
        out[b * 32 + j] = d * (bytes[o + 2 + j] > 127 ? bytes[o + 2 + j] - 256 : bytes[o + 2 + j]);
        continue;
      }
      const q = j < 16 ? bytes[o + 2 + j] & 15 : bytes[o + 2 + j - 16] >> 4;
      out[b * 32 + j] = d * (type === 'Q4_0' ? q - 8 : IQ4NL_VALUES[q]);
    }
  }
  return out;
}

/** -0 as +0: dequantize() folds the zeros of negative scales so backends compare bit for bit. */
const fold = (a: Float32Array) => a.map((v) => v + 0);

/** Random blocks with finite f16 scales (a random 16-bit d could be NaN or Inf). */
function randomBlocks(r: () => number, blocks: number, blockBytes: number): Uint8Array {
  const b = new Uint8Array(blocks * blockBytes);
  for (let i = 0; i < b.length; i++) b[i] = Math.floor(r() * 256);
  for (let i = 0; i < blocks; i++) b[i * blockBytes + 1] &= 0x7b; // exponent < 31: finite, either sign
  return b;
}

test('Q4_0 and IQ4_NL blocks become 4-bit g=32 LUT layers that dequantize as llama.cpp does, and back bit for bit', () => {
  const r = rng(11);
  for (const type of ['Q4_0', 'IQ4_NL'] as LutBlockType[]) {
    for (const [n, k] of [[1, 32], [3, 64], [17, 96]]) {
      const id = `blocks(type=${type},n=${n},k=${k})`;
      const bytes = randomBlocks(r, n * (k / 32), 18);
      const layer = blocksToLinear(type, bytes, n, k, id);
      assert.equal(layer.bits, 4, id);
      assert.equal(layer.groupSize, 32, id);
      assert.equal(layer.tableKind, type === 'Q4_0' ? 'int' : 'iq4nl', id);
      const want = dequantRef(type, bytes);
      assert.deepEqual(dequantize(layer), fold(want), id);
      assert.deepEqual(ggmlToF32(GGML_TYPES[type], bytes, n * k, id), want, id);
      assert.deepEqual(linearToBlocks(layer, type, id), bytes, id);
    }
  }
  // A layer that is not exactly a block layer is refused, not approximated.
  const q = blocksToLinear('Q4_0', randomBlocks(r, 2, 18), 1, 64, 'q');
  assert.throws(() => linearToBlocks(q, 'IQ4_NL', 'q'), isFlute('E_OPTION'));
  assert.throws(() => linearToBlocks({ ...q, groupSize: 64, scales: q.scales.subarray(0, 1) }, 'Q4_0', 'q'), isFlute('E_OPTION'));
  // NaN or Inf scales are caught, not trusted.
  const nan = randomBlocks(r, 1, 18);
  nan[0] = 0x00; nan[1] = 0x7e;
  assert.throws(() => blocksToLinear('Q4_0', nan, 1, 32, 'nan'), isFlute('E_NONFINITE'));
});

test('Q8_0: llama.cpp rule, exact f32 values, and the exact 8-bit LUT view', () => {
  const r = rng(12);
  const x = Float32Array.from({ length: 4 * 64 }, () => (r() - 0.5) * 3);
  x[5] = 0; x.fill(0, 64, 96); // a zero block: d = 0
  const bytes = quantizeQ8_0(x, 'x');
  assert.equal(bytes.length, 8 * 34);
  const back = ggmlToF32(GGML_TYPES.Q8_0, bytes, x.length, 'x');
  assert.deepEqual(back, dequantRef('Q8_0', bytes));
  for (let b = 0; b < 8; b++) {
    const amax = Math.max(...x.subarray(b * 32, b * 32 + 32).map(Math.abs));
    // Half a step, plus what rounding d to f16 moves the largest code (127 * d * 2^-11).
    for (let j = 0; j < 32; j++) assert.ok(Math.abs(back[b * 32 + j] - x[b * 32 + j]) <= (amax / 127) * (0.5 + 127 * 2 ** -11) + 1e-7, `block ${b} value ${j}`);
  }
  assert.deepEqual(dequantize(q8_0ToLinear(bytes, 4, 64, 'x')), fold(back));
});

test('Q4_0 from f32 follows llama.cpp: d = (signed extreme) / -8 per block; IQ4_NL fits better than plain RTN', () => {
  const r = rng(13);
  const n = 8, k = 128;
  const w = Float32Array.from({ length: n * k }, () => (r() + r() + r() - 1.5) * 0.1);
  const q4 = quantizeToLutBlocks('Q4_0', w, n, k, 'w');
  for (let b = 0; b < n * k / 32; b++) {
    let ext = 0;
    for (let j = 0; j < 32; j++) if (Math.abs(w[b * 32 + j]) > Math.abs(ext)) ext = w[b * 32 + j];
    assert.equal(q4.scales[b], f16BitsToF32(linearToBlocks(q4, 'Q4_0', 'w')[b * 18] | (linearToBlocks(q4, 'Q4_0', 'w')[b * 18 + 1] << 8)));
    assert.ok(Math.abs(q4.scales[b] - ext / -8) <= Math.abs(ext / -8) * 2 ** -10, `block ${b}`);
  }
  const err = (l: QuantizedLinear) => dequantize(l).reduce((a, v, i) => a + (v - w[i]) ** 2, 0);
  const searched = quantizeToLutBlocks('IQ4_NL', w, n, k, 'w');
  const plain = quantizeToLutBlocks('IQ4_NL', w, n, k, 'w', { iq4nlSearch: 0 });
  assert.ok(err(searched) <= err(plain), `searched ${err(searched)} vs plain ${err(plain)}`);
  assert.ok(err(searched) < err(q4), 'the non-linear grid fits Gaussian-like weights better than Q4_0');
});

// ---------------------------------------------------------------------------------------------
// stories260K.gguf against llama.cpp

test('stories260K.gguf: config, vocabulary and tokenizer ids as llama.cpp reads them', async () => {
  const m = await openModelFile(GGUF_FILE);
  try {
    assert.equal(m.format, 'gguf');
    const c = m.config;
    assert.deepEqual([c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.headDim, c.vocabSize], [64, 172, 5, 8, 4, 8, 512]);
    assert.equal(c.ropeLayout, 'interleaved');
    assert.equal(c.tiedEmbeddings, false); // the converter wrote output.weight (a copy of the embedding)
    assert.equal(m.tensors.info('model.layers.4.mlp.down_proj.weight').shape.join('x'), '64x172'); // ne = [172, 64] reversed
    // The same weights as the llama2.c file, bit for bit.
    const bin = await openModelFile(repoFile('models/stories260K/stories260K.bin'));
    for (const name of ['model.embed_tokens.weight', 'model.layers.2.self_attn.q_proj.weight', 'model.layers.4.mlp.down_proj.weight', 'model.norm.weight']) {
      assert.deepEqual(await m.tensors.readF32(name), await bin.tensors.readF32(name), name);
    }
    await bin.close();
    const tok = await m.readTokenizer();
    const t = Llama2cTokenizer.fromBytes(tok.bytes, 512, tok.file);
    for (const [text, want] of LLAMA_CPP_TOKENS) assert.deepEqual(t.encode(text, { bos: false, eos: false }), ids(want), JSON.stringify(text));
    assert.equal(t.piece(1), '<s>');
    assert.equal(t.piece(407), ' upon');
  } finally {
    await m.close();
  }
});

test('stories260K.gguf generates llama.cpp\'s greedy text (greedy-reference.json), all 200 tokens, on ref and auto backends', async () => {
  const ref = createRefBackend();
  const auto = await createBackend('auto');
  try {
    const tok = await openModelFile(GGUF_FILE).then(async (m) => {
      const t = await m.readTokenizer();
      await m.close();
      return Llama2cTokenizer.fromBytes(t.bytes, 512, t.file);
    });
    for (const backend of [ref, auto]) {
      const out = await greedy(GGUF_FILE, backend, REFERENCE_PROMPT, 200);
      // The prompt's last token is " time": decoding it first keeps the spaces exactly as llama.cpp printed them.
      assert.equal(tok.decode([378, ...out]).slice(' time'.length), REFERENCE.continuation, backend.name);
      // And with the usual tokenization of the prompt, llama.cpp's plain greedy tokens.
      assert.deepEqual(await greedy(GGUF_FILE, backend, [1, 403, 407, 261, 378], 200), LLAMA_CPP_GREEDY.F32, backend.name);
    }
  } finally {
    auto.dispose();
  }
});

// ---------------------------------------------------------------------------------------------
// Writing

test('GGUF container: stories260K.gguf reads and rewrites bit for bit', async () => {
  const g = await openGguf(GGUF_FILE);
  try {
    assert.equal(g.version, 3);
    assert.equal(g.tensors.length, 48);
    assert.deepEqual(await serializeGguf(ggufCopySpec(g)), new Uint8Array(readFileSync(GGUF_FILE)));
  } finally {
    await g.close();
  }
});

test('GGUF container: every metadata type, nested arrays and a header past 64 KiB round-trip', async () => {
  const md: [string, GgufValue][] = [
    ['a.u8', { type: 'u8', value: 255 }], ['a.i8', { type: 'i8', value: -128 }], ['a.u16', { type: 'u16', value: 65535 }],
    ['a.i16', { type: 'i16', value: -32768 }], ['a.u32', { type: 'u32', value: 2 ** 32 - 1 }], ['a.i32', { type: 'i32', value: -(2 ** 31) }],
    ['a.f32', { type: 'f32', value: 1.5 }], ['a.f64', { type: 'f64', value: Math.PI }], ['a.bool', { type: 'bool', value: true }],
    ['a.u64', { type: 'u64', value: 2n ** 64n - 1n }], ['a.i64', { type: 'i64', value: -(2n ** 63n) }], ['a.str', { type: 'string', value: '\uFEFFbom ▁ 🙂' }],
    ['b.strings', { type: 'array', itemType: 'string', value: Array.from({ length: 9000 }, (_, i) => `piece-${i}`) }],
    ['b.f32', { type: 'array', itemType: 'f32', value: Float32Array.of(1, -2, 3.5) }],
    ['b.bools', { type: 'array', itemType: 'bool', value: [true, false] }],
    ['b.nested', { type: 'array', itemType: 'array', value: [{ type: 'array', itemType: 'i32', value: Int32Array.of(1, 2) }, { type: 'array', itemType: 'string', value: ['x'] }] }],
    ['general.alignment', { type: 'u32', value: 64 }],
  ];
  const bf16 = Uint16Array.of(0x3f80, 0xc040, 0x0000, 0x7f80); // 1, -3, 0, +Inf
  const spec = {
    version: 2 as const, metadata: md,
    tensors: [
      { name: 't', type: 'F32' as const, ne: [3], data: new Uint8Array(Float32Array.of(1, 2, 3).buffer) },
      { name: 'b', type: 'BF16' as const, ne: [2, 2], data: new Uint8Array(bf16.buffer) },
    ],
  };
  const bytes = await serializeGguf(spec);
  assert.ok(bytes.length > 65536);
  const g = await openGguf(memorySource(bytes));
  assert.equal(g.version, 2);
  assert.deepEqual(ggmlToF32(g.tensor('b').type, await g.readRaw('b'), 4, 'b'), Float32Array.of(1, -3, 0, Infinity));
  assert.equal(g.alignment, 64);
  assert.equal(g.dataOffset % 64, 0);
  assert.deepEqual([...g.metadata.entries()], md);
  assert.deepEqual(await serializeGguf(ggufCopySpec(g)), bytes);
  await assert.rejects(serializeGguf({ metadata: [['x', { type: 'u8', value: 256 }]], tensors: [] }), isFlute('E_OPTION'));
});

test('writer: every type round-trips bit for bit, Q4_0/IQ4_NL/Q8_0 layers are the ones written, re-export copies bytes', async () => {
  const src = await openModelFile(GGUF_FILE);
  try {
    for (const type of GGUF_WRITE_TYPES) {
      const out = join(tmp, `s-${type}.gguf`);
      const report = await writeLlamaGguf(src, out, { type, name: 'stories260K' });
      const bytes = new Uint8Array(readFileSync(out));
      const g = await openGguf(out);
      assert.deepEqual(await serializeGguf(ggufCopySpec(g)), bytes, `${type}: read then write`);
      const want = { f32: 'F32', f16: 'F16', q8_0: 'Q8_0', q4_0: 'Q4_0', iq4_nl: 'IQ4_NL' }[type];
      assert.equal(g.tensor('blk.0.attn_q.weight').type.name, want, type);
      assert.equal(g.tensor('blk.0.ffn_norm.weight').type.name, 'F32', type);
      // K = 172 does not fill 32-value blocks: F16, as llama.cpp's quantize falls back.
      assert.equal(g.tensor('blk.0.ffn_down.weight').type.name, want === 'F32' ? 'F32' : want === 'F16' ? 'F16' : 'F16', type);
      assert.equal(report.fallbacks.length, type === 'f32' || type === 'f16' ? 0 : 5, type);
      await g.close();
      if (type === 'q4_0' || type === 'iq4_nl') {
        assert.equal(createHash('sha256').update(bytes).digest('hex'), WRITTEN_SHA256[type], `${type}: the file llama.cpp's tokens below were recorded on`);
      }
      // Reading our file and writing the same type again copies every tensor: the same file.
      const again = await openModelFile(out);
      const out2 = join(tmp, `s-${type}-again.gguf`);
      const r2 = await writeLlamaGguf(again, out2, { type, name: 'stories260K' });
      assert.ok(r2.tensors.every((t) => t.how === 'copied'), type);
      assert.deepEqual(new Uint8Array(readFileSync(out2)), bytes, `${type}: re-export`);
      if (type === 'f32') assert.deepEqual(await again.tensors.readF32('lm_head.weight'), await src.tensors.readF32('lm_head.weight'));
      await again.close();
    }
  } finally {
    await src.close();
  }
});

test('writer: a half-RoPE source gets its q/k rows permuted back to GGUF order', async () => {
  const src = await openModelFile(GGUF_FILE);
  try {
    const c = src.config;
    const half: OpenedModel = {
      ...src, config: { ...c, ropeLayout: 'half' },
      tensors: {
        ...src.tensors,
        async readF32(name) {
          const w = await src.tensors.readF32(name);
          const heads = /q_proj/.test(name) ? c.nHeads : /k_proj/.test(name) ? c.nKvHeads : 0;
          if (!heads) return w;
          const [n, k] = src.tensors.info(name).shape;
          const p = ropePermutation(heads, c.headDim, 'interleaved', 'half');
          return (permuteRows({ kind: 'dense', n, k, weight: w }, p) as { weight: Float32Array }).weight;
        },
      },
    };
    const out = join(tmp, 'from-half.gguf');
    await writeLlamaGguf(half, out, { type: 'f32', name: 'stories260K' });
    const g = await openGguf(out);
    const orig = await openGguf(GGUF_FILE);
    for (const t of ['blk.0.attn_q.weight', 'blk.3.attn_k.weight', 'blk.1.attn_v.weight']) assert.deepEqual(await g.readRaw(t), await orig.readRaw(t), t);
    await g.close();
    await orig.close();
  } finally {
    await src.close();
  }
});

test('Q4_0 and IQ4_NL files we write: quantized layers as written, and llama.cpp\'s greedy tokens in our engine', async (t) => {
  const ref = createRefBackend();
  const wasm = await createBackend('wasm', { threads: 1 });
  t.after(() => wasm.dispose());
  for (const [type, ggml] of [['q4_0', 'Q4_0'], ['iq4_nl', 'IQ4_NL']] as const) {
    const file = join(tmp, `s-${type}.gguf`);
    if (!existsSync(file)) {
      const src = await openModelFile(GGUF_FILE);
      await writeLlamaGguf(src, file, { type, name: 'stories260K' });
      await src.close();
    }
    const m = await openModelFile(file);
    assert.ok(isGgufModel(m));
    const meta = m.quantized.get('model.layers.0.self_attn.q_proj.weight');
    assert.deepEqual(meta && [meta.bits, meta.group_size, meta.table], [4, 32, type === 'q4_0' ? 'int' : 'iq4nl'], type);
    assert.equal(m.quantized.has('model.layers.0.mlp.down_proj.weight'), false, `${type}: the F16 fallback stays dense`);
    const layer = await m.readQuantized('model.layers.1.mlp.up_proj.weight');
    const g = (m as typeof m & { gguf: Awaited<ReturnType<typeof openGguf>> }).gguf;
    assert.deepEqual(dequantize(layer), fold(dequantRef(ggml, await g.readRaw('blk.1.ffn_up.weight'))), type);
    await m.close();
    // f32 activations (ref backend) against llama.cpp, which rounds activations to Q8_0 blocks for these
    // layers: Q4_0 agrees for all 200 tokens. IQ4_NL agrees for 16; at token 17 the top two candidates
    // are within 1.5% in both engines (llama.cpp: " m" 0.3169 vs "an" 0.3124; ours: 0.3186 vs 0.3115,
    // the other way round), and the 8-bit activation rounding decides. See README.
    const want = LLAMA_CPP_GREEDY[ggml];
    const agreeing = (out: number[]) => {
      let n = 0;
      while (n < 200 && out[n] === want[n]) n++;
      return n;
    };
    assert.equal(agreeing(await greedy(file, ref, [1, 403, 407, 261, 378], 200)), type === 'q4_0' ? 200 : 16, `${type}: tokens agreeing with llama.cpp`);
    // The wasm backend's default int8 activations round differently from llama.cpp's Q8_0 blocks, yet
    // reach the same tie (measured on x64 V8: Q4_0 all 200, IQ4_NL 16); at least 16 on any engine.
    const wasmAgree = agreeing(await greedy(file, wasm, [1, 403, 407, 261, 378], 200));
    assert.ok(wasmAgree >= 16, `${type} on ${wasm.info().variant}: ${wasmAgree} tokens agreeing with llama.cpp`);
  }
});

// ---------------------------------------------------------------------------------------------
// Bad input

/** A small valid llama GGUF with a vocabulary, quantized and float tensors: the fuzzing seed. */
async function seedFile(): Promise<Uint8Array> {
  const file = join(tmp, 's-q4_0.gguf');
  if (!existsSync(file)) {
    const src = await openModelFile(GGUF_FILE);
    await writeLlamaGguf(src, file, { type: 'q4_0', name: 'stories260K' });
    await src.close();
  }
  return new Uint8Array(readFileSync(file));
}

/** Opens the bytes as a model and reads every tensor; anything thrown must be a FluteError. */
async function exercise(bytes: Uint8Array, toFile = false): Promise<'ok' | string> {
  const path = join(tmp, 'mutant.gguf');
  if (toFile) writeFileSync(path, bytes);
  try {
    const m = await openGgufModel(toFile ? path : memorySource(bytes, '<mutant>'));
    try {
      for (const t of m.tensors.list()) {
        await m.tensors.readRaw(t.name);
        await m.tensors.readF32(t.name).catch((e) => { if (!(e instanceof FluteError)) throw e; });
      }
      for (const name of m.quantized.keys()) await m.readQuantized(name);
      await m.readTokenizer();
      return 'ok';
    } finally {
      await m.close();
    }
  } catch (e) {
    if (e instanceof FluteError) return e.code;
    throw new Error(`not a FluteError: ${(e as Error)?.stack ?? e}`);
  }
}

/** Offsets of the header fields worth lying in: counts, lengths, dims, types and offsets. */
async function headerFields(bytes: Uint8Array): Promise<{ at: number; width: 4 | 8; what: string }[]> {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const fields: { at: number; width: 4 | 8; what: string }[] = [{ at: 4, width: 4, what: 'version' }, { at: 8, width: 8, what: 'tensor count' }, { at: 16, width: 8, what: 'kv count' }];
  let p = 24;
  const str = (what: string) => { fields.push({ at: p, width: 8, what: `${what} length` }); p += 8 + Number(v.getBigUint64(p, true)); };
  const sizes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  for (let i = 0, n = Number(v.getBigUint64(16, true)); i < n; i++) {
    str(`key ${i}`);
    fields.push({ at: p, width: 4, what: `key ${i} type` });
    const t = v.getUint32(p, true); p += 4;
    if (t === 8) str(`key ${i} value`);
    else if (t === 9) {
      fields.push({ at: p, width: 4, what: `key ${i} item type` });
      const it = v.getUint32(p, true); p += 4;
      fields.push({ at: p, width: 8, what: `key ${i} count` });
      const c = Number(v.getBigUint64(p, true)); p += 8;
      for (let j = 0; j < c; j++) if (it === 8) { if (j < 3) str(`key ${i} item ${j}`); else p += 8 + Number(v.getBigUint64(p, true)); } else p += sizes[it];
    } else p += sizes[t];
  }
  for (let i = 0, n = Number(v.getBigUint64(8, true)); i < n; i++) {
    str(`tensor ${i} name`);
    fields.push({ at: p, width: 4, what: `tensor ${i} n_dims` });
    const nd = v.getUint32(p, true); p += 4;
    for (let d = 0; d < nd; d++) { fields.push({ at: p, width: 8, what: `tensor ${i} ne[${d}]` }); p += 8; }
    fields.push({ at: p, width: 4, what: `tensor ${i} type` }); p += 4;
    fields.push({ at: p, width: 8, what: `tensor ${i} offset` }); p += 8;
  }
  return fields;
}

test('a tied GGUF with an IQ4_NL token_embd: one quantized table is both embedding and output (no f32 copy), rows and logits as before', async () => {
  const src = await openModelFile(GGUF_FILE);
  const path = join(tmp, 'tied-iq4nl.gguf');
  try {
    await writeLlamaGguf({ ...src, config: { ...src.config, tiedEmbeddings: true } }, path, { type: 'iq4_nl', iq4nlSearch: 0, name: 'stories260K tied' });
  } finally {
    await src.close();
  }
  const m = await openModelFile(path);
  try {
    const c = m.config;
    assert.equal(c.tiedEmbeddings, true);
    const w = await loadLlamaWeights(m.tensors, c, (name) => (m.quantized.has(name) ? m.readQuantized(name) : undefined));
    assert.ok(!(w.tokenEmbedding instanceof Float32Array), 'the embedding stays quantized');
    assert.equal(w.tokenEmbedding, w.output, 'one table for both');
    // every row as the reader's own f32 dequantization (llama.cpp's rule) gives it, bit for bit
    const f32 = await m.tensors.readF32('model.embed_tokens.weight');
    const row = new Float32Array(c.dim);
    for (let t = 0; t < c.vocabSize; t++) {
      embeddingRow(w.tokenEmbedding, c.dim, t, row);
      assert.deepEqual(row, f32.subarray(t * c.dim, (t + 1) * c.dim), `row ${t}`);
    }
    // the memory estimate counts the table once
    const opts = { backend: 'wasm', seqLen: 256 } as const;
    const shared = estimateModelMemory(c, m.quantized, { ...opts, sharedEmbedding: true });
    assert.equal(estimateModelMemory(c, m.quantized, opts).weights - shared.weights, c.vocabSize * c.dim * 4);
    // the model runs as it did with the f32 copy: the same logits, bit for bit
    const prompt = [1, 403, 407, 261, 378];
    const quantizedEmb = new LlamaModel(c, w, createRefBackend());
    const f32Emb = new LlamaModel(c, { ...w, tokenEmbedding: f32 }, createRefBackend());
    assert.deepEqual(quantizedEmb.forward(prompt, 0, { allLogits: true }), f32Emb.forward(prompt, 0, { allLogits: true }));
    quantizedEmb.dispose();
    f32Emb.dispose();
    // on wasm the model reads the rows back from the backend's copy of the output layer (readRow), and
    // holds no JS copy of the table: again the logits of the f32 embedding, bit for bit
    const wasm = await createBackend('wasm', { threads: 1 });
    try {
      const shared = new LlamaModel(c, w, wasm);
      const own = new LlamaModel(c, { ...w, tokenEmbedding: f32 }, wasm);
      assert.equal((shared as unknown as { tokenEmbedding: unknown }).tokenEmbedding, null, 'no JS copy of the embedding');
      assert.deepEqual(shared.forward(prompt, 0, { allLogits: true }), own.forward(prompt, 0, { allLogits: true }).slice());
      shared.dispose();
      own.dispose();
    } finally {
      wasm.dispose();
    }
  } finally {
    await m.close();
  }
});

test('mutated GGUF files: lying counts, lengths, dims, offsets and types give typed errors, fast, with bounded memory', async () => {
  const seed = await seedFile();
  const fields = await headerFields(seed);
  assert.ok(fields.length > 300, `${fields.length} fields`);
  const r = rng(21);
  const lies = [0xffffffffffffffffn, 1n << 40n, 1n << 31n, 0n];
  let cases = 0;
  const rssBefore = process.memoryUsage().rss;
  const t0 = performance.now();
  for (const f of fields) {
    // Every field of the metadata and of the first tensors; a sample of the other tensors' and strings'.
    const tensor = /^tensor (\d+)/.exec(f.what);
    if ((f.what.includes('item') || (tensor && Number(tensor[1]) >= 4)) && r() > 0.25) continue;
    for (const lie of lies) {
      const b = seed.slice();
      const v = new DataView(b.buffer);
      if (f.width === 8) v.setBigUint64(f.at, lie, true);
      else v.setUint32(f.at, Number(lie & 0xffffffffn), true);
      const start = performance.now();
      const result = await exercise(b);
      const ms = performance.now() - start;
      assert.ok(ms < 3000, `${f.what} = ${lie}: took ${ms.toFixed(0)} ms`);
      // A count or length that lies upward can never pass; zero or small ones may describe a file that is still valid.
      if (lie >= 1n << 31n && result === 'ok' && !/type|n_dims|version/.test(f.what)) assert.fail(`${f.what} = ${lie} was accepted`);
      cases++;
    }
  }
  // Unknown ids: a tensor type and a metadata value type nobody defined.
  const typeField = fields.find((f) => f.what === 'tensor 0 type')!;
  const b = seed.slice();
  new DataView(b.buffer).setUint32(typeField.at, 99, true);
  assert.equal(await exercise(b), 'E_UNSUPPORTED_DTYPE');
  const kvType = fields.find((f) => f.what === 'key 0 type')!;
  new DataView(b.buffer).setUint32(kvType.at, 13, true);
  assert.equal(await exercise(b), 'E_BAD_HEADER');
  // A known type we do not read (Q4_K) fails when read, naming the type.
  await assert.rejects(async () => {
    const k = seed.slice();
    const dv = new DataView(k.buffer);
    const norm = fields.findIndex((f) => f.what.endsWith('type') && f.what.startsWith('tensor') && dv.getUint32(f.at, true) === 2);
    dv.setUint32(fields[norm].at, 12, true); // Q4_K: 144 bytes per 256 values, so the size changes too
    const path = join(tmp, 'q4k.gguf');
    writeFileSync(path, k);
    const g = await openGguf(path);
    try {
      const t = g.tensors.find((x) => x.type.name === 'Q4_K')!;
      ggmlToF32(t.type, await g.readRaw(t.name), t.ne.reduce((a, c) => a * c, 1), t.name);
    } finally {
      await g.close();
    }
  }, (e: unknown) => e instanceof FluteError && (e.code === 'E_UNSUPPORTED_DTYPE' || e.code === 'E_SHAPE' || e.code === 'E_BAD_HEADER' || e.code === 'E_TRUNCATED'));
  const grown = process.memoryUsage().rss - rssBefore;
  assert.ok(grown < 256 * 2 ** 20, `RSS grew by ${(grown / 2 ** 20).toFixed(0)} MiB over ${cases} mutants`);
  assert.ok(performance.now() - t0 < 20_000, `${cases} mutants took ${(performance.now() - t0).toFixed(0)} ms`);
});

test('truncated GGUF files: every cut through the header and into the data is a typed error', async () => {
  const seed = await seedFile();
  const g = await openGguf(memorySource(seed));
  const end = Math.max(...g.tensors.map((t) => t.offset + t.byteLength));
  await g.close();
  const cuts = new Set<number>([0, 1, 3, 4, 7, 8, 15, 16, 23, 24, 25]);
  for (let c = 26; c < g.dataOffset + 64; c += 97) cuts.add(c);
  for (let c = g.dataOffset; c < end; c += 4099) cuts.add(c);
  cuts.add(end - 1);
  for (const cut of cuts) {
    const result = await exercise(seed.slice(0, cut));
    assert.notEqual(result, 'ok', `cut at ${cut} of ${seed.length}`);
    assert.ok(['E_TRUNCATED', 'E_FORMAT', 'E_BAD_HEADER'].includes(result), `cut at ${cut}: ${result}`);
  }
  assert.equal(await exercise(seed.slice(0, end)), 'ok'); // the padding after the last tensor is optional
});

test('model-level checks: a GGUF that is not a llama, or whose config lies, is refused by name', async () => {
  const g = await openGguf(GGUF_FILE);
  const base = ggufCopySpec(g);
  const variant = async (patch: (md: Map<string, GgufValue>) => void, toFile = false) => {
    const md = new Map(g.metadata);
    patch(md);
    return exercise(await serializeGguf({ ...base, metadata: md }), toFile);
  };
  try {
    assert.equal(await variant((md) => md.set('general.architecture', { type: 'string', value: 'gemma2' })), 'E_FORMAT');
    assert.equal(await variant((md) => md.set('llama.attention.head_count', { type: 'u32', value: 0 })), 'E_BAD_HEADER');
    assert.equal(await variant((md) => md.set('llama.block_count', { type: 'u32', value: 9 }), true), 'ok'); // opens; loading finds the layers missing
    await assert.rejects(loadModel(join(tmp, 'mutant.gguf'), { backend: createRefBackend() }), isFlute('E_NOT_FOUND'));
    assert.equal(await variant((md) => md.set('llama.embedding_length', { type: 'string', value: '64' })), 'E_BAD_HEADER');
    assert.equal(await variant((md) => md.set('tokenizer.ggml.model', { type: 'string', value: 'gpt2' })), 'E_FORMAT'); // readTokenizer names it
    assert.equal(await variant((md) => md.delete('llama.context_length')), 'E_BAD_HEADER');
  } finally {
    await g.close();
  }
});
