// The one engine interface the page codes against, and its implementation: a proxy that runs the engine
// in a dedicated worker (worker.ts) and speaks messages.ts's typed union. Replies are matched to requests by id.

import type { Capabilities } from './capabilities.js';
import type { BackendChoice, GenerateRequest, GenerateStats, ModelChoice, ModelInfo, ProgressPhase, QuantizeChoice, Reply, Request } from './messages.js';

export interface Progress {
  readonly phase: ProgressPhase;
  readonly done: number;
  readonly total: number; // 0 when unknown
  readonly label: string;
}

export interface LoadRequest {
  readonly model: ModelChoice;
  readonly backend: BackendChoice;
  readonly quantize?: QuantizeChoice;
  readonly onProgress?: (p: Progress) => void;
}

export interface Engine {
  capabilities(): Promise<Capabilities>;
  load(req: LoadRequest): Promise<ModelInfo>;
  /** Streams text pieces; returns the stats. Aborting the signal stops between tokens (stopReason 'aborted'). */
  generate(req: GenerateRequest, signal?: AbortSignal): AsyncGenerator<string, GenerateStats, void>;
  /** The checkpoint quantized in the tab by the last load, if any. */
  checkpoint(): Promise<Uint8Array | null>;
  dispose(): void;
}

type Handler = (r: Reply) => void;

/** Distributes on Omit over each member of a union (the built-in Omit collapses it). */
type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never;

export class WorkerEngine implements Engine {
  private readonly worker: Worker;
  private readonly handlers = new Map<number, Handler>();
  private nextId = 1;

  constructor() {
    this.worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: 'flute-engine' });
    this.worker.onmessage = (e: MessageEvent<Reply>) => this.handlers.get(e.data.id)?.(e.data);
    this.worker.onerror = (e) => {
      const err: Reply = { type: 'error', id: 0, code: 'E_INTERNAL', message: `engine worker failed: ${e.message}` };
      for (const [id, h] of this.handlers) h({ ...err, id });
    };
  }

  private send(req: WithoutId<Request>, handler: Handler): number {
    const id = this.nextId++;
    this.handlers.set(id, handler);
    this.worker.postMessage({ ...req, id } as Request);
    return id;
  }

  /** One request, one final reply of type `done` (progress replies go to onOther). */
  private call<T extends Reply['type']>(req: WithoutId<Request>, done: T, onOther?: (r: Reply) => void): Promise<Extract<Reply, { type: T }>> {
    return new Promise((resolve, reject) => {
      const id = this.send(req, (r) => {
        if (r.type === done) {
          this.handlers.delete(id);
          resolve(r as Extract<Reply, { type: T }>);
        } else if (r.type === 'error') {
          this.handlers.delete(id);
          reject(Object.assign(new Error(r.message), { code: r.code }));
        } else {
          onOther?.(r);
        }
      });
    });
  }

  async capabilities(): Promise<Capabilities> {
    return (await this.call({ type: 'capabilities' }, 'capabilities')).capabilities;
  }

  async load(req: LoadRequest): Promise<ModelInfo> {
    const r = await this.call({ type: 'load', model: req.model, backend: req.backend, quantize: req.quantize }, 'loaded', (p) => {
      if (p.type === 'progress') req.onProgress?.({ phase: p.phase, done: p.done, total: p.total, label: p.label });
    });
    return r.info;
  }

  async *generate(req: GenerateRequest, signal?: AbortSignal): AsyncGenerator<string, GenerateStats, void> {
    const queue: Reply[] = [];
    let wake: (() => void) | null = null;
    const id = this.send({ type: 'generate', request: req }, (r) => {
      queue.push(r);
      wake?.();
    });
    const abort = () => this.worker.postMessage({ type: 'abort', id: this.nextId++, target: id } satisfies Request);
    signal?.addEventListener('abort', abort, { once: true });
    try {
      for (;;) {
        if (queue.length === 0) await new Promise<void>((r) => (wake = r));
        wake = null;
        const r = queue.shift()!;
        if (r.type === 'text') yield r.text;
        else if (r.type === 'done') return r.stats;
        else if (r.type === 'error') throw Object.assign(new Error(r.message), { code: r.code });
      }
    } finally {
      signal?.removeEventListener('abort', abort);
      this.handlers.delete(id);
    }
  }

  async checkpoint(): Promise<Uint8Array | null> {
    return (await this.call({ type: 'checkpoint' }, 'checkpoint')).bytes;
  }

  dispose(): void {
    this.worker.terminate();
    this.handlers.clear();
  }
}
