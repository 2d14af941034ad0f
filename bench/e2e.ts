// End-to-end benchmark: prefill and decode tokens/s and peak memory of whole models, dense f32 against
// LUT-quantized W4/W3/W2 at g = 128, on a synthetic model with LLaMA-3.2-1B's shapes (random weights made
// and quantized in memory: speed does not depend on the values) and on the bundled stories260K. Each
// configuration runs in a fresh child process, so its peak RSS is its own. On WebGPU the whole forward
// pass runs on the device (GpuLlamaModel; dense weights in the backend's precision, f16 with
// shader-f16, else f32) and peak RSS is host memory only. Printing is the CLI's job.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FluteError } from '../src/errors.js';
import { openLlama2c } from '../src/format/llama2c.js';
import type { TensorReader } from '../src/format/tensors.js';
import { createBackend, createModelBackend, type ModelBackendName } from '../src/kernels/registry.js';
import type { KernelBackend, PreparedLinear } from '../src/kernels/types.js';
import type { LlamaConfig } from '../src/model/config.js';
import type { CausalModel } from '../src/model/generate.js';
import { LlamaModel } from '../src/model/llama.js';
import { GpuLlamaModel } from '../src/model/llama-gpu.js';
import { argmax } from '../src/model/sampler.js';
import { loadLlamaWeights } from '../src/model/weights.js';
import type { Linear } from '../src/quant/linear.js';
import { quantizeRtn } from '../src/quant/rtn.js';
import { syntheticConfig, syntheticReader } from './synthetic.js';

export const E2E_MODELS = ['llama-3.2-1b-shape', 'stories260K'] as const;
export type E2eModel = (typeof E2E_MODELS)[number];
export const E2E_WEIGHTS = ['f32', 'W4G128', 'W3G128', 'W2G128'] as const;
export type E2eWeights = (typeof E2E_WEIGHTS)[number];

export interface E2eCase {
  readonly model: E2eModel;
  readonly weights: E2eWeights;
  readonly backend: ModelBackendName | 'auto'; // auto: WebGPU on a real GPU, else wasm
  readonly threads?: number;
  readonly promptTokens: number; // prefill length
  readonly decodeTokens: number; // tokens decoded one at a time after the prompt
  /** Keep the output layer dense f32 in quantized models (default: quantized like the other linears). */
  readonly denseOutput?: boolean;
  /** Path of the bundled model, for 'stories260K'. */
  readonly storiesPath?: string;
}

/** One row of `flute bench e2e --json`. */
export interface E2eRow {
  readonly model: E2eModel;
  readonly backend: string; // what ran (auto resolved), e.g. "wasm"
  readonly weights: E2eWeights;
  readonly bits: number | null; // null when dense
  readonly prefillTokensPerSecond: number;
  readonly decodeTokensPerSecond: number; // from the median time of one decoded token
  readonly decodeMeanTokensPerSecond: number; // decoded tokens / total decode time
  readonly peakMemoryBytes: number; // the child process's peak RSS (process.resourceUsage().maxRSS)
  readonly variant: string; // the backend's own description
  readonly threads: number | null; // as asked (null: the backend's default)
  readonly promptTokens: number;
  readonly decodeTokens: number;
  readonly weightBytes: number; // bytes the backend holds for the linear layers (prepared)
  readonly buildSeconds: number; // making (and quantizing) the weights and preparing them
  readonly outputLayer: Linear['kind']; // 'dense' or 'quantized'
  /** Arithmetic of the linear layers: WebGPU runs dense rows in f16 where the adapter has shader-f16. */
  readonly precision?: 'f32' | 'f16';
}

/** LLaMA-3.2-1B's shapes (config.json of meta-llama/Llama-3.2-1B): 1.24 B parameters, tied embeddings. */
export const LLAMA32_1B_SHAPE: LlamaConfig = syntheticConfig({
  dim: 2048, hiddenDim: 8192, nLayers: 16, nHeads: 32, nKvHeads: 8, vocabSize: 128256, headDim: 64,
  seqLen: 131072, normEps: 1e-5, ropeTheta: 500000, ropeLayout: 'half', tiedEmbeddings: true,
  ropeScaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
});

export const GROUP_SIZE = 128;
const bitsOf = (w: E2eWeights): number | null => (w === 'f32' ? null : Number(w[1]));

// ---------------------------------------------------------------------------------------------
// A backend over several wasm memories: wasm32 caps one memory at 4 GiB, less than the dense f32 1B
// model's 4.9 GB of linear weights. Layers go to the first backend with room; each matmul runs on the
// backend that prepared its layer. (Bench-only: the runtime proper would do this inside the backend.)

