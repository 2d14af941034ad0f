// flute bench vs-llama-cpp: the race of bench/vs-llama-cpp.ts behind command-line options; prints a
// Markdown table (or JSON rows) of decode tokens/s in both engines on the same GGUF files.

import os from 'node:os';
import { join } from 'node:path';
import { FluteError } from '../errors.js';
import { replaceMarkedSection } from './markdown.js';
import { GGUF_WRITE_TYPES, type GgufWriteType } from '../format/gguf-llama.js';
import { defaultCacheDir, formatRaceTable, parseFluteRuntimeSpec, RACE_MODELS, runRace, type FluteRuntimeSpec, type RaceModel, type RaceRow } from '../../bench/vs-llama-cpp.js';
import { parse, str, type Parsed } from './args.js';
import { packageRoot } from './paths.js';

const DEFAULTS = {
  models: RACE_MODELS, // stories260K (F32) and the LLaMA-3.2-1B-shape synthetic model
  types: ['iq4_nl', 'q4_0', 'f32'] as GgufWriteType[], // the synthetic model's GGUF files
  threads: [1, 2], // set explicitly in both engines
  storiesTokens: 200, // the greedy reference's length
  largeTokens: 32, // enough for a steady rate at a few tokens/s
  reps: 3, // rounds, the engines alternating; each one's fastest reported: the machine may be shared
};

const HELP = `Usage: flute bench vs-llama-cpp [--models LIST] [--types LIST] [--threads LIST] [--node LIST]
                                [--tokens N] [--large-tokens N] [--reps N] [--cache DIR] [--json]
                                [--update-md BENCHMARKS.md]

Greedy decode of the same prompt ids from the same GGUF file in llama.cpp (node-llama-cpp's prebuilt
CPU binary, installed on first use into <cache>/node-llama-cpp with npm) and in flute-engine (backend
auto), with the thread count set explicitly in both, each engine in a process of its own. Reports
decode tokens/s (after the first generated token; each engine's fastest of --reps rounds, the
engines alternating round by round so that both meet the same drift in a shared machine's speed)
and whether both engines produced the same tokens.

  --models LIST      ${RACE_MODELS.join(',')} (default both)
  --types LIST       GGUF types of the synthetic 1B-shape model: ${GGUF_WRITE_TYPES.join(',')} (default ${DEFAULTS.types.join(',')});
                     written once into the cache (random weights; the F32 file is about 5 GiB)
  --threads LIST     thread counts (default ${DEFAULTS.threads.join(',')})
  --node LIST        Node.js releases flute-engine runs on, each against the same llama.cpp run:
                     current (this one, the default), a major version such as 26 (the official binary,
                     installed on first use into <cache>/node-<major> with npm), or a path to a node
                     binary. V8 versions compile the same wasm kernels differently (see BENCHMARKS.md)
  --tokens N         tokens decoded on stories260K (default ${DEFAULTS.storiesTokens})
  --large-tokens N   tokens decoded on the 1B-shape model (default ${DEFAULTS.largeTokens})
  --reps N           rounds, each a fresh process per engine (two timed runs in it), the fastest
                     reported (default ${DEFAULTS.reps})
  --cache DIR        where node-llama-cpp and the synthetic models go (default $FLUTE_CACHE or ~/.cache/flute-engine)
  --update-md F      rewrite the table between <!-- vs-llama-cpp:begin --> and <!-- vs-llama-cpp:end --> in F
  --json             print the rows as a JSON array: model, type, threads, fluteTokensPerSecond,
                     llamaCppTokensPerSecond, sameTokens (and agreeTokens, decodeTokens, fluteNode,
                     the variants that ran, loadAverage: the mean 1-minute load average when each
                     engine's processes finished, rounds: every round's rate)

Example:
  flute bench vs-llama-cpp --models llama-3.2-1b-shape --types iq4_nl --threads 1,2 --node current,26 --json`;

function list<T extends string>(p: Parsed, name: string, allowed: readonly T[], dflt: readonly T[]): T[] {
  const raw = str(p, name);
  if (raw === undefined) return [...dflt];
  const items = raw.split(',').map((s) => s.trim());
  const bad = items.find((s) => !(allowed as readonly string[]).includes(s));
  if (bad !== undefined || items.length === 0) throw new FluteError('E_OPTION', `--${name}: expected a comma list of ${allowed.join(', ')}, got ${JSON.stringify(raw)}`);
  return items as T[];
}

