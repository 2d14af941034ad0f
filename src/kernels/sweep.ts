// The kernel sweep: thousands of random layer configurations (bits 1..8, table kinds, group sizes
// including ragged ones and g > K, N, K and M from 1 to 64 with a few larger, f16 and f32 scales) run on
// every backend variant present (wasm with 1 and 2 threads, int8 and f32 activations; webgpu f32 and
// f16 when an adapter exists) and compared with the reference. Each variant is held to the tolerance it
// states (BackendInfo.relTolerance; webgpu's GPU_TOLERANCE per precision), plus, for f16 arithmetic, the
// f16 rounding of x measured against |W| |x| (it does not shrink when a sum cancels). Reports the worst case.

import { FluteError } from '../errors.js';
import { relativeError, type ComputeType, type QuantizedLinear } from '../quant/linear.js';
import { quantizeRtn } from '../quant/rtn.js';
import { TABLE_KINDS, type TableKind } from '../quant/tables.js';
import { createRefBackend } from './ref/index.js';
import type { KernelBackend, PreparedLinear } from './types.js';
import type { GpuKernelBackend } from './webgpu/types.js';
import { mulberry32 } from '../rng.js';

export type SweepBackendName = 'wasm' | 'webgpu';
export const SWEEP_BACKENDS: readonly SweepBackendName[] = ['wasm', 'webgpu'];

/** One random configuration. */
export interface SweepConfig {
  readonly bits: number;
  readonly groupSize: number;
  readonly table: TableKind;
  readonly scaleDtype: 'f16' | 'f32';
  readonly n: number;
  readonly k: number;
  readonly m: number;
}

export function configId(c: SweepConfig): string {
  return `lut(kind=${c.table}${c.bits},g=${c.groupSize},scales=${c.scaleDtype},m=${c.m},n=${c.n},k=${c.k})`;
}

export interface SweepCaseResult {
  readonly variant: string;
  readonly id: string;
  readonly relErr: number;
  readonly tolerance: number;
  readonly ok: boolean;
  readonly error?: string;
  /** wasm int8: the path the layer took (relaxed7, relaxed8, simd, exact) and that path's stated bound for its table. */
  readonly path?: string;
  readonly pathBound?: number;
}

/** One path's share of a variant's cases (wasm int8: which codebook and kernels ran). */
export interface PathReport {
  cases: number;
  worst: { id: string; relErr: number } | undefined;
  /** Largest relErr / (the layer's stated path bound): above 1 where a single draw's sum cancels. */
  worstOverBound: { id: string; ratio: number } | undefined;
}

export interface VariantReport {
  readonly variant: string;
  readonly tolerance: number;
  cases: number;
  /** Configurations the variant says it cannot run (unsupported()). */
  skipped: number;
  worst: { id: string; relErr: number } | undefined;
  readonly failures: SweepCaseResult[];
  /** Per path, where the variant reports one (wasm int8). */
  readonly paths: Record<string, PathReport>;
}

export interface SweepReport {
  readonly seed: number;
  readonly configs: number;
  readonly variants: VariantReport[];
  /** Why a backend asked for is absent (no WebGPU adapter...). */
  readonly absent: Record<string, string>;
  readonly failures: number;
  readonly elapsedMs: number;
}

// ---------------------------------------------------------------------------------------------
// Random configurations

/** Sizes: mostly 1..64 (odd and ragged ones included), one in eight up to 300. */
function size(r: () => number): number {
  return r() < 0.125 ? 65 + Math.floor(r() * 236) : 1 + Math.floor(r() * 64);
}

export function randomConfig(r: () => number): SweepConfig {
  const bits = r() < 0.6 ? [2, 3, 4][Math.floor(r() * 3)] : 1 + Math.floor(r() * 8);
  const kinds = (Object.keys(TABLE_KINDS) as TableKind[]).filter((t) => !TABLE_KINDS[t].unsupportedBits(bits));
  const table = kinds[Math.floor(r() * kinds.length)];
  const n = size(r);
  const k = size(r);
  const m = r() < 0.3 ? 1 + Math.floor(r() * 4) : size(r);
  const gChoice = Math.floor(r() * 5);
  // FLUTE's sizes, one group per row, g > K, or a ragged size that leaves a short last group.
  const groupSize = gChoice === 0 ? [32, 64, 128][Math.floor(r() * 3)] : gChoice === 1 ? k : gChoice === 2 ? k + 1 + Math.floor(r() * 64) : 1 + Math.floor(r() * Math.max(1, k));
  return { bits, groupSize, table, scaleDtype: r() < 0.7 ? 'f16' : 'f32', n, k, m };
}

