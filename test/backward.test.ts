// The hand-written backward pass (src/train) against central finite differences, per layer kind and
// for the whole model. Everything runs in f64, so the checks are tight: with step h = 1e-5 the
// central difference has truncation error ~h^2 |f'''| / 6 ~ 1e-11 and rounding error
// ~eps |f| / h ~ 2e-16 * 10 / 1e-5 = 2e-10 on these O(1)-O(10) losses; we allow 1e-7 + 1e-6 |g|,
// a hundred times that, while any real mistake (a missing term, a wrong index) is off by O(|g|).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LlamaConfig } from '../src/model/config.js';
import {
  attentionBackward, attentionForward, crossEntropyBackward, crossEntropyForward, encoderBackward, encoderForward, gemmNT,
  matmulBackward, matmulForward, rmsnormBackward, rmsnormForward, ropeBackward, ropeForward, ropeTables, swigluBackward, swigluForward,
  type F64,
} from '../src/train/layers.js';
import { LINEAR_KEYS } from '../src/model/weights.js';
import { TrainingLlama, zeroGradsLike, type TrainWeights } from '../src/train/model.js';
import { randn, rng } from './helpers.js';

const H = 1e-5;
const ATOL = 1e-7;
const RTOL = 1e-6;

const randF64 = (r: () => number, n: number, scale = 1): F64 => Float64Array.from(randn(r, n, scale));

/**
 * Checks analytic gradient `grad` of scalar f() with respect to x against central differences,
 * perturbing x in place (at most `maxChecks` entries, spread over the array).
 */
function checkGrad(id: string, x: F64, grad: F64, f: () => number, maxChecks = 40): void {
  assert.equal(grad.length, x.length, `${id}: gradient length`);
  const stride = Math.max(1, Math.floor(x.length / maxChecks));
  for (let i = 0; i < x.length; i += stride) {
    const x0 = x[i];
    x[i] = x0 + H;
    const fp = f();
    x[i] = x0 - H;
    const fm = f();
    x[i] = x0;
    const num = (fp - fm) / (2 * H);
    const err = Math.abs(num - grad[i]);
    assert.ok(err <= ATOL + RTOL * Math.abs(num), `${id}[${i}]: analytic ${grad[i]}, finite difference ${num} (error ${err.toExponential(2)})`);
  }
}

/** sum_i y[i] * R[i]: a scalar whose gradient with respect to y is R. */
const dotWith = (y: F64, R: F64) => y.reduce((s, v, i) => s + v * R[i], 0);

test('gemmNT equals the plain triple loop, ragged sizes, with and without accumulation', () => {
  const r = rng(1);
  for (const [M, K, N] of [[1, 1, 1], [3, 5, 7], [2, 4, 4], [5, 17, 9], [4, 64, 13]]) {
    const a = randF64(r, M * K), b = randF64(r, N * K), init = randF64(r, M * N);
    const want = new Float64Array(M * N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) want[m * N + n] += a[m * K + k] * b[n * K + k];
    const out = new Float64Array(M * N);
    gemmNT(out, a, b, M, K, N, false);
    const acc = Float64Array.from(init);
    gemmNT(acc, a, b, M, K, N, true);
    for (let i = 0; i < M * N; i++) {
      assert.ok(Math.abs(out[i] - want[i]) < 1e-12, `gemmNT(M=${M},K=${K},N=${N})[${i}]`);
      assert.ok(Math.abs(acc[i] - init[i] - want[i]) < 1e-12, `gemmNT accumulate(M=${M},K=${K},N=${N})[${i}]`);
    }
  }
});

test('encoder backward (token embedding) matches finite differences, repeated tokens included', () => {
  const r = rng(2);
  const T = 5, C = 3, V = 4;
  const tokens = [1, 3, 1, 0, 1];
  const wte = randF64(r, V * C), R = randF64(r, T * C), out = new Float64Array(T * C);
  const f = () => (encoderForward(out, tokens, wte, T, C), dotWith(out, R));
  const dwte = new Float64Array(V * C);
  encoderBackward(dwte, R, tokens, T, C);
  checkGrad('encoder dwte', wte, dwte, f);
});

