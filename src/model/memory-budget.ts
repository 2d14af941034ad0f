// Whether a model fits in memory, decided before loading starts: the bytes its weights take once loaded
// (dense tensors as f32, quantized layers packed, scales as f32), the copy the kernel backend makes in
// prepare(), the KV cache and the scratch, against the machine's memory (or a cgroup limit) or a limit
// the caller sets. A model that cannot fit is refused with E_RESOURCE naming the model and the numbers.
// Works in browsers too: there, only a caller's limit applies (no portable way to read the memory).

import { FluteError } from '../errors.js';
import type { QuantizedLayerMeta } from '../format/checkpoint.js';
import { groupsPerRow } from '../quant/linear.js';
import type { LlamaConfig } from './config.js';
import { LAYER_LINEARS, STACKED_PROJECTIONS, llamaTensorSpecs } from './weights.js';

export interface MemoryNeed {
  /** The weights as loadLlamaWeights holds them. */
  readonly weights: number;
  /** What the backend's prepare() adds: ref dequantizes every quantized layer to f32, wasm copies
   * every linear into wasm memory, a GPU backend holds its copy on the device (0 here). */
  readonly backendCopy: number;
  /** LlamaModel's stacked copies of quantized q/k/v and gate/up (quant/linear.ts stackRows), made
   * while the separate layers are still held; 0 on a GPU backend, whose model does not stack. */
  readonly stacked: number;
  readonly kvCache: number;
  readonly scratch: number;
  readonly total: number;
}

export interface MemoryBudgetOptions {
  /** The backend name ('ref', 'wasm', 'webgpu', 'auto'; an instance's name). 'auto' counts as wasm. */
  readonly backend?: string;
  readonly seqLen: number;
  /** Rows per forward call (LlamaModel's default 64). */
  readonly maxBatch?: number;
  /** The limit in bytes; default: the machine's memory, or the cgroup limit when lower. */
  readonly maxMemoryBytes?: number;
  /** The embedding is the quantized output layer's own table (weights.ts embeddingIsQuantizedOutput): no f32 copy. */
  readonly sharedEmbedding?: boolean;
}

/** Name endings of the linear layers LlamaModel stacks (q/k/v, gate/up) when quantized alike. */
const STACKED_SUFFIXES = STACKED_PROJECTIONS.flat().map((key) => '.' + LAYER_LINEARS[key]);

/** The bytes the model needs in memory once loaded on `backend`. */
export function estimateModelMemory(
  config: LlamaConfig,
  quantized: ReadonlyMap<string, QuantizedLayerMeta>,
  opts: Pick<MemoryBudgetOptions, 'backend' | 'seqLen' | 'maxBatch' | 'sharedEmbedding'>,
): MemoryNeed {
  const backend = opts.backend ?? 'auto';
  let weights = 0;
  let backendCopy = 0;
  let stacked = 0;
  const specs = llamaTensorSpecs(config);
  // A tied output layer quantized on its own (--quantize-output) is a layer the config's list lacks.
  const listed = new Set(specs.map((s) => s.name));
  for (const [name, q] of quantized) if (!listed.has(name)) specs.push({ name, shape: q.shape, linear: true });
  for (const spec of specs) {
    if (opts.sharedEmbedding && spec.name === 'model.embed_tokens.weight') continue; // counted as lm_head
    const numel = spec.shape.reduce((a, b) => a * b, 1);
    const q = quantized.get(spec.name);
    if (q) {
      const [n, k] = q.shape;
      const bytes = n * Math.ceil((k * q.bits) / 8) + n * groupsPerRow(k, q.group_size) * 4 + 2 ** q.bits * 4;
      weights += bytes;
      // LlamaModel's stacked copy of q/k/v and gate/up (quant/linear.ts stackRows), held while the
      // separate layers still are; the GPU model does not stack
      if (backend !== 'webgpu' && STACKED_SUFFIXES.some((e) => spec.name.endsWith(e))) stacked += bytes;
      if (backend === 'ref') backendCopy += n * k * 4;
      else if (backend !== 'webgpu') backendCopy += bytes;
    } else {
      weights += numel * 4;
      if (spec.linear && backend !== 'ref' && backend !== 'webgpu') backendCopy += numel * 4;
    }
  }
  const c = config;
  const kvDim = c.nKvHeads * c.headDim;
  const qDim = c.nHeads * c.headDim;
  const batch = opts.maxBatch ?? 64;
  const kvCache = 2 * c.nLayers * opts.seqLen * kvDim * 4;
  const stackedOut = Math.max(qDim + 2 * kvDim, 2 * c.hiddenDim); // a stacked projection's output row
  const scratch = batch * (3 * c.dim + 2 * qDim + 2 * kvDim + 2 * c.hiddenDim + stackedOut + c.vocabSize) * 4 + opts.seqLen * (12 + c.headDim * 4);
  return { weights, backendCopy, stacked, kvCache, scratch, total: weights + backendCopy + stacked + kvCache + scratch };
}

