// The `webgpu` kernel backend: FLUTE-style LUT matmul in WGSL generated per specialization, one code
// path for browsers (navigator.gpu) and Node (the `webgpu` package, Dawn). GPU work completes
// asynchronously, so this backend implements GpuKernelBackend (types.ts), the async twin of
// KernelBackend: same names and semantics, Promises where a readback is needed.
//
// FLUTE's three ideas, mapped onto WebGPU:
//   1. offline restructuring (layout.ts): codes repacked once into aligned 16-byte words per chunk of K,
//      3-bit split into a 2-bit and a 1-bit plane, so a pair index is one shift and one mask;
//   2. the vectorized table: pairs of table values (2^(2b) entries) in workgroup memory, one lookup per
//      two weights, duplicated `c` times with invocation i reading copy i % c (bank conflicts);
//   3. split-K for small outputs: workgroup z computes a K slice into a partial buffer and a second
//      dispatch sums the slices (WGSL cannot spin-wait safely, so no Stream-K fix-up loop).
// Paths: GEMV (M <= gemvMaxM) and a tiled GEMM (prefill); dense f32/f16 kernels as the baseline.
// Numerics: 'f32' uses exactly dequantize(layer, 'f32')'s weights, f32 accumulation; 'f16' rounds
// table x scale (and x) to f16 as dequantize(layer, 'f16') defines, natively with shader-f16 or
// emulated exactly in f32 elsewhere, accumulating in f32 (FLUTE's mixed mode).
/// <reference types="@webgpu/types" />

import { FluteError } from '../../errors.js';
import { validateQuantizedLinear, type DenseLinear, type Linear, type QuantizedLinear } from '../../quant/linear.js';
import type { BackendInfo } from '../types.js';
import { GpuDeviceLostError } from './device-lost.js';
import { BUF, MAP_READ, acquireAdapter, adapterName, summarizeAdapter, type AdapterRequest } from './gpu.js';
import {
  ACT_ALIGN,
  buildLutTable,
  buildUnitScales,
  lutGeometry,
  packDense,
  packLutIndices,
  planShards,
  roundUp,
  type LutFormat,
  type LutGeometry,
} from './layout.js';
import { ProgramCache } from './programs.js';
import type { Arith } from './wgsl/common.js';
import { gemmWorkgroupBytes, gemmWorkgroupSize } from './wgsl/gemm.js';
import { gemvChunkWeights, gemvWorkgroupBytes } from './wgsl/gemv.js';
import { REDUCE_WG } from './wgsl/reduce.js';
import { GEMM_TK, type GemmSpec, type GemvSpec, type KernelSpec, type WeightKind } from './wgsl/spec.js';
import type {
  AdapterSummary,
  GpuEncodeOptions,
  GpuKernelBackend,
  GpuMatmulEncoding,
  GpuMatmulOptions,
  GpuMatmulPlan,
  GpuPrecision,
  GpuPreparedLinear,
  GpuTensor,
  GpuTiming,
  GpuTimingOptions,
} from './types.js';

export type * from './types.js';
export { ACT_ALIGN, lutGeometry, packLutIndices, buildLutTable, buildUnitScales } from './layout.js';
export { generateWgsl } from './programs.js';
export { selfCheckWebGpu, GPU_TOLERANCE } from './selfcheck.js';
export { GpuDeviceLostError, isDeviceLost } from './device-lost.js';
export { adapterName, isSoftwareAdapter } from './gpu.js';
export { specKey } from './wgsl/spec.js';
export type { KernelSpec, GemvSpec, GemmSpec, WeightKind } from './wgsl/spec.js';
export type { Arith } from './wgsl/common.js';

// ---------------------------------------------------------------------------------------------
// Options and defaults

export interface WebGpuBackendOptions {
  /** 'auto' (default): f16 where the adapter has shader-f16, else f32. */
  readonly precision?: 'f32' | 'f16' | 'auto';
  /** How 'f16' runs: 'auto' = shader-f16 when present, else emulated exactly in f32 arithmetic. */
  readonly f16?: 'auto' | 'native' | 'emulated';
  /** Use this device (not destroyed by dispose()); otherwise one is requested. */
  readonly device?: GPUDevice;
  readonly adapterOptions?: AdapterRequest;
  /**
   * Copies of the pair table in workgroup memory: a number for every format, per format, or
   * 'measure' (time 1, 2, 4, 8 on the first layer of each format and keep the fastest).
   */
  readonly duplication?: number | Partial<Record<LutFormat, number>> | 'measure';
  /** Largest M that takes the GEMV path (default 4). */
  readonly gemvMaxM?: number;
  /** Workgroups below which split-K is used (default 512: ~4 per SM of a 132-SM GPU). */
  readonly targetWorkgroups?: number;
  /** Use subgroup reductions when the adapter has them (default true). */
  readonly subgroups?: boolean;
  /** Caps storage bindings below the device limit (tests use it to force binding splits). */
  readonly maxBindingBytes?: number;
  /** GEMV invocations per workgroup (default 128). */
  readonly gemvWorkgroupSize?: number;
  /** GEMV output rows per workgroup (default 4). */
  readonly gemvRows?: number;
}

/**
 * Table copies when not measured. FLUTE's bank analysis: 2^(2b) 4-byte pairs over 32 banks give up to
 * 8-way conflicts for 4-bit, 2-way for 3-bit, none for 2-bit (16 entries); a copy per 2 banks' worth
 * of conflicts is the usual sweet spot. SwiftShader has no banks (see the c table in the report).
 */
