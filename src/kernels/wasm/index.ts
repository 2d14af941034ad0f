// The `wasm` kernel backend: LUT-quantized and dense matmul in WebAssembly SIMD128 (+ relaxed SIMD where
// the runtime has it) over one shared WebAssembly.Memory, rows split between resident worker threads.
// Runs unchanged in Node and browsers: no native addon, no C toolchain, no build step.
//
// Why kernels are emitted from TypeScript at run time (encoder.ts + codegen.ts) rather than written in
// AssemblyScript or WAT: the kernels need exactly the instructions we pick (swizzle, relaxed dot,
// shuffles) and specialise on bits, tile size and variant; emitting bytecode gives that with zero
// dependencies and no build step, and a variant that the host cannot run (relaxed SIMD on Node 20
// without a flag, Safari) is simply not emitted. Every module is checked by WebAssembly.validate and
// every variant by a self-check against the reference before first use.
//
// Paths (layouts in layout.ts, kernels in codegen.ts):
//   - lut int ('int8' activations, the default for b <= 4): activations quantized per block of up to
//     128 padded columns (d = amax/Q, q = nearest(x/d)), the table approximated by an integer codebook
//     T ~= t*c (one v128, looked up by swizzle), integer dot products, one f32 fold per block. Paths:
//       relaxed7: int8 activations (Q = 127) x 7-bit codes (c in [-64, 63], stored +64) via the relaxed
//         int8 dot (the codes, in [0, 127] once stored, are its i7 operand, which every engine reads
//         alike; fused or split form, see relaxedDotOrder);
//       relaxed8: activations in [-64, 64] (Q = 64) x 8-bit codes (c in [-128, 127], stored +128) on the
//         same relaxed kernels, only where probeRelaxedDot8 finds the engine's relaxed dot reads a
//         top-bit-set operand as unsigned without saturating in that range (the spec allows signed or
//         unsigned, saturated or not; V8 on x64 reads it unsigned, |2 * 64 * 255| = 32640 fits i16;
//         V8's arm64 code reads it signed, so there this path is off). Only the table bytes, Q and the offset
//         (a block's sums start from -128 sum q, computed by act_quant) differ from relaxed7;
//       simd: int16 activations (Q = 32767) x 8-bit codes (c in [-127, 127]) via i32x4.dot_i16x8_s (the
//         SIMD128 variant's kernels; the 'wide' ones of a relaxed module, 1.6-1.8x relaxed's time at M = 1).
//     Kernels (codegen lutIntKernel): layers whose groups are one 32-k chunk (g <= 32: GGUF) take the
//     'flat' ones; relaxed7 layers whose codes are index + c0 ('int' tables: GGUF Q4_0; affineOffset)
//     the 'affine' ones, which multiply the index itself and sum a chunk in i16 (no lookup; at M = 1
//     about 1.5x the lookup kernels' speed). Both give the general kernels' results bit for bit. Where
//     the host converts f16 in one instruction (the fp16 proposal; Node 24+ with V8's flag), flat
//     layers whose scales are all f16 values (GGUF) are prepared in the records layout (packF16Records)
//     and take the 'records' kernels of each family, again with the same results.
//     Per element, with eT = max_j |T_j - t c_j| <= t0/2 (t0 the absmax code step) and
//     delta = amax_block (1/(2Q) + 4u), u = 2^-24, over B activation blocks along K:
//       |y - y_ref| <= sum_k |s_k| (eT |x_k| + (|T_k| + eT) delta_k)
//                      + (B + 6) u sum_k |s_k| (|T_k| + eT)(|x_k| + delta_k) + u sum|W x| + u |y|.
//     test/kernels-wasm.test.ts derives and checks it per element and path. Relative to |y| that bound
//     is not enough: eT is absolute, and an absmax-scaled group with an outlier puts nearly all its
//     weights on the entries near zero, next to which half a code step can be large (IQ4_NL's entry 1
//     in a range of 240 gets code 0 or 2 in 7 bits: 98% off; NF4's -0.091: 4.6%). What bounds the
//     relative error whatever the weights is the codebook's relative entry error
//     rho = max_j |T_j - t c_j| / |T_j|: for inputs with independent zero-mean entries,
//     E(sum_k s_k (T_k - t c_k) x_k)^2 <= rho^2 E y^2 per output, and the activation rounding adds
//     alpha(Q) (1 + rho), alpha(Q) = crest/(2Q sqrt 3) (crest factor <= 4): a path's bound is
//     rho + alpha(Q) (1 + rho) (intPathBound). Each layer takes, of relaxed7 and relaxed8, the one with
//     the smaller bound, then simd, then the exact path, the first whose bound is within the variant's
//     budget: the bound of its finest fast path at rho = INT_PATH_MAX_REL_ERROR = 5%, i.e.
//     0.05 + alpha(127) 1.05 = 0.0595 (relaxed) and 0.05 + alpha(32767) 1.05 = 0.05004 (SIMD128). So
//     relaxed7 needs rho7 <= 5%, relaxed8 rho8 <= 4.08%. Taken on a relaxed variant with 8-bit codes:
//     int, fp4, NF1-3 relaxed7 (bounds 0.9%, 0.9%, 0.9-1.95%), NF4 relaxed8 (3.8%, against 5.6% in 7 bits)
//     and IQ4_NL relaxed8 (exact codes: 1.8%); without 8-bit codes NF4 takes relaxed7 and IQ4_NL simd;
//     custom tables with an entry near zero may go exact. Stated relTolerance: the budget rounded up,
//     0.06 (relaxed) and 0.051 (SIMD128): a bound on the RMS over random inputs, which single draws over
//     few outputs spread around, and one output whose sum cancels can exceed. Measured (kernel sweep,
//     3000 cases per seed, seeds 1-7): relaxed variant worst 5.6e-2 (relaxed7, int1, m = n = 1, k = 27:
//     activation rounding on a cancelling sum, 6.1x its own layer's bound); per path: relaxed7 5.6e-2,
//     relaxed8 2.0e-2 (at most 0.81 of its layers' own bounds), simd 1.5e-2; SIMD128 variant, seeds 1-3:
//     worst 2.7e-2 (custom3, m = 1, n = 3). RTN NF4 at g = 128 (Gaussian weights and inputs) measures
//     1.44% on relaxed8, 1.38% on relaxed7, 0.58% on simd (with 2% outliers x8: 1.6% and 1.9%); RTN
//     IQ4_NL at g = 32: 1.0% on relaxed8, 2e-5 on simd.
//   - lut exact ('f32' activations): y = sum fl(T[q]*s) * x, the reference's weights exactly, summed in
//     f32: |y - y_ref| <= gamma_{Kp+2} sum|W x| + u |y| (relative error ~1e-7..1e-6 in practice, < 1e-5
//     as tested); an identity input returns dequantize() bit for bit.
//   - generic: any bits 1..8 or group size < 16, scalar exact f32 (slower, same bound).
//   - dense: f32 weights, the benchmark baseline and the layers that stay dense (same bound).
// The model runtime should use the default ('int8'): its error is an order of magnitude below the
// weight quantization error itself (NF4 RTN is ~10% RMS, NF3 ~20%) and it runs 5-7x faster than the
// exact path. Pass activations: 'f32' (per backend or per matmul) to reproduce the reference to f32
// rounding, e.g. to pin greedy text against the reference backend.

