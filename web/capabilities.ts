// What this browser offers the engine, probed once and cached (WebGPU adapter, shader-f16, shared
// memory for threads, SIMD): the backend choice and the page's labels read only this.

import { wasmCapabilities } from '../src/browser.js';

export interface Capabilities {
  readonly webgpu: boolean; // navigator.gpu gave an adapter
  readonly adapter: string | null; // vendor / architecture / description, when the adapter says
  readonly shaderF16: boolean;
  readonly crossOriginIsolated: boolean;
  readonly threads: boolean; // SharedArrayBuffer + shared wasm memory + workers
  readonly simd: boolean;
  readonly relaxedSimd: boolean;
  readonly cores: number;
}

let cached: Promise<Capabilities> | null = null;

export function probeCapabilities(): Promise<Capabilities> {
  cached ??= probe();
  return cached;
}

async function probe(): Promise<Capabilities> {
  const wasm = await wasmCapabilities();
  const gpu = (globalThis.navigator as Navigator & { gpu?: GPU }).gpu;
  let adapter: GPUAdapter | null = null;
  try {
    adapter = gpu ? await gpu.requestAdapter() : null;
  } catch {
    adapter = null;
  }
  const info = adapter?.info;
  const name = info ? [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unnamed adapter' : null;
  return {
    webgpu: adapter !== null,
    adapter: name,
    shaderF16: adapter?.features.has('shader-f16') ?? false,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    threads: wasm.threads,
    simd: wasm.simd,
    relaxedSimd: wasm.relaxed,
    cores: wasm.cores,
  };
}
