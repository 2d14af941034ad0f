// The canonical weight types every quantizer produces, every writer stores and every kernel backend
// prepares: QuantizedLinear (LUT indices x per-group scales) and DenseLinear (plain f32). Also the
// dequantization rule, which is the format's definition (flute.md section 1.1).

import { FluteError } from '../errors.js';
import { roundToF16 } from '../format/half.js';
import { indexAt, packedRowBytes } from './packing.js';
import { checkBits, validateTable, type TableKind } from './tables.js';

/** The number format of stored scales. In memory they are f32 values already rounded to this type. */
export type ScaleDtype = 'f16' | 'f32';

/** Compute type of a kernel: with 'f16', table[i] x scale is rounded to f16 as FLUTE does. */
export type ComputeType = 'f32' | 'f16';

/** W[n, k] = table[Q[n, k]] * scales[n, floor(k / g)]; y = x W^T. */
export interface QuantizedLinear {
  readonly kind: 'quantized';
  readonly n: number; // out features (rows)
  readonly k: number; // in features (columns, the reduction dimension)
  readonly bits: number; // 1..8
  readonly groupSize: number; // g >= 1; the last group of a row holds K - (G-1)*g values
  readonly tableKind: TableKind;
  readonly table: Float32Array; // [2^bits]
  readonly scaleDtype: ScaleDtype;
  readonly scales: Float32Array; // [N, G] with G = ceil(K / g), values exactly representable in scaleDtype
  readonly packed: Uint8Array; // [N, ceil(K*bits/8)] canonical LSB-first layout (packing.ts)
}

export interface DenseLinear {
  readonly kind: 'dense';
  readonly n: number;
  readonly k: number;
  readonly weight: Float32Array; // [N, K] row-major
}

export type Linear = QuantizedLinear | DenseLinear;

export function groupsPerRow(k: number, groupSize: number): number {
  return Math.ceil(k / groupSize);
}

/** Storage cost in bits per weight, counting scales (b + scaleBits * G / K) and the table once. */
export function bitsPerWeight(layer: QuantizedLinear): number {
  const scaleBits = layer.scaleDtype === 'f16' ? 16 : 32;
  const total = layer.packed.length * 8 + layer.scales.length * scaleBits + layer.table.length * 32;
  return total / (layer.n * layer.k);
}

/** Bytes the layer occupies in a checkpoint. */
export function storedBytes(layer: Linear): number {
  if (layer.kind === 'dense') return layer.weight.length * 4;
  return layer.packed.length + layer.scales.length * (layer.scaleDtype === 'f16' ? 2 : 4) + layer.table.length * 4;
}

/** Validates every field of a QuantizedLinear; `name` names the tensor in errors. */
export function validateQuantizedLinear(q: QuantizedLinear, name = 'layer'): QuantizedLinear {
  if (!Number.isInteger(q.n) || q.n < 1 || !Number.isInteger(q.k) || q.k < 1) {
    throw new FluteError('E_SHAPE', `${name}: expected positive integer N and K, got N=${q.n}, K=${q.k}`);
  }
  checkBits(q.bits, `${name}: bits`);
  if (!Number.isInteger(q.groupSize) || q.groupSize < 1) {
    throw new FluteError('E_OPTION', `${name}: group size: expected a positive integer, got ${q.groupSize}`);
  }
  validateTable(q.table, q.bits, `${name}: table`);
  const g = groupsPerRow(q.k, q.groupSize);
  if (q.scales.length !== q.n * g) {
    throw new FluteError('E_SHAPE', `${name}: scales: expected ${q.n}x${g} = ${q.n * g} values, got ${q.scales.length}`);
  }
  for (let i = 0; i < q.scales.length; i++) {
    if (!Number.isFinite(q.scales[i])) {
      throw new FluteError('E_NONFINITE', `${name}: scale ${i} (row ${Math.floor(i / g)}, group ${i % g}) is ${q.scales[i]}`);
    }
  }
  const rowBytes = packedRowBytes(q.k, q.bits);
  if (q.packed.length !== q.n * rowBytes) {
    throw new FluteError('E_SHAPE', `${name}: packed indices: expected ${q.n}x${rowBytes} bytes, got ${q.packed.length}`);
  }
  return q;
}

