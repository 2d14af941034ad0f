// WebGPU kernel benchmark: LUT matmul against the same backend's dense kernel (same shape, M and
// precision, measured in the same run), timed on the GPU with timestamp queries where the adapter has
// them. Rows match bench/kernels.ts (KernelBenchRow) plus what only a GPU run has (adapter, timer,
// split-K, table copies). Also the duplication sweep: time against the number of table copies c.

import { FluteError } from '../src/errors.js';
import { randomDense, randomQuantized } from './kernels.js';
import { createWebGpuBackend, type GpuKernelBackend, type GpuPreparedLinear, type WebGpuBackendOptions } from '../src/kernels/webgpu/index.js';
import { adapterName } from '../src/kernels/webgpu/gpu.js';

export interface WebGpuKernelBenchOptions {
  readonly shapes: readonly (readonly [number, number])[]; // [N, K] pairs
  readonly m: readonly number[];
  readonly bits: readonly number[];
  readonly groupSizes: readonly number[];
  /** 'auto' (default): f16 where the adapter has shader-f16, else f32. The dense baseline uses the same. */
  readonly precision?: 'auto' | 'f32' | 'f16';
  /** Dispatches per timed sample (back to back in one compute pass). Default 10. */
  readonly reps?: number;
  /** Timed samples per case, median reported. Default 5. */
  readonly samples?: number;
  /** Table copies for every LUT case (default: the backend's choice). */
  readonly duplication?: number;
  /** Use this backend instead of creating one (it is not disposed). */
  readonly backend?: GpuKernelBackend;
  readonly backendOptions?: WebGpuBackendOptions;
  readonly log?: (line: string) => void;
}

/** One measured case: bench/kernels.ts's KernelBenchRow fields, then GPU-only ones. */
export interface WebGpuKernelBenchRow {
  readonly backend: 'webgpu';
  readonly N: number;
  readonly K: number;
  readonly m: number;
  readonly bits: number;
  readonly groupSize: number;
  readonly threads: number; // 1: a GPU run has no CPU thread count
  readonly ms: number; // median GPU time of one matmul (all its dispatches)
  readonly weightGBps: number; // bytes the kernel reads for the weights (codes + scales + table) / ms
  readonly speedupVsDense: number; // denseMs / ms
  readonly denseMs: number; // the dense kernel in the same precision, same N, K, m, this run
  readonly variant: string; // backend info(): adapter, precision, reduction, timer
  readonly adapter: string;
  readonly precision: 'f32' | 'f16';
  readonly timer: 'timestamp-query' | 'wall-clock';
  readonly path: 'gemv' | 'gemm';
  readonly splitK: number;
  readonly duplication: number;
}

const round = (v: number, digits: number) => Math.round(v * 10 ** digits) / 10 ** digits;

// ---------------------------------------------------------------------------------------------
// The benchmark

