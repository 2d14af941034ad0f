// The asynchronous kernel-backend interface for GPUs, kept as close to kernels/types.ts `KernelBackend`
// as the hardware allows: same names and semantics, but results come back through an asynchronous
// readback (mapAsync), so prepare() and matmul() return Promises and a device-resident variant exists.
/// <reference types="@webgpu/types" />

import type { ComputeType, Linear } from '../../quant/linear.js';
import type { BackendInfo, MatmulOptions, PreparedLinear } from '../types.js';

/** The arithmetic a backend runs: 'f16' rounds table[i] x scale (and x) to f16 as FLUTE does. */
export type GpuPrecision = 'f32' | 'f16';

/**
 * Activations resident on the device: rows x cols f32, row-major with `stride` columns per row
 * (cols rounded up to ACT_ALIGN = 64), the padding columns zero. Matmul outputs are GpuTensors in
 * the same layout, so they can feed the next layer without a readback.
 */
export interface GpuTensor {
  readonly rows: number; // M
  readonly cols: number; // logical columns (K of the next layer)
  readonly stride: number; // f32 elements per row, multiple of 64
  readonly buffer: GPUBuffer; // [rows, stride] f32 (at least rows * stride * 4 bytes)
  /** The backend that made the buffer; a tensor is only valid with its own backend. */
  readonly owner: object;
}

/** A layer restructured on the device. Only the backend that made it may read `data`. */
export interface GpuPreparedLinear extends PreparedLinear {
  readonly backend: 'webgpu';
}

/** How a matmul was (or will be) decomposed; returned by plan() for tests and benchmarks. */
export interface GpuMatmulPlan {
  readonly path: 'gemv' | 'gemm';
  readonly precision: GpuPrecision;
  readonly f16Native: boolean; // shader-f16 arithmetic, or f16 emulated in f32 with exact rounding
  readonly splitK: number; // 1 = no second reduction pass
  readonly duplication: number; // copies of the pair table in workgroup memory (LUT layers)
  readonly workgroups: number; // first-pass workgroups over all shards and M chunks
  readonly shards: number; // row shards (bindings split to respect maxStorageBufferBindingSize)
  readonly programKeys: readonly string[]; // program-cache keys used
  readonly scratchBytes: number; // split-K partial outputs one dispatch chunk needs (0 without split-K)
}

export interface GpuMatmulOptions extends MatmulOptions {
  /** Overrides the backend's precision for this call (computeType is the KernelBackend name for it). */
  readonly computeType?: ComputeType;
  /** 'auto' (default) picks GEMV for M <= gemvMaxM, else the tiled GEMM. */
  readonly path?: 'auto' | 'gemv' | 'gemm';
  /** Split-K factor; 'auto' (default) splits only when output tiles alone would leave the GPU idle. */
  readonly splitK?: 'auto' | number;
  /** Copies of the pair table in workgroup memory (1, 2, 4, 8, ...); default: the backend's choice. */
  readonly duplication?: number;
}

/**
 * A matmul recorded once and replayed into many compute passes (an on-GPU forward pass): its
 * dispatches read one fixed x tensor and write one fixed y tensor, so only the pass is per call.
 */
export interface GpuMatmulEncoding {
  readonly plan: GpuMatmulPlan;
  /** Appends the matmul's dispatches (first pass, then the split-K reduction) to `pass`. */
  record(pass: GPUComputePassEncoder): void;
  /** Frees its uniform buffer; call once no further submit will use it. */
  release(): void;
}

export interface GpuEncodeOptions extends GpuMatmulOptions {
  /**
   * Buffer for split-K partial outputs, at least plan.scratchBytes (STORAGE usage). Default: the
   * backend's shared scratch, which a later, larger matmul may replace (so pass one for encodings
   * that outlive the next matmul call).
   */
  readonly scratch?: GPUBuffer;
}