/** The memory limit that applies here, and where it comes from; undefined when none is known (browsers). */
export async function memoryLimit(maxMemoryBytes?: number): Promise<{ bytes: number; source: string } | undefined> {
  if (maxMemoryBytes !== undefined) {
    if (!(maxMemoryBytes > 0)) throw new FluteError('E_OPTION', `max memory: expected a positive number of bytes, got ${maxMemoryBytes}`);
    return { bytes: maxMemoryBytes, source: 'the --max-memory limit' };
  }
  const proc = (globalThis as { process?: { versions?: { node?: string }; constrainedMemory?: () => number | undefined } }).process;
  if (!proc?.versions?.node) return undefined;
  const os = await import('node:os');
  const total = os.totalmem();
  const cgroup = proc.constrainedMemory?.() ?? 0;
  // constrainedMemory() reports a huge number when no cgroup limit is set.
  return cgroup > 0 && cgroup < total ? { bytes: cgroup, source: "this process's memory limit (cgroup)" } : { bytes: total, source: "the machine's memory" };
}

/** A byte count in the largest binary unit that keeps it at least 1 (so small models do not read "0.00 GiB"). */
const gib = (b: number): string => {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (i < units.length - 1 && b >= 1024) (b /= 1024), i++;
  return i === 0 ? `${b} bytes` : `${b.toFixed(2)} ${units[i]}`;
};

/** Throws E_RESOURCE when the model cannot fit; returns the estimate otherwise. */
export async function checkMemoryBudget(
  model: string,
  config: LlamaConfig,
  quantized: ReadonlyMap<string, QuantizedLayerMeta>,
  opts: MemoryBudgetOptions,
): Promise<MemoryNeed> {
  const need = estimateModelMemory(config, quantized, opts);
  const limit = await memoryLimit(opts.maxMemoryBytes);
  if (limit && need.total > limit.bytes) {
    throw new FluteError(
      'E_RESOURCE',
      `${model}: needs about ${gib(need.total)} of memory (weights ${gib(need.weights)}, ${opts.backend ?? 'auto'} backend copy ${gib(need.backendCopy)}, ` +
        (need.stacked > 0 ? `stacked q/k/v and gate/up ${gib(need.stacked)}, ` : '') +
        `KV cache ${gib(need.kvCache)} for ${opts.seqLen} positions, scratch ${gib(need.scratch)}), more than ${limit.source} of ${gib(limit.bytes)}; ` +
        `use a smaller model, fewer bits, or a shorter context (flute chat --context)`,
    );
  }
  return need;
}

/** Parses a size such as "512M", "8G", "1.5GiB" or a plain number of bytes (for --max-memory). */
export function parseMemorySize(s: string, what = '--max-memory'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$/i.exec(s);
  if (!m) throw new FluteError('E_OPTION', `${what}: expected a size like 512M, 8G or 1.5GiB, got ${JSON.stringify(s)}`);
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const bytes = Math.round(Number(m[1]) * scale);
  if (!(bytes > 0)) throw new FluteError('E_OPTION', `${what}: expected a positive size, got ${JSON.stringify(s)}`);
  return bytes;
}