const DEFAULT_DUP: Record<LutFormat, number> = { b2: 1, p3: 2, b4: 4, b8: 2 };
const DUP_CANDIDATES = [1, 2, 4, 8];

// ---------------------------------------------------------------------------------------------
// Prepared layers

interface ShardData {
  readonly r0: number;
  readonly r1: number;
  readonly main: GPUBuffer | null; // LUT codes [rows, words] u32
  readonly hi: GPUBuffer | null; // p3 high plane [rows, hiWords] u32
}

interface PrecisionData {
  readonly table: GPUBuffer | null; // LUT pair/single table
  readonly shards: { scales: GPUBuffer | null; dense: GPUBuffer | null }[];
  readonly bytes: number;
}

interface PreparedData {
  readonly kind: 'lut' | 'dense';
  readonly layer: Linear;
  readonly geo: LutGeometry | null;
  readonly kp: number;
  readonly np: number; // N padded to ACT_ALIGN (output row stride)
  readonly shards: ShardData[];
  readonly perPrecision: Map<GpuPrecision, PrecisionData>;
  released: boolean;
}

interface Plan extends GpuMatmulPlan {
  readonly arith: Arith;
  readonly spec: GemvSpec | GemmSpec;
  readonly rowsPerWorkgroup: number; // R (GEMV) or TN (GEMM)
  readonly mPerWorkgroup: number; // MB (GEMV) or TM (GEMM)
  readonly cpr: number; // K steps per row
  readonly cps: number; // K steps per split
  readonly mChunk: number; // activation rows per dispatch (binding limits)
}

interface Dispatch {
  readonly pipeline: GPUComputePipeline;
  readonly bindGroup: GPUBindGroup;
  readonly count: readonly [number, number, number];
}

const PARAM_SLOT = 256; // minUniformBufferOffsetAlignment upper bound
const PARAM_BYTES = 48; // struct Params: 12 u32

// ---------------------------------------------------------------------------------------------
// Availability

let availability: Promise<{ ok: boolean; reason?: string; adapter?: AdapterSummary }> | null = null;

/**
 * Whether a WebGPU adapter can be had here, and which. Cached: the probe runs once per process; it
 * keeps no reference to Dawn afterwards, so it does not keep Node alive.
 */
export function webgpuAvailable(opts: AdapterRequest = {}): Promise<{ ok: boolean; reason?: string; adapter?: AdapterSummary }> {
  if (availability && !opts.dawnFlags) return availability;
  const probe = (async () => {
    try {
      const got = await acquireAdapter(opts);
      const summary = summarizeAdapter(got.adapter, got.via, got.gpu);
      got.gpu = null;
      return { ok: true, adapter: summary };
    } catch (e) {
      return { ok: false, reason: (e as Error).message };
    }
  })();
  if (!opts.dawnFlags) availability = probe;
  return probe;
}

// ---------------------------------------------------------------------------------------------
// The backend

export async function createWebGpuBackend(opts: WebGpuBackendOptions = {}): Promise<GpuKernelBackend> {
  let device: GPUDevice;
  let summary: AdapterSummary;
  let gpu: GPU | null = null;
  const owned = !opts.device;
  if (opts.device) {
    device = opts.device;
    const info = (device as GPUDevice & { adapterInfo?: GPUAdapterInfo }).adapterInfo;
    const fake = { info: info ?? ({} as GPUAdapterInfo), features: device.features, limits: device.limits } as unknown as GPUAdapter;
    summary = summarizeAdapter(fake, 'caller-provided device', null);
  } else {
    const got = await acquireAdapter(opts.adapterOptions);
    gpu = got.gpu;
    summary = summarizeAdapter(got.adapter, got.via, got.gpu);
    const a = got.adapter;
    const wanted: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
    const requiredFeatures = wanted.filter((f) => a.features.has(f));
    const lim = a.limits as unknown as Record<string, number>;
    const requiredLimits: Record<string, number> = {};
    for (const n of [
      'maxStorageBufferBindingSize',
      'maxBufferSize',
      'maxComputeWorkgroupStorageSize',
      'maxComputeInvocationsPerWorkgroup',
      'maxComputeWorkgroupSizeX',
      'maxStorageBuffersPerShaderStage',
    ]) {
      if (typeof lim[n] === 'number') requiredLimits[n] = lim[n];
    }
    try {
      device = await a.requestDevice({ requiredFeatures, requiredLimits });
    } catch (e) {
      throw new FluteError('E_BACKEND', `webgpu: requestDevice failed on ${adapterName(summary)}: ${(e as Error).message}`, { cause: e });
    }
  }
  return new WebGpuBackend(device, owned, gpu, summary, opts);
}

class WebGpuBackend implements GpuKernelBackend {
  readonly name = 'webgpu' as const;
  readonly precision: GpuPrecision;
  private device: GPUDevice | null;
  private gpu: GPU | null; // keeps Dawn's instance alive while the backend is; dropped by dispose()
  private readonly programs: ProgramCache;
  private readonly f16Native: boolean;
  private readonly subgroupReduce: boolean;
  private readonly timestamps: boolean;
  private readonly limits: { binding: number; buffer: number; wgStorage: number; invocations: number; perDim: number };
  private readonly dupChosen = new Map<string, number>(); // `${format}/${arith}` -> measured copies
  private lostInfo: GPUDeviceLostInfo | null = null;
  private uncaptured: string | null = null;
  private scratch: GPUBuffer | null = null; // split-K partials, grown on demand
  private readonly opts: WebGpuBackendOptions;

