// The wasm SIMD SwiGLU, attention and exp of src/model/cpu-ops.ts against their JS specifications
// (f64 arithmetic), within error bounds derived from f32 rounding; exp's worst ulp error over a sweep.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuOps, attentionJs, attentionScratchFloats, swigluJs } from '../src/model/cpu-ops.js';
import { mulberry32 } from '../src/rng.js';

const U = 2 ** -24; // f32 unit roundoff

/** Deterministic uniform [0, 1) so a failure reproduces. */
const rng = mulberry32;

function needOps(sizes: number[]): CpuOps | undefined {
  const ops = CpuOps.create(sizes);
  if (!ops && process.env.CI !== 'true') return undefined;
  assert.ok(ops, 'CpuOps.create: WebAssembly SIMD should be available in Node 20');
  return ops;
}

/** Distance in representable f32 values between a and b (same sign, finite, or both 0). */
function ulpDistance(a: number, b: number): number {
  const f = new Float32Array([a, b]);
  const i = new Int32Array(f.buffer);
  return Math.abs(i[0] - i[1]);
}

test('cpu-ops: exp is within 3 f32 ulp of Math.exp over [-104, 89], with inf/0/NaN at the edges', (t) => {
  const n = 1 << 20;
  const ops = needOps([n]);
  if (!ops) return t.skip('WebAssembly SIMD unavailable (not CI)');
  const a = ops.alloc(n);
  const rand = rng(1);
  for (let i = 0; i < n; i++) a[i] = i < n / 2 ? -104 + (193 * i) / (n / 2) : -104 + 193 * rand();
  const x = a.slice();
  ops.exp(a, n);
  let worst = 0;
  let worstAt = 0;
  for (let i = 0; i < n; i++) {
    const want = Math.fround(Math.exp(x[i]));
    if (!Number.isFinite(want)) {
      assert.equal(a[i], Infinity, `exp(${x[i]})`);
      continue;
    }
    const d = ulpDistance(a[i], want);
    if (d > worst) [worst, worstAt] = [d, x[i]];
  }
  t.diagnostic(`max ulp error ${worst} at x = ${worstAt}`);
  assert.ok(worst <= 3, `exp: max ulp error ${worst} at x = ${worstAt}, expected <= 3`);
  const special = [0, Infinity, -Infinity, NaN, 89, 1000, -104, -1000, 88.72, -87.3, -100, 1e-30];
  a.set(special);
  ops.exp(a, special.length);
  for (let i = 0; i < special.length; i++) {
    const want = Math.fround(Math.exp(Math.fround(special[i])));
    if (Number.isNaN(want)) assert.ok(Number.isNaN(a[i]), `exp(${special[i]}) = ${a[i]}, expected NaN`);
    else if (want === 0 || !Number.isFinite(want)) assert.equal(a[i], want, `exp(${special[i]})`);
    else assert.ok(ulpDistance(a[i], want) <= 3, `exp(${special[i]}) = ${a[i]}, expected ${want}`);
  }
});

// SwiGLU bound: e = exp(-|g|) within 3 ulp (tested above) = 6u relative; then g e (g < 0), 1 + e, /
// and * up each round once (u each) and the JS result is rounded once to f32 (u): e's relative error
// enters silu times e/(1+e) or 1/(1+e), both <= 1, so the total relative error is below 11 u; an
// absolute floor of 2^-126 |up| covers subnormal silu results (g below about -87), where f32 spacing
// is absolute.
test('cpu-ops: swiglu matches the JS loop (odd lengths, extreme and special gates)', (t) => {
  const sizes = [1, 3, 4, 7, 64, 1001, 8192];
  const max = Math.max(...sizes);
  const ops = needOps([max, max]);
  if (!ops) return t.skip('WebAssembly SIMD unavailable (not CI)');
  const gate = ops.alloc(max);
  const up = ops.alloc(max);
  const rand = rng(2);
  for (const n of sizes) {
    for (let j = 0; j < n; j++) {
      const r = rand();
      gate[j] = r < 0.05 ? (rand() - 0.5) * 400 : (rand() - 0.5) * 16; // some beyond exp's range
      up[j] = (rand() - 0.5) * 8;
    }
    const g0 = gate.slice(0, n);
    const want = new Float32Array(g0);
    swigluJs(want, up, n);
    ops.swiglu(gate, up, n);
    for (let j = 0; j < n; j++) {
      const err = Math.abs(gate[j] - want[j]);
      const bound = 11 * U * Math.abs(want[j]) + 2 ** -126 * Math.abs(up[j]);
      assert.ok(err <= bound, `swiglu n=${n} j=${j}: gate ${g0[j]} up ${up[j]}: ${gate[j]} vs ${want[j]}`);
    }
  }
  const specials = [Infinity, -Infinity, NaN, 1e30, -1e30, 0, -0, 100, -100];
  gate.set(specials);
  up.fill(2, 0, specials.length);
  const want = new Float32Array(specials);
  swigluJs(want, up, specials.length);
  ops.swiglu(gate, up, specials.length);
  for (let j = 0; j < specials.length; j++) {
    if (Number.isNaN(want[j])) assert.ok(Number.isNaN(gate[j]), `swiglu(${specials[j]}) = ${gate[j]}, expected NaN`);
    else if (!Number.isFinite(want[j])) assert.equal(gate[j], want[j], `swiglu(${specials[j]})`);
    else assert.ok(Math.abs(gate[j] - want[j]) <= 11 * U * Math.abs(want[j]) + 2 ** -125, `swiglu(${specials[j]}) = ${gate[j]}, expected ${want[j]}`);
  }
});

