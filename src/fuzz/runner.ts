// Runs fuzz cases in a child process (worker.ts) with a deadline per case: a case with no answer in
// time is a hang, a worker that dies mid-case is a crash; either way the worker is replaced and the run
// goes on with the next case. Cases go round-robin over readers, in batches, until each reader has its
// count or the time is up. The report gives per reader the cases run, outcomes, error codes and failures.

import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FAILURES, type CaseResult, type Outcome } from './harness.js';
import type { ReaderName } from './targets.js';
import type { WorkerMessage, WorkerRequest } from './worker.js';

export interface FuzzOptions {
  readonly readers: readonly ReaderName[];
  /** The run's seed: case i of reader R replays from caseSeed(runSeed, R, i). */
  readonly runSeed: number;
  /** Cases per reader; the run stops when every reader has this many (or the time is up). */
  readonly casesPerReader?: number;
  /** Wall-clock budget in minutes. */
  readonly minutes?: number;
  /** Only these case seeds (replay); with one reader. */
  readonly replaySeeds?: readonly number[];
  /** Cases per request to the worker (default 25). */
  readonly batch?: number;
  /** A case with no answer after this long is a hang (default 10 s). */
  readonly caseTimeoutMs?: number;
  /** Building a reader's seeds may take this long (default 180 s). */
  readonly seedTimeoutMs?: number;
  /** The worker's V8 heap limit in MiB (default 1024): a runaway heap crashes it instead of the machine. */
  readonly heapMiB?: number;
  readonly onResult?: (r: CaseResult) => void;
  /** Stops the run after the batch in progress (the report covers the cases run so far). */
  readonly signal?: AbortSignal;
}

export interface ReaderReport {
  readonly reader: ReaderName;
  cases: number;
  readonly outcomes: Record<Outcome, number>;
  /** FluteError codes (and exception names of failures) by count. */
  readonly codes: Record<string, number>;
  readonly failures: CaseResult[];
  /** Time spent in cases, and the slowest one. */
  ms: number;
  slowestMs: number;
  /** The largest single allocation any case made. */
  largestAlloc: number;
  seedMs: number;
}

export interface FuzzReport {
  readonly runSeed: number;
  readonly elapsedMs: number;
  readonly readers: ReaderReport[];
  readonly failures: number;
}

const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url));

function emptyReport(reader: ReaderName): ReaderReport {
  return { reader, cases: 0, outcomes: { ok: 0, typed: 0, bug: 0, alloc: 0, hang: 0, crash: 0 }, codes: {}, failures: [], ms: 0, slowestMs: 0, largestAlloc: 0, seedMs: 0 };
}

/** A worker process and the batch it is running. */
class Worker {
  private child: ChildProcess | undefined;
  private stderr = '';

  constructor(private readonly opts: FuzzOptions, private readonly reports: Map<ReaderName, ReaderReport>) {}

