// Round-to-nearest (RTN) LUT quantization of one weight matrix: per group of g values along K, a scale
// maps the group's largest magnitude onto the table's largest magnitude, then each weight takes the
// index of its nearest table entry. Returns the canonical QuantizedLinear and its error statistics.

import { FluteError } from '../errors.js';
import { roundToF16 } from '../format/half.js';
import { groupsPerRow, type QuantizedLinear, type ScaleDtype } from './linear.js';
import { packIndices } from './packing.js';
import { buildTable, type TableKind } from './tables.js';

export interface QuantizeOptions {
  readonly bits: number; // 1..8
  readonly groupSize: number; // >= 1
  readonly tableKind: TableKind;
  /** Values for tableKind 'custom' (2^bits finite numbers). */
  readonly tableValues?: ArrayLike<number>;
  /** How scales are stored; 'f16' (default) costs 16/g bits per weight, as in FLUTE. */
  readonly scaleDtype?: ScaleDtype;
}

export interface QuantizeError {
  readonly mse: number; // mean squared error of the dequantized weight
  readonly maxAbs: number; // largest absolute error
  readonly relRmse: number; // sqrt(mse / mean(w^2)): 0 is perfect
}

/** Finds the nearest table entry to x. Ties go to the lower value, as FLUTE's searchsorted does. */
export class NearestEntry {
  private readonly sortedIdx: Uint8Array; // [2^b] table indices in ascending value order
  private readonly pivots: Float64Array; // [2^b - 1] midpoints between consecutive sorted values

  constructor(table: Float32Array) {
    const order = Array.from(table.keys()).sort((a, b) => table[a] - table[b] || a - b);
    this.sortedIdx = Uint8Array.from(order);
    this.pivots = Float64Array.from(order.slice(1), (idx, i) => (table[order[i]] + table[idx]) / 2);
  }