  constructor(
    device: GPUDevice,
    private readonly owned: boolean,
    gpu: GPU | null,
    private readonly summary: AdapterSummary,
    opts: WebGpuBackendOptions,
  ) {
    this.device = device;
    this.gpu = gpu;
    this.opts = opts;
    this.programs = new ProgramCache(device);
    const has = (f: string) => device.features.has(f);
    const f16 = opts.f16 ?? 'auto';
    if (f16 === 'native' && !has('shader-f16')) {
      throw new FluteError('E_BACKEND', `webgpu: f16: 'native' needs the shader-f16 feature, which ${adapterName(summary)} lacks`);
    }
    this.f16Native = has('shader-f16') && f16 !== 'emulated';
    const p = opts.precision ?? 'auto';
    this.precision = p === 'auto' ? (has('shader-f16') ? 'f16' : 'f32') : p;
    // subgroup_id gives each subgroup a slot regardless of how invocations are laid out in subgroups
    this.subgroupReduce = (opts.subgroups ?? true) && has('subgroups') && summary.wgslLanguageFeatures.includes('subgroup_id');
    this.timestamps = has('timestamp-query');
    const L = device.limits;
    this.limits = {
      binding: Math.min(L.maxStorageBufferBindingSize, L.maxBufferSize, opts.maxBindingBytes ?? Infinity),
      buffer: L.maxBufferSize,
      wgStorage: L.maxComputeWorkgroupStorageSize,
      invocations: Math.min(L.maxComputeInvocationsPerWorkgroup, L.maxComputeWorkgroupSizeX),
      perDim: L.maxComputeWorkgroupsPerDimension,
    };
    device.lost.then((info) => {
      this.lostInfo = info;
    });
    device.addEventListener('uncapturederror', (ev) => {
      this.uncaptured ??= (ev as GPUUncapturedErrorEvent).error.message;
    });
  }

  // -------------------------------------------------------------------------------------------
  // Description

  info(): BackendInfo {
    const prec = this.precision === 'f16' ? `f16 (${this.f16Native ? 'shader-f16' : 'emulated: f32 arithmetic, exact f16 rounding'})` : 'f32';
    const red = this.subgroupReduce ? 'subgroup reduction' : 'workgroup-memory reduction';
    const ts = this.timestamps ? 'timestamp queries' : 'no timestamps';
    return { name: 'webgpu', variant: `WGSL on ${adapterName(this.summary)} via ${this.summary.via}; ${prec}, ${red}, ${ts}` };
  }

  adapter(): AdapterSummary {
    return this.summary;
  }

  private dev(): GPUDevice {
    if (!this.device) throw new FluteError('E_BACKEND', 'webgpu: the backend was disposed');
    if (this.lostInfo) {
      throw new GpuDeviceLostError(String(this.lostInfo.reason), this.lostInfo.message);
    }
    if (this.uncaptured) {
      const m = this.uncaptured;
      this.uncaptured = null;
      throw new FluteError('E_BACKEND', `webgpu: the device reported an error: ${m}`);
    }
    return this.device;
  }

  unsupported(layer: Linear): string | null {
    if (layer.kind === 'quantized' && (!Number.isInteger(layer.bits) || layer.bits < 1 || layer.bits > 8)) return `bits must be 1..8, got ${layer.bits}`;
    const kp = roundUp(layer.k, ACT_ALIGN);
    const rowBytes = layer.kind === 'dense' ? kp * 4 : Math.max(lutGeometry(layer).units * 4, kp);
    if (rowBytes > this.limits.binding) return `one row (K=${layer.k}) needs ${rowBytes} bytes, over the storage binding limit ${this.limits.binding}`;
    if (kp * 4 > this.limits.binding) return `one activation row (K=${layer.k}) exceeds the storage binding limit`;
    return null;
  }

  // -------------------------------------------------------------------------------------------
  // Buffers

  private buffer(data: ArrayBufferView, usage: number, label: string): GPUBuffer {
    const size = roundUp(Math.max(data.byteLength, 16), 4);
    const b = this.dev().createBuffer({ size, usage, mappedAtCreation: true, label });
    new Uint8Array(b.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    b.unmap();
    return b;
  }

  upload(x: Float32Array, rows: number, cols: number): GpuTensor {
    const dev = this.dev();
    if (x.length !== rows * cols) throw new FluteError('E_SHAPE', `webgpu upload: expected ${rows}x${cols} = ${rows * cols} values, got ${x.length}`);
    const stride = roundUp(cols, ACT_ALIGN);
    const size = rows * stride * 4;
    if (size > this.limits.buffer) throw new FluteError('E_SHAPE', `webgpu upload: [${rows}, ${stride}] f32 (${size} bytes) exceeds maxBufferSize ${this.limits.buffer}`);
    const buffer = dev.createBuffer({ size: Math.max(size, 16), usage: BUF.STORAGE | BUF.COPY_SRC | BUF.COPY_DST, mappedAtCreation: true, label: 'activations' });
    const dst = new Float32Array(buffer.getMappedRange());
    if (stride === cols) dst.set(x);
    else for (let r = 0; r < rows; r++) dst.set(x.subarray(r * cols, (r + 1) * cols), r * stride);
    buffer.unmap();
    return { rows, cols, stride, buffer, owner: this };
  }

  gpuDevice(): GPUDevice {
    return this.dev();
  }

  createTensor(rows: number, cols: number, label = 'tensor'): GpuTensor {
    if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(cols) || cols < 1) {
      throw new FluteError('E_SHAPE', `webgpu createTensor ${label}: expected positive integer rows and cols, got [${rows}, ${cols}]`);
    }
    return this.emptyTensor(rows, cols);
  }

