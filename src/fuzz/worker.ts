// The fuzz worker: a child process (forked by runner.ts) that runs batches of cases and reports each
// one's start and result over IPC, so the parent can tell a hang (no result by the deadline) or a crash
// (the process died mid-case) from an answer. Seeds are built once per reader and kept.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installAllocationGuard } from './alloc-guard.js';
import { runCase } from './harness.js';
import { caseSeed } from './rng.js';
import type { Seed } from './seeds.js';
import { TARGETS, type ReaderName } from './targets.js';

/** Parent -> worker. */
export type WorkerRequest = { readonly type: 'run'; readonly reader: ReaderName; readonly runSeed: number; readonly from: number; readonly count: number; readonly seeds?: readonly number[] };

/** Worker -> parent. */
export type WorkerMessage =
  | { readonly type: 'seeds-ready'; readonly reader: ReaderName; readonly ms: number }
  | { readonly type: 'start'; readonly reader: ReaderName; readonly index: number; readonly seed: number }
  | { readonly type: 'result'; readonly result: import('./harness.js').CaseResult }
  | { readonly type: 'batch-done' }
  | { readonly type: 'error'; readonly message: string };

const seedCache = new Map<ReaderName, Seed[]>();

async function seedsFor(reader: ReaderName): Promise<Seed[]> {
  let s = seedCache.get(reader);
  if (!s) {
    const t0 = performance.now();
    s = await TARGETS[reader].seeds();
    seedCache.set(reader, s);
    send({ type: 'seeds-ready', reader, ms: performance.now() - t0 });
  }
  return s;
}

function send(m: WorkerMessage): void {
  process.send?.(m);
}

async function main(): Promise<void> {
  installAllocationGuard();
  const scratch = await mkdtemp(join(tmpdir(), 'flute-fuzz-'));
  const cleanup = () => rm(scratch, { recursive: true, force: true });
  process.on('disconnect', () => {
    void cleanup().finally(() => process.exit(0));
  });
  let queue = Promise.resolve();
  process.on('message', (req: WorkerRequest) => {
    queue = queue.then(async () => {
      try {
        const seeds = await seedsFor(req.reader);
        for (let i = 0; i < req.count; i++) {
          const index = req.from + i;
          const seed = req.seeds?.[i] ?? caseSeed(req.runSeed, req.reader, index);
          send({ type: 'start', reader: req.reader, index, seed });
          send({ type: 'result', result: await runCase(req.reader, seeds, index, seed, scratch) });
        }
      } catch (e) {
        send({ type: 'error', message: e instanceof Error ? e.stack ?? e.message : String(e) });
      }
      send({ type: 'batch-done' });
    });
  });
}

void main();
