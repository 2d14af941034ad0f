// FLUTE's offline restructuring for WGSL: repacks a canonical QuantizedLinear into the device layout
// (index planes of aligned u32 words, scales per "unit", the table of pairs) and plans binding shards.
// Pure TypeScript, no GPU: the shaders in wgsl/ read exactly what these functions write.
//
// Device layout (every row padded to Kp = roundUp(K, 64) columns; padding has index 0 and scale 0):
//   b2  (bits 1, 2): 2-bit codes, 16 per u32, LSB first; a 16-byte word holds 64 consecutive k.
//   b4  (bits 4):    4-bit codes, 8 per u32; a 16-byte word holds 32 consecutive k.
//   p3  (bits 3):    two planes so no code straddles a word: low 2 bits as b2 (16 bytes per 64 k)
//                    and the high bit, 32 per u32 (8 bytes per 64 k).
//   b8  (bits 5..8): one code per byte, 4 per u32; looked up singly (no pair table).
// For b2/b4 with bits = 2/4 the canonical rows already are LSB-first byte streams, so "repacking" is
// a padded copy; the pair index then is simply a byte (b4) or nibble (b2) of the word. For p3 the pair
// index is (low nibble of the pair) | (high bits of the pair) << 4, and the pair table is built to
// match that order, which is the point of restructuring offline: the shader does one shift and mask.

import { FluteError } from '../../errors.js';
import { f32ToF16Bits, roundToF16 } from '../../format/half.js';
import { groupsPerRow, type QuantizedLinear } from '../../quant/linear.js';
import { packedRowBytes } from '../../quant/packing.js';
import type { GpuPrecision } from './types.js';

/** Activation rows (and K of every layer) are padded to this many columns, zero-filled. */
export const ACT_ALIGN = 64;

export type LutFormat = 'b2' | 'b4' | 'p3' | 'b8';

export interface LutGeometry {
  readonly format: LutFormat;
  readonly bits: number;
  readonly n: number;
  readonly k: number;
  readonly kp: number; // K padded to ACT_ALIGN
  readonly words: number; // main-plane u32 words per row
  readonly hiWords: number; // p3 high-plane u32 words per row (0 otherwise)
  readonly unit: number; // weights per stored scale: g when g % 64 == 0, else gcd(g, 64)
  readonly units: number; // stored scales per row: ceil(Kp / unit)
  readonly pairs: boolean; // pair table (one lookup per two weights) or a single table (b8)
  readonly lutEntries: number; // 2^(2c) pairs for c-bit codes (b2: 16, p3: 64, b4: 256), or 256 singles
}

export const roundUp = (v: number, a: number): number => Math.ceil(v / a) * a;

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

export function formatOf(bits: number): LutFormat {
  if (bits <= 2) return 'b2';
  if (bits === 3) return 'p3';
  if (bits === 4) return 'b4';
  return 'b8';
}

/** Weights covered by one 16-byte word of the main plane (the GEMV chunk). */
export const CHUNK_WEIGHTS: Record<LutFormat, number> = { b2: 64, p3: 64, b4: 32, b8: 16 };

export function lutGeometry(layer: Pick<QuantizedLinear, 'bits' | 'n' | 'k' | 'groupSize'>): LutGeometry {
  const format = formatOf(layer.bits);
  const kp = roundUp(layer.k, ACT_ALIGN);
  const g = layer.groupSize;
  // A unit divides every chunk width (16..64) or is a multiple of 64, so a chunk needs either one
  // scale or a compile-time number of them; standard g (32, 64, 128, 256) store scales unexpanded.
  const unit = g % 64 === 0 ? g : gcd(g, 64);
  const words = format === 'b2' || format === 'p3' ? kp / 16 : format === 'b4' ? kp / 8 : kp / 4;
  return {
    format,
    bits: layer.bits,
    n: layer.n,
    k: layer.k,
    kp,
    words,
    hiWords: format === 'p3' ? kp / 32 : 0,
    unit,
    units: Math.ceil(kp / unit),
    pairs: format !== 'b8',
    lutEntries: format === 'b2' ? 16 : format === 'p3' ? 64 : 256,
  };
}

// ---------------------------------------------------------------------------------------------
// Indices

/** Reads row r of the canonical layout into `out` (one index per byte). */
function unpackRow(packed: Uint8Array, rowBytes: number, bits: number, k: number, r: number, out: Uint8Array): void {
  let i = r * rowBytes;
  let acc = 0;
  let nacc = 0;
  const mask = (1 << bits) - 1;
  for (let c = 0; c < k; c++) {
    while (nacc < bits) {
      acc |= packed[i++] << nacc;
      nacc += 8;
    }
    out[c] = acc & mask;
    acc >>>= bits;
    nacc -= bits;
  }
}

export interface PackedLutIndices {
  readonly main: Uint32Array; // [N, words]
  readonly hi: Uint32Array | null; // [N, hiWords] (p3 only)
}

