// FLUTE's packed weight layout (flute/utils.py `pack`, tileP = 32, flute.md section 1.4) and its exact
// inverse: indices Q[N, K] <-> the int16 tensor weight[P, K] (read as u16) that FLUTE checkpoints store,
// plus the pair table tables2 and the shape rules. Pure functions over typed arrays; the checkpoint
// folder (safetensors, flute_config.json) is flute-checkpoint.ts's job.

import { FluteError } from '../errors.js';

export const FLUTE_BITS = [2, 3, 4] as const;
export type FluteBits = (typeof FLUTE_BITS)[number];
/** Group sizes FLUTE's kernels are instantiated for (v0.4 qgemm lists 64/128/256; the paper and older templates also 32). */
export const FLUTE_GROUP_SIZES = [32, 64, 128, 256] as const;
/** TileP of every shipped tuning table, so every legacy checkpoint (flute.md 1.4). */
export const FLUTE_TILE_P = 32;
/** The kernel's TileK: it does not predicate on K, so K must be a multiple of it (flute.md 1.3). */
export const FLUTE_TILE_K = 64;

/** Output rows per permutation block: 4 values per u16 x 32 rows (4-bit), 8 x 32 (2-bit), 16 x 32 (3-bit). */
export function fluteRowBlock(bits: FluteBits): number {
  return bits === 4 ? 128 : bits === 2 ? 256 : 512;
}

/** Rows P of the packed tensor: N * b / 16. */
export function flutePackedRows(n: number, bits: FluteBits): number {
  return (n * bits) / 16;
}

export function isFluteBits(b: number): b is FluteBits {
  return (FLUTE_BITS as readonly number[]).includes(b);
}

/**
 * Why FLUTE cannot hold an [N, K] layer at `bits` and group size `g` (or null when it can): the
 * packing's row blocks, the kernel's K tile and the instantiated group sizes.
 */
export function fluteShapeProblem(n: number, k: number, bits: number, g?: number): string | null {
  if (!isFluteBits(bits)) return `FLUTE packs 2, 3 or 4 bits, not ${bits}`;
  const blk = fluteRowBlock(bits);
  if (!Number.isInteger(n) || n < blk || n % blk !== 0) return `${bits}-bit FLUTE needs N (out features) to be a multiple of ${blk}, got ${n}`;
  if (!Number.isInteger(k) || k < 2 || k % 2 !== 0) return `FLUTE needs an even K (in features), got ${k}`;
  if (g !== undefined) {
    if (!(FLUTE_GROUP_SIZES as readonly number[]).includes(g)) return `FLUTE's group size must be one of ${FLUTE_GROUP_SIZES.join(', ')}, got ${g}`;
    if (k % g !== 0) return `FLUTE needs K to be a multiple of the group size ${g}, got ${k}`;
    if (k % FLUTE_TILE_K !== 0) return `FLUTE's kernel needs K to be a multiple of its K tile ${FLUTE_TILE_K}, got ${k}`;
  }
  return null;
}

function checkShape(n: number, k: number, bits: number, what: string): asserts bits is FluteBits {
  if (!isFluteBits(bits)) throw new FluteError('E_OPTION', `${what}: FLUTE packs 2, 3 or 4 bits, got ${bits}`);
  const why = fluteShapeProblem(n, k, bits);
  if (why) throw new FluteError('E_SHAPE', `${what}: [${n}, ${k}]: ${why}`);
}

// 3-bit: slot s of a 16-slot group of 32-bit words maps to column group THREE_BIT_GROUPS[s] (flute.md 1.4).
const THREE_BIT_GROUPS = [0, 3, 6, 9, 12, 1, 4, 7, 10, 13, 2, 5, 8, 11, 14, 15];

// ---------------------------------------------------------------------------------------------
// Packing