function makeLayer(c: SweepConfig, r: () => number): QuantizedLinear {
  const w = Float32Array.from({ length: c.n * c.k }, () => (r() * 2 - 1) * (r() < 0.02 ? 8 : 1)); // a few outliers
  const values = c.table === 'custom' ? Float32Array.from({ length: 2 ** c.bits }, () => r() * 2 - 1) : undefined;
  return quantizeRtn(w, c.n, c.k, { bits: c.bits, groupSize: c.groupSize, tableKind: c.table, tableValues: values, scaleDtype: c.scaleDtype }).layer;
}

/** Unit roundoff of f16 (2^-11): the relative error of rounding one input to f16. */
const F16_UNIT = 2 ** -11;

function frobenius(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

/** |W| |x|: the same indices with |table| and |scales|, times |x|, on the reference. */
function absProduct(ref: KernelBackend, layer: QuantizedLinear, x: Float32Array, m: number): Float32Array {
  const abs = { ...layer, table: layer.table.map(Math.abs), scales: layer.scales.map(Math.abs) };
  const p = ref.prepare(abs);
  try {
    return ref.matmul(p, x.map(Math.abs), m);
  } finally {
    ref.release(p);
  }
}

// ---------------------------------------------------------------------------------------------
// Variants

interface Variant {
  readonly name: string;
  readonly tolerance: number;
  readonly computeType: ComputeType;
  unsupported(layer: QuantizedLinear): string | null;
  /** y, and the path the layer took with its stated bound where the backend says (wasm int8). */
  run(layer: QuantizedLinear, x: Float32Array, m: number): Promise<{ y: Float32Array; path?: { path: string; bound: number } }>;
  dispose(): void;
}

function cpuVariant(name: string, b: KernelBackend, pathOf?: (p: PreparedLinear) => { path: string; bound: number }): Variant {
  return {
    name,
    tolerance: b.info().relTolerance ?? 1e-5,
    computeType: 'f32',
    unsupported: (l) => b.unsupported(l),
    async run(layer, x, m) {
      const p = b.prepare(layer);
      try {
        return { y: b.matmul(p, x, m), path: pathOf?.(p) };
      } finally {
        b.release(p);
      }
    },
    dispose: () => b.dispose(),
  };
}

function gpuVariant(name: string, b: GpuKernelBackend, computeType: ComputeType, tolerance: number): Variant {
  return {
    name, tolerance, computeType,
    unsupported: (l) => b.unsupported(l),
    async run(layer, x, m) {
      const p = await b.prepare(layer);
      try {
        return { y: await b.matmul(p, x, m, undefined, { computeType }) };
      } finally {
        b.release(p);
      }
    },
    dispose: () => b.dispose(),
  };
}

async function createVariants(backends: readonly SweepBackendName[], absent: Record<string, string>): Promise<Variant[]> {
  const out: Variant[] = [];
  if (backends.includes('wasm')) {
    const { createWasmBackend } = await import('./wasm/index.js');
    for (const threads of [1, 2]) {
      for (const activations of ['int8', 'f32'] as const) {
        const b = await createWasmBackend({ threads, activations });
        out.push(cpuVariant(`wasm(threads=${threads},act=${activations})`, b, activations === 'int8' ? (p) => b.intPath(p) : undefined));
      }
    }
  }
  if (backends.includes('webgpu')) {
    try {
      const gpu = await import('./webgpu/index.js');
      const probe = await gpu.webgpuAvailable();
      if (!probe.ok) absent.webgpu = probe.reason ?? 'no adapter';
      else {
        out.push(gpuVariant('webgpu(f32)', await gpu.createWebGpuBackend({ precision: 'f32' }), 'f32', gpu.GPU_TOLERANCE.f32));
        out.push(gpuVariant('webgpu(f16)', await gpu.createWebGpuBackend({ precision: 'f16' }), 'f16', gpu.GPU_TOLERANCE.f16));
      }
    } catch (e) {
      absent.webgpu = (e as Error).message;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The sweep

export interface SweepOptions {
  /** Random configurations per backend (each runs on every variant of that backend). */
  readonly cases: Partial<Record<SweepBackendName, number>>;
  readonly seed?: number;
  readonly onCase?: (r: SweepCaseResult) => void;
}

export async function runSweep(opts: SweepOptions): Promise<SweepReport> {
  const t0 = performance.now();
  const seed = opts.seed ?? 1;
  const backends = SWEEP_BACKENDS.filter((b) => (opts.cases[b] ?? 0) > 0);
  const absent: Record<string, string> = {};
  const variants = await createVariants(backends, absent);
  const ref = createRefBackend();
  const reports = variants.map((v): VariantReport => ({ variant: v.name, tolerance: v.tolerance, cases: 0, skipped: 0, worst: undefined, failures: [], paths: {} }));
  let configs = 0;
  try {
    for (const backend of backends) {
      const mine = variants.map((v, i) => ({ v, rep: reports[i] })).filter(({ v }) => v.name.startsWith(backend));
      // Each backend gets its own stream, so `--backend wasm` replays the same configurations as a full run.
      const r = mulberry32(seed * 2654435761 + backend.length);
      for (let c = 0; c < (opts.cases[backend] ?? 0); c++) {
        const cfg = randomConfig(r);
        const layer = makeLayer(cfg, r);
        const x = Float32Array.from({ length: cfg.m * cfg.k }, () => r() * 2 - 1);
        const id = configId(cfg);
        configs++;
        const refPrepared = ref.prepare(layer);
        const want = new Map<ComputeType, Float32Array>();
        let magnitude: Float32Array | undefined; // |W| |x|, made when an f16 variant needs it
        for (const { v, rep } of mine) {
          if (v.unsupported(layer)) {
            rep.skipped++;
            continue;
          }
          let w = want.get(v.computeType);
          if (!w) want.set(v.computeType, (w = ref.matmul(refPrepared, x, cfg.m, undefined, { computeType: v.computeType })));
          let result: SweepCaseResult;
          try {
            const { y: got, path } = await v.run(layer, x, cfg.m);
            const relErr = relativeError(got, w);
            // f16 arithmetic rounds x to f16 as well: that error is bounded by u16 * sum|W x| per output, not
            // by |y|, so a layer whose sums cancel gets that much more (FLUTE's 2e-3 presumes no cancellation).
            const allowance = v.computeType === 'f16' ? F16_UNIT * frobenius(magnitude ??= absProduct(ref, layer, x, cfg.m)) / Math.max(frobenius(w), Number.MIN_VALUE) : 0;
            result = { variant: v.name, id, relErr, tolerance: v.tolerance, ok: relErr <= v.tolerance + allowance, path: path?.path, pathBound: path?.bound };
          } catch (e) {
            result = { variant: v.name, id, relErr: NaN, tolerance: v.tolerance, ok: false, error: e instanceof FluteError ? `${e.code}: ${e.message}` : String(e) };
          }
          rep.cases++;
          if (!rep.worst || !(result.relErr <= rep.worst.relErr)) rep.worst = { id, relErr: result.relErr };
          if (result.path) {
            const pr = (rep.paths[result.path] ??= { cases: 0, worst: undefined, worstOverBound: undefined });
            pr.cases++;
            if (!pr.worst || !(result.relErr <= pr.worst.relErr)) pr.worst = { id, relErr: result.relErr };
            const ratio = result.relErr / (result.pathBound || Number.MIN_VALUE);
            if (result.path !== 'exact' && (!pr.worstOverBound || !(ratio <= pr.worstOverBound.ratio))) pr.worstOverBound = { id, ratio };
          }
          if (!result.ok) rep.failures.push(result);
          opts.onCase?.(result);
        }
        ref.release(refPrepared);
      }
    }
  } finally {
    for (const v of variants) v.dispose();
  }
  return { seed, configs, variants: reports, absent, failures: reports.reduce((a, r) => a + r.failures.length, 0), elapsedMs: performance.now() - t0 };
}
