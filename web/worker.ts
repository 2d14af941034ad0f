// The engine, in a dedicated worker so the page stays responsive while a forward pass runs (and so the
// wasm thread pool may block in Atomics.wait, which a window may not). Answers messages.ts requests.
/// <reference lib="webworker" />

import {
  baseName, createBackend, createGenerationStats, fetchModelFiles, FluteError, generate, loadModelFromBytes, memorySource,
  openModelSource, quantizeModelToBytes, type KernelBackend, type LoadedModel, type PreparedLinear,
} from '../src/browser.js';
import { probeCapabilities, type Capabilities } from './capabilities.js';
import type { BackendChoice, GenerateRequest, ModelChoice, ModelInfo, QuantizeChoice, Reply, Request } from './messages.js';

const scope = self as unknown as DedicatedWorkerGlobalScope;

let current: { loaded: LoadedModel } | null = null;
let lastCheckpoint: Uint8Array | null = null; // the checkpoint quantized in the tab, for download
const running = new Map<number, AbortController>();

function post(r: Reply): void {
  scope.postMessage(r);
}

scope.onmessage = (e: MessageEvent<Request>) => void handle(e.data);

async function handle(req: Request): Promise<void> {
  try {
    switch (req.type) {
      case 'capabilities':
        post({ type: 'capabilities', id: req.id, capabilities: await probeCapabilities() });
        break;
      case 'load':
        post({ type: 'loaded', id: req.id, info: await load(req.id, req.model, req.backend, req.quantize) });
        break;
      case 'generate':
        await run(req.id, req.request);
        break;
      case 'abort':
        running.get(req.target)?.abort();
        break;
      case 'checkpoint':
        post({ type: 'checkpoint', id: req.id, bytes: lastCheckpoint });
        break;
    }
  } catch (e) {
    const code = e instanceof FluteError ? e.code : 'E_INTERNAL';
    post({ type: 'error', id: req.id, code, message: e instanceof Error ? e.message : String(e) });
  }
}

// ---------------------------------------------------------------------------------------------
// Loading: bytes -> (quantize) -> backend -> model

async function readChoice(id: number, m: ModelChoice): Promise<{ name: string; bytes: Uint8Array; tokenizer?: Uint8Array }> {
  if (m.kind === 'files') {
    const [bytes, tokenizer] = await Promise.all([m.model.arrayBuffer(), m.tokenizer?.arrayBuffer()]);
    return { name: m.model.name, bytes: new Uint8Array(bytes), tokenizer: tokenizer && new Uint8Array(tokenizer) };
  }
  const { bytes, tokenizer } = await fetchModelFiles(m.url, {
    tokenizerUrl: m.tokenizerUrl,
    onProgress: (done, total) => post({ type: 'progress', id, phase: 'download', done, total, label: `downloading ${m.url}` }),
  });
  return { name: baseName(m.url), bytes, tokenizer };
}

/** Quantizes a dense model into an in-memory checkpoint; a model that is already quantized passes through. */
async function quantizeInTab(id: number, file: { name: string; bytes: Uint8Array; tokenizer?: Uint8Array }, q: QuantizeChoice): Promise<{ bytes: Uint8Array; tokenizer?: Uint8Array; note: string | null }> {
  const tok = file.tokenizer;
  const src = await openModelSource(memorySource(file.bytes, file.name), { tokenizer: tok && (async () => ({ bytes: tok, file: 'tokenizer' })) });
  try {
    if (src.quantized.size > 0) return { bytes: file.bytes, tokenizer: tok, note: `already quantized (${src.quantized.size} layers), loaded as it is` };
    const { bytes, report } = await quantizeModelToBytes(src, {
      tableKind: q.table, bits: q.bits, groupSize: q.groupSize,
      onProgress: (done, total, tensor) => post({ type: 'progress', id, phase: 'quantize', done, total, label: `quantizing ${tensor}` }),
    });
    lastCheckpoint = bytes;
    // The checkpoint embeds the tokenizer, so it loads alone.
    return { bytes, note: `${q.table}${q.bits}, g=${q.groupSize}, ${report.bitsPerWeight.toFixed(2)} bits/weight, worst layer rel. RMS error ${(report.worst?.error.relRmse ?? 0).toFixed(3)}` };
  } finally {
    await src.close();
  }
}

/** Adds up what the backend holds for the weights, for the memory readout. */
function countingBackend(be: KernelBackend): KernelBackend & { readonly preparedBytes: number } {
  let bytes = 0;
  return {
    name: be.name,
    get preparedBytes() {
      return bytes;
    },
    info: () => be.info(),
    unsupported: (layer) => be.unsupported(layer),
    prepare(layer) {
      const p = be.prepare(layer);
      bytes += p.bytes;
      return p;
    },
    matmul: (layer, x, m, out, opts) => be.matmul(layer, x, m, out, opts),
    release: (p: PreparedLinear) => be.release(p),
    dispose: () => be.dispose(),
  };
}