/** `flute bench kernels --backend webgpu`: LUT kernels against dense, per shape, bits, g and M. */
export async function runWebGpuKernelBench(opts: WebGpuKernelBenchOptions): Promise<WebGpuKernelBenchRow[]> {
  const log = opts.log ?? (() => {});
  const be = opts.backend ?? (await createWebGpuBackend({ precision: opts.precision ?? 'auto', ...opts.backendOptions }));
  const variant = be.info().variant;
  const adapter = adapterName(be.adapter());
  const timing = { reps: opts.reps ?? 10, samples: opts.samples ?? 5 };
  log(`backend webgpu: ${variant}`);
  const rows: WebGpuKernelBenchRow[] = [];
  try {
    for (const [n, k] of opts.shapes) {
      const denseMs = new Map<number, number>();
      let p: GpuPreparedLinear = await be.prepare(randomDense(n, k, 7));
      try {
        for (const m of opts.m) {
          denseMs.set(m, (await be.time(p, m, timing)).ms);
          log(`  dense ${n}x${k} m=${m}: ${denseMs.get(m)!.toFixed(4)} ms`);
        }
      } finally {
        be.release(p);
      }
      for (const bits of opts.bits) {
        for (const g of opts.groupSizes) {
          p = await be.prepare(randomQuantized(n, k, bits, g, bits * 1000 + g));
          try {
            for (const m of opts.m) {
              const t = await be.time(p, m, { ...timing, duplication: opts.duplication });
              const d = denseMs.get(m)!;
              const row: WebGpuKernelBenchRow = {
                backend: 'webgpu', N: n, K: k, m, bits, groupSize: g, threads: 1, ms: round(t.ms, 4),
                weightGBps: round(p.bytes / (t.ms * 1e6), 3), speedupVsDense: round(d / t.ms, 3), denseMs: round(d, 4), variant,
                adapter, precision: t.plan.precision, timer: t.timer, path: t.plan.path, splitK: t.plan.splitK, duplication: t.plan.duplication,
              };
              rows.push(row);
              log(`  lut ${n}x${k} b=${bits} g=${g} m=${m}: ${row.ms.toFixed(4)} ms, ${row.weightGBps.toFixed(2)} GB/s, ${row.speedupVsDense.toFixed(2)}x dense (${t.plan.path}, split ${t.plan.splitK}, c=${t.plan.duplication})`);
            }
          } finally {
            be.release(p);
          }
        }
      }
    }
  } finally {
    if (!opts.backend) be.dispose();
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Table duplication sweep

export interface DuplicationRow {
  readonly N: number;
  readonly K: number;
  readonly m: number;
  readonly bits: number;
  readonly groupSize: number;
  readonly duplication: number;
  readonly ms: number;
  readonly path: 'gemv' | 'gemm';
  readonly timer: 'timestamp-query' | 'wall-clock';
}

/** Times each (shape, bits, M) with c = 1, 2, 4, 8 copies of the pair table (skipping c that do not fit). */
export async function runDuplicationSweep(opts: Omit<WebGpuKernelBenchOptions, 'duplication'> & { readonly candidates?: readonly number[] }): Promise<{ adapter: string; variant: string; rows: DuplicationRow[] }> {
  const be = opts.backend ?? (await createWebGpuBackend({ precision: opts.precision ?? 'auto', ...opts.backendOptions }));
  const log = opts.log ?? (() => {});
  const rows: DuplicationRow[] = [];
  try {
    for (const [n, k] of opts.shapes) {
      for (const bits of opts.bits) {
        for (const g of opts.groupSizes) {
          const p = await be.prepare(randomQuantized(n, k, bits, g, 99));
          try {
            for (const m of opts.m) {
              for (const c of opts.candidates ?? [1, 2, 4, 8]) {
                const t = await be.time(p, m, { reps: opts.reps ?? 10, samples: opts.samples ?? 5, duplication: c });
                if (t.plan.duplication !== c) continue; // did not fit in workgroup memory
                rows.push({ N: n, K: k, m, bits, groupSize: g, duplication: c, ms: round(t.ms, 4), path: t.plan.path, timer: t.timer });
                log(`  c=${c} ${n}x${k} b=${bits} g=${g} m=${m}: ${t.ms.toFixed(4)} ms`);
              }
            }
          } finally {
            be.release(p);
          }
        }
      }
    }
    return { adapter: adapterName(be.adapter()), variant: be.info().variant, rows };
  } finally {
    if (!opts.backend) be.dispose();
  }
}

/** The sweep as a Markdown table: one row per case, one column per c, the fastest in bold. */
export function formatDuplicationTable(rows: readonly DuplicationRow[]): string {
  const cs = [...new Set(rows.map((r) => r.duplication))].sort((a, b) => a - b);
  const key = (r: DuplicationRow) => `${r.N}x${r.K}|${r.bits}|${r.groupSize}|${r.m}`;
  const cases = new Map<string, DuplicationRow[]>();
  for (const r of rows) cases.set(key(r), [...(cases.get(key(r)) ?? []), r]);
  const head = `| N x K | bits | g | m | path | ${cs.map((c) => `c=${c} ms`).join(' | ')} |`;
  const sep = `|---|---:|---:|---:|---|${cs.map(() => '---:').join('|')}|`;
  const body = [...cases.values()].map((rs) => {
    const best = Math.min(...rs.map((r) => r.ms));
    const cell = (c: number) => {
      const r = rs.find((x) => x.duplication === c);
      if (!r) return 'n/a';
      return r.ms === best ? `**${r.ms.toFixed(3)}**` : r.ms.toFixed(3);
    };
    const r0 = rs[0];
    return `| ${r0.N}x${r0.K} | ${r0.bits} | ${r0.groupSize} | ${r0.m} | ${r0.path} | ${cs.map(cell).join(' | ')} |`;
  });
  return [head, sep, ...body].join('\n');
}

/** Markdown table of bench rows, naming the adapter (the BENCHMARKS.md format of bench/kernels.ts plus GPU columns). */
export function formatWebGpuBenchTable(rows: readonly WebGpuKernelBenchRow[]): string {
  if (rows.length === 0) throw new FluteError('E_OPTION', 'formatWebGpuBenchTable: no rows');
  const head = '| N x K | m | bits | g | precision | path | split-K | c | ms | weight GB/s | dense ms | speed-up vs dense |';
  const sep = '|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|';
  const body = rows.map(
    (r) =>
      `| ${r.N}x${r.K} | ${r.m} | ${r.bits} | ${r.groupSize} | ${r.precision} | ${r.path} | ${r.splitK} | ${r.duplication} | ${r.ms.toFixed(3)} | ${r.weightGBps.toFixed(2)} | ${r.denseMs.toFixed(3)} | ${r.speedupVsDense.toFixed(2)}x |`,
  );
  return [`Adapter: ${rows[0].adapter}; timer: ${rows[0].timer}.`, '', head, sep, ...body].join('\n');
}
