// The one interface every kernel backend implements: prepare a canonical Linear once into the
// backend's own layout (FLUTE's offline restructuring), then multiply y[M, N] = x[M, K] W^T.

import type { ComputeType, Linear } from '../quant/linear.js';

/**
 * A layer in a backend's own layout. Only the backend that made it may read `data`. It does not keep
 * the canonical layer it came from: the caller's copy can be dropped once the layer is prepared, so
 * the weights are not held twice (a backend that needs it, such as the reference, keeps it in `data`).
 */
export interface PreparedLinear {
  readonly backend: string;
  readonly n: number;
  readonly k: number;
  /** Bytes the backend holds for this layer (its restructured weights). */
  readonly bytes: number;
  readonly data: unknown;
}

export interface BackendInfo {
  readonly name: string;
  /** Human-readable variant, e.g. "reference (scalar f64 accumulation)" or "SIMD128 + relaxed, 2 threads". */
  readonly variant: string;
  /**
   * Relative Frobenius error against the reference that this backend's default path stays within on
   * well-scaled inputs (the self-check's tolerance; 1e-5 when absent, as for exact f32 paths); looser for kernels that
   * quantize activations, with the bound argued in the backend's header.
   */
  readonly relTolerance?: number;
}

export interface MatmulOptions {
  /** Compute type; 'f16' rounds table[i] x scale to f16 as FLUTE does. Default 'f32'. */
  readonly computeType?: ComputeType;
}

export interface KernelBackend {
  readonly name: string;
  info(): BackendInfo;
  /** Null when this backend can run `layer`, otherwise the reason it cannot. */
  unsupported(layer: Linear): string | null;
  /** Restructures a layer once into this backend's layout. */
  prepare(layer: Linear): PreparedLinear;
  /**
   * y[M, N] = x[M, K] W^T, with x row-major [M, K]. Writes into `out` ([M, N]) when given and
   * returns it. Throws E_SHAPE when x is not M*K long.
   */
  matmul(layer: PreparedLinear, x: Float32Array, m: number, out?: Float32Array, opts?: MatmulOptions): Float32Array;
  /**
   * Row `row` of a prepared layer's weights [K] into out at `at`, as quant/linear.ts dequantizeRow gives
   * it (the f32 rule; a dense layer's row as it is). Optional: a backend whose layers JS can read
   * offers it, so that a model whose embedding is its own quantized output layer keeps no JS copy.
   */
  readRow?(layer: PreparedLinear, row: number, out: Float32Array, at?: number): void;
  /** Frees what prepare() allocated outside the JS heap (wasm memory, GPU buffers). */
  release(layer: PreparedLinear): void;
  /** Frees the backend itself (workers, devices). */
  dispose(): void;
}