/**
 * FLUTE's restructured layout of indices [N, K] (one per byte, row-major): weight[P, K] u16 with
 * P = N b / 16. Within a u16, values sit LSB first; each holds two K-adjacent values of some columns,
 * the odd K index in the lower bits (so a pair reads as (q_even << b) | q_odd in the kernel).
 */
export function packFlute(indices: Uint8Array, n: number, k: number, bits: number, what = 'FLUTE pack'): Uint16Array {
  checkShape(n, k, bits, what);
  if (indices.length !== n * k) throw new FluteError('E_SHAPE', `${what}: expected ${n}x${k} = ${n * k} indices, got ${indices.length}`);
  const limit = 1 << bits;
  for (let i = 0; i < indices.length; i++) {
    if (indices[i] >= limit) throw new FluteError('E_OPTION', `${what}: index ${indices[i]} at row ${Math.floor(i / k)}, column ${i % k} does not fit in ${bits} bits`);
  }
  const q = (row: number, col: number) => indices[row * k + col];
  const out = new Uint16Array(flutePackedRows(n, bits) * k); // [P, K]
  if (bits === 4) {
    // weight[p, 2kk+c]: nibbles (odd, even) of column n_a = blk*128 + 2c*32 + t, then of n_b = n_a + 32.
    for (let p = 0; p < n / 4; p++) {
      const base = (p >> 5) * 128 + (p & 31);
      for (let kk = 0; kk < k / 2; kk++) {
        for (let c = 0; c < 2; c++) {
          const na = base + 2 * c * 32;
          const nb = na + 32;
          out[p * k + 2 * kk + c] = q(na, 2 * kk + 1) | (q(na, 2 * kk) << 4) | (q(nb, 2 * kk + 1) << 8) | (q(nb, 2 * kk) << 12);
        }
      }
    }
  } else if (bits === 2) {
    // Value s of weight[p, 2kk+c] belongs to column blk*256 + (4c + s/2)*32 + t, K row 2kk+1 (s even) or 2kk (s odd).
    for (let p = 0; p < n / 8; p++) {
      const base = (p >> 5) * 256 + (p & 31);
      for (let kk = 0; kk < k / 2; kk++) {
        for (let c = 0; c < 2; c++) {
          let u = 0;
          for (let s = 0; s < 8; s++) u |= q(base + (4 * c + (s >> 1)) * 32, 2 * kk + 1 - (s & 1)) << (2 * s);
          out[p * k + 2 * kk + c] = u;
        }
      }
    }
  } else {
    const p1s = n / 16;
    const words = new Uint32Array(3);
    for (let p1 = 0; p1 < p1s; p1++) {
      const blk = p1 >> 5;
      const t = p1 & 31;
      const rows = [p1, p1s + blk * 64 + t, p1s + blk * 64 + 32 + t];
      for (let kk = 0; kk < k / 2; kk++) {
        // The 96-bit stream B: v_i at bits 3i..3i+2; v_2s = Q[n_s, 2kk+1], v_2s+1 = Q[n_s, 2kk].
        words.fill(0);
        for (let s = 0; s < 16; s++) {
          const col = blk * 512 + THREE_BIT_GROUPS[s] * 32 + t;
          setStreamBits(words, 6 * s, q(col, 2 * kk + 1) | (q(col, 2 * kk) << 3));
        }
        for (let w = 0; w < 3; w++) {
          out[rows[w] * k + 2 * kk] = words[w] & 0xffff;
          out[rows[w] * k + 2 * kk + 1] = words[w] >>> 16;
        }
      }
    }
  }
  return out;
}

/**
 * Stream bit j < 90 is bit j % 30 of word j / 30; bits 90..95 are (w0 bit 30, w0 bit 31, w1 bit 30,
 * w1 bit 31, w2 bit 30, w2 bit 31). Writes the 6-bit value v at stream bit `at` (a multiple of 6).
 */