import { FluteError, checkOption, checkOptionKeys } from '../../errors.js';
import { roundToF16 } from '../../format/half.js';
import { dequantValue, dequantize, validateQuantizedLinear, type Linear, type QuantizedLinear } from '../../quant/linear.js';
import { IQ4NL_VALUES } from '../../quant/tables.js';
import { checkMatmulArgs, checkReadRowArgs } from '../check.js';
import type { BackendInfo, KernelBackend, MatmulOptions, PreparedLinear } from '../types.js';
import { FuncBuilder, ModuleBuilder, S } from './encoder.js';
import { FN, J, JOB_ADDR, JOB_WORDS, MT, buildKernelModule, intKernelId, type KernelVariant } from './codegen.js';
import {
  CHUNK,
  LUT_TABLE_BYTES,
  QUAD,
  layoutBytes,
  packForWasm,
  padRows,
  paddedK,
  packF16Records,
  readLutRow,
  roundUp,
  type ActGeometry,
  type LutLayout,
} from './layout.js';
import { WasmHeap } from './memory.js';
import { WASM_OPTION_KEYS, type WasmActivations, type WasmBackendOptions } from './options.js';
import { CTRL, ThreadPool, isNode } from './threads.js';

export { packForWasm } from './layout.js';
export type { WasmLayout } from './layout.js';
export type { WasmActivations, WasmBackendOptions } from './options.js';

// ---------------------------------------------------------------------------------------------
// Options and capabilities

/**
 * Paths of an 'int8' request on a lut layer: 'relaxed7' (7-bit codes, int8 activations, relaxed dot),
 * 'relaxed8' (8-bit codes, activations in [-64, 64], the same relaxed kernels), 'simd' (8-bit codes,
 * int16 activations, SIMD128 i16 dot), 'exact' (f32 activations). Dense and generic layers are 'exact'.
 */
export type WasmIntPath = 'relaxed7' | 'relaxed8' | 'simd' | 'exact';

export interface WasmMatmulOptions extends MatmulOptions {
  /** Overrides the backend's activation path for this call. */
  readonly activations?: WasmActivations;
}

/** The wasm backend: a KernelBackend that also says what runs and takes the activation path per call. */
export interface WasmKernelBackend extends KernelBackend {
  /** Threads taking part in a matmul (the caller included). */
  readonly threads: number;
  /** True when the relaxed-SIMD kernels passed their self-check and run. */
  readonly relaxed: boolean;
  /** True when the relaxed kernels also take 8-bit codes (the 'relaxed8' path; probeRelaxedDot8). */
  readonly relaxed8: boolean;
  /** The path an 'int8' matmul takes for this layer, and the path's stated relative error bound (intPathFor). */
  intPath(layer: PreparedLinear): { readonly path: WasmIntPath; readonly bound: number };
  matmul(layer: PreparedLinear, x: Float32Array, m: number, out?: Float32Array, opts?: WasmMatmulOptions): Float32Array;
}

export interface WasmCapabilities {
  readonly simd: boolean;
  /** Relaxed SIMD validates (possibly only after setting V8's flag, see relaxedViaFlag). */
  readonly relaxed: boolean;
  /** True when relaxed SIMD needed `--experimental-wasm-relaxed-simd` (Node 20 / V8 11.3). */
  readonly relaxedViaFlag: boolean;
  /** f32x4.promote_low_f16x8 (the fp16 proposal) validates, possibly only after setting V8's flag. */
  readonly f16: boolean;
  /** True when it needed `--experimental-wasm-fp16` (Node 24 and 26). */
  readonly f16ViaFlag: boolean;
  /** Shared memory and workers are available (Node, or a cross-origin-isolated page). */
  readonly threads: boolean;
  /** Cores the host reports (the default thread count). */
  readonly cores: number;
}

function probe(emit: (f: FuncBuilder) => void): boolean {
  const f = new FuncBuilder('probe', [], []);
  emit(f);
  const mb = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages: 1, shared: false });
  mb.add(f);
  try {
    return WebAssembly.validate(mb.encode());
  } catch {
    return false;
  }
}

const probeSimd = () => probe((f) => f.zero().zero().simd(S.i8x16_swizzle).simd(S.i32x4_extract_lane).op(0).op(0x1a));
const probeRelaxed = () =>
  probe((f) => {
    f.zero().zero().zero().simd(S.i32x4_relaxed_dot_i8x16_i7x16_add_s);
    f.zero().simd(S.i8x16_relaxed_swizzle).zero().zero().simd(S.f32x4_relaxed_madd).op(0x1a);
  });
const probeF16 = () => probe((f) => f.zero().simd(S.f32x4_promote_low_f16x8).op(0x1a));

function sharedMemoryWorks(): boolean {
  try {
    if (typeof SharedArrayBuffer !== 'function') return false;
    if (!isNode && !(globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated) return false;
    new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true } as WebAssembly.MemoryDescriptor);
    return true;
  } catch {
    return false;
  }
}

