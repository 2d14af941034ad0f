// Kernel benchmark: LUT matmul on a backend against that backend's dense f32 kernel, same shapes, M and
// threads, in the same run. Reports the median time of several repetitions after a warm-up, the
// weight bytes streamed per second and the speed-up over dense. Printing and files are the CLI's job.

import { FluteError } from '../src/errors.js';
import type { DenseLinear, QuantizedLinear } from '../src/quant/linear.js';
import { buildTable } from '../src/quant/tables.js';
import type { PreparedLinear } from '../src/kernels/types.js';
import { createWasmBackend, type WasmActivations, type WasmMatmulOptions } from '../src/kernels/wasm/index.js';

export type BenchBackend = 'wasm';

export interface KernelBenchOptions {
  readonly backend: BenchBackend;
  readonly shapes: readonly (readonly [number, number])[]; // [N, K] pairs
  readonly m: readonly number[];
  readonly bits: readonly number[];
  readonly groupSizes: readonly number[];
  readonly threads: readonly number[];
  /** Activation path of the LUT kernels (default: the backend's default, int8). */
  readonly activations?: WasmActivations;
  /** Timed rounds per case (median reported); default 9, fewer when a case is slow (see maxCaseMs). */
  readonly reps?: number;
  /** Time budget per case in ms; repetitions stop early (at least 3) once it is spent. Default 1500. */
  readonly maxCaseMs?: number;
  /** Progress lines (stderr in the CLI). */
  readonly log?: (line: string) => void;
}

/** One measured case (the --json row format). */
export interface KernelBenchRow {
  readonly backend: string;
  readonly N: number;
  readonly K: number;
  readonly m: number;
  readonly bits: number;
  readonly groupSize: number;
  readonly threads: number;
  readonly ms: number; // median time of one matmul
  readonly weightGBps: number; // (packed index bytes + scale bytes the kernel reads) / ms
  readonly speedupVsDense: number; // median over rounds of dense time / this time (round-robin timing)
  readonly denseMs: number; // the dense f32 kernel, same N, K, m, threads, measured in this run
  readonly variant: string; // what ran, from the backend's info()
}

/** LLaMA-3-8B's linear shapes (q/o, k/v, gate/up, down) and an 8192 square: the default. */
export const DEFAULT_SHAPES: readonly (readonly [number, number])[] = [
  [4096, 4096],
  [1024, 4096],
  [14336, 4096],
  [4096, 14336],
  [8192, 8192],
];

// ---------------------------------------------------------------------------------------------
// Data: random but valid layers (timings do not depend on the values)

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
}

/** A valid random LUT layer (NF table, f32 scales); shared with the WebGPU bench. */
export function randomQuantized(n: number, k: number, bits: number, g: number, seed: number): QuantizedLinear {
  const r = lcg(seed);
  const G = Math.ceil(k / g);
  const packed = new Uint8Array(n * Math.ceil((k * bits) / 8));
  const words = new Uint32Array(packed.buffer, 0, packed.length >> 2);
  for (let i = 0; i < words.length; i++) words[i] = (r() * 4294967296) >>> 0;
  for (let i = words.length * 4; i < packed.length; i++) packed[i] = (r() * 256) | 0;
  // clear the unused high bits of each row's last byte, as the canonical layout requires
  const rowBytes = Math.ceil((k * bits) / 8);
  const spare = rowBytes * 8 - k * bits;
  if (spare) for (let row = 0; row < n; row++) packed[row * rowBytes + rowBytes - 1] &= 0xff >> spare;
  const scales = new Float32Array(n * G);
  for (let i = 0; i < scales.length; i++) scales[i] = 0.001 + 0.01 * r();
  return { kind: 'quantized', n, k, bits, groupSize: g, tableKind: 'nf', table: buildTable('nf', bits), scaleDtype: 'f32', scales, packed };
}

export function randomDense(n: number, k: number, seed: number): DenseLinear {
  const r = lcg(seed);
  const weight = new Float32Array(n * k);
  for (let i = 0; i < weight.length; i++) weight[i] = r() - 0.5;
  return { kind: 'dense', n, k, weight };
}

// ---------------------------------------------------------------------------------------------
// Timing

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/**
 * Warm-up so V8 has tiered the kernels up from Liftoff to TurboFan: run each for 150 ms, then pause so
 * the background compiler gets a core (on a small machine it competes with the benchmark), run again.
 */