test('rmsnorm backward matches finite differences (input and weight)', () => {
  const r = rng(3);
  const T = 3, C = 7, eps = 1e-5;
  const x = randF64(r, T * C), w = randF64(r, C), R = randF64(r, T * C);
  const out = new Float64Array(T * C), rstd = new Float64Array(T);
  const f = () => (rmsnormForward(out, rstd, x, w, T, C, eps), dotWith(out, R));
  f();
  const dx = new Float64Array(T * C), dw = new Float64Array(C);
  rmsnormBackward(dx, dw, R, x, w, rstd, T, C);
  checkGrad('rmsnorm dx', x, dx, f);
  checkGrad('rmsnorm dw', w, dw, f);
});

test('matmul backward matches finite differences (input and weight), odd shapes', () => {
  const r = rng(4);
  for (const [T, K, N] of [[3, 5, 7], [4, 8, 4], [1, 3, 2]]) {
    const x = randF64(r, T * K), w = randF64(r, N * K), R = randF64(r, T * N), out = new Float64Array(T * N);
    const f = () => (matmulForward(out, x, w, T, K, N), dotWith(out, R));
    const dx = new Float64Array(T * K), dw = new Float64Array(N * K);
    matmulBackward(dx, dw, R, x, w, T, K, N);
    checkGrad(`matmul(T=${T},K=${K},N=${N}) dx`, x, dx, f);
    checkGrad(`matmul(T=${T},K=${K},N=${N}) dw`, w, dw, f);
  }
});

test('RoPE backward matches finite differences in both layouts', () => {
  const r = rng(5);
  const T = 4, heads = 3, hd = 6;
  const tab = ropeTables(T, { headDim: hd, ropeTheta: 10000 });
  for (const interleaved of [true, false]) {
    const x = randF64(r, T * heads * hd), R = randF64(r, T * heads * hd);
    const f = () => {
      const y = Float64Array.from(x);
      ropeForward(y, T, heads, hd, interleaved, tab);
      return dotWith(y, R);
    };
    const dx = Float64Array.from(R);
    ropeBackward(dx, T, heads, hd, interleaved, tab);
    checkGrad(`rope(${interleaved ? 'interleaved' : 'half'}) dx`, x, dx, f);
  }
});

test('attention backward matches finite differences (grouped-query and multi-head)', () => {
  const r = rng(6);
  for (const s of [{ T: 5, H: 4, Hkv: 2, hd: 3 }, { T: 4, H: 2, Hkv: 2, hd: 4 }, { T: 1, H: 2, Hkv: 1, hd: 2 }]) {
    const id = `attention(T=${s.T},H=${s.H},Hkv=${s.Hkv},hd=${s.hd})`;
    const q = randF64(r, s.T * s.H * s.hd), k = randF64(r, s.T * s.Hkv * s.hd), v = randF64(r, s.T * s.Hkv * s.hd);
    const R = randF64(r, s.T * s.H * s.hd);
    const out = new Float64Array(q.length), att = new Float64Array(s.H * s.T * s.T);
    const f = () => (attentionForward(out, att, q, k, v, s), dotWith(out, R));
    f();
    const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
    attentionBackward(dq, dk, dv, R, att, q, k, v, s);
    checkGrad(`${id} dq`, q, dq, f);
    checkGrad(`${id} dk`, k, dk, f);
    checkGrad(`${id} dv`, v, dv, f);
  }
});

test('SwiGLU backward matches finite differences', () => {
  const r = rng(7);
  const n = 11;
  const gate = randF64(r, n, 2), up = randF64(r, n), R = randF64(r, n), out = new Float64Array(n);
  const f = () => (swigluForward(out, gate, up, n), dotWith(out, R));
  const dg = new Float64Array(n), du = new Float64Array(n);
  swigluBackward(dg, du, R, gate, up, n);
  checkGrad('swiglu dgate', gate, dg, f);
  checkGrad('swiglu dup', up, du, f);
});

test('cross-entropy backward matches finite differences of the mean loss', () => {
  const r = rng(8);
  const T = 3, V = 6;
  const logits = randF64(r, T * V, 3), targets = [2, 5, 0], probs = new Float64Array(T * V);
  const f = () => crossEntropyForward(probs, logits, targets, T, V);
  f();
  const d = new Float64Array(T * V);
  crossEntropyBackward(d, probs, targets, T, V);
  checkGrad('cross-entropy dlogits', logits, d, f);
});

