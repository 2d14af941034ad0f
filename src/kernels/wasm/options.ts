// The wasm backend's options and the list of their names: a module of its own, so that the backend
// registry can check a caller's option names without loading the kernels (index.ts imports these).

export type WasmActivations = 'int8' | 'f32';

export interface WasmBackendOptions {
  /** Threads including the caller; default: the cores available. 1 runs everything on the caller. */
  readonly threads?: number;
  /** 'auto' (default): relaxed SIMD where available (on Node 20 by setting V8's flag) and self-checked. */
  readonly relaxed?: 'auto' | boolean;
  /**
   * Which form of the relaxed int8 dot to try first (the other is the fallback): 'auto' (default)
   * picks per host (see relaxedDotOrder), 'fused' or 'split' forces one (tests, benchmarks).
   */
  readonly relaxedDot?: 'auto' | 'fused' | 'split';
  /**
   * 8-bit codes on the relaxed dot ('relaxed8' path): 'auto' (default) and true use them where the
   * engine's relaxed dot proves exact for them (probeRelaxedDot8), false never (tables that need 8 bits
   * then take the SIMD128 kernels, as before; tests, benchmarks).
   */
  readonly relaxed8?: 'auto' | boolean;
  /**
   * f16 scales in the weight stream (the records layout: layers with one 32-k chunk a group whose
   * scales are all f16 values, such as GGUF Q4_0 and IQ4_NL): 'auto' (default) and true where the host
   * has the fp16 proposal's f32x4.promote_low_f16x8 (Node 24+ by setting V8's flag) and the kernels
   * pass the self-check, false never (tests, benchmarks). Same results either way.
   */
  readonly f16Scales?: 'auto' | boolean;
  /** Initial memory; grows as layers are prepared. Default 64 MiB. */
  readonly initialMemoryMiB?: number;
  /** Cap on the memory (wasm32: at most 4096 MiB, the default). */
  readonly maxMemoryMiB?: number;
  /** Default activation path for b <= 4 layers: 'int8' (fast, bounded error) or 'f32' (exact). */
  readonly activations?: WasmActivations;
  /** Largest activation quantization block (a multiple of 32, <= 256); default 128. */
  readonly activationBlock?: number;
  /**
   * Bound in ms on one matmul's wait for the worker threads (and on their start-up); past it the
   * matmul throws E_BACKEND and the backend's threads are stopped. Default 120000.
   */
  readonly barrierTimeoutMs?: number;
}

/** Every key of WasmBackendOptions (a Record, so the compiler keeps the list complete). */
const KEYS: Record<keyof WasmBackendOptions, true> = {
  threads: true, relaxed: true, relaxedDot: true, relaxed8: true, f16Scales: true, initialMemoryMiB: true, maxMemoryMiB: true,
  activations: true, activationBlock: true, barrierTimeoutMs: true,
};

/** The names of WasmBackendOptions' fields. */
export const WASM_OPTION_KEYS: readonly string[] = Object.keys(KEYS);
