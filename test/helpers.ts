// Shared test utilities: a seeded RNG, random matrices and error measures with named bounds.

export { mulberry32 as rng } from '../src/rng.js';

/** Standard normal samples (Box-Muller). */
export function randn(r: () => number, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return out;
}

export function randInt(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

/** Relative Frobenius error ||a - b|| / ||b||. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** y[M, N] = x[M, K] W[N, K]^T in f64, independent of any backend. */
export function matmulF64(x: ArrayLike<number>, w: ArrayLike<number>, m: number, n: number, k: number): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
    let acc = 0;
    for (let t = 0; t < k; t++) acc += x[i * k + t] * w[j * k + t];
    y[i * n + j] = acc;
  }
  return y;
}

export function identity(k: number): Float32Array {
  const x = new Float32Array(k * k);
  for (let i = 0; i < k; i++) x[i * k + i] = 1;
  return x;
}
