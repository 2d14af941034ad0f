// flute bench e2e: the end-to-end benchmark of bench/e2e.ts behind command-line options: prefill and
// decode tokens/s and peak memory per model and weight format, printed as a table or JSON rows, and
// optionally written between the e2e markers of BENCHMARKS.md.

import os from 'node:os';
import { E2E_MODELS, E2E_WEIGHTS, formatE2eTable, GROUP_SIZE, runE2eIsolated, type E2eModel, type E2eRow, type E2eWeights } from '../../bench/e2e.js';
import { FluteError } from '../errors.js';
import { replaceMarkedSection } from './markdown.js';
import { writeFileAtomic } from '../format/atomic.js';
import { MODEL_BACKEND_NAMES } from '../kernels/registry.js';
import { isPosInt, num, oneOf, parse, str, type Parsed } from './args.js';
import { bundledModelPath } from './paths.js';

const DEFAULTS = {
  models: [...E2E_MODELS],
  weights: [...E2E_WEIGHTS], // dense f32 against W4, W3, W2 at g = 128
  // Short but honest runs: dense f32 1B streams ~5 GB per decoded token on this CPU.
  prompt: { 'llama-3.2-1b-shape': 32, stories260K: 64 } as Record<E2eModel, number>,
  decode: { 'llama-3.2-1b-shape': 16, stories260K: 128 } as Record<E2eModel, number>,
};

const HELP = `Usage: flute bench e2e [--backend auto|${MODEL_BACKEND_NAMES.join('|')}] [--threads N] [--model LIST] [--weights LIST]
                      [--prompt N] [--decode N] [--dense-output] [--json] [--out FILE] [--update-md FILE]

Prefill and decode tokens/s and peak memory of whole models: dense f32 against LUT-quantized W4, W3 and W2
(NF tables, g = ${GROUP_SIZE}, f16 scales, every linear layer including the output; the embedding stays
dense), on a synthetic model with LLaMA-3.2-1B's shapes (random weights made and quantized in memory, no
files: speed does not depend on the values) and on the bundled stories260K. Each configuration runs in
its own Node process; peak memory is that process's peak RSS (process.resourceUsage().maxRSS), building
the weights included. Prefill is one timed forward of the prompt after a warm-up; decode tokens/s is
from the median time of one decoded token (the mean is in the JSON as decodeMeanTokensPerSecond).

  --backend B       auto (default: WebGPU on a real GPU, else WebAssembly, else the reference) | ${MODEL_BACKEND_NAMES.join(' | ')}
                    webgpu: the whole forward pass on the GPU, dense rows in f16 where the adapter has
                    shader-f16 (f32 otherwise); peak memory is then host RSS, not GPU memory
  --threads N       wasm worker threads (default: the cores available)
  --model LIST      comma list of ${E2E_MODELS.join(', ')} (default both)
  --weights LIST    comma list of ${E2E_WEIGHTS.join(', ')} (default all)
  --prompt N        prompt tokens to prefill (default ${DEFAULTS.prompt['llama-3.2-1b-shape']} for the 1B shape, ${DEFAULTS.prompt.stories260K} for stories260K)
  --decode N        tokens to decode after it (default ${DEFAULTS.decode['llama-3.2-1b-shape']} for the 1B shape, ${DEFAULTS.decode.stories260K} for stories260K)
  --dense-output    keep the output layer dense f32 in the quantized models
  --json            print the rows as a JSON array
  --out FILE        also write the JSON rows to FILE
  --update-md F     rewrite the table between <!-- e2e:begin --> and <!-- e2e:end --> in F
                    (<!-- e2e-webgpu:begin/end --> when every row ran on WebGPU)

Example:
  flute bench e2e --model stories260K --weights f32,W4G128 --json`;

function list<T extends string>(p: Parsed, name: string, choices: readonly T[], dflt: readonly T[]): T[] {
  const raw = str(p, name);
  if (raw === undefined) return [...dflt];
  const items = raw.split(',').map((s) => s.trim());
  const bad = items.find((s) => !(choices as readonly string[]).includes(s));
  if (bad !== undefined || items.length === 0) throw new FluteError('E_OPTION', `--${name}: expected a comma list of ${choices.join(', ')}, got ${JSON.stringify(raw)}`);
  return items as T[];
}