async function hostCores(): Promise<number> {
  if (isNode) {
    const os = await import('node:os');
    return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  }
  return (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ?? 1;
}

let capsCache: Promise<WasmCapabilities> | null = null;

/**
 * What this runtime offers the wasm backend (for `flute doctor`). On Node without native relaxed SIMD
 * this sets V8's `--experimental-wasm-relaxed-simd` flag (process-wide, harmless before compiling).
 */
export function wasmCapabilities(): Promise<WasmCapabilities> {
  capsCache ??= (async () => {
    const simd = probeSimd();
    let relaxed = simd && probeRelaxed();
    let relaxedViaFlag = false;
    if (simd && !relaxed && isNode) {
      try {
        const v8 = await import('node:v8');
        v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
        relaxed = probeRelaxed();
        relaxedViaFlag = relaxed;
      } catch {
        relaxed = false;
      }
    }
    let f16 = simd && probeF16();
    let f16ViaFlag = false;
    // V8 13 (Node 24) and later have the flag; V8 prints an error for a flag it does not know
    if (simd && !f16 && isNode && hostV8Major() >= 13) {
      try {
        const v8 = await import('node:v8');
        v8.setFlagsFromString('--experimental-wasm-fp16');
        f16 = probeF16();
        f16ViaFlag = f16;
      } catch {
        f16 = false;
      }
    }
    return { simd, relaxed, relaxedViaFlag, f16, f16ViaFlag, threads: sharedMemoryWorks(), cores: await hostCores() };
  })();
  return capsCache;
}

// ---------------------------------------------------------------------------------------------
// Prepared layers

interface WasmLayerData {
  readonly layout: 'lut' | 'generic' | 'dense';
  readonly lut?: Omit<LutLayout, 'indices' | 'scales' | 'planes'>;
  readonly generic?: { readonly groupSize: number; readonly groups: number };
  readonly w: number; // weights (indices / f32; lut records: indices and f16 scales) in wasm memory
  readonly s: number; // scales (0 for dense and lut records)
  /** lut: the records layout (packF16Records): each group's chunk followed by its f16 scales, read by the records kernels. */
  readonly records?: boolean;
  readonly table: number; // lut: planes [64] + relaxed codes [16] + simd codes [16] + relaxed8 codes [16]; generic: f32[256]
  readonly codebooks?: Record<Exclude<WasmIntPath, 'exact'>, { readonly scale: number; readonly relError: number }>; // lut only
  /** lut: -c0 where the 7-bit codes are index + c0 (affineOffset), which the relaxed7 path then runs on the affine kernels. */
  readonly affineOffset?: number;
  released: boolean;
}

/** Byte offsets of the integer codebooks in a lut layer's table block (layout.ts LUT_TABLE_BYTES). */
const TABLE_OFFSET = { relaxed7: 64, simd: 80, relaxed8: 96 } as const;

/** The activation helpers of codegen.ts, called on the calling thread before a job. */
interface ActKernels {
  act_quant8(src: number, m: number, kp: number, block: number, mt: number, dst: number, params: number, qmax: number, tscale: number, offset: number): void;
  act_quant16(src: number, m: number, kp: number, block: number, mt: number, dst: number, params: number, qmax: number, tscale: number, offset: number): void;
  act_tile_f32(src: number, m: number, kp: number, mt: number, dst: number): void;
}

// ---------------------------------------------------------------------------------------------
// The backend core: one variant's memory, module, instance and threads

class Core {
  private readonly scratch = new Map<string, { ptr: number; size: number }>();
  pool: ThreadPool | null = null; // null until startThreads (self-checks run on the caller alone)
  /** The relaxed kernels take 8-bit codes (set by createWasmBackend from probeRelaxedDot8 and the option). */
  relaxed8 = false;

  private constructor(
    readonly variant: KernelVariant,
    readonly heap: WasmHeap,
    readonly module: WebAssembly.Module,
    readonly work: (tid: number) => void,
    readonly kernels: ActKernels,
    readonly probeDot: ((p: number) => void) | undefined,
  ) {}

  static async create(variant: KernelVariant, shared: boolean, opts: WasmBackendOptions): Promise<Core> {
    const bytes = buildKernelModule(variant, shared);
    if (!WebAssembly.validate(bytes)) throw new FluteError('E_BACKEND', `wasm: the generated ${variant.relaxed ? 'relaxed' : 'SIMD128'} kernel module does not validate`);
    const module = await WebAssembly.compile(bytes);
    const heap = WasmHeap.create({ shared, initialMiB: opts.initialMemoryMiB ?? 64, maxMiB: opts.maxMemoryMiB ?? 4096, reservedBytes: 4096 });
    const inst = await WebAssembly.instantiate(module, { env: { memory: heap.memory } });
    const probeDot = inst.exports.probe_dot as ((p: number) => void) | undefined;
    return new Core(variant, heap, module, inst.exports.work as (tid: number) => void, inst.exports as unknown as ActKernels, probeDot);
  }

  async startThreads(threads: number, timeoutMs?: number): Promise<void> {
    this.pool = await ThreadPool.create(threads, this.module, this.heap.memory, this.work, { timeoutMs });
  }

  get threads(): number {
    return this.pool?.threads ?? 1;
  }

  /** A scratch buffer of at least `bytes`, reused across calls (grown by 1.5x when too small). */
  scratchPtr(name: string, bytes: number): number {
    const cur = this.scratch.get(name);
    if (cur && cur.size >= bytes) return cur.ptr;
    if (cur) this.heap.release(cur.ptr);
    const size = Math.max(bytes, Math.ceil((cur?.size ?? 0) * 1.5), 4096);
    const ptr = this.heap.alloc(size, `scratch ${name}`);
    this.scratch.set(name, { ptr, size });
    return ptr;
  }

  /** Copies x into padded rows in wasm memory; returns the pointer to the f32 tiles (rows when M=1). */
  tilesF32(a: ActGeometry, x: Float32Array): number {
    const kp = paddedK(a);
    const rows = this.scratchPtr('xf', kp * a.m * 4);
    padRows(a, x, this.heap.f32(rows, kp * a.m));
    if (a.m === 1 || a.tile === 1) return rows; // one row: the tiled layout is the row itself
    const tiles = this.scratchPtr('x', kp * a.m * 4);
    this.kernels.act_tile_f32(rows, a.m, kp, a.tile, tiles);
    return tiles;
  }

  dispose(): void {
    this.pool?.dispose();
  }
}

/**
 * Whether this module's relaxed dot (codegen probe_dot: the kernels' own instructions) computes
 * acc + sum a_i b_i exactly for a in [-64, 64] and b in [0, 255] read as unsigned bytes: the relaxed-SIMD
 * spec lets an engine read a top-bit-set b as signed or unsigned and saturate the i16 pair sums or not
 * (one fixed choice per environment). V8 11 on x64 reads it unsigned (pmaddubsw) and saturates pair
 * sums beyond +-32767 (measured in both tiers), which |2 * 64 * 255| = 32640 never reaches; V8's arm64
 * code (smull / sdot) reads it signed, which this rejects (not run here). Checked on the extremes
 * (|a| = 64 against b = 255 and 128, both signs), runs of top-bit-set b from 128 to 249, and 32
 * pseudo-random vectors.
 */
function probeRelaxedDot8(core: Core): boolean {
  if (!core.probeDot) return false;
  const heap = core.heap;
  const p = heap.alloc(64, 'relaxed dot probe');
  try {
    const a = heap.i8(p, 16);
    const b = heap.u8.subarray(p + 16, p + 32);
    const acc = heap.i32(p + 32, 4);
    const out = heap.i32(p + 48, 4);
    let seed = 99;
    const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
    const vectors: [number[], number[]][] = [
      [[64, 64, -64, -64, 64, -64, 64, 64, -64, -64, 0, 1, 64, 64, -64, -64], [255, 255, 255, 255, 128, 128, 255, 128, 128, 255, 0, 255, 127, 255, 127, 255]],
      [Array.from({ length: 16 }, (_, i) => (i % 2 ? -1 : 1) * (1 + i * 4)), Array.from({ length: 16 }, (_, i) => 128 + i)],
      [Array.from({ length: 16 }, (_, i) => 64 - 9 * i), Array.from({ length: 16 }, (_, i) => 144 + 7 * i)],
    ];
    for (let v = 0; v < 32; v++) vectors.push([Array.from({ length: 16 }, () => rand(129) - 64), Array.from({ length: 16 }, () => rand(256))]);
    for (const [av, bv] of vectors) {
      a.set(av);
      b.set(bv);
      for (let r = 0; r < 4; r++) acc[r] = rand(2001) - 1000;
      const want = Array.from({ length: 4 }, (_, r) => acc[r] + av[4 * r] * bv[4 * r] + av[4 * r + 1] * bv[4 * r + 1] + av[4 * r + 2] * bv[4 * r + 2] + av[4 * r + 3] * bv[4 * r + 3]);
      core.probeDot(p);
      for (let r = 0; r < 4; r++) if (out[r] !== want[r]) return false;
    }
    return true;
  } finally {
    heap.release(p);
  }
}

// ---------------------------------------------------------------------------------------------
// The backend

class WasmBackend implements WasmKernelBackend {
  readonly name = 'wasm';
  private disposed = false;

  constructor(
    private readonly core: Core,
    private readonly description: string,
    private readonly activations: WasmActivations,
    private readonly actBlockMax: number,
  ) {}

  info(): BackendInfo {
    // int8 path: intPathTolerance (0.06 relaxed, 0.051 SIMD128), the budget within which the per-layer
    // choice of path (intPathFor) keeps every path's bound, whatever the table. The exact path sums f32 products: 1e-5.
    const relTolerance = this.activations === 'f32' ? 1e-5 : intPathTolerance(this.core.variant.relaxed);
    return { name: 'wasm', variant: this.description, relTolerance };
  }

  /** The variant actually running and the thread count (for benchmarks and doctor). */
  get threads(): number {
    return this.core.threads;
  }
  get relaxed(): boolean {
    return this.core.variant.relaxed;
  }
  get relaxed8(): boolean {
    return this.core.relaxed8;
  }

  intPath(layer: PreparedLinear): { path: WasmIntPath; bound: number } {
    this.alive();
    if (layer.backend !== 'wasm') throw new FluteError('E_BACKEND', 'wasm intPath: the layer was prepared by another backend');
    if ((layer.data as WasmLayerData).released) throw new FluteError('E_BACKEND', 'wasm intPath: the layer was released');
    const cbs = (layer.data as WasmLayerData).codebooks;
    if (!cbs) return { path: 'exact', bound: 0 };
    const path = intPathFor(this.core, cbs);
    return { path, bound: path === 'exact' ? 0 : intPathBound(cbs[path].relError, ACT_QMAX[path]) };
  }

  unsupported(layer: Linear): string | null {
    const bytes = layoutBytes(layer);
    if (bytes > this.core.heap.maxBytes) {
      return `needs ${(bytes / 2 ** 20).toFixed(0)} MiB in wasm memory, more than its ${(this.core.heap.maxBytes / 2 ** 20).toFixed(0)} MiB cap`;
    }
    return null;
  }

  prepare(layer: Linear): PreparedLinear {
    this.alive();
    if (layer.kind === 'quantized') validateQuantizedLinear(layer, 'wasm prepare');
    const why = this.unsupported(layer);
    if (why) throw new FluteError('E_BACKEND', `wasm prepare: a [${layer.n}, ${layer.k}] layer ${why}`);
    const lay = packForWasm(layer);
    const heap = this.core.heap;
    const allocs: number[] = [];
    const put = (src: Uint8Array, what: string) => {
      const ptr = heap.alloc(src.byteLength, what);
      allocs.push(ptr);
      heap.u8.set(src, ptr);
      return ptr;
    };
    const bytesOf = (a: Float32Array | Uint8Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    try {
      let data: WasmLayerData;
      let bytes: number;
      const what = `a [${layer.n}, ${layer.k}] layer`;
      if (lay.kind === 'dense') {
        const w = put(bytesOf(lay.weight), what);
        data = { layout: 'dense', w, s: 0, table: 0, released: false };
        bytes = lay.weight.byteLength;
      } else if (lay.kind === 'generic') {
        const w = put(lay.indices, what);
        const s = put(bytesOf(lay.scales), what);
        const table = put(bytesOf(lay.table), what);
        data = { layout: 'generic', generic: { groupSize: lay.groupSize, groups: lay.groups }, w, s, table, released: false };
        bytes = lay.indices.byteLength + lay.scales.byteLength + lay.table.byteLength;
      } else {
        const rec = this.core.variant.f16 ? packF16Records(lay) : null;
        const w = put(rec ?? lay.indices, what);
        const s = rec ? 0 : put(bytesOf(lay.scales), what);
        const tb = new Uint8Array(LUT_TABLE_BYTES);
        tb.set(lay.planes, 0);
        // the relaxed dot's unsigned operand: 7-bit codes + 64 in [0, 127], 8-bit codes + 128 in [0, 255]
        lay.relaxedCodebook.codes.forEach((c, j) => (tb[TABLE_OFFSET.relaxed7 + j] = c + ACT_OFFSET.relaxed7));
        lay.simdCodebook.codes.forEach((c, j) => (tb[TABLE_OFFSET.simd + j] = c & 0xff));
        lay.relaxed8Codebook.codes.forEach((c, j) => (tb[TABLE_OFFSET.relaxed8 + j] = c + ACT_OFFSET.relaxed8));
        const table = put(tb, what);
        const { indices: _i, scales: _s, planes: _p, ...packed } = lay;
        const lut = rec ? { ...packed, quadBytes: rec.byteLength / lay.nq } : packed;
        const cb = (c: { scale: number; relError: number }) => ({ scale: c.scale, relError: c.relError });
        data = {
          layout: 'lut', lut, w, s, table, records: rec !== null,
          codebooks: { relaxed7: cb(lay.relaxedCodebook), relaxed8: cb(lay.relaxed8Codebook), simd: cb(lay.simdCodebook) },
          affineOffset: affineOffset(lay.relaxedCodebook.codes, lay.bits),
          released: false,
        };
        bytes = (rec ? rec.byteLength : lay.indices.byteLength + lay.scales.byteLength) + tb.byteLength;
      }
      return { backend: 'wasm', n: layer.n, k: layer.k, bytes, data };
    } catch (e) {
      for (const p of allocs) heap.release(p);
      throw e;
    }
  }

  /** Row `row` of a prepared layer's weights from this backend's memory, by dequantizeRow's f32 rule. */
  readRow(layer: PreparedLinear, row: number, out: Float32Array, at = 0): void {
    this.alive();
    checkReadRowArgs('wasm', layer, row, out, at);
    const data = layer.data as WasmLayerData;
    if (data.released) throw new FluteError('E_BACKEND', 'wasm readRow: the layer was released');
    const { k } = layer;
    const heap = this.core.heap;
    if (data.layout === 'dense') {
      const kp = roundUp(k, 4);
      const w = heap.f32(data.w + (row >> 2) * kp * QUAD * 4, kp * QUAD);
      for (let c = 0; c < k; c++) out[at + c] = w[c * QUAD + (row & 3)];
    } else if (data.layout === 'generic') {
      const { groupSize: g, groups } = data.generic!;
      const idx = heap.u8.subarray(data.w + row * k, data.w + (row + 1) * k);
      const s = heap.f32(data.s + row * groups * 4, groups);
      const t = heap.f32(data.table, 256);
      for (let c = 0; c < k; c++) out[at + c] = dequantValue(t[idx[c]], s[Math.floor(c / g)]);
    } else {
      const lut = data.lut!;
      const scales = data.records ? 'records' : heap.f32(data.s, lut.nq * lut.groups * QUAD);
      readLutRow(lut, heap.u8.subarray(data.w, data.w + lut.nq * lut.quadBytes), scales, row, out, at);
    }
  }

  matmul(layer: PreparedLinear, x: Float32Array, m: number, out?: Float32Array, opts?: WasmMatmulOptions): Float32Array {
    this.alive();
    checkMatmulArgs('wasm', layer, x, m, out);
    if (opts?.computeType === 'f16') {
      throw new FluteError('E_OPTION', `wasm matmul: computeType "f16" is not supported (the CPU kernels compute in f32); use "f32"`);
    }
    const data = layer.data as WasmLayerData;
    if (data.released) throw new FluteError('E_BACKEND', 'wasm matmul: the layer was released');
    const act = opts?.activations ?? this.activations;
    if (act !== 'int8' && act !== 'f32') checkOption(false, 'activations', '"int8" or "f32"', act);
    const { n, k } = layer;
    const core = this.core;
    const heap = core.heap;
    const np = roundUp(n, QUAD);
    const yPtr = core.scratchPtr('y', m * np * 4);
    const jw = new Int32Array(JOB_WORDS);
    jw[J.y] = yPtr;
    jw[J.m] = m;
    jw[J.yStride] = np * 4;
    jw[J.w] = data.w;
    jw[J.s] = data.s;
    let units = Math.ceil(n / QUAD);

    if (data.layout === 'dense') {
      const a: ActGeometry = { m, k, groupSize: k, paddedGroup: roundUp(k, 4), groups: 1, tile: MT.dense };
      const kp = paddedK(a);
      jw[J.fn] = FN.dense;
      jw[J.x] = core.tilesF32(a, x);
      jw[J.kp] = kp;
      jw[J.inner] = kp / 4;
      jw[J.quadBytes] = kp * 16;
    } else if (data.layout === 'generic') {
      const g = data.generic!;
      const xPtr = core.scratchPtr('x', k * m * 4);
      heap.f32(xPtr, k * m).set(x);
      jw[J.fn] = FN.generic;
      jw[J.x] = xPtr;
      jw[J.table] = data.table;
      jw[J.k] = k;
      jw[J.groups] = g.groups;
      jw[J.groupSize] = g.groupSize;
      units = n;
    } else {
      const g = data.lut!;
      const lb = g.layoutBits;
      jw[J.groups] = g.groups;
      jw[J.quadBytes] = g.quadBytes;
      const path = act === 'f32' ? 'exact' : intPathFor(core, data.codebooks!);
      if (path === 'exact') {
        const a: ActGeometry = { m, k, groupSize: g.groupSize, paddedGroup: g.paddedGroup, groups: g.groups, tile: MT.exact };
        const kp = paddedK(a);
        jw[J.fn] = FN[`exact${lb}${data.records ? 'h' : ''}`];
        jw[J.x] = core.tilesF32(a, x);
        jw[J.kp] = kp;
        jw[J.table] = data.table;
        jw[J.inner] = g.paddedGroup / CHUNK;
      } else {
        const relaxed = path !== 'simd'; // relaxed7 and relaxed8 run the same kernels
        const a: ActGeometry = { m, k, groupSize: g.groupSize, paddedGroup: g.paddedGroup, groups: g.groups, tile: MT.int };
        const kp = paddedK(a);
        const block = activationBlock(g.paddedGroup, this.actBlockMax);
        const nb = kp / block;
        const eb = relaxed ? 1 : 2;
        const rows = core.scratchPtr('xf', kp * m * 4);
        const xPtr = core.scratchPtr('x', kp * m * eb);
        const pPtr = core.scratchPtr('p', nb * m * 8);
        padRows(a, x, heap.f32(rows, kp * m));
        const quant = relaxed ? core.kernels.act_quant8 : core.kernels.act_quant16;
        // relaxed7 on codes = index + c0 runs the affine kernels: u = index, offset -c0 (same integer sums)
        const affine = path === 'relaxed7' && data.affineOffset !== undefined;
        // the offset goes in negated: the kernels start each block's sums from -offset * sum(q)
        const offset = affine ? data.affineOffset! : ACT_OFFSET[path];
        quant(rows, m, kp, block, MT.int, xPtr, pPtr, ACT_QMAX[path], data.codebooks![path].scale, -offset);
        // the relaxed module's int kernels take relaxed7 and relaxed8; its SIMD128 ones are wide*
        const family = affine ? 'affine' : !relaxed && core.variant.relaxed ? 'wide' : 'int';
        // groups that are one chunk and one activation block (g <= 32) take the kernels without inner loops
        jw[J.fn] = intKernelId(family, lb, g.paddedGroup === CHUNK && block === CHUNK, data.records);
        jw[J.x] = xPtr;
        jw[J.p] = pPtr;
        jw[J.kp] = kp;
        jw[J.table] = data.table + TABLE_OFFSET[path];
        jw[J.inner] = block / CHUNK;
        jw[J.blocks] = g.paddedGroup / block;
      }
    }
    jw[J.units] = units;
    jw[J.n] = n;
    this.dispatch(jw, n * k * m);
    const y = out ?? new Float32Array(m * n);
    const src = heap.f32(yPtr, m * np);
    if (np === n) y.set(src.subarray(0, m * n));
    else for (let i = 0; i < m; i++) y.set(src.subarray(i * np, i * np + n), i * n);
    return y;
  }

  /**
   * Writes the job and runs it; tiny jobs stay on the calling thread (waking workers costs more).
   * Threads take units in runs of about 1/8 of a thread's share: small enough that a descheduled
   * thread's last run is short, large enough that the shared counter is touched rarely.
   */
  private dispatch(jw: Int32Array, macs: number): void {
    const pool = this.core.pool;
    const solo = !pool || pool.threads === 1 || macs < 1 << 16;
    const units = jw[J.units];
    jw[J.threads] = solo ? 1 : pool.threads;
    jw[J.grab] = solo ? units : Math.max(1, Math.ceil(units / (8 * pool.threads)));
    this.core.heap.i32(JOB_ADDR, JOB_WORDS).set(jw);
    if (pool) return pool.run(units, !solo);
    const ctrl = this.core.heap.i32(0, 8); // no workers yet (the self-check) or ever (threads: 1)
    Atomics.store(ctrl, CTRL.finished, 0);
    Atomics.store(ctrl, CTRL.left, units);
    this.core.work(0);
  }

  release(layer: PreparedLinear): void {
    const data = layer.data as WasmLayerData;
    if (data.released || this.disposed) return;
    data.released = true;
    for (const p of [data.w, data.s, data.table]) if (p) this.core.heap.release(p);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.core.dispose();
  }

  private alive(): void {
    if (this.disposed) throw new FluteError('E_BACKEND', 'wasm: backend was disposed');
  }
}

/**
 * Largest relative entry error (Codebook.relError) a codebook may have on the int8 path when taken with
 * the finest activations of the variant's fast kernels (Q = 127 relaxed, Q = 32767 SIMD128): it sets
 * the variant's error budget, intPathBudget, which every path must meet. Above NF4's 7-bit 4.6% (NF3
 * 1.0%, NF2 0.2%, int and fp4 0), so NF stays on the relaxed kernels, and far below IQ4_NL's 98% in 7
 * bits (its entry 1 next to a range of 240; exact in 8 bits). Custom tables with an entry near zero may
 * need the exact path.
 */
export const INT_PATH_MAX_REL_ERROR = 5e-2;

/** Activations are quantized to [-Q, Q] per path: int8, then [-64, 64] so that 2 * 64 * 255 <= 32767, then int16. */
export const ACT_QMAX = { relaxed7: 127, relaxed8: 64, simd: 32767 } as const;
/** Each path's stored code is code + offset (the relaxed dot's unsigned operand); the sums start from act_quant's -offset * sum(q) to take it back. */
const ACT_OFFSET = { relaxed7: 64, relaxed8: 128, simd: 0 } as const;

/**
 * alpha(Q): activation rounding relative to the inputs' RMS, per element: at most amax/(2Q) over a
 * block, i.e. (crest factor)/(2Q sqrt 3) as an RMS for inputs whose block crest factor amax/rms is at
 * most 4 (uniform inputs: sqrt 3; Gaussian blocks of 128: about 3).
 */
export function activationRelError(qmax: number): number {
  return 4 / (2 * qmax * Math.sqrt(3));
}

/**
 * A path's relative error bound (Frobenius, for inputs with independent zero-mean entries): the codebook
 * error e_j <= rho |T_j| gives E(sum_k s_k e_k x_k)^2 <= rho^2 E(sum_k s_k T_k x_k)^2 per output, whatever
 * the weights, and the activation rounding adds alpha(Q) (1 + rho) on the codebook's weights.
 */
export function intPathBound(rho: number, qmax: number): number {
  return rho + activationRelError(qmax) * (1 + rho);
}

/** The variant's budget: the bound of its finest fast path at rho = INT_PATH_MAX_REL_ERROR (0.0595 relaxed, 0.0500 SIMD128). */
function intPathBudget(relaxedVariant: boolean): number {
  return intPathBound(INT_PATH_MAX_REL_ERROR, relaxedVariant ? ACT_QMAX.relaxed7 : ACT_QMAX.simd);
}

/**
 * The int8 request's path for a lut layer: of the relaxed kernels' two codebooks (7-bit with Q = 127,
 * 8-bit with Q = 64 where core.relaxed8) the one with the smaller bound, then the SIMD128 kernels
 * (8-bit codes, Q = 32767), then the exact path; each only if its bound is within intPathBudget.
 */
function intPathFor(core: Core, cbs: NonNullable<WasmLayerData['codebooks']>): WasmIntPath {
  const budget = intPathBudget(core.variant.relaxed);
  const bound = (p: Exclude<WasmIntPath, 'exact'>) => intPathBound(cbs[p].relError, ACT_QMAX[p]);
  if (core.variant.relaxed) {
    const fast = core.relaxed8 && bound('relaxed8') < bound('relaxed7') ? 'relaxed8' : 'relaxed7';
    if (bound(fast) <= budget) return fast;
  }
  return bound('simd') <= budget ? 'simd' : 'exact';
}

/** The int8 path's stated relative tolerance: every path a layer may take has its bound within intPathBudget. */
export function intPathTolerance(relaxedVariant: boolean): number {
  return Math.ceil(intPathBudget(relaxedVariant) * 1000) / 1000;
}

/**
 * -c0 where a codebook's codes over a table of 2^bits entries are c_j = c0 + j (the 'int' tables): the
 * affine kernels multiply the index j itself (at most 15, so eight i16 pair sums of a chunk fit i16 and
 * need one widening per chunk instead of one per index vector), and starting the sums from c0 * sum(q)
 * (act_quant's -offset * sum(q) with offset -c0) turns sum j q into sum c q: the same integers as
 * codes + 64 starting from -64 sum(q). Else undefined.
 */
export function affineOffset(codes: Int8Array, bits: number): number | undefined {
  for (let j = 1; j < 1 << bits; j++) if (codes[j] !== codes[0] + j) return undefined;
  return -codes[0];
}

/** Largest multiple of 32 that divides gp and is <= max (gp is a multiple of 32). */
function activationBlock(gp: number, max: number): number {
  for (let b = Math.min(gp, max); b >= CHUNK; b -= CHUNK) if (gp % b === 0) return b;
  return CHUNK;
}

// ---------------------------------------------------------------------------------------------
// Self-check: each variant against the reference on small cases before first use

/** Throws with a description of the first disagreement beyond the derived bounds. */
function selfCheck(be: WasmBackend): void {
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const randn = (n: number) => Float32Array.from({ length: n }, () => (rand() + rand() + rand() - 1.5) * 2);
  const u = 2 ** -24;
  const quantized = (bits: number, n: number, k: number, g: number, values?: readonly number[], f16Scales = false): QuantizedLinear => {
    const G = Math.ceil(k / g);
    const table = Float32Array.from({ length: 1 << bits }, (_, i) => values?.[i] ?? Math.fround(i - (1 << (bits - 1)) + 0.37 * Math.sin(i)));
    const idx = Array.from({ length: n * k }, () => Math.floor(rand() * (1 << bits)));
    const rowBytes = Math.ceil((k * bits) / 8);
    const packed = new Uint8Array(n * rowBytes);
    for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) {
      const bit = c * bits;
      const v = idx[r * k + c] << (bit & 7);
      packed[r * rowBytes + (bit >> 3)] |= v & 0xff;
      if ((bit & 7) + bits > 8) packed[r * rowBytes + (bit >> 3) + 1] |= v >> 8;
    }
    // f16Scales: every scale an f16 value, so that a variant with f16 runs the records kernels
    const scales = Float32Array.from({ length: n * G }, () => (f16Scales ? roundToF16 : Math.fround)(0.5 + rand()));
    return { kind: 'quantized', n, k, bits, groupSize: g, tableKind: 'custom', table, scaleDtype: 'f32', scales, packed };
  };
  const cases: { layer: Linear; m: number; act: WasmActivations; x?: Float32Array }[] = [];
  for (const bits of [2, 3, 4]) {
    for (const act of ['f32', 'int8'] as const) {
      cases.push({ layer: quantized(bits, 9, 200, 64), m: 5, act });
      cases.push({ layer: quantized(bits, 12, 96, 32), m: 1, act });
    }
  }
  // IQ4_NL's table: too coarse for the 7-bit codebook, so on a relaxed variant this runs the 8-bit codes
  // (relaxed8) or the wide kernels.
  cases.push({ layer: quantized(4, 9, 200, 64, IQ4NL_VALUES), m: 5, act: 'int8' });
  // integer tables (codes = index + c0): the affine kernels on a relaxed variant, flat (g = 32) and general
  const intValues = (bits: number) => Array.from({ length: 1 << bits }, (_, i) => i - (1 << (bits - 1)));
  cases.push({ layer: quantized(4, 9, 160, 32, intValues(4)), m: 5, act: 'int8' });
  cases.push({ layer: quantized(3, 6, 128, 64, intValues(3)), m: 2, act: 'int8' });
  // 8-bit codes at both ends (stored 0 and 255) against activations at +-amax (q = +-Q): the pair sums
  // at their largest, 2 * 64 * 255, in rows 0 and 1.
  const ends = [-128, 127, 1, -1, 0, 64, -64, 100, -100, 3, -3, 50, -50, 120, -120, 7];
  const pm = Float32Array.from({ length: 3 * 256 }, (_, i) => (i < 256 ? 1 : i < 512 ? -1 : rand() * 2 - 1));
  cases.push({ layer: quantized(4, 12, 256, 64, ends), m: 3, act: 'int8', x: pm });
  cases.push({ layer: quantized(5, 5, 70, 16), m: 2, act: 'f32' });
  // f16 scales and one chunk a group: the records kernels where the variant has f16 (all three families)
  for (const bits of [2, 3, 4]) {
    for (const act of ['f32', 'int8'] as const) cases.push({ layer: quantized(bits, 7, 70, 16, undefined, true), m: 5, act });
    cases.push({ layer: quantized(bits, 12, 96, 32, undefined, true), m: 1, act: 'int8' });
  }
  cases.push({ layer: quantized(4, 9, 160, 32, IQ4NL_VALUES, true), m: 5, act: 'int8' });
  cases.push({ layer: quantized(4, 9, 160, 32, intValues(4), true), m: 5, act: 'int8' });
  cases.push({ layer: { kind: 'dense', n: 7, k: 37, weight: randn(7 * 37) }, m: 5, act: 'f32' });
  for (const { layer, m, act, x: given } of cases) {
    const x = given ?? randn(m * layer.k);
    const p = be.prepare(layer);
    let y: Float32Array;
    try {
      y = be.matmul(p, x, m, undefined, { activations: act });
    } finally {
      be.release(p);
    }
    const w = layer.kind === 'dense' ? layer.weight : dequantize(layer);
    const { n, k } = layer;
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
      let ref = 0;
      let mag = 0;
      for (let c = 0; c < k; c++) {
        ref += w[j * k + c] * x[i * k + c];
        mag += Math.abs(w[j * k + c] * x[i * k + c]);
      }
      // exact paths: f32 summation bound; int8 path: a generous multiple of the codebook/activation steps
      const tol = act === 'f32' || layer.kind === 'dense' ? (k + 8) * u * mag + u * Math.abs(ref) : 0.05 * mag;
      const got = y[i * n + j];
      if (!(Math.abs(got - ref) <= tol)) {
        const what = layer.kind === 'dense' ? 'dense' : `b=${layer.bits},g=${layer.groupSize}`;
        throw new Error(`${what} ${act} m=${m}: y[${i},${j}] = ${got.toPrecision(6)}, reference ${ref.toPrecision(6)}`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Creation

/**
 * The relaxed int8 dot forms in the order to try them. The fused i32x4.relaxed_dot_i8x16_i7x16_add_s
 * is one instruction where the engine maps it onto a dot-product instruction (VPDPBUSD with AVX-VNNI
 * on x64 from V8 13, SDOT on arm64). Before that, V8 on x64 emits pmaddubsw + pmaddwd + paddd plus two
 * instructions rebuilding the all-ones i16 vector on every use (5 for the split form's 3, which keeps
 * that vector in a register), and V8 11's Liftoff tier computes the fused form wrongly inside our
 * kernels (self-check: y = 28.24 against 14.21, as if its temporary register were the accumulator's).
 * Measured, 1-thread decode of a 1B-shape IQ4_NL model on a Zen 5 with AVX-VNNI, split against fused
 * in one process: Node 22 (V8 12.4) 24.5 against 19.6 tok/s, Node 24 (V8 13.6) 25.3 against 29.7,
 * Node 26 (V8 14.6) 24.9 against 29.2; on Node 20 (V8 11.3) split gives 25.2, and fused, rejected by
 * that self-check, leaves the SIMD128 kernels (13.6). So Node on x64 puts the fused form first only
 * from V8 13 and, where /proc/cpuinfo can say, on a CPU with AVX-VNNI (without it V8 falls back to the
 * five-instruction form). Browsers cannot ask; there fused goes first.
 */
async function relaxedDotOrder(): Promise<('fused' | 'split')[]> {
  if (!isNode || process.arch !== 'x64') return ['fused', 'split'];
  return fusedDotIsVpdpbusd(hostV8Major(), process.arch, await cpuHasAvxVnni()) ? ['fused', 'split'] : ['split', 'fused'];
}

/** Whether V8 of this major version on this CPU turns the fused relaxed dot into one VPDPBUSD. */
function fusedDotIsVpdpbusd(v8Major: number, arch: string, avxVnni: boolean): boolean {
  return arch === 'x64' && avxVnni && v8Major >= 13;
}

function hostV8Major(): number {
  return Number(/^(\d+)\./.exec(process.versions.v8 ?? '')?.[1] ?? 0);
}

/**
 * The note for info().variant when the split dot runs where a newer V8 (13, Node 24) would make the
 * fused dot one VPDPBUSD on this CPU (null otherwise): the most useful speed hint for Node 20 and 22.
 */
export function newerNodeHint(dot: 'fused' | 'split', v8Major: number, arch: string, avxVnni: boolean): string | null {
  if (dot !== 'split' || fusedDotIsVpdpbusd(v8Major, arch, avxVnni) || !fusedDotIsVpdpbusd(13, arch, avxVnni)) return null;
  return "Node 24+ (V8 13+) would run the dot on this CPU's AVX-VNNI (18% faster 1-thread decode on our test machine)";
}

let avxVnniCache: Promise<boolean> | null = null;

/** Whether the CPU reports AVX-VNNI (Linux /proc/cpuinfo's avx_vnni flag); false where that cannot be read. */
function cpuHasAvxVnni(): Promise<boolean> {
  avxVnniCache ??= (async () => {
    try {
      const { readFile } = await import('node:fs/promises');
      return /^flags\s*:.*\bavx_vnni\b/m.test(await readFile('/proc/cpuinfo', 'utf8'));
    } catch {
      return false;
    }
  })();
  return avxVnniCache;
}

/**
 * Creates the wasm backend: detects SIMD128 / relaxed SIMD / threads, emits and compiles the kernels,
 * starts the workers, self-checks the chosen variant (falling back from relaxed to SIMD128 when it
 * disagrees with the reference) and reports what runs in info().variant.
 */
export async function createWasmBackend(opts: WasmBackendOptions = {}): Promise<WasmKernelBackend> {
  checkOptionKeys(opts, WASM_OPTION_KEYS, 'wasm backend options');
  const relaxedOpt = opts.relaxed ?? 'auto';
  checkOption(relaxedOpt === 'auto' || typeof relaxedOpt === 'boolean', 'wasm relaxed', '"auto", true or false', relaxedOpt);
  const activations = opts.activations ?? 'int8';
  checkOption(activations === 'int8' || activations === 'f32', 'wasm activations', '"int8" or "f32"', activations);
  const actBlockMax = opts.activationBlock ?? 128;
  checkOption(Number.isInteger(actBlockMax) && actBlockMax >= CHUNK && actBlockMax <= 256 && actBlockMax % CHUNK === 0, 'wasm activationBlock', 'a multiple of 32 from 32 to 256', actBlockMax);
  if (opts.threads !== undefined) checkOption(Number.isInteger(opts.threads) && opts.threads >= 1 && opts.threads <= 256, 'threads', 'an integer from 1 to 256', opts.threads);
  if (opts.initialMemoryMiB !== undefined) checkOption(opts.initialMemoryMiB > 0 && opts.initialMemoryMiB <= 4096, 'wasm initialMemoryMiB', 'a number of MiB in (0, 4096]', opts.initialMemoryMiB);
  if (opts.barrierTimeoutMs !== undefined) checkOption(opts.barrierTimeoutMs > 0 && opts.barrierTimeoutMs <= 2 ** 31 - 1, 'wasm barrierTimeoutMs', 'a number of ms in (0, 2^31)', opts.barrierTimeoutMs);
  if (opts.maxMemoryMiB !== undefined) checkOption(opts.maxMemoryMiB >= 16 && opts.maxMemoryMiB <= 4096, 'wasm maxMemoryMiB', 'a number of MiB in [16, 4096]', opts.maxMemoryMiB);

  const caps = await wasmCapabilities();
  if (!caps.simd) throw new FluteError('E_BACKEND', 'wasm: this runtime has no WebAssembly SIMD128 (needs Node >= 16.4, Chrome 91, Firefox 89, Safari 16.4)');
  const notes: string[] = [];
  let threads = opts.threads ?? caps.cores;
  if (threads > 1 && !caps.threads) {
    notes.push(`threads unavailable (${isNode ? 'no SharedArrayBuffer' : 'page is not cross-origin isolated'}), 1 thread`);
    threads = 1;
  }
  const shared = caps.threads;

  const relaxed8Opt = opts.relaxed8 ?? 'auto';
  checkOption(relaxed8Opt === 'auto' || typeof relaxed8Opt === 'boolean', 'wasm relaxed8', '"auto", true or false', relaxed8Opt);
  const dotOpt = opts.relaxedDot ?? 'auto';
  checkOption(dotOpt === 'auto' || dotOpt === 'fused' || dotOpt === 'split', 'wasm relaxedDot', '"auto", "fused" or "split"', dotOpt);
  const f16Opt = opts.f16Scales ?? 'auto';
  checkOption(f16Opt === 'auto' || typeof f16Opt === 'boolean', 'wasm f16Scales', '"auto", true or false', f16Opt);
  const f16 = f16Opt !== false && caps.f16;
  if (f16Opt === true && !caps.f16) notes.push('f16 scales requested but this runtime has no f32x4.promote_low_f16x8');
  // each variant with f16 scales first, then the same without (should the records kernels fail)
  const variants: KernelVariant[] = [];
  const add = (v: KernelVariant) => variants.push(...(f16 ? [{ ...v, f16: true }, v] : [v]));
  if (relaxedOpt !== false && caps.relaxed) {
    for (const dot of dotOpt === 'auto' ? await relaxedDotOrder() : [dotOpt]) add({ relaxed: true, dot });
  } else if (relaxedOpt === true) notes.push('relaxed SIMD requested but unavailable');
  add({ relaxed: false });

  for (const v of variants) {
    let core: Core | null = null;
    try {
      const c = (core = await Core.create(v, shared, opts));
      const extra: string[] = [];
      let dot8 = v.relaxed && relaxed8Opt !== false && probeRelaxedDot8(c);
      const hint = v.relaxed && v.dot && isNode ? newerNodeHint(v.dot, hostV8Major(), process.arch, await cpuHasAvxVnni()) : null;
      if (v.relaxed && relaxed8Opt === true && !dot8) extra.push("8-bit codes on the relaxed dot requested but this engine's relaxed dot is not exact for them");
      const make = () => {
        c.relaxed8 = dot8;
        const f16Note = v.f16 ? `, f16 scales${caps.f16ViaFlag ? ' (V8 flag)' : ''}` : '';
        const name = v.relaxed ? `SIMD128 + relaxed SIMD (${v.dot} dot${dot8 ? ', 8-bit codes' : ''}${caps.relaxedViaFlag ? ', V8 flag' : ''}${f16Note})` : `SIMD128${f16Note ? ` (${f16Note.slice(2)})` : ''}`;
        const desc = `${name}, ${threads} thread${threads > 1 ? 's' : ''}, ${activations === 'int8' ? `int${v.relaxed ? 8 : 16} activations` : 'exact f32'} by default`;
        return new WasmBackend(c, [desc, ...notes, ...extra, ...(hint ? [hint] : [])].join('; '), activations, actBlockMax);
      };
      let be = make();
      try {
        selfCheck(be);
      } catch (e) {
        if (!dot8) throw e;
        // the probe passed but the kernels disagree: keep the relaxed kernels without 8-bit codes
        extra.push(`8-bit codes on the relaxed dot failed the self-check (${(e as Error).message})`);
        dot8 = false;
        be = make();
        selfCheck(be);
      }
      await core.startThreads(threads, opts.barrierTimeoutMs);
      return be;
    } catch (e) {
      core?.dispose();
      if ((!v.relaxed && !v.f16) || e instanceof FluteError) throw e instanceof FluteError ? e : new FluteError('E_BACKEND', `wasm: SIMD128 kernels failed their self-check: ${(e as Error).message}`, { cause: e });
      notes.push(`${v.relaxed ? `relaxed SIMD with ${v.dot} dot` : 'SIMD128'}${v.f16 ? ' with f16 scales' : ''} failed its self-check (${(e as Error).message})`);
    }
  }
  throw new FluteError('E_BACKEND', 'wasm: no kernel variant could be started');
}
