// Resident worker threads over one shared WebAssembly.Memory: spawning (node:worker_threads, imported
// lazily, or Web Workers), and the per-matmul barrier. No message per matmul: the caller writes the job
// block, sets the count of units (row quads) left, bumps a generation counter, then every thread,
// the caller included, takes runs of units from that count (codegen's `work`) until none are left, and
// the caller waits until the finished count reaches the total; workers spin briefly, then sleep in
// Atomics.wait on the generation word. A worker that wakes late finds nothing left and goes back to
// sleep: only a run it has taken can hold the job up. Every wait is bounded: a worker that
// exits, fails to start or stops answering turns into a FluteError (E_BACKEND) instead of a hang, and
// the pool refuses further jobs (a late worker could still write into the shared memory).
//
// The worker body is a self-contained classic script kept here as a string (WORKER_BODY): it imports
// nothing, so the same text runs as a Node eval worker and as a browser Blob worker, under tsx, from
// dist/ and through bundlers alike (no worker file URL to resolve). Strict CSPs must allow
// `worker-src blob:` in browsers.

import { FluteError } from '../../errors.js';

// ---------------------------------------------------------------------------------------------
// Control words (i32, at byte 0 of the shared memory; the job block follows at codegen.JOB_ADDR)

export const CTRL = {
  gen: 0, // bumped once per job; workers wait on it
  finished: 1, // units of the current job computed (codegen FINISHED_ADDR)
  quit: 2, // 1: workers exit
  error: 3, // 1: a worker failed (message in errorText)
  left: 4, // units of the current job not yet taken, counted down by takers (codegen LEFT_ADDR)
} as const;

/** Spins on the generation word before sleeping: back-to-back matmuls of one forward pass skip the futex. */
export const WORKER_SPIN = 20000;

/**
 * Default bound on one job's wait for the workers (and on a worker's start-up). A job is one matmul:
 * the largest (a 128k-vocabulary classifier over a 64-token chunk) takes seconds even on a busy
 * machine, so two minutes without the job finishing means a worker is gone or stuck.
 */
export const DEFAULT_BARRIER_TIMEOUT_MS = 120_000;

/**
 * The worker: receives {module, memory, tid, spin}, instantiates the kernels against the shared memory,
 * says 'ready', then loops: wait for a new generation, run work(tid) (which takes and counts units),
 * wake the caller. Called as (onInit, post) so each host supplies its own messaging.
 */
const WORKER_BODY = `(onInit, post) => onInit((init) => {
  const ctrl = new Int32Array(init.memory.buffer, 0, 8);
  let inst;
  try {
    inst = new WebAssembly.Instance(init.module, { env: { memory: init.memory } });
  } catch (e) {
    post({ type: 'error', message: String(e && e.message || e) });
    return;
  }
  const work = inst.exports.work;
  let gen = Atomics.load(ctrl, 0);
  post({ type: 'ready' });
  for (;;) {
    let spins = 0;
    while (Atomics.load(ctrl, 0) === gen) {
      if (++spins > init.spin) { Atomics.wait(ctrl, 0, gen); spins = 0; }
    }
    gen = Atomics.load(ctrl, 0);
    if (Atomics.load(ctrl, 2) !== 0) return;
    try { work(init.tid); } catch (e) { Atomics.store(ctrl, 3, 1); post({ type: 'error', message: String(e && e.message || e) }); }
    Atomics.notify(ctrl, 1);
  }
})`;

const NODE_WORKER = `const { parentPort } = require('node:worker_threads');
(${WORKER_BODY})((fn) => parentPort.once('message', fn), (m) => parentPort.postMessage(m));`;

const BROWSER_WORKER = `(${WORKER_BODY})((fn) => { self.onmessage = (e) => { self.onmessage = null; fn(e.data); }; }, (m) => self.postMessage(m));`;

interface WorkerInit {
  readonly module: WebAssembly.Module;
  readonly memory: WebAssembly.Memory;
  readonly tid: number;
  readonly spin: number;
}