export function spanningBackend(parts: readonly KernelBackend[]): KernelBackend {
  if (parts.length === 1) return parts[0];
  const owner = new WeakMap<PreparedLinear, KernelBackend>();
  let current = 0;
  return {
    name: parts[0].name,
    info: () => ({ name: parts[0].name, variant: `${parts[0].info().variant}; weights over ${parts.length} wasm memories (4 GiB each at most)` }),
    unsupported: (layer) => parts[0].unsupported(layer),
    prepare(layer) {
      for (;;) {
        try {
          const p = parts[current].prepare(layer);
          owner.set(p, parts[current]);
          return p;
        } catch (e) {
          if (!(e instanceof FluteError && e.code === 'E_BACKEND') || current + 1 >= parts.length) throw e;
          current++; // this memory is full: the next one
        }
      }
    },
    matmul: (p, x, m, out, opts) => (owner.get(p) ?? parts[0]).matmul(p, x, m, out, opts),
    release: (p) => (owner.get(p) ?? parts[0]).release(p),
    dispose: () => parts.forEach((b) => b.dispose()),
  };
}

// ---------------------------------------------------------------------------------------------
// One configuration, in this process

async function openSource(c: E2eCase): Promise<{ reader: TensorReader; config: LlamaConfig }> {
  if (c.model === 'llama-3.2-1b-shape') return { reader: syntheticReader(LLAMA32_1B_SHAPE), config: LLAMA32_1B_SHAPE };
  if (!c.storiesPath) throw new FluteError('E_OPTION', 'e2e: the stories260K case needs storiesPath');
  const r = await openLlama2c(c.storiesPath);
  return { reader: r, config: r.config };
}

/** Builds the model (weights made, quantized and prepared in memory), then times prefill and decode. */
export async function runE2eCase(c: E2eCase): Promise<E2eRow> {
  const t0 = performance.now();
  const { reader, config } = await openSource(c);
  const bits = bitsOf(c.weights);
  const quantizeOutput = bits !== null && !c.denseOutput;
  // Every linear layer RTN-quantized to NF<bits> with f16 scales, one tensor at a time (the f32 copy is
  // dropped as soon as it is quantized). The tied output reads the embedding, which itself stays dense.
  const hook = bits === null ? undefined : async (name: string): Promise<Linear | undefined> => {
    if (name === 'lm_head.weight' && !quantizeOutput) return undefined;
    const from = name === 'lm_head.weight' && config.tiedEmbeddings ? 'model.embed_tokens.weight' : name;
    const [n, k] = reader.info(from).shape as [number, number];
    return quantizeRtn(await reader.readF32(from), n, k, { bits, groupSize: GROUP_SIZE, tableKind: 'nf' }, from).layer;
  };
  const weights = await loadLlamaWeights(reader, config, hook);
  await reader.close();

  // wasm: as many memories as the linear weights need (4 GiB each, some room for scratch).
  const linears = [...weights.layers.flatMap((l) => [l.wq, l.wk, l.wv, l.wo, l.w1, l.w2, l.w3]), weights.output];
  const linearBytes = linears.reduce((a, l) => a + (l.kind === 'dense' ? l.weight.byteLength : l.packed.byteLength + l.scales.byteLength), 0);
  const choice = await createModelBackend(c.backend, { threads: c.threads });
  const seqLen = c.promptTokens + c.decodeTokens + 1; // a KV cache for this run only
  let model: CausalModel;
  let backend: { info(): { name: string; variant: string }; dispose(): void };
  let precision: 'f32' | 'f16' = 'f32';
  if (choice.kind === 'gpu') {
    backend = choice.backend;
    precision = choice.backend.precision;
    model = await GpuLlamaModel.create(config, weights, choice.backend, { seqLen, maxBatch: 64 });
  } else {
    const parts = [choice.backend];
    if (parts[0].name === 'wasm') while (parts.length * 3.5 * 2 ** 30 < linearBytes) parts.push(await createBackend('wasm', { threads: c.threads }));
    const cpu = spanningBackend(parts);
    backend = cpu;
    model = new LlamaModel(config, weights, cpu, { seqLen, maxBatch: 64 });
  }
  const buildSeconds = (performance.now() - t0) / 1000;
  // a CPU model's logits are used as they are (no microtask per token), a GPU model's awaited
  const run = async (tokens: number[], pos: number): Promise<Float32Array> => {
    const r = model.forward(tokens, pos);
    return r instanceof Float32Array ? r : await r;
  };

  // A fixed prompt of ids spread over the vocabulary; a warm-up forward lets V8 and the kernels settle.
  const prompt = Array.from({ length: c.promptTokens }, (_, i) => (i * 7919 + 13) % config.vocabSize);
  await run(prompt.slice(0, Math.min(8, prompt.length)), 0);
  await run([prompt[0]], 0);
  model.reset();
  const p0 = performance.now();
  let logits = await run(prompt, 0);
  const prefillMs = performance.now() - p0;
  // Decode: greedy, one token per forward (sampling included, as a generation loop would). The rate is
  // from the median token time: robust to other work on a shared machine stalling a few tokens.
  const tokenMs: number[] = []; // [decodeTokens]
  for (let i = 0; i < c.decodeTokens; i++) {
    const d0 = performance.now();
    logits = await run([argmax(logits)], prompt.length + i);
    tokenMs.push(performance.now() - d0);
  }
  const decodeMs = tokenMs.reduce((a, b) => a + b, 0);
  const median = [...tokenMs].sort((a, b) => a - b)[tokenMs.length >> 1];

  const info = backend.info();
  model.dispose();
  backend.dispose();
  return {
    model: c.model, backend: info.name, weights: c.weights, bits,
    prefillTokensPerSecond: (c.promptTokens / prefillMs) * 1000,
    decodeTokensPerSecond: 1000 / median,
    decodeMeanTokensPerSecond: (c.decodeTokens / decodeMs) * 1000,
    peakMemoryBytes: process.resourceUsage().maxRSS * 1024,
    variant: info.variant, threads: c.threads ?? null, promptTokens: c.promptTokens, decodeTokens: c.decodeTokens,
    weightBytes: linearBytes, buildSeconds, outputLayer: weights.output.kind, precision,
  };
}

