// One fuzz case: a seed picked and mutated from the case's own seed, run through the reader, and the
// outcome classified. A FluteError is the reader doing its job; any other exception, or an allocation
// beyond the budget, is a bug to report with the seed that replays it. Hangs and crashes are seen by
// the runner (runner.ts), which runs cases in a child process with a deadline.

import { FluteError } from '../errors.js';
import { AllocationTooLarge, largestAllocation, setAllocationBudget } from './alloc-guard.js';
import { mutate, type SeedFile } from './mutate.js';
import { createRng } from './rng.js';
import type { Seed } from './seeds.js';
import { TARGETS, type ReaderName } from './targets.js';

export type Outcome =
  | 'ok' // the damaged file still read (the damage hit data, or a value that stays valid)
  | 'typed' // a FluteError: the expected way to refuse a bad file
  | 'bug' // any other exception
  | 'alloc' // an allocation larger than the budget (see ALLOCATION_FACTOR)
  | 'hang' // no answer within the case deadline (runner.ts)
  | 'crash'; // the worker process died (runner.ts)

export const FAILURES: readonly Outcome[] = ['bug', 'alloc', 'hang', 'crash'];

export interface CaseResult {
  readonly reader: ReaderName;
  readonly index: number;
  /** Replays the case: `npm run fuzz -- --replay READER:SEED`. */
  readonly seed: number;
  readonly outcome: Outcome;
  /** The FluteError code, or the exception's name. */
  readonly code?: string;
  readonly message?: string;
  /** The file mutated and what was done to it. */
  readonly mutation: string;
  readonly ms: number;
  /** Bytes of the largest single typed-array allocation (when the allocation guard is installed). */
  readonly largestAlloc?: number;
  readonly stack?: string;
}

/**
 * The largest single allocation a reader may make, as a multiple of the input's bytes (plus 1 MiB of
 * slack): 8x covers the widest legitimate expansion, 4-bit blocks dequantized to f32.
 */
export const ALLOCATION_FACTOR = 8;
const ALLOCATION_SLACK = 1 << 20;

/** The files of one case: the picked seed with one file mutated. */
export function makeCase(seeds: readonly Seed[], seed: number): { files: Map<string, Uint8Array>; mutation: string } {
  const r = createRng(seed);
  const bundle = r.pick(seeds);
  const target: SeedFile = r.pick(bundle);
  const m = mutate(target, r);
  const files = new Map(bundle.map((f) => [f.name, f.name === target.name ? m.bytes : f.bytes]));
  return { files, mutation: `${target.name}: ${m.steps.join('; ')}` };
}

function describe(e: unknown): { code: string; message: string; stack?: string } {
  if (e instanceof FluteError) return { code: e.code, message: e.message };
  if (e instanceof Error) return { code: e.name, message: e.message, stack: e.stack };
  return { code: typeof e, message: String(e) };
}

/** True when the error, or one it wraps, is the allocation guard's: a FluteError around it still is a bug. */
function overBudget(e: unknown): boolean {
  for (let c = e, depth = 0; c instanceof Error && depth < 8; c = c.cause, depth++) if (c instanceof AllocationTooLarge) return true;
  return false;
}

/** Runs case `index` (seed `seed`) of `reader` in this process. */
export async function runCase(reader: ReaderName, seeds: readonly Seed[], index: number, seed: number, scratch: string): Promise<CaseResult> {
  const { files, mutation } = makeCase(seeds, seed);
  const inputBytes = [...files.values()].reduce((a, b) => a + b.length, 0);
  const t0 = performance.now();
  setAllocationBudget(ALLOCATION_FACTOR * inputBytes + ALLOCATION_SLACK);
  let outcome: Outcome = 'ok';
  let err: { code: string; message: string; stack?: string } | undefined;
  let largestAlloc = 0;
  try {
    await TARGETS[reader].run({ files, scratch });
  } catch (e) {
    err = describe(e);
    outcome = overBudget(e) ? 'alloc' : e instanceof FluteError ? 'typed' : 'bug';
  } finally {
    largestAlloc = largestAllocation();
    setAllocationBudget(Infinity);
  }
  const ms = performance.now() - t0;
  return { reader, index, seed, outcome, mutation, ms, largestAlloc, ...(err ?? {}) };
}