/** Repacks canonical indices into the device planes (see the module header). */
export function packLutIndices(layer: QuantizedLinear, geo: LutGeometry = lutGeometry(layer)): PackedLutIndices {
  const { n, k, bits, words, hiWords } = geo;
  const rowBytes = packedRowBytes(k, bits);
  const main = new Uint32Array(n * words);
  const hi = geo.format === 'p3' ? new Uint32Array(n * hiWords) : null;
  const containerBits = geo.format === 'b2' ? 2 : geo.format === 'b4' ? 4 : geo.format === 'b8' ? 8 : 0;
  if (containerBits === bits) {
    // Canonical rows are LSB-first byte streams: copy each into its padded, word-aligned slot.
    const bytes = new Uint8Array(main.buffer);
    for (let r = 0; r < n; r++) bytes.set(layer.packed.subarray(r * rowBytes, (r + 1) * rowBytes), r * words * 4);
    return { main, hi };
  }
  const row = new Uint8Array(k);
  for (let r = 0; r < n; r++) {
    unpackRow(layer.packed, rowBytes, bits, k, r, row);
    const base = r * words;
    if (geo.format === 'p3') {
      for (let c = 0; c < k; c++) {
        const q = row[c];
        main[base + (c >>> 4)] |= (q & 3) << ((c & 15) * 2);
        hi![r * hiWords + (c >>> 5)] |= ((q >>> 2) & 1) << (c & 31);
      }
    } else {
      const per = 32 / containerBits;
      for (let c = 0; c < k; c++) main[base + Math.floor(c / per)] |= row[c] << ((c % per) * containerBits);
    }
  }
  return { main, hi };
}

// ---------------------------------------------------------------------------------------------
// Tables

/** The table as the kernel sees it: f16-rounded for f16 precision (dequantize() does the same). */
function tableFor(table: Float32Array, precision: GpuPrecision): Float32Array {
  return precision === 'f16' ? Float32Array.from(table, roundToF16) : table;
}

/**
 * FLUTE's vectorized table: entry p holds the two weights' table values for pair index p, as
 * [2^(2c)] vec2<f32> (c = container bits). b2: p = q_even | q_odd << 2; b4: p = q_even | q_odd << 4;
 * p3: p = lo_even | lo_odd << 2 | hi_even << 4 | hi_odd << 5. For b8, the plain table padded to 256.
 */
export function buildLutTable(layer: Pick<QuantizedLinear, 'bits' | 'table'>, precision: GpuPrecision): Float32Array {
  const t = tableFor(layer.table, precision);
  const at = (q: number) => (q < t.length ? t[q] : 0); // 1-bit codes live in a 2-bit container
  const format = formatOf(layer.bits);
  if (format === 'b8') {
    const out = new Float32Array(256);
    out.set(t);
    return out;
  }
  const entries = format === 'b2' ? 16 : format === 'p3' ? 64 : 256;
  const out = new Float32Array(entries * 2);
  for (let p = 0; p < entries; p++) {
    let qe: number;
    let qo: number;
    if (format === 'b2') [qe, qo] = [p & 3, p >>> 2];
    else if (format === 'b4') [qe, qo] = [p & 15, p >>> 4];
    else [qe, qo] = [(p & 3) | (((p >>> 4) & 1) << 2), ((p >>> 2) & 3) | (((p >>> 5) & 1) << 2)];
    out[2 * p] = at(qe);
    out[2 * p + 1] = at(qo);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Scales

/**
 * Scales per unit, [N, units] f32: unit j of row r covers k in [j*unit, (j+1)*unit) and holds that
 * group's scale (f16-rounded for f16 precision); units past K hold 0 so padding weighs nothing.
 */
export function buildUnitScales(layer: QuantizedLinear, geo: LutGeometry, precision: GpuPrecision): Float32Array {
  const G = groupsPerRow(layer.k, layer.groupSize);
  const out = new Float32Array(layer.n * geo.units);
  const round = precision === 'f16' ? roundToF16 : (v: number) => v;
  for (let r = 0; r < layer.n; r++) {
    for (let j = 0; j < geo.units; j++) {
      const k0 = j * geo.unit;
      if (k0 >= layer.k) break;
      out[r * geo.units + j] = round(layer.scales[r * G + Math.floor(k0 / layer.groupSize)]);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Dense weights

/** Dense rows padded to Kp: f32 [N, Kp], or for f16 precision f16 bits packed two per u32 [N, Kp/2]. */
export function packDense(weight: Float32Array, n: number, k: number, precision: GpuPrecision): Float32Array | Uint32Array {
  const kp = roundUp(k, ACT_ALIGN);
  if (precision === 'f32') {
    const out = new Float32Array(n * kp);
    for (let r = 0; r < n; r++) out.set(weight.subarray(r * k, (r + 1) * k), r * kp);
    return out;
  }
  const out = new Uint32Array((n * kp) / 2);
  const h = new Uint16Array(out.buffer);
  for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) h[r * kp + c] = f32ToF16Bits(weight[r * k + c]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Binding shards

/**
 * Splits N rows into shards whose largest per-row buffer fits one storage binding (and one buffer):
 * rows per shard are a multiple of 64 (whole GEMM tiles) and stay within the dispatch limit.
 */
export function planShards(n: number, maxRowBytes: number, maxBindingBytes: number, maxRowsPerDispatch: number): [number, number][] {
  const fit = Math.floor(maxBindingBytes / maxRowBytes);
  if (fit < 1) {
    throw new FluteError('E_SHAPE', `webgpu: one row needs ${maxRowBytes} bytes, more than the device's storage binding limit of ${maxBindingBytes} bytes`);
  }
  let rows = Math.min(n, fit, maxRowsPerDispatch);
  if (rows < n) rows = Math.max(64, rows - (rows % 64));
  if (rows > fit) rows = fit; // fewer than 64 rows fit: keep the exact count
  const out: [number, number][] = [];
  for (let r0 = 0; r0 < n; r0 += rows) out.push([r0, Math.min(n, r0 + rows)]);
  return out;
}
