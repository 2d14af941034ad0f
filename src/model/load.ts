// Loads a model file (a path; bytes or a URL in browsers) into a runnable model with its tokenizer: a
// LlamaModel on a CPU kernel backend, or a GpuLlamaModel on WebGPU. The file is read tensor by tensor;
// quantized layers go to the backend as they are, dense ones as f32. The tokenizer is the model's
// Hugging Face one when it has one (tokenizer.json), else llama2.c's.

import { fetchBytes, memorySource } from '../format/source.js';
import { createBackend, createModelBackend, type BackendName, type ModelBackendChoice, type ModelBackendName, type WasmOnlyOptions } from '../kernels/registry.js';
import type { BackendInfo, KernelBackend } from '../kernels/types.js';
import type { GpuDeviceLostError } from '../kernels/webgpu/device-lost.js';
import type { GpuKernelBackend } from '../kernels/webgpu/types.js';
import type { ComputeType } from '../quant/linear.js';
import type { Tokenizer } from '../tokenizer/types.js';
import type { CausalModel } from './generate.js';
import { LlamaModel } from './llama.js';
import { FallbackModel, GpuLlamaModel } from './llama-gpu.js';
import { openModelFile, openModelSource, readModelTokenizer, type OpenedModel } from './open.js';
import { checkMemoryBudget } from './memory-budget.js';
import { embeddingIsQuantizedOutput, loadLlamaWeights } from './weights.js';

export interface LoadModelOptions {
  /**
   * A backend instance, or a name to create one (default 'auto': WebGPU on a real GPU, else
   * WebAssembly; see createModelBackend). A GpuKernelBackend runs the whole forward pass on the GPU.
   */
  readonly backend?: KernelBackend | GpuKernelBackend | ModelBackendName | 'auto';
  readonly threads?: number;
  /** Options of the wasm backend alone (relaxed SIMD, activation path, memory), when this call creates one. */
  readonly wasm?: WasmOnlyOptions;
  /** A llama2.c tokenizer file, when the model does not carry or sit beside one. */
  readonly tokenizer?: string;
  readonly maxBatch?: number;
  /** Context length (KV cache positions); default min(config.seqLen, maxContext). */
  readonly seqLen?: number;
  /** Cap on the default context when seqLen is not given (default DEFAULT_MAX_CONTEXT). */
  readonly maxContext?: number;
  readonly computeType?: ComputeType;
  /** WebGPU only: progress of the weights' upload, tensor by tensor. */
  readonly onUploadProgress?: (done: number, total: number, tensor: string) => void;
  /** WebGPU only: the CPU backend that takes over if the device is lost (default 'wasm'; false: none). */
  readonly gpuFallback?: BackendName | 'auto' | false;
  /** WebGPU only: told when a lost device moved the model to the CPU (the CLI prints it). */
  readonly onFallback?: (message: string) => void;
  /** Refuse (E_RESOURCE) a model needing more bytes than this; default the machine's memory (memory-budget.ts). */
  readonly maxMemoryBytes?: number;
}

/** M is LlamaModel (synchronous forward) when a CPU backend was asked for, else any CausalModel. */
export interface LoadedModel<M extends CausalModel = CausalModel> {
  readonly model: M;
  readonly tokenizer: Tokenizer;
  /** The backend running the model now (the CPU one after a device-lost fallback). */
  readonly backend: { readonly name: string; info(): BackendInfo };
  /** Which backend was taken and why, e.g. "auto: WebAssembly, since no WebGPU adapter (...)". */
  readonly backendReason: string;
  readonly file: string;
  readonly format: OpenedModel['format'];
  /** True when this call created the backend, so dispose() frees it too. */
  dispose(): void;
}

/**
 * The default cap on the context: LLaMA 3.1's 131072 positions would take a KV cache of 8.6 GB even for the
 * 1B model (16 layers x 131072 x 512 x 2 x f32), allocated up front. Pass seqLen for more.
 */
export const DEFAULT_MAX_CONTEXT = 4096;

/** CPU backends (by name or instance) give a LlamaModel, whose forward() is synchronous. */
export function loadModel(path: string, opts: LoadModelOptions & { readonly backend: KernelBackend | BackendName }): Promise<LoadedModel<LlamaModel>>;
export function loadModel(path: string, opts?: LoadModelOptions): Promise<LoadedModel>;
export async function loadModel(path: string, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  return loadOpenedModel(await openModelFile(path, { tokenizer: opts.tokenizer }), opts, path);
}

export interface LoadModelBytesOptions extends Omit<LoadModelOptions, 'tokenizer'> {
  /** The file's name or URL, for messages and LoadedModel.file (default "<memory>"). */
  readonly name?: string;
  /** A llama2.c tokenizer file's bytes: required for llama2.c checkpoints (they carry none); wins over a model's own. */
  readonly tokenizer?: Uint8Array;
}

/** Loads a model file already in memory (a download, a file picked in a browser); its first bytes tell the container. */
export async function loadModelFromBytes(bytes: Uint8Array, opts: LoadModelBytesOptions = {}): Promise<LoadedModel> {
  const { name = '<memory>', tokenizer, ...rest } = opts;
  const src = memorySource(bytes, name);
  const readTokenizer = tokenizer && (async () => ({ bytes: tokenizer, file: `${name} (tokenizer given with it)` }));
  return loadOpenedModel(await openModelSource(src, { tokenizer: readTokenizer }), rest, name);
}

export interface LoadModelUrlOptions extends Omit<LoadModelBytesOptions, 'tokenizer' | 'name'> {
  /** A llama2.c tokenizer to download with the model (required for llama2.c checkpoints). */
  readonly tokenizerUrl?: string;
  /** Download progress over the model and tokenizer together; `total` is 0 while a size is unknown. */
  readonly onProgress?: (loaded: number, total: number) => void;
  readonly signal?: AbortSignal;
}

