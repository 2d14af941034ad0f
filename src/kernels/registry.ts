// The list of kernel backends and how to create one by name. `auto` picks the fastest backend that
// can run here (WebAssembly when available, else the reference) and says which it took. Whole models
// may also run on WebGPU: createModelBackend() adds 'webgpu' and an `auto` that prefers a real GPU.

import { FluteError, checkOptionKeys } from '../errors.js';
import { createRefBackend } from './ref/index.js';
import type { KernelBackend } from './types.js';
import { WASM_OPTION_KEYS, type WasmBackendOptions } from './wasm/options.js';
import type { GpuKernelBackend } from './webgpu/types.js';

export type BackendName = 'ref' | 'wasm';
export const BACKEND_NAMES: readonly BackendName[] = ['ref', 'wasm'];

/** The wasm backend's own options (relaxed SIMD, activation path, memory); threads is BackendOptions'. */
export type WasmOnlyOptions = Omit<WasmBackendOptions, 'threads'>;

export interface BackendOptions {
  /** Worker threads for backends that use them; default: the cores available. */
  readonly threads?: number;
  /** Options that only the wasm backend reads; the reference backend ignores them. */
  readonly wasm?: WasmOnlyOptions;
}

/** Where a wasm backend option given at the top level belongs. */
const wasmHint = (key: string) => (WASM_OPTION_KEYS.includes(key) ? `; an option of the wasm backend alone goes under "wasm": { wasm: { ${key}: ... } }` : '');

function checkCpuOptions(opts: BackendOptions, allowed: readonly string[]): void {
  checkOptionKeys(opts, allowed, 'backend options', wasmHint);
  if (opts.wasm && 'threads' in opts.wasm) throw new FluteError('E_OPTION', 'backend options: wasm.threads: give threads at the top level, { threads }');
}

type Factory = (opts: BackendOptions) => Promise<KernelBackend>;

const FACTORIES: Record<BackendName, Factory> = {
  ref: async () => createRefBackend(),
  wasm: async (opts) => (await import('./wasm/index.js')).createWasmBackend({ ...opts.wasm, threads: opts.threads }),
};

export async function createBackend(name: BackendName | 'auto', opts: BackendOptions = {}): Promise<KernelBackend> {
  checkCpuOptions(opts, ['threads', 'wasm']);
  if (name === 'auto') {
    try {
      return await FACTORIES.wasm(opts);
    } catch (e) {
      if (e instanceof FluteError && e.code === 'E_OPTION') throw e; // the caller's mistake, not a missing runtime feature
      return FACTORIES.ref(opts);
    }
  }
  const f = FACTORIES[name];
  if (!f) throw new FluteError('E_OPTION', `backend: expected one of auto, ${BACKEND_NAMES.join(', ')}, got ${JSON.stringify(name)}`);
  return f(opts);
}

// ---------------------------------------------------------------------------------------------
// Backends for whole models: the CPU kernel backends, or WebGPU (the forward pass on the device)

export type ModelBackendName = BackendName | 'webgpu';
export const MODEL_BACKEND_NAMES: readonly ModelBackendName[] = ['webgpu', 'wasm', 'ref'];

export interface ModelBackendOptions extends BackendOptions {
  /** WebGPU arithmetic: 'auto' (default) = f16 with shader-f16, else f32. */
  readonly gpuPrecision?: 'auto' | 'f32' | 'f16';
}

/** The backend a model runs on, and one line saying why it was chosen. */
export type ModelBackendChoice =
  | { readonly kind: 'cpu'; readonly backend: KernelBackend; readonly reason: string }
  | { readonly kind: 'gpu'; readonly backend: GpuKernelBackend; readonly reason: string };

/**
 * A backend for a whole model. 'auto' takes WebGPU when an adapter backed by real GPU hardware exists
 * (in Node: the optional `webgpu` package loads and finds one), and WebAssembly otherwise: a CPU
 * emulation of a GPU (SwiftShader, llvmpipe, a browser's fallback adapter) runs the forward pass
 * slower than the wasm kernels on the same cores, so auto never takes one. 'webgpu' takes any adapter.
 */
export async function createModelBackend(name: ModelBackendName | 'auto', opts: ModelBackendOptions = {}): Promise<ModelBackendChoice> {
  checkCpuOptions(opts, ['threads', 'wasm', 'gpuPrecision']);
  const cpuOpts: BackendOptions = { threads: opts.threads, wasm: opts.wasm };
  if (name === 'webgpu') {
    const { createWebGpuBackend, adapterName } = await import('./webgpu/index.js');
    const backend = await createWebGpuBackend({ precision: opts.gpuPrecision ?? 'auto' });
    return { kind: 'gpu', backend, reason: `--backend webgpu: ${adapterName(backend.adapter())} via ${backend.adapter().via}` };
  }
  if (name !== 'auto') return { kind: 'cpu', backend: await createBackend(name, cpuOpts), reason: `--backend ${name}` };
  let why: string;
  try {
    const { webgpuAvailable, isSoftwareAdapter, adapterName, createWebGpuBackend } = await import('./webgpu/index.js');
    const probe = await webgpuAvailable();
    if (!probe.ok || !probe.adapter) why = `no WebGPU adapter (${probe.reason ?? 'unknown reason'})`;
    else if (isSoftwareAdapter(probe.adapter)) {
      why = `the only WebGPU adapter, ${adapterName(probe.adapter)}, emulates a GPU on the CPU (slower than WebAssembly; --backend webgpu uses it anyway)`;
    } else {
      const backend = await createWebGpuBackend({ precision: opts.gpuPrecision ?? 'auto' });
      return { kind: 'gpu', backend, reason: `auto: WebGPU on ${adapterName(backend.adapter())} via ${backend.adapter().via}` };
    }
  } catch (e) {
    why = `WebGPU failed to start (${(e as Error).message})`;
  }
  const backend = await createBackend('auto', cpuOpts);
  return { kind: 'cpu', backend, reason: `auto: ${backend.name === 'wasm' ? 'WebAssembly' : 'the reference backend (WebAssembly unavailable)'}, since ${why}` };
}