/** --node: checked here, before anything is installed or measured. */
function nodeList(p: Parsed): FluteRuntimeSpec[] {
  const raw = str(p, 'node');
  if (raw === undefined) return [{ kind: 'current' }];
  const items = raw.split(',').map((s) => s.trim());
  if (items.some((s) => s === '')) throw new FluteError('E_OPTION', `--node: expected a comma list of current, major versions or node paths, got ${JSON.stringify(raw)}`);
  return items.map(parseFluteRuntimeSpec);
}

function ints(p: Parsed, name: string, dflt: readonly number[], max: number): number[] {
  const raw = str(p, name);
  if (raw === undefined) return [...dflt];
  const vals = raw.split(',').map((s) => Number(s.trim()));
  if (vals.some((v) => !Number.isInteger(v) || v < 1 || v > max)) throw new FluteError('E_OPTION', `--${name}: expected positive integers up to ${max}, got ${JSON.stringify(raw)}`);
  return vals;
}

export async function benchVsLlamaCppCommand(argv: string[]): Promise<number> {
  const p = parse('bench vs-llama-cpp', argv, {
    models: { type: 'string' }, types: { type: 'string' }, threads: { type: 'string' }, node: { type: 'string' },
    tokens: { type: 'string' }, 'large-tokens': { type: 'string' }, reps: { type: 'string' }, cache: { type: 'string' },
    'update-md': { type: 'string' },
  });
  if (p.values.help) return console.log(HELP), 0;
  if (p.positionals.length > 0) throw new FluteError('E_OPTION', `flute bench vs-llama-cpp: unexpected argument ${JSON.stringify(p.positionals[0])} (see --help)`);
  const fluteNode = nodeList(p);
  const loadAtStart = os.loadavg()[0];
  const rows = await runRace({
    models: list<RaceModel>(p, 'models', RACE_MODELS, DEFAULTS.models),
    types: list<GgufWriteType>(p, 'types', GGUF_WRITE_TYPES, DEFAULTS.types),
    threads: ints(p, 'threads', DEFAULTS.threads, 256),
    tokens: { stories: ints(p, 'tokens', [DEFAULTS.storiesTokens], 4096)[0], large: ints(p, 'large-tokens', [DEFAULTS.largeTokens], 4096)[0] },
    reps: ints(p, 'reps', [DEFAULTS.reps], 100)[0],
    storiesGguf: join(packageRoot(), 'models', 'stories260K', 'stories260K.gguf'),
    fluteNode,
    cacheDir: str(p, 'cache') ?? defaultCacheDir(),
    log: (line) => process.stderr.write(line + '\n'),
  });
  const md = str(p, 'update-md');
  if (md) await updateMarkdown(md, rows, ['flute bench vs-llama-cpp', ...argv].join(' '), loadAtStart);
  console.log(p.values.json ? JSON.stringify(rows, null, 2) : formatRaceTable(rows));
  return 0;
}

/** Replaces the marked section of a Markdown file with the table and the conditions it was measured in. */
async function updateMarkdown(file: string, rows: readonly RaceRow[], command: string, loadAtStart: number): Promise<void> {
  const cpu = os.cpus()[0]?.model?.trim() ?? 'unknown CPU';
  const body = [
    `Command: \`${command}\``,
    '',
    `Machine: ${cpu}, ${os.cpus().length} logical cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.versions.node}, ${process.platform}-${process.arch}; 1-minute load average ${loadAtStart.toFixed(1)} at the start, ${os.loadavg()[0].toFixed(1)} at the end (per row in the last column); ${new Date().toISOString().slice(0, 10)}.`,
    ...[...new Set(rows.map((r) => `flute-engine on Node ${r.fluteNode}: ${r.fluteVariant.replace(/, \d+ threads?/, '')}.`))],
    `llama.cpp: ${rows[0]?.llamaCppVersion ?? '-'}.`,
    '',
    formatRaceTable(rows),
  ].join('\n');
  await replaceMarkedSection(file, 'vs-llama-cpp', 'flute-engine against llama.cpp', body);
}