test('backward functions accumulate into their gradient buffers', () => {
  const r = rng(9);
  const T = 2, K = 3, N = 5;
  const x = randF64(r, T * K), w = randF64(r, N * K), R = randF64(r, T * N);
  const once = new Float64Array(N * K), twice = new Float64Array(N * K);
  matmulBackward(null, once, R, x, w, T, K, N);
  matmulBackward(null, twice, R, x, w, T, K, N);
  matmulBackward(null, twice, R, x, w, T, K, N);
  for (let i = 0; i < once.length; i++) assert.ok(Math.abs(twice[i] - 2 * once[i]) < 1e-12);
});

// ---------------------------------------------------------------------------------------------
// The whole model

function tinyModel(seed: number, ropeLayout: 'interleaved' | 'half', tied: boolean): { config: LlamaConfig; weights: TrainWeights } {
  const config: LlamaConfig = {
    dim: 8, hiddenDim: 12, nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 2, vocabSize: 11, seqLen: 16,
    normEps: 1e-5, ropeTheta: 10000, ropeLayout, tiedEmbeddings: tied,
  };
  const r = rng(seed);
  const c = config;
  const qDim = c.nHeads * c.headDim, kvDim = c.nKvHeads * c.headDim;
  const w = (n: number, k: number) => randF64(r, n * k, 1 / Math.sqrt(k));
  const norm = (n: number) => Float64Array.from({ length: n }, () => 1 + 0.3 * (r() - 0.5));
  const tokenEmbedding = randF64(r, c.vocabSize * c.dim);
  return {
    config,
    weights: {
      tokenEmbedding,
      layers: Array.from({ length: c.nLayers }, () => ({
        attnNorm: norm(c.dim), wq: w(qDim, c.dim), wk: w(kvDim, c.dim), wv: w(kvDim, c.dim), wo: w(c.dim, qDim),
        ffnNorm: norm(c.dim), w1: w(c.hiddenDim, c.dim), w2: w(c.dim, c.hiddenDim), w3: w(c.hiddenDim, c.dim),
      })),
      finalNorm: norm(c.dim),
      output: tied ? tokenEmbedding : w(c.vocabSize, c.dim),
    },
  };
}

for (const [layout, tied] of [['interleaved', true], ['half', false]] as const) {
  test(`whole-model backward matches finite differences for every parameter kind (rope ${layout}, ${tied ? 'tied' : 'separate'} output)`, () => {
    const { config, weights } = tinyModel(layout === 'half' ? 11 : 10, layout, tied);
    const tokens = [1, 4, 4, 7, 0, 10, 3];
    const targets = [4, 4, 7, 0, 10, 3, 2];
    const model = new TrainingLlama(config, weights, tokens.length);
    const f = () => model.forward(tokens, targets);
    const g = zeroGradsLike(weights, { linears: true, norms: true, embedding: true, output: !tied });
    if (tied) g.output = g.tokenEmbedding; // the tied matrix's gradient is the sum of both uses
    f();
    model.backward(g);
    checkGrad('tokenEmbedding', weights.tokenEmbedding, g.tokenEmbedding!, f);
    if (!tied) checkGrad('output', weights.output, g.output!, f);
    checkGrad('finalNorm', weights.finalNorm, g.finalNorm!, f);
    weights.layers.forEach((L, l) => {
      const G = g.layers![l];
      checkGrad(`layers.${l}.attnNorm`, L.attnNorm, G.attnNorm!, f);
      checkGrad(`layers.${l}.ffnNorm`, L.ffnNorm, G.ffnNorm!, f);
      for (const key of LINEAR_KEYS) checkGrad(`layers.${l}.${key}`, L[key], G[key]!, f, 24);
    });
  });
}

test('training forward loss is the mean next-token NLL of its own logits', () => {
  const { config, weights } = tinyModel(12, 'interleaved', true);
  const tokens = [3, 1, 4, 1, 5];
  const targets = [1, 4, 1, 5, 9];
  const model = new TrainingLlama(config, weights, 8);
  const loss = model.forward(tokens, targets);
  let want = 0;
  for (let t = 0; t < tokens.length; t++) {
    const row = model.logits.subarray(t * config.vocabSize, (t + 1) * config.vocabSize);
    const max = Math.max(...row);
    want += max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) - row[targets[t]];
  }
  assert.ok(Math.abs(loss - want / tokens.length) < 1e-12);
});
