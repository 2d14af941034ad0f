// flute bench kernels: the LUT kernel benchmark of bench/kernels.ts behind command-line options; prints
// a table (or JSON rows), optionally writes them to a file and rewrites the marked table in BENCHMARKS.md.

import os from 'node:os';
import { FluteError } from '../errors.js';
import { writeFileAtomic } from '../format/atomic.js';
import { DEFAULT_SHAPES, formatBenchTable, runKernelBench, type KernelBenchRow } from '../../bench/kernels.js';
import { parse, str, oneOf, type Parsed } from './args.js';
import { replaceMarkedSection } from './markdown.js';

// Defaults, one place (the matrix)
const DEFAULTS = {
  shapes: DEFAULT_SHAPES, // LLaMA-3-8B q/o, k/v, gate/up, down, and 8192x8192
  m: [1, 4, 16, 32], // GEMV and small GEMMs
  bits: [2, 3, 4],
  groupSize: [128],
  threads: [1, 2],
  reps: 9, // timed round-robin rounds per case (dense and each LUT once per round), median reported
  maxCaseMs: 1500, // per-case time budget: slow cases stop after 3 repetitions
};

const HELP = `Usage: flute bench kernels|e2e ...      (flute bench e2e --help: whole models, tokens/s and memory)
       flute bench vs-llama-cpp ...     (the same GGUF file in llama.cpp and flute-engine, tokens/s)

       flute bench kernels [--backend wasm] [--shape NxK ...] [--m LIST] [--bits LIST]
                          [--group-size LIST] [--threads LIST] [--activations int8|f32]
                          [--reps N] [--json] [--out FILE] [--update-md BENCHMARKS.md]

Times the LUT matmul kernels against the same backend's dense f32 kernel (same shape, M and threads,
measured round-robin in the same run): median of several rounds after a warm-up. weight GB/s counts
the bytes the kernel streams (restructured indices + f32 scales); the speed-up is the median of the
per-round dense/LUT time ratios.

  --backend       kernel backend: wasm, or webgpu (the GPU's dense kernel is the baseline; --threads
                  does not apply; the table names the adapter)
  --shape NxK     output x input features, repeatable (default: LLaMA-3-8B's 4096x4096, 1024x4096,
                  14336x4096, 4096x14336, and 8192x8192)
  --m             batch rows, comma list (default 1,4,16,32)
  --bits          index bits, comma list (default 2,3,4)
  --group-size    group sizes, comma list (default 128)
  --threads       thread counts, comma list (default 1,2)
  --activations   LUT activation path: int8 (default, fast) or f32 (exact)
  --reps          timed rounds per case (default 9; fewer once a case takes 1.5 s per kernel)
  --json          print the rows as a JSON array
  --out FILE      also write the JSON rows to FILE
  --update-md F   rewrite the table between <!-- kernels:begin --> and <!-- kernels:end --> in F

Example:
  flute bench kernels --shape 4096x4096 --m 1,16 --bits 4 --threads 1 --json`;

function intList(p: Parsed, name: string, dflt: readonly number[], min: number, max: number): number[] {
  const raw = str(p, name);
  if (raw === undefined) return [...dflt];
  const parts = raw.split(',').map((s) => s.trim());
  const vals = parts.map(Number);
  if (parts.some((s) => s === '') || vals.some((v) => !Number.isInteger(v) || v < min || v > max)) {
    throw new FluteError('E_OPTION', `--${name}: expected a comma list of integers from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return vals;
}

function shapes(p: Parsed): (readonly [number, number])[] {
  const raw = p.values.shape;
  if (raw === undefined) return [...DEFAULTS.shapes];
  const list = (Array.isArray(raw) ? raw : [String(raw)]).flatMap((s) => s.split(','));
  return list.map((s) => {
    const m = /^\s*(\d+)\s*[xX]\s*(\d+)\s*$/.exec(s);
    const n = m ? Number(m[1]) : 0;
    const k = m ? Number(m[2]) : 0;
    if (!m || n < 1 || k < 1 || n * k > 2 ** 29) {
      throw new FluteError('E_OPTION', `--shape: expected NxK with positive integers (N*K <= 2^29), e.g. 4096x4096, got ${JSON.stringify(s)}`);
    }
    return [n, k] as const;
  });
}

/** flute bench kernels --backend webgpu: the same matrix on the GPU, against its dense kernel. */
async function benchWebGpu(p: Parsed, argv: string[]): Promise<number> {
  const { runWebGpuKernelBench, formatWebGpuBenchTable } = await import('../../bench/kernels-webgpu.js');
  const rows = await runWebGpuKernelBench({
    shapes: shapes(p),
    m: intList(p, 'm', DEFAULTS.m, 1, 4096),
    bits: intList(p, 'bits', DEFAULTS.bits, 1, 8),
    groupSizes: intList(p, 'group-size', DEFAULTS.groupSize, 1, 1 << 20),
    log: (line) => process.stderr.write(line + '\n'),
  });
  const table = formatWebGpuBenchTable(rows);
  const out = str(p, 'out');
  if (out) await writeFileAtomic(out, [new TextEncoder().encode(JSON.stringify(rows, null, 2) + '\n')]);
  const md = str(p, 'update-md');
  if (md) {
    const body = [`Command: \`${['flute bench', ...argv].join(' ')}\``, '', `Date: ${new Date().toISOString().slice(0, 10)}.`, '', table].join('\n');
    await replaceMarkedSection(md, 'kernels-webgpu', 'WebGPU kernels', body);
  }
  console.log(p.values.json ? JSON.stringify(rows, null, 2) : table);
  return 0;
}

