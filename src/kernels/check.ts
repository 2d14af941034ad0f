// Shared argument checks for every backend's matmul, so each reports bad input the same way.

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
