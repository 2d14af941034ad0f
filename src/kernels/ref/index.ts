// The reference backend: the specification every other backend is tested against. Plain loops over
// the canonical layout, no restructuring, accumulation in f64 so its own rounding error is negligible
// next to any fast kernel's: y[m, n] = sum_k x[m, k] * W[n, k], W from quant/linear.ts `dequantize`.

import { dequantize, dequantizeRow, type Linear } from '../../quant/linear.js';
import { checkMatmulArgs, checkReadRowArgs } from '../check.js';
import type { KernelBackend, MatmulOptions, PreparedLinear } from '../types.js';

interface RefData {
  readonly source: Linear; // the canonical layer: the reference runs on it as it is
  // The dequantized weight per compute type, made on first use: the spec is the dequantize() rule.
  readonly weights: Map<string, Float32Array>; // [N, K]
}

function weightOf(layer: PreparedLinear, opts?: MatmulOptions): Float32Array {
  const data = layer.data as RefData;
  const src = data.source;
  if (src.kind === 'dense') return src.weight;
  const ct = opts?.computeType ?? 'f32';
  let w = data.weights.get(ct);
  if (!w) {
    w = dequantize(src, ct);
    data.weights.set(ct, w);
  }
  return w;
}

export function createRefBackend(): KernelBackend {
  return {
    name: 'ref',
    info: () => ({ name: 'ref', variant: 'reference (scalar, f64 accumulation)', relTolerance: 1e-5 }),
    unsupported: () => null,
    prepare(layer: Linear): PreparedLinear {
      const data: RefData = { source: layer, weights: new Map() };
      return { backend: 'ref', n: layer.n, k: layer.k, bytes: 0, data };
    },
    matmul(layer, x, m, out, opts) {
      checkMatmulArgs('ref', layer, x, m, out);
      const { n, k } = layer;
      const w = weightOf(layer, opts);
      const y = out ?? new Float32Array(m * n);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let acc = 0;
          for (let t = 0; t < k; t++) acc += x[i * k + t] * w[j * k + t];
          y[i * n + j] = acc;
        }
      }
      return y;
    },
    readRow(layer, row, out, at = 0) {
      checkReadRowArgs('ref', layer, row, out, at);
      const src = (layer.data as RefData).source;
      if (src.kind === 'quantized') dequantizeRow(src, row, out, at);
      else out.set(src.weight.subarray(row * src.k, (row + 1) * src.k), at);
    },
    release(layer) {
      (layer.data as RefData).weights.clear();
    },
    dispose() {},
  };
}