  private emptyTensor(rows: number, cols: number): GpuTensor {
    const stride = roundUp(cols, ACT_ALIGN);
    const size = rows * stride * 4;
    if (size > this.limits.buffer) throw new FluteError('E_SHAPE', `webgpu: output [${rows}, ${stride}] f32 (${size} bytes) exceeds maxBufferSize ${this.limits.buffer}`);
    // new buffers are zero-filled, which the padding columns rely on
    const buffer = this.dev().createBuffer({ size: Math.max(size, 16), usage: BUF.STORAGE | BUF.COPY_SRC | BUF.COPY_DST, label: 'output' });
    return { rows, cols, stride, buffer, owner: this };
  }

  async download(t: GpuTensor, out?: Float32Array): Promise<Float32Array> {
    const dev = this.dev();
    if (t.owner !== this) throw new FluteError('E_BACKEND', 'webgpu download: the tensor belongs to another backend');
    const n = t.rows * t.cols;
    const y = out ?? new Float32Array(n);
    if (y.length < n) throw new FluteError('E_SHAPE', `webgpu download: output must hold [${t.rows}, ${t.cols}] = ${n} values, got ${y.length}`);
    const size = Math.max(t.rows * t.stride * 4, 16);
    const staging = dev.createBuffer({ size, usage: MAP_READ | BUF.COPY_DST, label: 'readback' });
    const enc = dev.createCommandEncoder();
    enc.copyBufferToBuffer(t.buffer, 0, staging, 0, size);
    dev.queue.submit([enc.finish()]);
    try {
      await staging.mapAsync(MAP_READ);
    } catch (e) {
      staging.destroy();
      await Promise.resolve(); // let a pending device.lost settle first
      this.dev();
      throw new FluteError('E_BACKEND', `webgpu: reading results back failed: ${(e as Error).message}`, { cause: e });
    }
    const src = new Float32Array(staging.getMappedRange());
    if (t.stride === t.cols) y.set(src.subarray(0, n));
    else for (let r = 0; r < t.rows; r++) y.set(src.subarray(r * t.stride, r * t.stride + t.cols), r * t.cols);
    staging.unmap();
    staging.destroy();
    return y;
  }

  releaseTensor(t: GpuTensor): void {
    t.buffer.destroy();
  }

  // -------------------------------------------------------------------------------------------
  // prepare / release

  async prepare(layer: Linear): Promise<GpuPreparedLinear> {
    const dev = this.dev();
    const why = this.unsupported(layer);
    if (why) throw new FluteError('E_SHAPE', `webgpu prepare: ${why}`);
    if (layer.kind === 'quantized') validateQuantizedLinear(layer);
    else if (layer.weight.length !== layer.n * layer.k) {
      throw new FluteError('E_SHAPE', `webgpu prepare: dense weight must be [${layer.n}, ${layer.k}] = ${layer.n * layer.k} values, got ${layer.weight.length}`);
    }
    dev.pushErrorScope('out-of-memory');
    dev.pushErrorScope('validation');
    let data: PreparedData;
    try {
      data = layer.kind === 'quantized' ? this.prepareLut(layer) : this.prepareDense(layer);
      this.precisionData(data, this.precision);
    } finally {
      const v = dev.popErrorScope();
      const o = dev.popErrorScope();
      const [ve, oe] = await Promise.all([v, o]);
      if (ve || oe) throw new FluteError('E_BACKEND', `webgpu prepare (${layer.n}x${layer.k}): ${(oe ?? ve)!.message}`);
    }
    const prepared: GpuPreparedLinear = { backend: 'webgpu', n: layer.n, k: layer.k, bytes: this.precisionData(data, this.precision).bytes, data };
    if (this.opts.duplication === 'measure' && data.geo) await this.measureDuplication(prepared, data.geo.format);
    return prepared;
  }

  private prepareLut(layer: QuantizedLinear): PreparedData {
    const geo = lutGeometry(layer);
    const rowBytes = Math.max(geo.words * 4, geo.units * 4, geo.hiWords * 4);
    const shards = planShards(layer.n, rowBytes, this.limits.binding, this.limits.perDim);
    const { main, hi } = packLutIndices(layer, geo);
    const usage = BUF.STORAGE | BUF.COPY_DST;
    return {
      kind: 'lut',
      layer,
      geo,
      kp: geo.kp,
      np: roundUp(layer.n, ACT_ALIGN),
      shards: shards.map(([r0, r1]) => ({
        r0,
        r1,
        main: this.buffer(main.subarray(r0 * geo.words, r1 * geo.words), usage, 'codes'),
        hi: hi ? this.buffer(hi.subarray(r0 * geo.hiWords, r1 * geo.hiWords), usage, 'codes-hi') : null,
      })),
      perPrecision: new Map(),
      released: false,
    };
  }

  private prepareDense(layer: DenseLinear): PreparedData {
    const kp = roundUp(layer.k, ACT_ALIGN);
    const shards = planShards(layer.n, kp * 4, this.limits.binding, this.limits.perDim);
    return {
      kind: 'dense',
      layer,
      geo: null,
      kp,
      np: roundUp(layer.n, ACT_ALIGN),
      shards: shards.map(([r0, r1]) => ({ r0, r1, main: null, hi: null })),
      perPrecision: new Map(),
      released: false,
    };
  }