async function warm(runs: (() => void)[]): Promise<void> {
  for (let pass = 0; pass < 2; pass++) {
    for (const run of runs) {
      const t0 = performance.now();
      for (let i = 0; i < 2 || performance.now() - t0 < 150; i++) run();
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Times several kernels round-robin (one run of each per round), so a slow spell of a shared machine
 * hits all of them alike; per kernel the median time and the median of its per-round ratio to the
 * first kernel (the dense baseline). Stops after `reps` rounds, or after 3 once the budget is spent.
 */
async function timeRoundRobin(runs: (() => void)[], reps: number, budgetMs: number): Promise<{ ms: number; ratio: number }[]> {
  await warm(runs);
  const times = runs.map(() => [] as number[]);
  const start = performance.now();
  for (let r = 0; r < reps; r++) {
    runs.forEach((run, i) => {
      const t0 = performance.now();
      run();
      times[i].push(performance.now() - t0);
    });
    if (r >= 2 && performance.now() - start > budgetMs) break;
  }
  return times.map((t) => ({ ms: median(t), ratio: median(t.map((v, r) => times[0][r] / v)) }));
}

// ---------------------------------------------------------------------------------------------
// The benchmark

export async function runKernelBench(opts: KernelBenchOptions): Promise<KernelBenchRow[]> {
  if (opts.backend !== 'wasm') throw new FluteError('E_OPTION', `bench kernels --backend: expected "wasm", got ${JSON.stringify(opts.backend)}`);
  const log = opts.log ?? (() => {});
  const reps = opts.reps ?? 9;
  const budget = opts.maxCaseMs ?? 1500;
  const mx = Math.max(...opts.m);
  const rows: KernelBenchRow[] = [];
  const act: WasmMatmulOptions = opts.activations ? { activations: opts.activations } : {};

  for (const threads of opts.threads) {
    const be = await createWasmBackend({ threads, activations: opts.activations });
    const variant = be.info().variant;
    log(`backend wasm: ${variant}`);
    try {
      for (const [n, k] of opts.shapes) {
        const x = new Float32Array(mx * k);
        const r = lcg(n * 31 + k);
        for (let i = 0; i < x.length; i++) x[i] = r() * 2 - 1;
        const out = new Float32Array(mx * n);
        // the dense baseline and every LUT variant of this shape, prepared side by side
        const shapeRows: KernelBenchRow[] = [];
        const dense = be.prepare(randomDense(n, k, 7));
        const luts: { bits: number; g: number; p: PreparedLinear }[] = [];
        try {
          for (const bits of opts.bits) for (const g of opts.groupSizes) luts.push({ bits, g, p: be.prepare(randomQuantized(n, k, bits, g, bits * 1000 + g)) });
          for (const m of opts.m) {
            const xm = x.subarray(0, m * k);
            const om = out.subarray(0, m * n);
            const runs = [() => void be.matmul(dense, xm, m, om), ...luts.map(({ p }) => () => void be.matmul(p, xm, m, om, act))];
            const [dense0, ...lutT] = await timeRoundRobin(runs, reps, budget * runs.length);
            const denseMs = dense0.ms;
            log(`  dense ${n}x${k} m=${m} threads=${threads}: ${denseMs.toFixed(3)} ms`);
            luts.forEach(({ bits, g, p }, i) => {
              const ms = lutT[i].ms;
              // bytes the kernel streams: restructured indices + f32 scales (+ the 96-byte table)
              const row: KernelBenchRow = {
                backend: 'wasm', N: n, K: k, m, bits, groupSize: g, threads, ms: round(ms, 4),
                weightGBps: round(p.bytes / (ms * 1e6), 3), speedupVsDense: round(lutT[i].ratio, 3), denseMs: round(denseMs, 4), variant,
              };
              shapeRows.push(row);
              log(`  lut ${n}x${k} b=${bits} g=${g} m=${m} threads=${threads}: ${ms.toFixed(3)} ms, ${row.weightGBps.toFixed(2)} GB/s, ${row.speedupVsDense.toFixed(2)}x dense`);
            });
          }
        } finally {
          be.release(dense);
          for (const { p } of luts) be.release(p);
        }
        // measured m-major (round-robin per m); reported bits-major, as in the table
        rows.push(...shapeRows.sort((a, b) => a.bits - b.bits || a.groupSize - b.groupSize || a.m - b.m));
      }
    } finally {
      be.dispose();
    }
  }
  return rows;
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** The rows as a Markdown table (the BENCHMARKS.md format). */
export function formatBenchTable(rows: readonly KernelBenchRow[]): string {
  const head = '| N x K | m | bits | g | threads | ms | weight GB/s | dense ms | speed-up vs dense |';
  const sep = '|---|---:|---:|---:|---:|---:|---:|---:|---:|';
  const body = rows.map((r) => `| ${r.N}x${r.K} | ${r.m} | ${r.bits} | ${r.groupSize} | ${r.threads} | ${r.ms.toFixed(3)} | ${r.weightGBps.toFixed(2)} | ${r.denseMs.toFixed(3)} | ${r.speedupVsDense.toFixed(2)}x |`);
  return [head, sep, ...body].join('\n');
}