/** What the pool needs from a worker on either host. */
interface HostWorker {
  post(init: WorkerInit): void;
  onMessage(fn: (m: { type: string; message?: string }) => void): void;
  onError(fn: (e: unknown) => void): void;
  /** The worker ended (Node's 'exit'; browsers report a dying worker through onError only). */
  onExit(fn: (code: number) => void): void;
  terminate(): void;
}

export const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

async function spawnHostWorker(): Promise<HostWorker> {
  if (isNode) {
    const { Worker } = await import('node:worker_threads');
    const w = new Worker(NODE_WORKER, { eval: true });
    w.unref(); // an undisposed backend must not keep the process alive
    return {
      post: (init) => w.postMessage(init),
      onMessage: (fn) => w.on('message', fn),
      onError: (fn) => w.on('error', fn),
      onExit: (fn) => w.on('exit', fn),
      terminate: () => void w.terminate(),
    };
  }
  const g = globalThis as unknown as {
    Worker: new (url: string) => { postMessage(m: unknown): void; terminate(): void; onmessage: ((e: { data: never }) => void) | null; onerror: ((e: unknown) => void) | null };
    Blob: new (parts: string[], o: { type: string }) => object;
    URL: { createObjectURL(b: object): string };
  };
  const url = g.URL.createObjectURL(new g.Blob([BROWSER_WORKER], { type: 'text/javascript' }));
  const w = new g.Worker(url);
  return {
    post: (init) => w.postMessage(init),
    onMessage: (fn) => (w.onmessage = (e) => fn(e.data)),
    onError: (fn) => (w.onerror = fn),
    onExit: () => undefined,
    terminate: () => w.terminate(),
  };
}

/** True when this thread may block in Atomics.wait (Node, or a browser worker; not a browser window). */
export function canBlock(): boolean {
  if (isNode) return true;
  return typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== 'undefined';
}

// ---------------------------------------------------------------------------------------------
// The pool

export interface ThreadPoolOptions {
  /** Bound on one job's wait for the workers, and on each worker's start-up (default DEFAULT_BARRIER_TIMEOUT_MS). */
  readonly timeoutMs?: number;
}

export class ThreadPool {
  private readonly ctrl: Int32Array; // [8] control words at byte 0
  private closed = false;
  private lastError = '';
  /** Why the pool can no longer run jobs (a worker exited or timed out); null while healthy. */
  private broken: string | null = null;

  private constructor(
    readonly threads: number, // including the calling thread
    private readonly workers: HostWorker[],
    memory: WebAssembly.Memory,
    private readonly work: (tid: number) => void,
    private readonly timeoutMs: number,
  ) {
    this.ctrl = new Int32Array(memory.buffer, 0, 8);
    workers.forEach((w, i) => {
      w.onMessage((m) => m.type === 'error' && (this.lastError = m.message ?? 'unknown'));
      // a worker that dies may hold taken units that will never be counted: fail the next wait at once
      w.onExit((code) => this.closed || (this.broken ??= `worker thread ${i + 1} exited (code ${code})`));
      w.onError((e) => (this.broken ??= `worker thread ${i + 1} failed: ${(e as Error)?.message ?? e}`));
    });
  }