export interface AdapterSummary {
  readonly vendor: string;
  readonly architecture: string;
  readonly device: string;
  readonly description: string;
  /** How Dawn/the browser reached it: e.g. "vulkan (SwiftShader ICD /usr/lib/chromium/...)". */
  readonly via: string;
  readonly isFallbackAdapter: boolean;
  readonly features: readonly string[];
  readonly wgslLanguageFeatures: readonly string[];
  readonly limits: Readonly<Record<string, number>>;
  readonly subgroupMinSize?: number;
  readonly subgroupMaxSize?: number;
}

export interface GpuTimingOptions extends GpuMatmulOptions {
  /** Timed repetitions per sample (dispatched back to back in one pass). Default 10. */
  readonly reps?: number;
  /** Samples; the median is reported. Default 5. */
  readonly samples?: number;
}

export interface GpuTiming {
  readonly ms: number; // median time of one matmul (first pass + reduction), excluding upload/readback
  readonly timer: 'timestamp-query' | 'wall-clock';
  readonly plan: GpuMatmulPlan;
}

export interface GpuKernelBackend {
  readonly name: 'webgpu';
  info(): BackendInfo;
  /** The adapter the backend runs on (name, limits, features). */
  adapter(): AdapterSummary;
  /** The precision used when a call does not choose one ('auto' resolved at creation). */
  readonly precision: GpuPrecision;
  /** Null when this backend can run `layer`, otherwise the reason it cannot. */
  unsupported(layer: Linear): string | null;
  /** Restructures a layer once and uploads it (async: out-of-memory is reported through an error scope). */
  prepare(layer: Linear): Promise<GpuPreparedLinear>;
  /**
   * y[M, N] = x[M, K] W^T with x row-major [M, K] (or a GpuTensor [M, K]). Resolves to a new
   * Float32Array, or fills `out` ([M, N]) when given. Throws E_SHAPE on bad sizes, E_BACKEND when the
   * device is lost or rejects the work.
   */
  matmul(layer: GpuPreparedLinear, x: Float32Array | GpuTensor, m: number, out?: Float32Array, opts?: GpuMatmulOptions): Promise<Float32Array>;
  /** The same product left on the device (no readback): the building block of an on-GPU forward pass. */
  matmulToTensor(layer: GpuPreparedLinear, x: Float32Array | GpuTensor, m: number, opts?: GpuMatmulOptions): GpuTensor;
  /**
   * Records y = x W^T for fixed device tensors x [m, K] and y [m, N] (y's stride = N rounded up to
   * 64) without submitting: the caller replays it inside its own passes and submits.
   */
  encodeMatmul(layer: GpuPreparedLinear, x: GpuTensor, m: number, y: GpuTensor, opts?: GpuEncodeOptions): GpuMatmulEncoding;
  /** A zero-filled device tensor [rows, cols] (padded stride), for callers that chain kernels. */
  createTensor(rows: number, cols: number, label?: string): GpuTensor;
  /**
   * The GPUDevice, for callers that record their own kernels beside the matmuls. Throws
   * GpuDeviceLostError when the device was lost, E_BACKEND when disposed.
   */
  gpuDevice(): GPUDevice;
  /** The decomposition matmul() would use (path, split-K, duplication, shards). */
  plan(layer: GpuPreparedLinear, m: number, opts?: GpuMatmulOptions): GpuMatmulPlan;
  /** Uploads x [rows, cols] into a padded device tensor. */
  upload(x: Float32Array, rows: number, cols: number): GpuTensor;
  /** Reads a tensor back as a dense [rows, cols] Float32Array. */
  download(t: GpuTensor, out?: Float32Array): Promise<Float32Array>;
  releaseTensor(t: GpuTensor): void;
  /**
   * Times the kernel(s) of one matmul with timestamp queries where the adapter has them (wall clock
   * otherwise). Uses a device error scope across awaits: do not interleave other calls with it.
   */
  time(layer: GpuPreparedLinear, m: number, opts?: GpuTimingOptions): Promise<GpuTiming>;
  /** Frees the layer's GPU buffers. */
  release(layer: GpuPreparedLinear): void;
  /** Destroys the device and drops every reference to Dawn, so a Node process can exit. */
  dispose(): void;
}