  /** Scales/table (LUT) or weights (dense) for one precision, uploaded on first use. */
  private precisionData(data: PreparedData, precision: GpuPrecision): PrecisionData {
    let pd = data.perPrecision.get(precision);
    if (pd) return pd;
    const usage = BUF.STORAGE | BUF.COPY_DST;
    if (data.kind === 'lut') {
      const layer = data.layer as QuantizedLinear;
      const geo = data.geo!;
      // f16-exact scales are the same buffer for both precisions
      const same = precision === 'f16' && layer.scaleDtype === 'f16' ? data.perPrecision.get('f32') : undefined;
      const table = buildLutTable(layer, precision);
      const scales = same ? null : buildUnitScales(layer, geo, precision);
      const shards = data.shards.map((s, i) => ({
        scales: same ? same.shards[i].scales : this.buffer(scales!.subarray(s.r0 * geo.units, s.r1 * geo.units), usage, 'scales'),
        dense: null,
      }));
      const bytes = layer.n * (geo.words + geo.hiWords) * 4 + layer.n * geo.units * 4 + table.byteLength;
      pd = { table: this.buffer(table, usage, 'pair-table'), shards, bytes };
    } else {
      const layer = data.layer as DenseLinear;
      const packed = packDense(layer.weight, layer.n, layer.k, precision);
      const perRow = packed.length / layer.n;
      const shards = data.shards.map((s) => ({ scales: null, dense: this.buffer(packed.subarray(s.r0 * perRow, s.r1 * perRow), usage, 'dense') }));
      pd = { table: null, shards, bytes: packed.byteLength };
    }
    data.perPrecision.set(precision, pd);
    return pd;
  }

  release(layer: GpuPreparedLinear): void {
    const data = layer.data as PreparedData;
    if (data.released) return;
    data.released = true;
    for (const s of data.shards) {
      s.main?.destroy();
      s.hi?.destroy();
    }
    const seen = new Set<GPUBuffer>();
    for (const pd of data.perPrecision.values()) {
      pd.table?.destroy();
      for (const s of pd.shards) for (const b of [s.scales, s.dense]) if (b && !seen.has(b)) (seen.add(b), b.destroy());
    }
    data.perPrecision.clear();
  }

  dispose(): void {
    this.scratch?.destroy();
    this.scratch = null;
    this.programs.clear();
    if (this.owned) this.device?.destroy();
    this.device = null;
    this.gpu = null; // the last reference to Dawn's instance: Node may exit now
  }

  // -------------------------------------------------------------------------------------------
  // Planning

  private arithFor(precision: GpuPrecision): Arith {
    return precision === 'f32' ? 'f32' : this.f16Native ? 'f16' : 'f16emu';
  }

  private dupFor(format: LutFormat, arith: Arith, opts?: GpuMatmulOptions): number {
    if (opts?.duplication !== undefined) return opts.duplication;
    const d = this.opts.duplication;
    if (typeof d === 'number') return d;
    if (d === 'measure') return this.dupChosen.get(`${format}/${arith}`) ?? DEFAULT_DUP[format];
    return d?.[format] ?? DEFAULT_DUP[format];
  }

  plan(layer: GpuPreparedLinear, m: number, opts?: GpuMatmulOptions): GpuMatmulPlan {
    return this.planInternal(layer.data as PreparedData, m, opts);
  }

