// Kernel specializations: everything a generated WGSL program depends on. A spec's canonical JSON is
// its program-cache key, so two specs that print alike always share a compiled pipeline.

import type { LutFormat } from '../layout.js';
import type { Arith } from './common.js';

/** What the weight binding holds: LUT codes in a device format, or dense f32 / f16-bits rows. */
export type WeightKind =
  | { readonly kind: 'lut'; readonly format: LutFormat; readonly unit: number } // unit: weights per stored scale
  | { readonly kind: 'dense'; readonly storage: 'f32' | 'f16' };

/** GEMV: one workgroup computes `rows` outputs for `mb` activation rows; all invocations split K. */
export interface GemvSpec {
  readonly op: 'gemv';
  readonly w: WeightKind;
  readonly arith: Arith;
  readonly rows: number; // R output rows per workgroup
  readonly mb: number; // activation rows per workgroup (1, 2 or 4)
  readonly wg: number; // invocations
  readonly dup: number; // copies of the table (LUT only; 1 for dense)
  readonly reduce: 'subgroup' | 'tree'; // cross-invocation reduction
  readonly maxSubgroups: number; // red[] slots for the subgroup reduction (wg / min subgroup size)
}

/** Tiled GEMM: a workgroup computes a tm x tn output tile, K in steps of 32, 4x4 outputs per invocation. */
export interface GemmSpec {
  readonly op: 'gemm';
  readonly w: WeightKind;
  readonly arith: Arith;
  readonly tm: number;
  readonly tn: number;
  readonly dup: number;
}

/** The split-K second pass: y = sum over splits of the partial outputs. */
export interface ReduceSpec {
  readonly op: 'reduce';
}

export type KernelSpec = GemvSpec | GemmSpec | ReduceSpec;

/** The program-cache key: the spec's JSON with keys in a fixed order. */
export function specKey(spec: KernelSpec): string {
  const sortKeys = (v: unknown): unknown =>
    v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])])) : v;
  return JSON.stringify(sortKeys(spec));
}

export const GEMM_TK = 32; // K per GEMM step: one 32-weight slice of each of the tile's rows
