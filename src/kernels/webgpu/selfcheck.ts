// Checks the webgpu backend against the reference on small random layers: the cases of
// kernels/selfcheck.ts (bits 2, 3, 4, a generic width, a ragged group, M = 1 and M > 1, dense) in both
// precisions, split-K, and the exact identity round trip. Used by `flute doctor`.

import { dequantize, type Linear } from '../../quant/linear.js';
import { quantizeRtn } from '../../quant/rtn.js';
import { createRefBackend } from '../ref/index.js';
import type { SelfCheckCase } from '../selfcheck.js';
import type { GpuKernelBackend, GpuMatmulOptions, GpuPrecision } from './types.js';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
}

/** Tolerances: f32 1e-5 relative (f32 summation of <= 300 terms); f16 FLUTE's 2e-3. */
export const GPU_TOLERANCE: Record<GpuPrecision, number> = { f32: 1e-5, f16: 2e-3 };

export async function selfCheckWebGpu(backend: GpuKernelBackend, precisions: readonly GpuPrecision[] = ['f32', 'f16']): Promise<SelfCheckCase[]> {
  const ref = createRefBackend();
  const r = lcg(1234);
  const cases: { id: string; layer: Linear; m: number; opts?: GpuMatmulOptions }[] = [];
  for (const [bits, g, n, k, m] of [[4, 32, 24, 96, 1], [3, 64, 17, 200, 3], [2, 128, 8, 256, 5], [5, 24, 9, 50, 2], [4, 40, 33, 100, 17]]) {
    const w = Float32Array.from({ length: n * k }, r);
    cases.push({ id: `lut(bits=${bits},g=${g},m=${m},n=${n},k=${k})`, layer: quantizeRtn(w, n, k, { bits, groupSize: g, tableKind: 'nf' }).layer, m });
  }
  const w3 = Float32Array.from({ length: 40 * 300 }, r);
  cases.push({ id: 'lut(bits=3,g=128,m=1,n=40,k=300,splitK=3)', layer: quantizeRtn(w3, 40, 300, { bits: 3, groupSize: 128, tableKind: 'nf' }).layer, m: 1, opts: { splitK: 3 } });
  cases.push({ id: 'dense(m=4,n=19,k=70)', layer: { kind: 'dense', n: 19, k: 70, weight: Float32Array.from({ length: 19 * 70 }, r) }, m: 4 });
  const out: SelfCheckCase[] = [];
  for (const computeType of precisions) {
    for (const { id, layer, m, opts } of cases) {
      const cid = `${id} ${computeType}`;
      if (backend.unsupported(layer)) {
        out.push({ id: cid, relErr: NaN, ok: false });
        continue;
      }
      const x = Float32Array.from({ length: m * layer.k }, r);
      const want = ref.matmul(ref.prepare(layer), x, m, undefined, { computeType });
      const p = await backend.prepare(layer);
      try {
        const got = await backend.matmul(p, x, m, undefined, { ...opts, computeType });
        let num = 0;
        let den = 0;
        for (let i = 0; i < want.length; i++) {
          num += (got[i] - want[i]) ** 2;
          den += want[i] ** 2;
        }
        const relErr = Math.sqrt(num / den);
        out.push({ id: cid, relErr, ok: relErr <= GPU_TOLERANCE[computeType] });
      } catch (e) {
        out.push({ id: `${cid}: ${(e as Error).message}`, relErr: NaN, ok: false });
      } finally {
        backend.release(p);
      }
    }
    // identity: x = I must return dequantize(layer, computeType) bit for bit
    const layer = cases[1].layer;
    if (layer.kind === 'quantized') {
      const p = await backend.prepare(layer);
      try {
        const eye = new Float32Array(layer.k * layer.k);
        for (let i = 0; i < layer.k; i++) eye[i * layer.k + i] = 1;
        const y = await backend.matmul(p, eye, layer.k, undefined, { computeType });
        const wq = dequantize(layer, computeType);
        let bad = 0;
        for (let i = 0; i < layer.k; i++) for (let j = 0; j < layer.n; j++) if (!Object.is(y[i * layer.n + j], wq[j * layer.k + i])) bad++;
        out.push({ id: `identity(bits=3,g=64,n=17,k=200) ${computeType}: ${bad} of ${layer.n * layer.k} differ`, relErr: bad / (layer.n * layer.k), ok: bad === 0 });
      } finally {
        backend.release(p);
      }
    }
  }
  return out;
}
