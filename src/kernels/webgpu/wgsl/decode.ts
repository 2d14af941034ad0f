// Code decoding, shared by GEMV and GEMM: WGSL expressions for the pair index of pair p of a word
// (one shift and one mask, thanks to the offline restructuring of layout.ts), the duplicated-table
// lookup, and the scale each pair is multiplied by. Pure string builders.

import type { LutFormat } from '../layout.js';
import { lutAt } from './common.js';

const sh = (word: string, s: number) => (s === 0 ? word : `(${word} >> ${s}u)`);

/**
 * Pair index of the pair starting `bitBase / codeBits` codes into `word`, p pairs further on.
 *   b4: byte p of the word; b2: nibble; p3: low-plane nibble | high-plane 2 bits << 4.
 * `hiWord`/`hiBase` locate the p3 high bits of the same pair (one bit per code).
 */
export function pairIndex(format: Exclude<LutFormat, 'b8'>, word: string, bitBase: number, p: number, hiWord = '', hiBase = 0): string {
  if (format === 'b4') {
    const s = bitBase + 8 * p;
    return s === 24 ? `(${word} >> 24u)` : `(${sh(word, s)} & 0xffu)`;
  }
  const lo = bitBase + 4 * p === 28 ? `(${word} >> 28u)` : `(${sh(word, bitBase + 4 * p)} & 0xfu)`;
  if (format === 'b2') return lo;
  const hs = hiBase + 2 * p;
  const hi = hs === 30 ? `((${hiWord} >> 30u) << 4u)` : `((${sh(hiWord, hs)} & 3u) << 4u)`;
  return `(${lo} | ${hi})`;
}

/** The single-table index of byte b of `word` (b8). */
export function singleIndex(word: string, b: number): string {
  return b === 3 ? `(${word} >> 24u)` : `(${sh(word, 8 * b)} & 0xffu)`;
}

/** `pmul(lut[...], scale pair)` for one pair. */
export function pairValue(idx: string, dup: number, scalePair: string): string {
  return `pmul(${lutAt(idx, dup)}, ${scalePair})`;
}

/**
 * Scales of a run of weights starting at a unit boundary: tracks which per-unit scale variables exist
 * so each is loaded once, and returns the scale-pair expression for the pair at offset `o` (even).
 *   unit >= width of the run: one scale (`one`), provided by the caller;
 *   unit >= 2: scale of unit floor(o / unit);  unit == 1: a different scale per weight.
 */
export class ScaleRun {
  private declared = new Set<number>();
  constructor(
    private readonly unit: number,
    private readonly width: number,
    private readonly prefix: string, // variable-name prefix, e.g. `s_0`
    private readonly base: string, // WGSL expression: index of the run's first unit in `scales`
  ) {}

  /** Lines to emit before using `pair(o)` (loads of scales not yet loaded). */
  need(o: number, count = 2): string[] {
    if (this.unit >= this.width) {
      if (this.declared.has(-1)) return [];
      this.declared.add(-1);
      return [`let ${this.prefix} = sc(scales[${this.base}]);`];
    }
    const out: string[] = [];
    for (let e = o; e < o + count; e++) {
      const j = Math.floor(e / this.unit);
      if (this.declared.has(j)) continue;
      this.declared.add(j);
      out.push(`let ${this.prefix}_${j} = sc(scales[${this.base} + ${j}u]);`);
    }
    return out;
  }

  /** Scale of the weight at offset o. */
  one(o: number): string {
    return this.unit >= this.width ? this.prefix : `${this.prefix}_${Math.floor(o / this.unit)}`;
  }

  /** vec2 of the scales of weights o and o + 1. */
  pair(o: number): string {
    const a = this.one(o);
    const b = this.one(o + 1);
    return a === b ? `vec2<sc_t>(${a})` : `vec2<sc_t>(${a}, ${b})`;
  }
}