  private planInternal(data: PreparedData, m: number, opts?: GpuMatmulOptions): Plan {
    const precision = opts?.computeType ?? this.precision;
    const arith = this.arithFor(precision);
    const path = opts?.path && opts.path !== 'auto' ? opts.path : m <= (this.opts.gemvMaxM ?? 4) ? 'gemv' : 'gemm';
    const w: WeightKind = data.kind === 'lut' ? { kind: 'lut', format: data.geo!.format, unit: data.geo!.unit } : { kind: 'dense', storage: precision };
    let dup = w.kind === 'lut' ? this.dupFor(w.format, arith, opts) : 1;
    if (!Number.isInteger(dup) || dup < 1 || (dup & (dup - 1)) !== 0) {
      throw new FluteError('E_OPTION', `webgpu: duplication: expected a power of two >= 1, got ${dup}`);
    }
    let spec: GemvSpec | GemmSpec;
    let rowsPer: number;
    let mPer: number;
    let cpr: number;
    let minStepsPerSplit: number;
    if (path === 'gemv') {
      // invocations split K; no more of them than K has chunks (small K would leave most idle)
      const chunks = data.kp / gemvChunkWeights({ w });
      let wg = Math.min(this.opts.gemvWorkgroupSize ?? Math.max(32, Math.min(128, 2 ** Math.ceil(Math.log2(chunks)))), this.limits.invocations);
      const rows = this.opts.gemvRows ?? 4;
      const mb = m <= 1 ? 1 : m <= 2 ? 2 : 4;
      const minSg = Math.max(1, this.summary.subgroupMinSize ?? 4);
      const mk = (): GemvSpec => ({
        op: 'gemv', w, arith, rows, mb, wg, dup, reduce: this.subgroupReduce ? 'subgroup' : 'tree', maxSubgroups: Math.max(1, Math.ceil(wg / minSg)),
      });
      spec = mk();
      while (gemvWorkgroupBytes(spec) > this.limits.wgStorage && (dup > 1 || wg > 32)) {
        if (dup > 1) dup >>= 1;
        else wg >>= 1;
        spec = mk();
      }
      dup = spec.dup;
      rowsPer = rows;
      mPer = mb;
      cpr = data.kp / gemvChunkWeights(spec);
      minStepsPerSplit = spec.wg; // every invocation gets at least one chunk per split
    } else {
      let tm = m <= 16 ? 16 : m <= 32 ? 32 : 64;
      const tn = 64;
      const mk = (): GemmSpec => ({ op: 'gemm', w, arith, tm, tn, dup });
      spec = mk();
      while ((gemmWorkgroupBytes(spec) > this.limits.wgStorage || gemmWorkgroupSize(spec) > this.limits.invocations) && (dup > 1 || tm > 16)) {
        if (dup > 1 && gemmWorkgroupBytes(spec) > this.limits.wgStorage) dup >>= 1;
        else tm >>= 1;
        spec = mk();
      }
      rowsPer = tn;
      mPer = tm;
      cpr = data.kp / GEMM_TK;
      minStepsPerSplit = 4;
    }
    const tiles = data.shards.reduce((a, s) => a + Math.ceil((s.r1 - s.r0) / rowsPer), 0) * Math.ceil(m / mPer);
    // split-K: only when output tiles alone would leave the GPU idle, and only as far as K allows
    let split: number;
    const req = opts?.splitK ?? 'auto';
    if (req === 'auto') {
      const target = this.opts.targetWorkgroups ?? 512;
      split = tiles >= target ? 1 : Math.min(Math.ceil(target / tiles), Math.floor(cpr / minStepsPerSplit), 32);
    } else {
      if (!Number.isInteger(req) || req < 1) throw new FluteError('E_OPTION', `webgpu: splitK: expected 'auto' or a positive integer, got ${req}`);
      split = Math.min(req, cpr);
    }
    split = Math.max(1, split);
    // M per dispatch: x, y and the partials must each fit one binding
    const rowBytes = Math.max(data.kp * 4, data.np * 4 * split);
    let mChunk = Math.max(1, Math.floor(this.limits.binding / rowBytes));
    mChunk = Math.min(m, mChunk, this.limits.perDim * mPer);
    if (mChunk > mPer) mChunk -= mChunk % mPer;
    const cps = Math.ceil(cpr / split);
    split = Math.ceil(cpr / cps); // no empty slices
    const programKeys = [spec, ...(split > 1 ? [{ op: 'reduce' } as KernelSpec] : [])].map((s) => JSON.stringify(s));
    const scratchBytes = split > 1 ? split * mChunk * data.np * 4 : 0;
    return {
      path,
      precision,
      f16Native: precision === 'f16' && this.f16Native,
      splitK: split,
      duplication: dup,
      workgroups: tiles * split,
      shards: data.shards.length,
      programKeys,
      scratchBytes,
      arith,
      spec,
      rowsPerWorkgroup: rowsPer,
      mPerWorkgroup: mPer,
      cpr,
      cps,
      mChunk,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Encoding

  private checkArgs(layer: GpuPreparedLinear, x: Float32Array | GpuTensor, m: number): PreparedData {
    if (layer.backend !== 'webgpu') throw new FluteError('E_BACKEND', `webgpu: layer was prepared by backend "${layer.backend}"`);
    const data = layer.data as PreparedData;
    if (data.released) throw new FluteError('E_BACKEND', 'webgpu: the layer was released');
    if (!Number.isInteger(m) || m < 1) throw new FluteError('E_SHAPE', `webgpu matmul: M must be a positive integer, got ${m}`);
    if (x instanceof Float32Array) {
      if (x.length !== m * layer.k) {
        throw new FluteError('E_SHAPE', `webgpu matmul: input must be [${m}, ${layer.k}] = ${m * layer.k} values for a layer with K=${layer.k}, got ${x.length}`);
      }
    } else {
      if (x.owner !== this) throw new FluteError('E_BACKEND', 'webgpu matmul: the input tensor belongs to another backend');
      if (x.rows !== m || x.cols !== layer.k) throw new FluteError('E_SHAPE', `webgpu matmul: input tensor must be [${m}, ${layer.k}], got [${x.rows}, ${x.cols}]`);
    }
    return data;
  }

  private scratchFor(bytes: number): GPUBuffer {
    if (!this.scratch || this.scratch.size < bytes) {
      this.scratch?.destroy(); // deferred by WebGPU until submitted work using it completes
      this.scratch = this.dev().createBuffer({ size: roundUp(bytes, 256), usage: BUF.STORAGE, label: 'split-k partials' });
    }
    return this.scratch;
  }

  /** Every dispatch of one matmul, with the transient uniform buffer they use. */
  private build(data: PreparedData, x: GpuTensor, m: number, y: GpuTensor, plan: Plan, scratchBuf?: GPUBuffer): { dispatches: Dispatch[]; transient: GPUBuffer[] } {
    const dev = this.dev();
    const pd = this.precisionData(data, plan.precision);
    const prog = this.programs.get(plan.spec);
    const reduce = plan.splitK > 1 ? this.programs.get({ op: 'reduce' }) : null;
    const mChunks: [number, number][] = [];
    for (let m0 = 0; m0 < m; m0 += plan.mChunk) mChunks.push([m0, Math.min(m, m0 + plan.mChunk)]);
    const slots = mChunks.length * (data.shards.length + (reduce ? 1 : 0));
    const uniform = dev.createBuffer({ size: slots * PARAM_SLOT, usage: BUF.UNIFORM, mappedAtCreation: true, label: 'params' });
    const u32 = new Uint32Array(uniform.getMappedRange());
    const geo = data.geo;
    const isGemv = plan.path === 'gemv';
    const dense = data.kind === 'dense';
    // row strides of the weight planes in the units each program indexes them by
    const wrow = dense ? (plan.precision === 'f32' ? data.kp / 4 : data.kp / 8) : isGemv ? geo!.words / 4 : geo!.words;
    const hrow = geo && geo.hiWords ? (isGemv ? geo.hiWords / 2 : geo.hiWords) : 0;
    const dispatches: Dispatch[] = [];
    let slot = 0;
    const scratch = reduce ? (scratchBuf ?? this.scratchFor(plan.scratchBytes)) : null;
    for (const [m0, m1] of mChunks) {
      const mc = m1 - m0;
      const xBind = { buffer: x.buffer, offset: m0 * x.stride * 4, size: mc * x.stride * 4 };
      const yBind = { buffer: y.buffer, offset: m0 * y.stride * 4, size: mc * y.stride * 4 };
      const outBind = scratch ? { buffer: scratch, offset: 0, size: plan.splitK * mc * data.np * 4 } : yBind;
      data.shards.forEach((s, i) => {
        const rows = s.r1 - s.r0;
        u32.set([rows, mc, s.r0, data.kp / 4, data.np, plan.cpr, plan.cps, scratch ? mc * data.np : 0, wrow, geo ? geo.units : 0, hrow, 0], slot * (PARAM_SLOT / 4));
        const entries: GPUBindGroupEntry[] = [
          { binding: 0, resource: { buffer: uniform, offset: slot * PARAM_SLOT, size: PARAM_BYTES } },
          { binding: 1, resource: xBind },
          { binding: 2, resource: outBind },
          { binding: 3, resource: { buffer: (dense ? pd.shards[i].dense : s.main)! } },
        ];
        if (!dense) {
          entries.push({ binding: 4, resource: { buffer: pd.shards[i].scales! } }, { binding: 5, resource: { buffer: pd.table! } });
          if (s.hi) entries.push({ binding: 6, resource: { buffer: s.hi } });
        }
        const bindGroup = dev.createBindGroup({ layout: prog.pipeline.getBindGroupLayout(0), entries });
        const count: [number, number, number] = [Math.ceil(rows / plan.rowsPerWorkgroup), Math.ceil(mc / plan.mPerWorkgroup), plan.splitK];
        dispatches.push({ pipeline: prog.pipeline, bindGroup, count });
        slot++;
      });
      if (reduce) {
        const groups = Math.ceil((mc * data.layer.n) / REDUCE_WG);
        const wx = Math.min(groups, this.limits.perDim);
        u32.set([data.layer.n, mc, 0, 0, data.np, plan.splitK, 0, mc * data.np, 0, 0, 0, wx], slot * (PARAM_SLOT / 4));
        const bindGroup = dev.createBindGroup({
          layout: reduce.pipeline.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: uniform, offset: slot * PARAM_SLOT, size: PARAM_BYTES } },
            { binding: 1, resource: outBind },
            { binding: 2, resource: yBind },
          ],
        });
        dispatches.push({ pipeline: reduce.pipeline, bindGroup, count: [wx, Math.ceil(groups / wx), 1] });
        slot++;
      }
    }
    uniform.unmap();
    return { dispatches, transient: [uniform] };
  }

  private record(pass: GPUComputePassEncoder, dispatches: readonly Dispatch[]): void {
    for (const d of dispatches) {
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(d.count[0], d.count[1], d.count[2]);
    }
  }

  encodeMatmul(layer: GpuPreparedLinear, x: GpuTensor, m: number, y: GpuTensor, opts?: GpuEncodeOptions): GpuMatmulEncoding {
    const data = this.checkArgs(layer, x, m);
    if (y.owner !== this) throw new FluteError('E_BACKEND', 'webgpu encodeMatmul: the output tensor belongs to another backend');
    if (y.rows < m || y.cols !== layer.n || y.stride !== data.np) {
      throw new FluteError('E_SHAPE', `webgpu encodeMatmul: output tensor must be [${m}, ${layer.n}] with stride ${data.np}, got [${y.rows}, ${y.cols}] stride ${y.stride}`);
    }
    const plan = this.planInternal(data, m, opts);
    if (opts?.scratch && opts.scratch.size < plan.scratchBytes) {
      throw new FluteError('E_SHAPE', `webgpu encodeMatmul: scratch buffer of ${opts.scratch.size} bytes, the split-K partials need ${plan.scratchBytes}`);
    }
    const { dispatches, transient } = this.build(data, x, m, y, plan, opts?.scratch);
    let released = false;
    return {
      plan: this.stripPlan(plan),
      record: (pass) => {
        if (released) throw new FluteError('E_BACKEND', 'webgpu: the matmul encoding was released');
        this.record(pass, dispatches);
      },
      release: () => {
        if (released) return;
        released = true;
        for (const b of transient) b.destroy();
      },
    };
  }

  matmulToTensor(layer: GpuPreparedLinear, x: Float32Array | GpuTensor, m: number, opts?: GpuMatmulOptions): GpuTensor {
    const dev = this.dev();
    const data = this.checkArgs(layer, x, m);
    const plan = this.planInternal(data, m, opts);
    const xt = x instanceof Float32Array ? this.upload(x, m, layer.k) : x;
    const y = this.emptyTensor(m, layer.n);
    const { dispatches, transient } = this.build(data, xt, m, y, plan);
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    this.record(pass, dispatches);
    pass.end();
    dev.queue.submit([enc.finish()]);
    for (const b of transient) b.destroy(); // freed once the submitted work is done
    if (x instanceof Float32Array) xt.buffer.destroy();
    return y;
  }

  async matmul(layer: GpuPreparedLinear, x: Float32Array | GpuTensor, m: number, out?: Float32Array, opts?: GpuMatmulOptions): Promise<Float32Array> {
    const dev = this.dev();
    this.checkArgs(layer, x, m);
    if (out && out.length < m * layer.n) {
      throw new FluteError('E_SHAPE', `webgpu matmul: output must hold [${m}, ${layer.n}] = ${m * layer.n} values, got ${out.length}`);
    }
    dev.pushErrorScope('out-of-memory');
    dev.pushErrorScope('validation');
    let y: GpuTensor | null = null;
    let read: Promise<Float32Array> | null = null;
    let thrown: unknown = null;
    try {
      y = this.matmulToTensor(layer, x, m, opts);
      read = this.download(y, out);
    } catch (e) {
      thrown = e;
    }
    const scopes = Promise.all([dev.popErrorScope(), dev.popErrorScope()]);
    const [[ve, oe], res] = await Promise.all([scopes, read ? read.then((v) => ({ v }), (e: unknown) => ({ e })) : Promise.resolve(null)]);
    if (y) y.buffer.destroy();
    if (thrown) throw thrown;
    if (ve || oe) {
      const compile = ve ? await this.programs.errors() : [];
      throw new FluteError('E_BACKEND', `webgpu matmul: ${(oe ?? ve)!.message}${compile.length ? `\n${compile.join('\n')}` : ''}`);
    }
    if (!res) throw new FluteError('E_BACKEND', 'webgpu matmul: no result');
    if ('e' in res) throw res.e;
    return res.v;
  }

  // -------------------------------------------------------------------------------------------
  // Timing and tuning

  async time(layer: GpuPreparedLinear, m: number, opts: GpuTimingOptions = {}): Promise<GpuTiming> {
    const dev = this.dev();
    const data = this.checkArgs(layer, new Float32Array(m * layer.k), m);
    const plan = this.planInternal(data, m, opts);
    const reps = opts.reps ?? 10;
    const samples = opts.samples ?? 5;
    const xv = new Float32Array(m * layer.k);
    for (let i = 0; i < xv.length; i++) xv[i] = Math.sin(i * 0.37);
    const x = this.upload(xv, m, layer.k);
    const y = this.emptyTensor(m, layer.n);
    const { dispatches, transient } = this.build(data, x, m, y, plan);
    const qs = this.timestamps ? dev.createQuerySet({ type: 'timestamp', count: 2 }) : null;
    const resolve = qs ? dev.createBuffer({ size: 16, usage: BUF.QUERY_RESOLVE | BUF.COPY_SRC }) : null;
    const times: number[] = [];
    dev.pushErrorScope('validation');
    try {
      // warm-up: first use compiles the pipelines
      const w = dev.createCommandEncoder();
      const wp = w.beginComputePass();
      this.record(wp, dispatches);
      wp.end();
      dev.queue.submit([w.finish()]);
      await dev.queue.onSubmittedWorkDone();
      for (let s = 0; s < samples; s++) {
        const enc = dev.createCommandEncoder();
        const pass = enc.beginComputePass(qs ? { timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } } : {});
        for (let r = 0; r < reps; r++) this.record(pass, dispatches);
        pass.end();
        let read: GPUBuffer | null = null;
        if (qs && resolve) {
          read = dev.createBuffer({ size: 16, usage: MAP_READ | BUF.COPY_DST });
          enc.resolveQuerySet(qs, 0, 2, resolve, 0);
          enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
        }
        const t0 = performance.now();
        dev.queue.submit([enc.finish()]);
        if (read) {
          await read.mapAsync(MAP_READ);
          const t = new BigInt64Array(read.getMappedRange());
          const ns = Number(t[1] - t[0]);
          read.unmap();
          read.destroy();
          times.push(ns > 0 ? ns / 1e6 / reps : NaN);
        } else {
          await dev.queue.onSubmittedWorkDone();
          times.push((performance.now() - t0) / reps);
        }
      }
    } finally {
      const err = await dev.popErrorScope();
      for (const b of [...transient, x.buffer, y.buffer, resolve]) b?.destroy();
      qs?.destroy();
      if (err) throw new FluteError('E_BACKEND', `webgpu time: ${err.message}`);
    }
    const ok = times.filter((t) => Number.isFinite(t)).sort((a, b) => a - b);
    const timer = qs && ok.length === times.length ? 'timestamp-query' : 'wall-clock';
    const ms = ok.length ? ok[ok.length >> 1] : NaN;
    return { ms, timer, plan: this.stripPlan(plan) };
  }

  private stripPlan(p: Plan): GpuMatmulPlan {
    const { path, precision, f16Native, splitK, duplication, workgroups, shards, programKeys, scratchBytes } = p;
    return { path, precision, f16Native, splitK, duplication, workgroups, shards, programKeys, scratchBytes };
  }

  /** Times GEMV M=1 with 1, 2, 4, 8 table copies on this layer and keeps the fastest for its format. */
  private async measureDuplication(layer: GpuPreparedLinear, format: LutFormat): Promise<void> {
    const arith = this.arithFor(this.precision);
    const key = `${format}/${arith}`;
    if (this.dupChosen.has(key)) return;
    let best = DEFAULT_DUP[format];
    let bestMs = Infinity;
    for (const c of DUP_CANDIDATES) {
      const t = await this.time(layer, 1, { duplication: c, path: 'gemv', reps: 5, samples: 3 });
      if (t.plan.duplication !== c) continue; // did not fit in workgroup memory
      if (t.ms < bestMs) [best, bestMs] = [c, t.ms];
    }
    this.dupChosen.set(key, best);
  }

  /** The measured (or default) copies per format, for reports. */
  duplicationChoices(): Record<string, number> {
    return Object.fromEntries(this.dupChosen);
  }
}

