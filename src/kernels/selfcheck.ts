// Checks a backend against the reference on small random cases (bits 2, 3, 4 and a generic width,
// a ragged group, M = 1 and M > 1, a dense layer). Used by `flute doctor` and by tests.

import { quantizeRtn } from '../quant/rtn.js';
import { relativeError, type Linear } from '../quant/linear.js';
import { createRefBackend } from './ref/index.js';
import type { KernelBackend } from './types.js';

export interface SelfCheckCase {
  readonly id: string;
  readonly relErr: number; // ||y - y_ref|| / ||y_ref||
  readonly ok: boolean;
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
}

/**
 * `tolerance` bounds the relative error: 1e-5 suits exact f32 kernels (f32 rounding over K <= 300
 * terms stays near 1e-6); a kernel with int8 activations passes its own, looser bound.
 */
export function selfCheck(backend: KernelBackend, tolerance = 1e-5): SelfCheckCase[] {
  const ref = createRefBackend();
  const r = lcg(1234);
  const cases: { id: string; layer: Linear; m: number }[] = [];
  for (const [bits, g, n, k, m] of [[4, 32, 24, 96, 1], [3, 64, 17, 200, 3], [2, 128, 8, 256, 5], [5, 24, 9, 50, 2], [4, 40, 33, 100, 17]]) {
    const w = Float32Array.from({ length: n * k }, r);
    cases.push({ id: `lut(bits=${bits},g=${g},m=${m},n=${n},k=${k})`, layer: quantizeRtn(w, n, k, { bits, groupSize: g, tableKind: 'nf' }).layer, m });
  }
  cases.push({ id: 'dense(m=4,n=19,k=70)', layer: { kind: 'dense', n: 19, k: 70, weight: Float32Array.from({ length: 19 * 70 }, r) }, m: 4 });
  return cases.map(({ id, layer, m }) => {
    if (backend.unsupported(layer)) return { id, relErr: NaN, ok: false };
    const x = Float32Array.from({ length: m * layer.k }, r);
    const want = ref.matmul(ref.prepare(layer), x, m);
    const prepared = backend.prepare(layer);
    const got = backend.matmul(prepared, x, m);
    backend.release(prepared);
    const relErr = relativeError(got, want);
    return { id, relErr, ok: relErr <= tolerance };
  });
}