// ---------------------------------------------------------------------------------------------
// One configuration per child process (honest peak memory), and the child's entry point

const CASE_FLAG = '--flute-e2e-case';
const thisFile = fileURLToPath(import.meta.url);

/**
 * Runs `c` in a fresh Node process (this module as its entry, with this process's loader flags, so it
 * works from the TypeScript sources under tsx and from dist/), and returns its row.
 */
export function runE2eIsolated(c: E2eCase, log?: (line: string) => void): Promise<E2eRow> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, thisFile, CASE_FLAG, JSON.stringify(c)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      for (const line of d.toString().split('\n')) if (line.trim()) log?.(`  ${line}`);
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code === 0 && last.startsWith('{')) return resolve(JSON.parse(last) as E2eRow);
      reject(new FluteError('E_BACKEND', `e2e ${c.model} ${c.weights}: the benchmark process failed (${signal ?? `exit ${code}`}): ${err.trim().split('\n').slice(-3).join(' | ') || 'no output'}`));
    });
  });
}

if (process.argv[1] === thisFile && process.argv[2] === CASE_FLAG) {
  runE2eCase(JSON.parse(process.argv[3]) as E2eCase).then(
    (row) => {
      process.stdout.write(JSON.stringify(row) + '\n');
      process.exit(0); // wasm worker threads would otherwise keep the process alive
    },
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}

// ---------------------------------------------------------------------------------------------
// The table

const mib = (b: number) => (b >= 10 * 2 ** 20 ? `${(b / 2 ** 20).toFixed(0)} MiB` : `${(b / 2 ** 10).toFixed(0)} KiB`);

/** A Markdown table of rows, with the speed-up of each quantized row over the same model's dense one. */
export function formatE2eTable(rows: readonly E2eRow[]): string {
  const lines = [
    '| model | backend | weights | bits | prefill tok/s | decode tok/s | decode vs dense | peak memory | linear weights |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    const dense = rows.find((d) => d.model === r.model && d.backend === r.backend && d.bits === null);
    const speedup = dense && r.bits !== null ? `${(r.decodeTokensPerSecond / dense.decodeTokensPerSecond).toFixed(2)}x` : r.bits === null ? '1.00x' : '-';
    const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
    const weights = r.bits === null && r.precision === 'f16' ? 'f16' : r.weights; // dense rows in the arithmetic they ran
    lines.push(`| ${r.model} | ${r.backend} | ${weights} | ${r.bits ?? '-'} | ${fmt(r.prefillTokensPerSecond)} | ${fmt(r.decodeTokensPerSecond)} | ${speedup} | ${mib(r.peakMemoryBytes)} | ${mib(r.weightBytes)} |`);
  }
  return lines.join('\n');
}