  /** Index of the table entry nearest x: the count of pivots strictly below x picks the slot. */
  find(x: number): number {
    const p = this.pivots;
    let lo = 0;
    let hi = p.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (p[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    return this.sortedIdx[lo];
  }
}

/**
 * How a group's scale is chosen. When the table reaches its largest magnitude M with both signs
 * (NF, fp4), scale = absmax / M, positive, as FLUTE's NF quantizer does. When only one sign reaches
 * it (int: -2^(b-1) .. 2^(b-1)-1), scale = w_ext / T_ext with w_ext the group's signed extreme, so
 * the extreme weight lands exactly on the table's extreme (llama.cpp Q4_0's rule); the scale may be
 * negative, which the format allows.
 */
function scaleRule(table: Float32Array): { max: number; signedExtreme: number | null } {
  let max = 0;
  for (const v of table) max = Math.max(max, Math.abs(v));
  const hasPos = table.includes(max);
  const hasNeg = table.includes(-max);
  return { max, signedExtreme: hasPos && hasNeg ? null : hasPos ? max : -max };
}

/**
 * The loop both quantizers share: per (row, group), `rawScale` gives the scale, which is rounded to
 * scaleDtype; then each weight takes the index of the table entry nearest w / s (a zero scale takes
 * the entry nearest 0), and the error statistics are gathered.
 */
function quantizeGroups(
  weight: Float32Array,
  n: number,
  k: number,
  opts: QuantizeOptions,
  name: string,
  rawScale: (r: number, gi: number, start: number, end: number, table: Float32Array) => number,
): { layer: QuantizedLinear; error: QuantizeError } {
  const { bits, groupSize } = opts;
  const scaleDtype = opts.scaleDtype ?? 'f16';
  if (!Number.isInteger(groupSize) || groupSize < 1) {
    throw new FluteError('E_OPTION', `group size: expected a positive integer, got ${groupSize}`);
  }
  if (weight.length !== n * k) {
    throw new FluteError('E_SHAPE', `${name}: expected ${n}x${k} = ${n * k} values, got ${weight.length}`);
  }
  const table = buildTable(opts.tableKind, bits, opts.tableValues, `${name}: table`);
  const nearest = new NearestEntry(table);
  const zeroIdx = nearest.find(0);
  const groups = groupsPerRow(k, groupSize);
  const scales = new Float32Array(n * groups); // [N, G]
  const indices = new Uint8Array(n * k); // [N, K] one index per byte until packed
  let sqErr = 0;
  let sqW = 0;
  let maxAbs = 0;
  for (let r = 0; r < n; r++) {
    for (let gi = 0; gi < groups; gi++) {
      const start = r * k + gi * groupSize;
      const end = r * k + Math.min(k, (gi + 1) * groupSize);
      const raw = rawScale(r, gi, start, end, table);
      const s = scaleDtype === 'f16' ? roundToF16(raw) : Math.fround(raw);
      if (!Number.isFinite(s)) {
        throw new FluteError('E_OPTION', `${name}: row ${r}, group ${gi} needs scale ${raw}, beyond ${scaleDtype}${scaleDtype === 'f16' ? '; use --scale-dtype f32' : ''}`);
      }
      scales[r * groups + gi] = s;
      for (let i = start; i < end; i++) {
        const w = weight[i];
        if (!Number.isFinite(w)) {
          throw new FluteError('E_NONFINITE', `${name}: weight at row ${r}, column ${i - r * k} is ${w}; expected finite values`);
        }
        const q = s === 0 ? zeroIdx : nearest.find(w / s);
        indices[i] = q;
        const e = Math.fround(table[q] * s) - w;
        sqErr += e * e;
        sqW += w * w;
        if (Math.abs(e) > maxAbs) maxAbs = Math.abs(e);
      }
    }
  }
  const packed = packIndices(indices, n, k, bits, `${name}: indices`);
  const layer: QuantizedLinear = {
    kind: 'quantized', n, k, bits, groupSize, tableKind: opts.tableKind, table, scaleDtype, scales, packed,
  };
  return { layer, error: { mse: sqErr / (n * k), maxAbs, relRmse: sqW > 0 ? Math.sqrt(sqErr / sqW) : 0 } };
}

/** Quantizes weight [N, K] (row-major f32) with absmax scales. `name` names the tensor in errors. */
export function quantizeRtn(
  weight: Float32Array,
  n: number,
  k: number,
  opts: QuantizeOptions,
  name = 'weight',
): { layer: QuantizedLinear; error: QuantizeError } {
  let rule: ReturnType<typeof scaleRule> | undefined;
  return quantizeGroups(weight, n, k, opts, name, (r, gi, start, end, table) => {
    rule ??= scaleRule(table);
    let ext = 0; // the signed value of largest magnitude
    for (let i = start; i < end; i++) {
      const w = weight[i];
      if (!Number.isFinite(w)) {
        throw new FluteError('E_NONFINITE', `${name}: weight at row ${r}, column ${i - r * k} is ${w}; expected finite values`);
      }
      if (Math.abs(w) > Math.abs(ext)) ext = w;
    }
    return rule.signedExtreme === null ? Math.abs(ext) / rule.max : ext / rule.signedExtreme;
  });
}

/**
 * Quantizes weight [N, K] with given per-group scales [N, ceil(K/g)] instead of absmax ones (NFL's
 * learned scales): each scale is rounded to scaleDtype, then each weight takes the index of the table
 * entry nearest w / s (ties low, as in RTN; a zero scale takes the entry nearest 0).
 */
export function quantizeWithScales(
  weight: Float32Array,
  n: number,
  k: number,
  givenScales: ArrayLike<number>,
  opts: QuantizeOptions,
  name = 'weight',
): { layer: QuantizedLinear; error: QuantizeError } {
  const groups = groupsPerRow(k, opts.groupSize);
  if (Number.isInteger(opts.groupSize) && opts.groupSize >= 1 && givenScales.length !== n * groups) {
    throw new FluteError('E_SHAPE', `${name}: scales: expected ${n}x${groups} = ${n * groups} values, got ${givenScales.length}`);
  }
  return quantizeGroups(weight, n, k, opts, name, (r, gi) => {
    const raw = givenScales[r * groups + gi];
    if (!Number.isFinite(raw)) throw new FluteError('E_NONFINITE', `${name}: row ${r}, group ${gi}: scale ${raw} is not finite`);
    return raw;
  });
}