  /**
   * Starts `threads - 1` workers, each instantiating `module` on `memory`; resolves when all are ready.
   * Rejects with E_BACKEND when one fails, exits or is not ready within the timeout.
   */
  static async create(threads: number, module: WebAssembly.Module, memory: WebAssembly.Memory, work: (tid: number) => void, opts: ThreadPoolOptions = {}): Promise<ThreadPool> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_BARRIER_TIMEOUT_MS;
    const workers: HostWorker[] = [];
    const ready: Promise<void>[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      for (let tid = 1; tid < threads; tid++) {
        const w = await spawnHostWorker();
        workers.push(w);
        ready.push(
          new Promise<void>((resolve, reject) => {
            w.onMessage((m) => (m.type === 'ready' ? resolve() : m.type === 'error' ? reject(new Error(m.message)) : undefined));
            w.onError(reject);
            w.onExit((code) => reject(new Error(`worker ${tid} exited (code ${code}) before it was ready`)));
          }),
        );
        w.post({ module, memory, tid, spin: WORKER_SPIN });
      }
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not all ready after ${timeoutMs} ms`)), timeoutMs);
      });
      await Promise.race([Promise.all(ready), late]);
    } catch (e) {
      for (const w of workers) w.terminate();
      throw new FluteError('E_BACKEND', `wasm: could not start ${threads - 1} worker thread(s): ${(e as Error).message ?? e}`, { cause: e });
    } finally {
      clearTimeout(timer);
    }
    return new ThreadPool(threads, workers, memory, work, timeoutMs);
  }

  /**
   * Runs the job already written to the job block (its `units` row quads, taken by the threads in
   * runs of the job's grab size); returns when all are computed. Throws E_BACKEND when a kernel
   * failed, a worker exited, or the units were not all computed within the timeout; after any of
   * these the pool is unusable (its workers are terminated: one may still be writing) and every later
   * run throws too. `wake: false` runs it on the calling thread alone (a job too small to share) but
   * still waits for the count, because a worker that woke late for the previous job may take a run.
   */
  run(units: number, wake = true): void {
    if (this.closed) throw new FluteError('E_BACKEND', 'wasm: backend was disposed');
    if (this.broken) throw this.brokenError();
    const c = this.ctrl;
    Atomics.store(c, CTRL.finished, 0);
    Atomics.store(c, CTRL.left, units); // after the job block: a taker reads the job after taking units
    if (wake && this.workers.length) {
      Atomics.add(c, CTRL.gen, 1);
      Atomics.notify(c, CTRL.gen);
    }
    try {
      this.work(0);
    } catch (e) {
      // the run this thread had taken is lost: the job cannot finish
      this.stop(`wasm kernel failed: ${(e as Error).message ?? e}`);
      throw new FluteError('E_BACKEND', `wasm kernel failed: ${(e as Error).message ?? e}`, { cause: e });
    }
    this.awaitUnits(units);
  }

  /**
   * Waits until `units` are counted finished: spins briefly, then sleeps in slices of at most 100 ms
   * (where this thread may block) so a failed or dead worker and the deadline are noticed. Where it
   * may not block (a browser window) it can only spin: the deadline still bounds it.
   */
  private awaitUnits(units: number): void {
    const c = this.ctrl;
    const block = canBlock();
    const deadline = performance.now() + this.timeoutMs;
    let spins = 0;
    for (;;) {
      const f = Atomics.load(c, CTRL.finished);
      if (f >= units) return;
      if (++spins > 4000) {
        spins = 0;
        if (Atomics.load(c, CTRL.error) !== 0) this.stop(`wasm kernel failed in a worker: ${this.lastError || 'unknown error'}`);
        else if (!this.broken && performance.now() > deadline) {
          this.stop(`${units - f} of ${units} row quads of a job were not finished within ${this.timeoutMs} ms (a worker thread is stuck or gone)`);
        }
        if (this.broken) {
          this.terminateWorkers();
          throw this.brokenError();
        }
        if (block) Atomics.wait(c, CTRL.finished, f, 100);
      }
    }
  }

  private stop(why: string): void {
    this.broken ??= why;
    this.terminateWorkers();
  }

  private brokenError(): FluteError {
    return new FluteError('E_BACKEND', `wasm: ${this.broken}; the thread pool was stopped: create a new backend`);
  }

  private terminateWorkers(): void {
    Atomics.store(this.ctrl, CTRL.quit, 1);
    Atomics.add(this.ctrl, CTRL.gen, 1);
    Atomics.notify(this.ctrl, CTRL.gen);
    for (const w of this.workers) w.terminate();
  }

  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.workers.length) this.terminateWorkers();
  }
}