/**
 * Downloads a model and, when given, its tokenizer side by side, with one progress over both
 * (`total` 0 while either size is unknown).
 */
export async function fetchModelFiles(
  url: string,
  opts: Pick<LoadModelUrlOptions, 'tokenizerUrl' | 'onProgress' | 'signal'> = {},
): Promise<{ bytes: Uint8Array; tokenizer?: Uint8Array }> {
  const { tokenizerUrl, onProgress, signal } = opts;
  const done = [0, 0];
  const totals = [0, 0];
  const report = (i: number) => (loaded: number, total: number) => {
    done[i] = loaded;
    totals[i] = total;
    onProgress?.(done[0] + done[1], totals[0] && (!tokenizerUrl || totals[1]) ? totals[0] + totals[1] : 0);
  };
  const [bytes, tokenizer] = await Promise.all([
    fetchBytes(url, { onProgress: report(0), signal }),
    tokenizerUrl ? fetchBytes(tokenizerUrl, { onProgress: report(1), signal }) : undefined,
  ]);
  return { bytes, tokenizer };
}

/** Downloads a model (and its tokenizer) with fetch, then loads it as loadModelFromBytes does. */
export async function loadModelFromUrl(url: string, opts: LoadModelUrlOptions = {}): Promise<LoadedModel> {
  const { tokenizerUrl, onProgress, signal, ...rest } = opts;
  const { bytes, tokenizer } = await fetchModelFiles(url, { tokenizerUrl, onProgress, signal });
  return loadModelFromBytes(bytes, { ...rest, name: url, tokenizer });
}

/** Builds a runnable model from an opened one (closed when done: the weights are copied out of it). */
export async function loadOpenedModel(src: OpenedModel, opts: LoadModelOptions = {}, file: string = src.file): Promise<LoadedModel> {
  try {
    const seqLen = opts.seqLen ?? Math.min(src.config.seqLen, opts.maxContext ?? DEFAULT_MAX_CONTEXT);
    await checkMemoryBudget(file, src.config, src.quantized, {
      backend: typeof opts.backend === 'object' ? opts.backend.name : opts.backend,
      seqLen,
      maxBatch: opts.maxBatch,
      maxMemoryBytes: opts.maxMemoryBytes,
      sharedEmbedding: embeddingIsQuantizedOutput(src.config, src.tensors, src.quantized.has('lm_head.weight')),
    });
    const tokenizer = await readModelTokenizer(src, { preferLlama2c: opts.tokenizer !== undefined });
    const weights = await loadLlamaWeights(src.tensors, src.config, (name) =>
      src.quantized.has(name) ? src.readQuantized(name) : undefined,
    );
    const owned = typeof opts.backend !== 'object';
    const cpuOpts = { threads: opts.threads, wasm: opts.wasm };
    let choice: ModelBackendChoice = typeof opts.backend !== 'object'
      ? await createModelBackend(opts.backend ?? 'auto', cpuOpts)
      : opts.backend.name === 'webgpu'
        ? { kind: 'gpu', backend: opts.backend as GpuKernelBackend, reason: 'the caller\'s WebGPU backend' }
        : { kind: 'cpu', backend: opts.backend as KernelBackend, reason: `the caller's ${opts.backend.name} backend` };
    const modelOpts = { maxBatch: opts.maxBatch, seqLen, computeType: opts.computeType };
    const backends: { name: string; info(): BackendInfo; dispose(): void }[] = owned ? [choice.backend] : [];
    let current: { name: string; info(): BackendInfo } = choice.backend; // what runs the model now
    let model: CausalModel;
    if (choice.kind === 'gpu') {
      try {
        model = await GpuLlamaModel.create(src.config, weights, choice.backend, { ...modelOpts, onProgress: opts.onUploadProgress });
      } catch (e) {
        // auto may still run the model on the CPU; an explicit --backend webgpu reports the failure
        if (opts.backend !== undefined && opts.backend !== 'auto') throw e;
        choice.backend.dispose();
        backends.length = 0;
        const cpu = await createBackend('auto', cpuOpts);
        backends.push(cpu);
        choice = { kind: 'cpu', backend: cpu, reason: `auto: ${cpu.name}, since the model failed to build on WebGPU (${(e as Error).message})` };
        current = cpu;
        model = new LlamaModel(src.config, weights, cpu, modelOpts);
      }
      const fallback = opts.gpuFallback ?? 'wasm';
      if (choice.kind === 'gpu' && fallback !== false) {
        const gpuName = choice.backend.info().variant.split(';')[0];
        // Only this block's closure keeps the weights (for the CPU model after a device loss): were
        // `weights` itself captured, the returned object's closures would keep every layer's JS copy
        // alive in a CPU-only model too (V8 shares one context among a function's closures).
        const kept = weights;
        model = new FallbackModel(model, {
          create: async () => {
            const cpu = await createBackend(fallback, cpuOpts);
            backends.push(cpu);
            current = cpu;
            return new LlamaModel(src.config, kept, cpu, modelOpts);
          },
          onFallback: (cause: GpuDeviceLostError) => opts.onFallback?.(`${cause.message}; continuing on ${current.name} (${current.info().variant.split(';')[0]}) after ${gpuName}, replaying the context`),
        });
      }
    } else {
      model = new LlamaModel(src.config, weights, choice.backend, modelOpts);
    }
    return {
      model, tokenizer, file, format: src.format, backendReason: choice.reason,
      get backend() {
        return current;
      },
      dispose() {
        model.dispose();
        for (const b of backends) b.dispose();
      },
    };
  } finally {
    await src.close();
  }
}