let wasmBackend: KernelBackend | null = null; // the caller-owned backend of a 'wasm' load

function describeBackend(loaded: LoadedModel, caps: Capabilities, threads: number): { kind: string; label: string } {
  if (loaded.backend.name === 'webgpu') return { kind: 'webgpu', label: `WebGPU (${caps.adapter ?? 'adapter'}${caps.shaderF16 ? ', shader-f16' : ''})` };
  const simd = caps.relaxedSimd ? 'SIMD + relaxed SIMD' : 'SIMD';
  return threads > 1
    ? { kind: 'wasm-threads', label: `WebAssembly ${simd}, ${threads} threads` }
    : { kind: 'wasm', label: `WebAssembly ${simd}, single thread` };
}

/**
 * Backends: 'webgpu' runs the whole forward pass on the GPU (GpuLlamaModel); 'wasm' WebAssembly with one
 * thread per core when the page is cross-origin isolated, else one; 'auto' the library's rule (WebGPU on
 * a real GPU, else WebAssembly: an emulated adapter such as SwiftShader is slower than the CPU kernels).
 */
async function load(id: number, choice: ModelChoice, backendChoice: BackendChoice, quantize?: QuantizeChoice): Promise<ModelInfo> {
  current?.loaded.dispose();
  current = null;
  wasmBackend?.dispose();
  wasmBackend = null;
  lastCheckpoint = null;
  const caps = await probeCapabilities();
  const file = await readChoice(id, choice);
  const q = quantize ? await quantizeInTab(id, file, quantize) : { bytes: file.bytes, tokenizer: file.tokenizer, note: null };
  post({ type: 'progress', id, phase: 'prepare', done: 0, total: 1, label: 'preparing the weights for the backend' });
  const threads = caps.threads ? Math.max(1, caps.cores) : 1;
  const counted = backendChoice === 'wasm' ? countingBackend(await createBackend('wasm', { threads })) : null;
  wasmBackend = counted;
  const loaded = await loadModelFromBytes(q.bytes, {
    name: file.name, tokenizer: q.tokenizer, backend: counted ?? backendChoice, threads,
    onUploadProgress: (done, total, tensor) => post({ type: 'progress', id, phase: 'prepare', done, total, label: `uploading ${tensor}` }),
  });
  current = { loaded };
  post({ type: 'progress', id, phase: 'prepare', done: 1, total: 1, label: 'ready' });
  const used = describeBackend(loaded, caps, threads);
  const c = loaded.model.config;
  const perLayer = c.dim * (c.nHeads * c.headDim) * 2 + c.dim * (c.nKvHeads * c.headDim) * 2 + c.dim * c.hiddenDim * 3;
  return {
    name: file.name,
    format: loaded.format,
    backend: used.kind,
    backendLabel: used.label,
    backendReason: loaded.backendReason,
    threads: used.kind === 'webgpu' ? 0 : threads,
    fileBytes: q.bytes.length,
    weightBytes: counted ? counted.preparedBytes : null,
    params: c.nLayers * perLayer + c.vocabSize * c.dim * (c.tiedEmbeddings ? 1 : 2),
    quantized: q.note ?? (loaded.format === 'flute-checkpoint' || loaded.format === 'gguf' ? 'as stored in the file' : null),
  };
}

// ---------------------------------------------------------------------------------------------
// Generation: text pieces stream back as they decode

async function run(id: number, req: GenerateRequest): Promise<void> {
  if (!current) throw new FluteError('E_OPTION', 'generate: no model is loaded');
  const ctrl = new AbortController();
  running.set(id, ctrl);
  const stats = createGenerationStats();
  const { model, tokenizer } = current.loaded;
  let aborted = false;
  try {
    const opts = { maxTokens: req.maxTokens, temperature: req.temperature, topK: 0, topP: 1, seed: req.seed, signal: ctrl.signal, stats };
    for await (const text of generate(model, tokenizer, req.prompt, opts)) {
      post({ type: 'text', id, text, tokens: stats.generatedTokens });
    }
  } catch (e) {
    if (!(e instanceof FluteError && e.code === 'E_ABORTED')) throw e;
    aborted = true;
  } finally {
    running.delete(id);
  }
  post({ type: 'done', id, stats: { ...stats, stopReason: aborted ? 'aborted' : stats.stopReason } });
}