/** Replaces the marked section of a Markdown file (creating the file or section when missing). */
export async function updateBenchmarksMarkdown(file: string, rows: readonly KernelBenchRow[], command: string, when = new Date()): Promise<void> {
  const cpu = os.cpus()[0]?.model?.trim() ?? 'unknown CPU';
  const variants = [...new Set(rows.map((r) => r.variant.replace(/, \d+ threads?/, '')))];
  const body = [
    `Command: \`${command}\``,
    '',
    `Machine: ${cpu}, ${os.cpus().length} logical cores, Node ${process.versions.node} (V8 ${process.versions.v8}), ${process.platform}-${process.arch}; ${when.toISOString().slice(0, 10)}.`,
    `Backend variant(s): ${variants.join(' | ')}.`,
    '',
    formatBenchTable(rows),
  ].join('\n');
  await replaceMarkedSection(file, 'kernels', 'Kernels', body);
}

export async function benchCommand(argv: string[]): Promise<number> {
  if (argv[0] === 'e2e') return (await import('./bench-e2e.js')).benchE2eCommand(argv.slice(1)); // flute bench e2e --help
  if (argv[0] === 'vs-llama-cpp') return (await import('./bench-vs-llama-cpp.js')).benchVsLlamaCppCommand(argv.slice(1)); // flute bench vs-llama-cpp --help
  const p = parse('bench', argv, {
    backend: { type: 'string' },
    shape: { type: 'string', multiple: true },
    m: { type: 'string' },
    bits: { type: 'string' },
    'group-size': { type: 'string' },
    threads: { type: 'string' },
    activations: { type: 'string' },
    reps: { type: 'string' },
    out: { type: 'string' },
    'update-md': { type: 'string' },
  });
  if (p.values.help) return console.log(HELP), 0;
  const what = p.positionals[0];
  if (what !== 'kernels' || p.positionals.length > 1) {
    throw new FluteError('E_OPTION', `expected "kernels" as the first argument, got ${JSON.stringify(p.positionals.join(' ') || '')} (see flute bench --help)`);
  }
  const backend = oneOf(p, 'backend', ['wasm', 'webgpu'] as const, 'wasm');
  if (backend === 'webgpu') return benchWebGpu(p, argv);
  const activations = str(p, 'activations') === undefined ? undefined : oneOf(p, 'activations', ['int8', 'f32'] as const, 'int8');
  const rows = await runKernelBench({
    backend,
    shapes: shapes(p),
    m: intList(p, 'm', DEFAULTS.m, 1, 4096),
    bits: intList(p, 'bits', DEFAULTS.bits, 1, 8),
    groupSizes: intList(p, 'group-size', DEFAULTS.groupSize, 1, 1 << 20),
    threads: intList(p, 'threads', DEFAULTS.threads, 1, 256),
    activations,
    reps: intList(p, 'reps', [DEFAULTS.reps], 1, 1000)[0],
    maxCaseMs: DEFAULTS.maxCaseMs,
    log: (line) => process.stderr.write(line + '\n'),
  });
  const out = str(p, 'out');
  if (out) await writeFileAtomic(out, [new TextEncoder().encode(JSON.stringify(rows, null, 2) + '\n')]);
  const md = str(p, 'update-md');
  if (md) await updateBenchmarksMarkdown(md, rows, ['flute bench', ...argv].join(' '));
  if (p.values.json) console.log(JSON.stringify(rows, null, 2));
  else console.log(formatBenchTable(rows));
  return 0;
}