/**
 * The dequantized weight [N, K]. With computeType 'f16' each element is
 * round_f16(round_f16(table[q]) * round_f16(scale)), one correctly rounded f16 multiply
 * (an f16 x f16 product is exact in f64, so rounding it once to f16 is exactly FLUTE's __hmul2).
 */
export function dequantize(q: QuantizedLinear, computeType: ComputeType = 'f32'): Float32Array {
  const out = new Float32Array(q.n * q.k);
  const table = computeType === 'f16' ? Float32Array.from(q.table, roundToF16) : q.table;
  for (let r = 0; r < q.n; r++) dequantizeRowWith(q, table, computeType, r, out, r * q.k);
  return out;
}

/** out[at .. at + K) = row r of dequantize(q) (f32 rule): one row without the whole matrix. */
export function dequantizeRow(q: QuantizedLinear, r: number, out: Float32Array, at = 0): void {
  if (!Number.isInteger(r) || r < 0 || r >= q.n) throw new FluteError('E_SHAPE', `dequantizeRow: expected a row in 0..${q.n - 1}, got ${r}`);
  dequantizeRowWith(q, q.table, 'f32', r, out, at);
}

/** One weight by the f32 rule: fl(t * s), with `+ 0` folding -0 to +0 (a zero entry times a negative scale) so zeros compare bit for bit. */
export function dequantValue(t: number, s: number): number {
  return Math.fround(t * s) + 0;
}

function dequantizeRowWith(q: QuantizedLinear, table: Float32Array, computeType: ComputeType, r: number, out: Float32Array, at: number): void {
  const rowBytes = packedRowBytes(q.k, q.bits);
  const groups = groupsPerRow(q.k, q.groupSize);
  for (let c = 0; c < q.k; c++) {
    const s = q.scales[r * groups + Math.floor(c / q.groupSize)];
    const t = table[indexAt(q.packed, rowBytes, q.bits, r, c)];
    out[at + c] = computeType === 'f16' ? roundToF16(t * roundToF16(s)) + 0 : dequantValue(t, s);
  }
}

/** Relative Frobenius error ||got - want|| / ||want|| (the absolute norm when want is all zero). */
export function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i] - want[i]) ** 2;
    den += want[i] ** 2;
  }
  return den > 0 ? Math.sqrt(num / den) : Math.sqrt(num);
}

/**
 * The rows of `parts` (same K, all quantized with the same bits, group size, table and scale type)
 * stacked into one [sum N, K] linear, so that several projections of one input run as one matmul:
 * y = x [W_0; W_1; ...]^T holds each part's output at its row offset. Null when the parts differ in
 * any of those (e.g. a GGUF file with mixed types) or are dense, and the caller runs them one by one:
 * the copy costs the parts' bytes while the caller still holds them, small for packed indices but
 * 2.5 GB of f32 on a 1B model for a few percent of decode speed. Each output row depends only on its
 * own weights, so the stacked result equals the separate ones.
 */
export function stackRows(parts: readonly Linear[]): Linear | null {
  const [first] = parts;
  if (!first || first.kind !== 'quantized' || parts.some((p) => p.k !== first.k || p.kind !== 'quantized')) return null;
  const n = parts.reduce((a, p) => a + p.n, 0);
  const qs = parts as QuantizedLinear[];
  const same = (p: QuantizedLinear) =>
    p.bits === first.bits && p.groupSize === first.groupSize && p.tableKind === first.tableKind && p.scaleDtype === first.scaleDtype &&
    p.table.length === first.table.length && p.table.every((v, i) => Object.is(v, first.table[i]));
  if (!qs.every(same)) return null;
  const packed = new Uint8Array(qs.reduce((a, p) => a + p.packed.length, 0));
  const scales = new Float32Array(qs.reduce((a, p) => a + p.scales.length, 0));
  let pa = 0;
  let sa = 0;
  for (const p of qs) {
    packed.set(p.packed, pa);
    scales.set(p.scales, sa);
    pa += p.packed.length;
    sa += p.scales.length;
  }
  return { ...first, n, packed, scales };
}