function setStreamBits(words: Uint32Array, at: number, v: number): void {
  for (let b = 0; b < 6; b++) {
    if (!((v >> b) & 1)) continue;
    const j = at + b;
    if (j < 90) words[Math.floor(j / 30)] |= 1 << (j % 30);
    else words[(j - 90) >> 1] |= 1 << (30 + ((j - 90) & 1));
  }
}

function getStreamBits(words: Uint32Array, at: number): number {
  let v = 0;
  for (let b = 0; b < 6; b++) {
    const j = at + b;
    const bit = j < 90 ? (words[Math.floor(j / 30)] >>> (j % 30)) & 1 : (words[(j - 90) >> 1] >>> (30 + ((j - 90) & 1))) & 1;
    v |= bit << b;
  }
  return v;
}

/** The exact inverse of packFlute: weight[P, K] (u16) back to indices [N, K]. */
export function unpackFlute(weight: Uint16Array, n: number, k: number, bits: number, what = 'FLUTE unpack'): Uint8Array {
  checkShape(n, k, bits, what);
  const rowsP = flutePackedRows(n, bits);
  if (weight.length !== rowsP * k) throw new FluteError('E_SHAPE', `${what}: a ${bits}-bit [${n}, ${k}] layer packs into [${rowsP}, ${k}] = ${rowsP * k} int16, got ${weight.length}`);
  const out = new Uint8Array(n * k);
  const set = (row: number, col: number, v: number) => { out[row * k + col] = v; };
  if (bits === 4) {
    for (let p = 0; p < n / 4; p++) {
      const base = (p >> 5) * 128 + (p & 31);
      for (let kk = 0; kk < k / 2; kk++) {
        for (let c = 0; c < 2; c++) {
          const u = weight[p * k + 2 * kk + c];
          const na = base + 2 * c * 32;
          set(na, 2 * kk + 1, u & 15);
          set(na, 2 * kk, (u >> 4) & 15);
          set(na + 32, 2 * kk + 1, (u >> 8) & 15);
          set(na + 32, 2 * kk, u >> 12);
        }
      }
    }
  } else if (bits === 2) {
    for (let p = 0; p < n / 8; p++) {
      const base = (p >> 5) * 256 + (p & 31);
      for (let kk = 0; kk < k / 2; kk++) {
        for (let c = 0; c < 2; c++) {
          const u = weight[p * k + 2 * kk + c];
          for (let s = 0; s < 8; s++) set(base + (4 * c + (s >> 1)) * 32, 2 * kk + 1 - (s & 1), (u >> (2 * s)) & 3);
        }
      }
    }
  } else {
    const p1s = n / 16;
    const words = new Uint32Array(3);
    for (let p1 = 0; p1 < p1s; p1++) {
      const blk = p1 >> 5;
      const t = p1 & 31;
      const rows = [p1, p1s + blk * 64 + t, p1s + blk * 64 + 32 + t];
      for (let kk = 0; kk < k / 2; kk++) {
        for (let w = 0; w < 3; w++) words[w] = weight[rows[w] * k + 2 * kk] | (weight[rows[w] * k + 2 * kk + 1] << 16);
        for (let s = 0; s < 16; s++) {
          const col = blk * 512 + THREE_BIT_GROUPS[s] * 32 + t;
          const pair = getStreamBits(words, 6 * s);
          set(col, 2 * kk + 1, pair & 7);
          set(col, 2 * kk, pair >> 3);
        }
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// tables2

/**
 * FLUTE's pair table (flute/utils.py `make_qmap2_from_qmap`): word [i][j] = bits16(T[i]) | bits16(T[j]) << 16,
 * [2^b, 2^b, 1] stored as F32 (raw words). `tableBits` holds the table's 16-bit f16 or bf16 patterns.
 */
export function fluteTables2(tableBits: Uint16Array): Uint32Array {
  const m = tableBits.length;
  const out = new Uint32Array(m * m);
  for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) out[i * m + j] = (tableBits[i] | (tableBits[j] << 16)) >>> 0;
  return out;
}
