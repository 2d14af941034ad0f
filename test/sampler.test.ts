// Sampler: greedy is argmax, a seed fixes the sequence, top-k/top-p limits, option errors, and a
// frequency check of temperature-1 sampling against the softmax probabilities.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FluteError } from '../src/errors.js';
import { argmax, createRng, sample } from '../src/model/sampler.js';
import { randn, rng } from './helpers.js';

const isOption = (mention: string) => (e: unknown) => e instanceof FluteError && e.code === 'E_OPTION' && e.message.includes(mention);
const opts = (temperature: number, topK = 0, topP = 1) => ({ temperature, topK, topP });

test('temperature 0 is argmax (first index on ties) and never calls the RNG', () => {
  const noRng = () => assert.fail('greedy sampling must not draw');
  assert.equal(sample(Float32Array.of(0.1, 2, -1, 2), opts(0), noRng), 1);
  const logits = randn(rng(3), 1000);
  assert.equal(sample(logits, opts(0, 5, 0.5), noRng), argmax(logits));
});

test('createRng: same seed, same sequence; values in [0, 1); different seeds differ', () => {
  const a = createRng(42), b = createRng(42), c = createRng(43);
  const xs = Array.from({ length: 1000 }, a);
  assert.deepEqual(Array.from({ length: 1000 }, b), xs);
  assert.notDeepEqual(Array.from({ length: 1000 }, c), xs);
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const logits = randn(rng(5), 64, 2);
  const run = (seed: number) => { const r = createRng(seed); return Array.from({ length: 50 }, () => sample(logits, opts(1, 10, 0.9), r)); };
  assert.deepEqual(run(7), run(7));
});

test('top-k 1 and a tiny top-p are greedy, whatever the temperature', () => {
  const r = createRng(1);
  for (let i = 0; i < 20; i++) {
    const logits = randn(rng(100 + i), 50);
    const best = argmax(logits);
    assert.equal(sample(logits, opts(1.5, 1), r), best);
    assert.equal(sample(logits, opts(1.5, 0, 1e-9), r), best);
  }
});

test('top-k and top-p keep only the most probable tokens', () => {
  const logits = Float32Array.of(4, 3, 2, 1, 0, -1); // probabilities fall with the index
  const r = createRng(9);
  for (let i = 0; i < 500; i++) assert.ok(sample(logits, opts(1, 3), r) < 3);
  // softmax: p0 = 0.636, p0 + p1 = 0.870 < 0.9 <= p0 + p1 + p2 = 0.957, so top-p 0.9 keeps 3 tokens
  const seen = new Set<number>();
  for (let i = 0; i < 2000; i++) seen.add(sample(logits, opts(1, 0, 0.9), r));
  assert.deepEqual([...seen].sort(), [0, 1, 2]);
});

test('temperature 1 draws tokens with the softmax frequencies (chi-square, fixed seed)', () => {
  const logits = Float32Array.of(1, 0, 2, -1, 0.5);
  const z = Array.from(logits, Math.exp).reduce((a, b) => a + b, 0);
  const p = Array.from(logits, (x) => Math.exp(x) / z);
  const n = 20000;
  const counts = new Array<number>(p.length).fill(0);
  const r = createRng(2024);
  for (let i = 0; i < n; i++) counts[sample(logits, opts(1), r)]++;
  const chi2 = counts.reduce((s, c, i) => s + (c - n * p[i]) ** 2 / (n * p[i]), 0);
  // 4 degrees of freedom: P(chi2 > 18.5) ~ 0.001, so a correct sampler fails this with one seed in ~1000.
  assert.ok(chi2 < 18.5, `chi2 = ${chi2.toFixed(2)}, counts ${counts}`);
  // Temperature 2 flattens the distribution: the top token gets rarer.
  const hot = createRng(2024);
  let top = 0;
  for (let i = 0; i < n; i++) if (sample(logits, opts(2), hot) === 2) top++;
  assert.ok(top / n < p[2] - 0.05, `top frequency ${top / n} vs ${p[2]}`);
});

test('options out of range throw E_OPTION naming the option', () => {
  const l = Float32Array.of(0, 1);
  const r = createRng(0);
  assert.throws(() => sample(l, opts(1, 0, 1.5), r), (e: unknown) => e instanceof FluteError && e.message === 'top-p: expected 0 < p <= 1, got 1.5');
  assert.throws(() => sample(l, opts(1, 0, 0), r), isOption('top-p'));
  assert.throws(() => sample(l, opts(1, 0, NaN), r), isOption('top-p'));
  assert.throws(() => sample(l, opts(1, -1), r), isOption('top-k'));
  assert.throws(() => sample(l, opts(1, 2.5), r), isOption('top-k'));
  assert.throws(() => sample(l, opts(-0.1), r), isOption('temperature'));
  assert.throws(() => sample(l, opts(Infinity), r), isOption('temperature'));
  assert.throws(() => sample(new Float32Array(0), opts(1), r), isOption('logits'));
  assert.throws(() => createRng(1.5), isOption('seed'));
});