/** Replaces the e2e section of a Markdown file (creating the file or the section), atomically. */
export async function updateE2eMarkdown(file: string, rows: readonly E2eRow[], command: string, when = new Date()): Promise<void> {
  const cpu = os.cpus()[0]?.model?.trim() ?? 'unknown CPU';
  const load = os.loadavg()[0].toFixed(1);
  const body = [
    `Command: \`${command}\``,
    '',
    `Machine: ${cpu}, ${os.cpus().length} logical cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.versions.node}, ${process.platform}-${process.arch}; load average ${load} at the end; ${when.toISOString().slice(0, 10)}.`,
    `Backend variant(s): ${[...new Set(rows.map((r) => r.variant))].join(' | ')}.`,
    `Runs: ${[...new Set(rows.map((r) => `${r.model} ${r.promptTokens} prompt + ${r.decodeTokens} decoded tokens`))].join('; ')}. Output layer: ${[...new Set(rows.filter((r) => r.bits !== null).map((r) => r.outputLayer))].join('/') || '-'} in the quantized rows.`,
    '',
    formatE2eTable(rows),
  ].join('\n');
  // GPU rows get a section of their own, so a GPU run never replaces the CPU table (or the reverse).
  const onGpu = rows.length > 0 && rows.every((r) => r.backend === 'webgpu');
  await replaceMarkedSection(file, onGpu ? 'e2e-webgpu' : 'e2e', onGpu ? 'End to end on WebGPU' : 'End to end', body);
}

export async function benchE2eCommand(argv: string[]): Promise<number> {
  const p = parse('bench e2e', argv, {
    backend: { type: 'string' }, threads: { type: 'string' }, model: { type: 'string' }, weights: { type: 'string' },
    prompt: { type: 'string' }, decode: { type: 'string' }, 'dense-output': { type: 'boolean' }, out: { type: 'string' }, 'update-md': { type: 'string' },
  });
  if (p.values.help) return console.log(HELP), 0;
  if (p.positionals.length > 0) throw new FluteError('E_OPTION', `flute bench e2e: unexpected argument ${JSON.stringify(p.positionals[0])} (see --help)`);
  const backend = oneOf(p, 'backend', ['auto', ...MODEL_BACKEND_NAMES] as const, 'auto');
  const threads = p.values.threads === undefined ? undefined : num(p, 'threads', 1, isPosInt, 'a positive integer');
  const models = list(p, 'model', E2E_MODELS, DEFAULTS.models);
  const weights = list<E2eWeights>(p, 'weights', E2E_WEIGHTS, DEFAULTS.weights);
  const prompt = p.values.prompt === undefined ? undefined : num(p, 'prompt', 1, isPosInt, 'a positive integer');
  const decode = p.values.decode === undefined ? undefined : num(p, 'decode', 1, isPosInt, 'a positive integer');
  const log = (line: string) => process.stderr.write(line + '\n');

  const rows: E2eRow[] = [];
  for (const model of models) {
    for (const w of weights) {
      log(`bench e2e: ${model} ${w} on ${backend}...`);
      const row = await runE2eIsolated({
        model, weights: w, backend, threads, promptTokens: prompt ?? DEFAULTS.prompt[model], decodeTokens: decode ?? DEFAULTS.decode[model],
        denseOutput: Boolean(p.values['dense-output']), storiesPath: bundledModelPath(),
      }, log);
      // --backend auto says which backend it took.
      log(`  ${backend === 'auto' ? `auto took ${row.backend}: ` : ''}prefill ${row.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${row.decodeTokensPerSecond.toFixed(2)} tok/s, peak ${(row.peakMemoryBytes / 2 ** 30).toFixed(2)} GiB (built in ${row.buildSeconds.toFixed(0)} s)`);
      rows.push(row);
    }
  }
  const out = str(p, 'out');
  if (out) await writeFileAtomic(out, [new TextEncoder().encode(JSON.stringify(rows, null, 2) + '\n')]);
  const md = str(p, 'update-md');
  if (md) await updateE2eMarkdown(md, rows, ['flute bench e2e', ...argv].join(' '));
  console.log(p.values.json ? JSON.stringify(rows, null, 2) : formatE2eTable(rows));
  return 0;
}
