// The table-kind registry: one entry per kind of lookup table (NF, int, fp4, custom), saying how its
// 2^b values are built and its name and id in files. Quantizers, writers and the CLI read this
// registry and never switch on the kind themselves.

import { FluteError } from '../errors.js';

export type TableKind = 'nf' | 'int' | 'fp4' | 'custom' | 'iq4nl';

export interface TableTraits {
  readonly kind: TableKind;
  /** Numeric id stored nowhere yet but reserved forever: never reuse one (1 nf, 2 int, 3 fp4, 4 custom, 5 iq4nl). */
  readonly id: number;
  readonly description: string;
  /** Why this kind cannot have `bits` bits, or null when it can. */
  unsupportedBits(bits: number): string | null;
  /** The 2^bits table values; `custom` takes them from `values`. */
  build(bits: number, values?: ArrayLike<number>): Float32Array;
}

// ---------------------------------------------------------------------------------------------
// NormalFloat

/** The QLoRA NF4 constants (bitsandbytes `create_normal_map`), which FLUTE also hard-codes for b = 4. */
export const NF4_VALUES: readonly number[] = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
  0.7229568362236023, 1.0,
];

/** Standard normal CDF through erf's Taylor series: exact to ~1e-15 for |x| < 3, all NF needs. */
function normalCdf(x: number): number {
  const z = x / Math.SQRT2;
  let term = z;
  let sum = z;
  for (let n = 1; n < 200; n++) {
    term *= (-z * z) / n;
    const add = term / (2 * n + 1);
    sum += add;
    if (Math.abs(add) < 1e-17) break;
  }
  return 0.5 * (1 + (2 / Math.sqrt(Math.PI)) * sum);
}

/** Inverse standard normal CDF by bisection on normalCdf (p in [0.5, 0.999]; speed is irrelevant here). */
export function normalQuantile(p: number): number {
  let lo = -8;
  let hi = 8;
  for (let i = 0; i < 200 && hi - lo > 1e-15; i++) {
    const mid = 0.5 * (lo + hi);
    if (normalCdf(mid) < p) lo = mid;
    else hi = mid;
  }
  return 0.5 * (lo + hi);
}

function linspace(a: number, b: number, n: number): number[] {
  if (n === 1) return [a];
  return Array.from({ length: n }, (_, i) => a + ((b - a) * i) / (n - 1));
}

/**
 * FLUTE's NormalFloat table (flute/nf_utils.py `get_values_pivots`, asymmetric):
 * delta = (1/32 + 1/30) / 2; negatives -icdf(linspace(1-delta, 1/2, 2^(b-1))), positives
 * icdf(linspace(1/2, 1-delta, 2^(b-1)+1)[1:]), all divided by the largest magnitude.
 * b = 4 uses the QLoRA constants, which this formula reproduces to about 1e-6.
 */
export function nfTable(bits: number): Float32Array {
  if (bits === 4) return Float32Array.from(NF4_VALUES);
  const delta = 0.5 * (1 / 32 + 1 / 30);
  const half = 2 ** (bits - 1);
  const neg = linspace(1 - delta, 0.5, half).map((p) => -normalQuantile(p));
  const pos = linspace(0.5, 1 - delta, half + 1).slice(1).map((p) => normalQuantile(p));
  const v = [...neg, ...pos];
  const max = Math.max(...v.map(Math.abs));
  return Float32Array.from(v, (x) => x / max);
}

/** llama.cpp's IQ4_NL table (ggml-common.h `kvalues_iq4nl`): a non-linear 4-bit grid, value = kvalues[q] * d. */
export const IQ4NL_VALUES: readonly number[] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

// ---------------------------------------------------------------------------------------------
// The registry

