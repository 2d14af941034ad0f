// Next-token sampling (run.c `sample`): a pure function of the logits, the options and an explicit
// seeded RNG, so a seed reproduces a generation. Temperature 0 is argmax; else softmax with
// temperature, then top-k, then top-p (nucleus), then one draw.

import { checkOption } from '../errors.js';

export interface SamplerOptions {
  readonly temperature: number; // >= 0; 0 means greedy (argmax)
  readonly topK: number; // keep the k most probable tokens; 0 keeps all
  readonly topP: number; // keep the smallest most-probable set with mass >= p; 1 keeps all
}

/** Uniform numbers in [0, 1). */
export type Rng = () => number;

/** splitmix32 (a 32-bit SplitMix variant): tiny, seeded, the same sequence for the same seed everywhere. */
export function createRng(seed: number): Rng {
  checkOption(Number.isSafeInteger(seed), 'seed', 'an integer', seed);
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) | 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

/** Throws E_OPTION naming the first option out of range. */
export function checkSamplerOptions(o: SamplerOptions): void {
  checkOption(Number.isFinite(o.temperature) && o.temperature >= 0, 'temperature', 'a finite number >= 0', o.temperature);
  checkOption(Number.isInteger(o.topK) && o.topK >= 0, 'top-k', 'an integer >= 0', o.topK);
  checkOption(o.topP > 0 && o.topP <= 1, 'top-p', '0 < p <= 1', o.topP);
}

/** Index of the largest value, the first on ties. */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Picks the next token from `logits` [vocab]. */
export function sample(logits: ArrayLike<number>, opts: SamplerOptions, rng: Rng): number {
  checkSamplerOptions(opts);
  checkOption(logits.length > 0, 'logits', 'at least one value', logits.length);
  if (opts.temperature === 0) return argmax(logits);

  // softmax(logits / T) in f64
  const n = logits.length;
  const probs = new Float64Array(n); // [vocab]
  const max = logits[argmax(logits)];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += probs[i] = Math.exp((logits[i] - max) / opts.temperature);
  for (let i = 0; i < n; i++) probs[i] /= sum;
  if (opts.topK === 0 && opts.topP === 1) return draw(probs, null, n, 1, rng);

  // Candidates by falling probability (ties: lower id first, so top-k 1 is argmax). With top-p alone,
  // tokens below (1 - p) / (n - 1) cannot be in the nucleus (run.c `sample_topp`): skip sorting them.
  const cutoff = opts.topK === 0 && n > 1 ? (1 - opts.topP) / (n - 1) : 0;
  const cand: number[] = [];
  for (let i = 0; i < n; i++) if (probs[i] >= cutoff) cand.push(i);
  cand.sort((a, b) => probs[b] - probs[a] || a - b);
  let keep = opts.topK > 0 ? Math.min(opts.topK, cand.length) : cand.length;
  let mass = 0;
  for (let i = 0; i < keep; i++) mass += probs[cand[i]];
  if (opts.topP < 1) {
    // Nucleus over the (renormalized) top-k set: the shortest prefix reaching topP of its mass.
    let cum = 0;
    for (let i = 0; i < keep; i++) {
      cum += probs[cand[i]];
      if (cum >= opts.topP * mass) { keep = i + 1; mass = cum; break; }
    }
  }
  return draw(probs, cand, keep, mass, rng);
}

/** One draw from probs restricted to order[0..count) (or ids 0..count when order is null), total `mass`. */
function draw(probs: Float64Array, order: number[] | null, count: number, mass: number, rng: Rng): number {
  const r = rng() * mass;
  let cum = 0;
  for (let i = 0; i < count; i++) {
    const id = order ? order[i] : i;
    cum += probs[id];
    if (r < cum) return id;
  }
  return order ? order[count - 1] : count - 1; // rounding: r landed past the last partial sum
}
