// The fuzzer's seeded randomness: one small generator (mulberry32) and the draws the mutators need,
// plus the hash that turns (run seed, reader, case number) into the one seed a case is replayed from.

import { mulberry32 } from '../rng.js';

export interface Rng {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number;
  pick<T>(items: readonly T[]): T;
  chance(p: number): boolean;
}

export function createRng(seed: number): Rng {
  const next = mulberry32(seed);
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (items) => items[Math.floor(next() * items.length)],
    chance: (p) => next() < p,
  };
}

/** A 32-bit FNV-1a hash of the parts, so that every case has its own independent, printable seed. */
export function caseSeed(runSeed: number, reader: string, index: number): number {
  let h = 0x811c9dc5;
  for (const ch of `${runSeed >>> 0}:${reader}:${index}`) {
    h ^= ch.charCodeAt(0);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