export const TABLE_KINDS: Record<TableKind, TableTraits> = {
  nf: {
    kind: 'nf',
    id: 1,
    description: 'NormalFloat: quantiles of N(0,1), QLoRA NF4 at 4 bits, FLUTE formula otherwise',
    unsupportedBits: () => null,
    build: (bits) => nfTable(bits),
  },
  int: {
    kind: 'int',
    id: 2,
    description: 'symmetric (zero-point free) integers -2^(b-1) .. 2^(b-1)-1, like FLUTE int4 and llama.cpp Q4_0',
    unsupportedBits: () => null,
    build: (bits) => Float32Array.from({ length: 2 ** bits }, (_, i) => i - 2 ** (bits - 1)),
  },
  fp4: {
    kind: 'fp4',
    id: 3,
    description: 'fp4 E2M1 (OCP MX): sign x {0, 0.5, 1, 1.5, 2, 3, 4, 6}, codes in bit order s|ee|m',
    unsupportedBits: (bits) => (bits === 4 ? null : 'fp4 (E2M1) has exactly 4 bits'),
    build: () => {
      const mags = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
      return Float32Array.from({ length: 16 }, (_, i) => (i & 8 ? -1 : 1) * mags[i & 7]);
    },
  },
  custom: {
    kind: 'custom',
    id: 4,
    description: 'any 2^b finite values given by the user (a JSON array or {"values": [...]})',
    unsupportedBits: () => null,
    build: (bits, values) => {
      if (!values) throw new FluteError('E_OPTION', `table "custom": values are required (a list of ${2 ** bits} numbers)`);
      return Float32Array.from(values);
    },
  },
  iq4nl: {
    kind: 'iq4nl',
    id: 5,
    description: "llama.cpp IQ4_NL: the fixed 16 integers -127 .. 113 (kvalues_iq4nl), used unnormalized as GGUF stores them",
    unsupportedBits: (bits) => (bits === 4 ? null : 'iq4nl (llama.cpp IQ4_NL) has exactly 4 bits'),
    build: () => Float32Array.from(IQ4NL_VALUES),
  },
};

export function isTableKind(s: string): s is TableKind {
  return Object.prototype.hasOwnProperty.call(TABLE_KINDS, s);
}

/** Checks that `bits` is an integer in 1..8, naming the option on failure. */
export function checkBits(bits: number, what = 'bits'): void {
  if (!Number.isInteger(bits) || bits < 1 || bits > 8) {
    throw new FluteError('E_OPTION', `${what}: expected an integer from 1 to 8, got ${bits}`);
  }
}

/**
 * Builds and validates a table: right length, finite values, and -0 folded to +0 so that a
 * dequantized zero is +0 on every backend (the identity test compares bit for bit).
 */
export function buildTable(kind: TableKind, bits: number, values?: ArrayLike<number>, what = 'table'): Float32Array {
  checkBits(bits);
  const traits = TABLE_KINDS[kind];
  const reason = traits.unsupportedBits(bits);
  if (reason) throw new FluteError('E_OPTION', `${what}: ${reason}; got bits=${bits}`);
  const t = traits.build(bits, values);
  return validateTable(t, bits, what);
}

export function validateTable(t: Float32Array, bits: number, what = 'table'): Float32Array {
  const want = 2 ** bits;
  if (t.length !== want) {
    throw new FluteError('E_SHAPE', `${what}: a ${bits}-bit table needs ${want} values, got ${t.length}`);
  }
  for (let i = 0; i < t.length; i++) {
    if (!Number.isFinite(t[i])) throw new FluteError('E_NONFINITE', `${what}: value ${i} is ${t[i]}, expected a finite number`);
    if (t[i] === 0) t[i] = 0;
  }
  if (!t.some((v) => v !== 0)) throw new FluteError('E_OPTION', `${what}: every value is zero, so nothing can be represented`);
  return t;
}

/** Parses a user's JSON table file: either [v0, v1, ...] or {"values": [...]}. */
export function parseTableJson(text: string, file: string): number[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new FluteError('E_FORMAT', `${file}: not valid JSON (${(e as Error).message}); expected [v0, v1, ...] or {"values": [...]}`);
  }
  const arr = Array.isArray(parsed) ? parsed : (parsed as { values?: unknown } | null)?.values;
  if (!Array.isArray(arr) || !arr.every((v) => typeof v === 'number')) {
    throw new FluteError('E_FORMAT', `${file}: expected a JSON array of numbers or {"values": [numbers...]}`);
  }
  return arr as number[];
}
