// The memory check before loading (src/model/memory-budget.ts): the estimate covers what loading really
// holds, a model that cannot fit is refused with E_RESOURCE before any tensor is read, and the limit can
// be the machine's memory or one the caller sets (maxMemoryBytes, the CLI's --max-memory).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { FluteError } from '../src/errors.js';
import { loadModel, loadOpenedModel } from '../src/model/load.js';
import { checkMemoryBudget, estimateModelMemory, memoryLimit, parseMemorySize } from '../src/model/memory-budget.js';
import { openModelFile } from '../src/model/open.js';
import { loadLlamaWeights } from '../src/model/weights.js';
import type { LlamaConfig } from '../src/model/config.js';
import { quantizeModel } from '../src/quant/quantize-model.js';
import { repoFile } from './hf-fixtures.js';

const MODEL = repoFile('models/stories260K/stories260K.bin');
const isResource = (re: RegExp) => (e: unknown) => e instanceof FluteError && e.code === 'E_RESOURCE' && re.test(e.message);

/**
 * Bytes of every distinct typed array reachable from `v`: a view seen twice (a tied embedding) counts
 * once, and views sharing a buffer (loadLlamaWeights' slabs) each count.
 */
function heldBytes(v: unknown, seen = new Map<ArrayBufferLike, Set<number>>()): number {
  if (ArrayBuffer.isView(v)) {
    const at = seen.get(v.buffer) ?? seen.set(v.buffer, new Set()).get(v.buffer)!;
    if (at.has(v.byteOffset)) return 0;
    at.add(v.byteOffset);
    return v.byteLength;
  }
  if (v && typeof v === 'object') return Object.values(v).reduce((a: number, x) => a + heldBytes(x, seen), 0);
  return 0;
}

