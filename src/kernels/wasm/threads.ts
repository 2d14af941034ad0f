// Resident worker threads over one shared WebAssembly.Memory: spawning (node:worker_threads, imported
// lazily, or Web Workers), and the per-matmul barrier. No message per matmul: the caller writes the job
// block, bumps a generation counter, does its own share of rows and waits on a done counter; workers
// spin briefly, then sleep in Atomics.wait on the generation word.
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
  done: 1, // workers that finished the current job
  quit: 2, // 1: workers exit
  error: 3, // 1: a worker failed (message in errorText)
} as const;

/** Spins on the generation word before sleeping: back-to-back matmuls of one forward pass skip the futex. */
export const WORKER_SPIN = 20000;

/**
 * The worker: receives {module, memory, tid, spin}, instantiates the kernels against the shared memory,
 * says 'ready', then loops: wait for a new generation, run work(tid), count itself done.
 * Called as (onInit, post) so each host supplies its own messaging.
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
    Atomics.add(ctrl, 1, 1);
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

export class ThreadPool {
  private readonly ctrl: Int32Array; // [8] control words at byte 0
  private closed = false;
  private lastError = '';

  private constructor(
    readonly threads: number, // including the calling thread
    private readonly workers: HostWorker[],
    memory: WebAssembly.Memory,
    private readonly work: (tid: number) => void,
  ) {
    this.ctrl = new Int32Array(memory.buffer, 0, 8);
    for (const w of workers) w.onMessage((m) => m.type === 'error' && (this.lastError = m.message ?? 'unknown'));
  }

  /** Starts `threads - 1` workers, each instantiating `module` on `memory`; resolves when all are ready. */
  static async create(threads: number, module: WebAssembly.Module, memory: WebAssembly.Memory, work: (tid: number) => void): Promise<ThreadPool> {
    const workers: HostWorker[] = [];
    const ready: Promise<void>[] = [];
    try {
      for (let tid = 1; tid < threads; tid++) {
        const w = await spawnHostWorker();
        workers.push(w);
        ready.push(
          new Promise<void>((resolve, reject) => {
            w.onMessage((m) => (m.type === 'ready' ? resolve() : m.type === 'error' ? reject(new Error(m.message)) : undefined));
            w.onError(reject);
          }),
        );
        w.post({ module, memory, tid, spin: WORKER_SPIN });
      }
      await Promise.all(ready);
    } catch (e) {
      for (const w of workers) w.terminate();
      throw new FluteError('E_BACKEND', `wasm: could not start ${threads - 1} worker thread(s): ${(e as Error).message ?? e}`, { cause: e });
    }
    return new ThreadPool(threads, workers, memory, work);
  }

  /** Runs the job already written to the job block on every thread; returns when all are done. */
  run(): void {
    if (this.closed) throw new FluteError('E_BACKEND', 'wasm: backend was disposed');
    const c = this.ctrl;
    const nw = this.workers.length;
    if (nw === 0) {
      this.work(0);
      return;
    }
    Atomics.store(c, CTRL.done, 0);
    Atomics.add(c, CTRL.gen, 1);
    Atomics.notify(c, CTRL.gen);
    let err: unknown = null;
    try {
      this.work(0);
    } catch (e) {
      err = e;
    }
    // wait for the workers even when our own share failed, so the next job starts clean
    const block = canBlock();
    let spins = 0;
    for (;;) {
      const d = Atomics.load(c, CTRL.done);
      if (d >= nw) break;
      if (++spins > 4000 && block) {
        Atomics.wait(c, CTRL.done, d, 1000);
        spins = 0;
      }
    }
    if (err) throw new FluteError('E_BACKEND', `wasm kernel failed: ${(err as Error).message ?? err}`, { cause: err });
    if (Atomics.load(c, CTRL.error) !== 0) {
      Atomics.store(c, CTRL.error, 0);
      throw new FluteError('E_BACKEND', `wasm kernel failed in a worker: ${this.lastError || 'unknown error'}`);
    }
  }

  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.workers.length) {
      Atomics.store(this.ctrl, CTRL.quit, 1);
      Atomics.add(this.ctrl, CTRL.gen, 1);
      Atomics.notify(this.ctrl, CTRL.gen);
      for (const w of this.workers) w.terminate();
    }
  }
}