  private spawn(): ChildProcess {
    this.stderr = '';
    const child = fork(WORKER, [], { execArgv: [`--max-old-space-size=${this.opts.heapMiB ?? 1024}`], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    child.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-2000);
    });
    return child;
  }

  /** Runs cases [from, from + count) of `reader`; resolves with how many were answered (including a hang or crash). */
  runBatch(reader: ReaderName, from: number, count: number, seeds?: readonly number[]): Promise<number> {
    const child = (this.child ??= this.spawn());
    const report = this.reports.get(reader) as ReaderReport;
    const caseTimeout = this.opts.caseTimeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      let current: { index: number; seed: number } | undefined;
      let answered = 0;
      let timer: NodeJS.Timeout | undefined;
      const arm = (ms: number) => {
        clearTimeout(timer);
        timer = setTimeout(() => fail('hang', `no answer within ${ms} ms`), ms);
      };
      const finish = (f: () => void) => {
        clearTimeout(timer);
        child.off('message', onMessage);
        child.off('exit', onExit);
        f();
      };
      const fail = (outcome: 'hang' | 'crash', why: string) => {
        if (!current) {
          finish(() => reject(new Error(`fuzz worker (${reader}): ${why} before any case started\n${this.stderr}`)));
          child.kill('SIGKILL');
          this.child = undefined;
          return;
        }
        child.kill('SIGKILL');
        this.child = undefined;
        const result: CaseResult = { reader, index: current.index, seed: current.seed, outcome, code: outcome, message: `${why}${this.stderr ? `; stderr: ${this.stderr.trim().slice(-600)}` : ''}`, mutation: '(replay the seed to see it)', ms: outcome === 'hang' ? caseTimeout : 0 };
        record(report, result);
        this.opts.onResult?.(result);
        finish(() => resolve(answered + 1));
      };
      const onMessage = (m: WorkerMessage) => {
        if (m.type === 'seeds-ready') report.seedMs += m.ms;
        else if (m.type === 'start') {
          current = { index: m.index, seed: m.seed };
          arm(caseTimeout);
        } else if (m.type === 'result') {
          current = undefined;
          answered++;
          record(report, m.result);
          this.opts.onResult?.(m.result);
          clearTimeout(timer);
        } else if (m.type === 'error') finish(() => reject(new Error(`fuzz worker (${reader}): ${m.message}`)));
        else if (m.type === 'batch-done') finish(() => resolve(answered));
      };
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        this.child = undefined;
        fail('crash', `worker exited (code ${code}, signal ${signal})`);
      };
      child.on('message', onMessage);
      child.on('exit', onExit);
      arm(this.opts.seedTimeoutMs ?? 180_000);
      const req: WorkerRequest = { type: 'run', reader, runSeed: this.opts.runSeed, from, count, ...(seeds ? { seeds } : {}) };
      child.send(req);
    });
  }

  close(): void {
    this.child?.disconnect();
    this.child = undefined;
  }
}

function record(rep: ReaderReport, r: CaseResult): void {
  rep.cases++;
  rep.outcomes[r.outcome]++;
  rep.ms += r.ms;
  rep.slowestMs = Math.max(rep.slowestMs, r.ms);
  rep.largestAlloc = Math.max(rep.largestAlloc, r.largestAlloc ?? 0);
  if (r.code && r.outcome !== 'ok') rep.codes[r.code] = (rep.codes[r.code] ?? 0) + 1;
  if (FAILURES.includes(r.outcome)) rep.failures.push(r);
}

/** Runs the fuzzer as the options say; never throws for a failing case (they are in the report). */
export async function runFuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const t0 = performance.now();
  const reports = new Map(opts.readers.map((r) => [r, emptyReport(r)] as const));
  const worker = new Worker(opts, reports);
  const batch = opts.batch ?? 25;
  const deadline = opts.minutes === undefined ? Infinity : t0 + opts.minutes * 60_000;
  const next = new Map<ReaderName, number>(opts.readers.map((r) => [r, 0]));
  try {
    if (opts.replaySeeds) {
      const reader = opts.readers[0];
      for (let i = 0; i < opts.replaySeeds.length; ) {
        i += await worker.runBatch(reader, i, opts.replaySeeds.length - i, opts.replaySeeds.slice(i));
      }
    } else {
      const limit = opts.casesPerReader ?? Infinity;
      if (limit === Infinity && deadline === Infinity) throw new Error('runFuzz: give casesPerReader or minutes');
      for (let active = [...opts.readers]; active.length > 0 && performance.now() < deadline && !opts.signal?.aborted; ) {
        for (const reader of active) {
          if (performance.now() >= deadline || opts.signal?.aborted) break;
          const from = next.get(reader) as number;
          const n = Math.min(batch, limit - from);
          next.set(reader, from + (await worker.runBatch(reader, from, n)));
        }
        active = active.filter((r) => (next.get(r) as number) < limit);
      }
    }
  } finally {
    worker.close();
  }
  const readers = [...reports.values()];
  return { runSeed: opts.runSeed, elapsedMs: performance.now() - t0, readers, failures: readers.reduce((a, r) => a + r.failures.length, 0) };
}