// Attention bound, per output element d of a head (u = 2^-24, g_n = n u / (1 - n u)):
// the f32 dot of headDim products errs by at most g_hd sum_d |q_d k_td|, so each score by
// ds_t <= scale g_hd sum_d |q_d k_td|; a score error ds moves p_t = exp(s_t - max) / sum by a relative
// 2 max_t ds_t (numerator and denominator), exp adds 3 ulp = 6u, the f32 sum of count terms g_count,
// the f32 value sum g_count relative to sum_t p_t |v_td|, the division u. So
// |out - ref| <= (2 max_t ds_t + 2 g_count + 8 u) sum_t p_t |v_td| (+ the JS side's final f32 rounding,
// u |ref|). The test asserts twice that (the bounds are worst cases; typical errors are far smaller).
test('cpu-ops: attention matches the JS loop (GQA groups 1/4/8, head sizes 4..128, positions 1..300, both cache layouts)', (t) => {
  const nLayers = 2;
  const maxCount = 300;
  const shapes = [
    { nHeads: 8, nKvHeads: 8, headDim: 64 },
    { nHeads: 32, nKvHeads: 8, headDim: 64 },
    { nHeads: 16, nKvHeads: 2, headDim: 8 },
    { nHeads: 8, nKvHeads: 2, headDim: 4 },
    { nHeads: 4, nKvHeads: 1, headDim: 128 },
    // the value slices of 8, 4 and 1 vectors: 60 = 8 + 4 + 3 x 1 vectors, 12 = 3 x 1, 96 = 3 x 8
    { nHeads: 6, nKvHeads: 3, headDim: 60 },
    { nHeads: 4, nKvHeads: 2, headDim: 12 },
    { nHeads: 2, nKvHeads: 2, headDim: 96 },
  ];
  const rand = rng(3);
  for (const { nHeads, nKvHeads, headDim } of shapes) {
    const qDim = nHeads * headDim;
    const kvDim = nKvHeads * headDim;
    const cache = nLayers * maxCount * kvDim;
    const sizes = [cache, cache, qDim, qDim, attentionScratchFloats(maxCount, nHeads / nKvHeads)];
    const ops = needOps(sizes);
    if (!ops) return t.skip('WebAssembly SIMD unavailable (not CI)');
    const [kc, vc, q, att, scores32] = sizes.map((n) => ops.alloc(n));
    for (let i = 0; i < cache; i++) [kc[i], vc[i]] = [(rand() - 0.5) * 4, (rand() - 0.5) * 4];
    const group = nHeads / nKvHeads;
    const scale = 1 / Math.sqrt(headDim);
    const ref = new Float32Array(qDim);
    const scores = new Float64Array(maxCount);
    const acc = new Float64Array(headDim);
    let worstRatio = 0;
    for (const [c, count] of [1, 2, 3, 5, 17, 64, 255, 300].entries()) {
      for (let i = 0; i < qDim; i++) q[i] = (rand() - 0.5) * 6;
      const kvOff = (count % 2) * maxCount * kvDim; // layer 0 or 1
      // both cache layouts: a head's positions contiguous (LlamaModel's), or positions holding all heads
      const [rowStride, headStride] = c % 2 ? [headDim, maxCount * headDim] : [kvDim, headDim];
      attentionJs(q, 0, kc, vc, kvOff, ref, 0, scores, acc, nHeads, group, headDim, rowStride, headStride, count, scale);
      ops.attention(q, 0, kc, vc, kvOff, att, 0, scores32, nHeads, group, headDim, rowStride, headStride, count, scale);
      const gHd = (headDim * U) / (1 - headDim * U);
      const gCount = (count * U) / (1 - count * U);
      for (let h = 0; h < nHeads; h++) {
        const kvo = kvOff + Math.floor(h / group) * headStride;
        const s = new Float64Array(count);
        let ds = 0;
        let mx = -Infinity;
        for (let tt = 0; tt < count; tt++) {
          let dot = 0;
          let absDot = 0;
          for (let d = 0; d < headDim; d++) {
            dot += q[h * headDim + d] * kc[kvo + tt * rowStride + d];
            absDot += Math.abs(q[h * headDim + d] * kc[kvo + tt * rowStride + d]);
          }
          s[tt] = dot * scale;
          mx = Math.max(mx, s[tt]);
          ds = Math.max(ds, scale * gHd * absDot);
        }
        let sum = 0;
        for (let tt = 0; tt < count; tt++) sum += s[tt] = Math.exp(s[tt] - mx);
        for (let d = 0; d < headDim; d++) {
          let pv = 0;
          let exact = 0;
          for (let tt = 0; tt < count; tt++) {
            pv += (s[tt] / sum) * Math.abs(vc[kvo + tt * rowStride + d]);
            exact += (s[tt] / sum) * vc[kvo + tt * rowStride + d];
          }
          const o = h * headDim + d;
          // the JS loop itself (f64, stored as f32) against this independent f64 sum: its own f32 rounding
          assert.ok(Math.abs(ref[o] - exact) <= U * Math.abs(exact) + 1e-12 * pv, `attentionJs h ${h} d ${d}: ${ref[o]} vs ${exact}`);
          const bound = (2 * ds + 2 * gCount + 8 * U) * pv + U * Math.abs(ref[o]);
          const err = Math.abs(att[o] - ref[o]);
          worstRatio = Math.max(worstRatio, err / bound);
          assert.ok(err <= 2 * bound, `attention heads ${nHeads}/${nKvHeads} hd ${headDim} count ${count} h ${h} d ${d}: ${att[o]} vs ${ref[o]} (bound ${bound})`);
        }
      }
    }
    t.diagnostic(`heads ${nHeads}/${nKvHeads} headDim ${headDim}: worst error / bound ${worstRatio.toFixed(3)}`);
  }
});