test('memory estimate: exact for a dense model, never below what loading holds for a quantized one', async (t) => {
  const dense = await openModelFile(MODEL);
  try {
    const need = estimateModelMemory(dense.config, dense.quantized, { backend: 'wasm', seqLen: 512 });
    const c = dense.config;
    // The file is the header, the f32 weights and the two RoPE tables [seqLen, headDim/2] (tied: no classifier).
    assert.equal(need.weights, statSync(MODEL).size - 28 - 2 * c.seqLen * (c.headDim / 2) * 4);
    const w = await loadLlamaWeights(dense.tensors, c);
    assert.equal(heldBytes(w), need.weights);
    assert.equal(need.kvCache, 2 * c.nLayers * 512 * c.nKvHeads * c.headDim * 4);
    assert.equal(need.total, need.weights + need.backendCopy + need.kvCache + need.scratch);
  } finally {
    await dense.close();
  }

  const dir = mkdtempSync(join(tmpdir(), 'flute-membudget-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const src = await openModelFile(MODEL);
  await quantizeModel(src, join(dir, 'q.safetensors'), { bits: 3, groupSize: 48, tableKind: 'nf', quantizeOutput: true });
  await src.close();
  const q = await openModelFile(join(dir, 'q.safetensors'));
  try {
    const w = await loadLlamaWeights(q.tensors, q.config, (name) => (q.quantized.has(name) ? q.readQuantized(name) : undefined));
    const held = heldBytes(w);
    const est = estimateModelMemory(q.config, q.quantized, { backend: 'wasm', seqLen: 256 });
    assert.ok(est.weights >= held && est.weights < held * 1.05, `estimate ${est.weights} vs held ${held}`);
    // LlamaModel stacks the quantized q/k/v and gate/up rows: a copy of exactly those layers' bytes
    const heldStacked = heldBytes(w.layers.map((l) => [l.wq, l.wk, l.wv, l.w1, l.w3]));
    assert.ok(est.stacked >= heldStacked && est.stacked < heldStacked * 1.05, `stacked estimate ${est.stacked} vs held ${heldStacked}`);
    assert.equal(est.total, est.weights + est.backendCopy + est.stacked + est.kvCache + est.scratch);
    assert.equal(estimateModelMemory(q.config, q.quantized, { backend: 'webgpu', seqLen: 256 }).stacked, 0);
    // ref dequantizes every quantized layer to f32: its copy is N*K*4 per layer.
    const ref = estimateModelMemory(q.config, q.quantized, { backend: 'ref', seqLen: 256 });
    const dequant = [...q.quantized.values()].reduce((a, m) => a + m.shape[0] * m.shape[1] * 4, 0);
    assert.equal(ref.backendCopy, dequant);
  } finally {
    await q.close();
  }
});

const HUGE: LlamaConfig = {
  dim: 8192, hiddenDim: 28672, nLayers: 80, nHeads: 64, nKvHeads: 8, headDim: 128, vocabSize: 128256, seqLen: 8192,
  normEps: 1e-5, ropeTheta: 500000, ropeLayout: 'half', tiedEmbeddings: false,
};

test('a model that cannot fit is refused with E_RESOURCE naming the model and the numbers', async () => {
  // LLaMA-3-70B's shapes, dense: ~280 GB of f32 weights.
  await assert.rejects(checkMemoryBudget('llama-70b.safetensors', HUGE, new Map(), { seqLen: 4096, maxMemoryBytes: 64 * 2 ** 30 }),
    isResource(/^llama-70b\.safetensors: needs about \d+\.\d+ GiB .*weights 262\.\d+ GiB.*KV cache 2\.50 GiB for 4096 positions.*more than the --max-memory limit of 64\.00 GiB/));
  // Against the machine's own memory (or cgroup limit): 4x the layers of a 70B model fits nowhere today.
  const limit = await memoryLimit();
  assert.ok(limit && limit.bytes > 0);
  await assert.rejects(checkMemoryBudget('huge.bin', { ...HUGE, nLayers: 320 }, new Map(), { seqLen: 4096 }), isResource(/more than (the machine's memory|this process's memory limit)/));
  // The same model fits a large enough limit.
  const need = await checkMemoryBudget('llama-70b.safetensors', HUGE, new Map(), { seqLen: 4096, maxMemoryBytes: 2 ** 40 });
  assert.ok(need.total > 64 * 2 ** 30 && need.total < 2 ** 40);
});

test('loadModel checks the budget before reading any tensor; maxMemoryBytes sets the limit', async () => {
  await assert.rejects(loadModel(MODEL, { backend: 'ref', maxMemoryBytes: 2 ** 20 }), isResource(/stories260K\.bin: needs about .* more than the --max-memory limit of 1\.00 MiB/));
  // Refused before loading: a model whose every read fails still gets E_RESOURCE.
  const opened = await openModelFile(MODEL);
  let reads = 0;
  const poisoned = { ...opened, tensors: { ...opened.tensors, readF32: async () => { reads++; throw new Error('read'); }, readRaw: async () => { reads++; throw new Error('read'); } } };
  await assert.rejects(loadOpenedModel(poisoned, { backend: 'ref', maxMemoryBytes: 2 ** 20 }), isResource(/needs about/));
  assert.equal(reads, 0);
  const ok = await loadModel(MODEL, { backend: 'ref', maxMemoryBytes: 2 ** 30 });
  ok.dispose();
});

test('--max-memory sizes parse; bad ones are E_OPTION', () => {
  assert.equal(parseMemorySize('512M'), 512 * 2 ** 20);
  assert.equal(parseMemorySize('8G'), 8 * 2 ** 30);
  assert.equal(parseMemorySize('1.5GiB'), 1.5 * 2 ** 30);
  assert.equal(parseMemorySize('4096'), 4096);
  for (const bad of ['', 'lots', '-1G', '0', '5X']) assert.throws(() => parseMemorySize(bad), (e: unknown) => e instanceof FluteError && e.code === 'E_OPTION');
});
