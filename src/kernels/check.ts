// Shared argument checks for every backend's matmul and readRow, so each reports bad input the same way.

import { FluteError } from '../errors.js';
import type { PreparedLinear } from './types.js';

export function checkMatmulArgs(backend: string, layer: PreparedLinear, x: Float32Array, m: number, out?: Float32Array): void {
  if (layer.backend !== backend) {
    throw new FluteError('E_BACKEND', `${backend}: layer was prepared by backend "${layer.backend}"`);
  }
  if (!Number.isInteger(m) || m < 1) throw new FluteError('E_SHAPE', `${backend} matmul: M must be a positive integer, got ${m}`);
  if (x.length !== m * layer.k) {
    throw new FluteError('E_SHAPE', `${backend} matmul: input must be [${m}, ${layer.k}] = ${m * layer.k} values for a layer with K=${layer.k}, got ${x.length}`);
  }
  if (out && out.length < m * layer.n) {
    throw new FluteError('E_SHAPE', `${backend} matmul: output must hold [${m}, ${layer.n}] = ${m * layer.n} values, got ${out.length}`);
  }
}

export function checkReadRowArgs(backend: string, layer: PreparedLinear, row: number, out: Float32Array, at: number): void {
  if (layer.backend !== backend) {
    throw new FluteError('E_BACKEND', `${backend}: layer was prepared by backend "${layer.backend}"`);
  }
  if (!Number.isInteger(row) || row < 0 || row >= layer.n) throw new FluteError('E_SHAPE', `${backend} readRow: expected a row in 0..${layer.n - 1}, got ${row}`);
  if (!(Number.isInteger(at) && at >= 0 && at + layer.k <= out.length)) {
    throw new FluteError('E_SHAPE', `${backend} readRow: ${layer.k} values at ${at} do not fit an output of ${out.length}`);
  }
}
