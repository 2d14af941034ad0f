// Perplexity of a model on a text: the text's "\n\n" blocks are encoded with BOS each and joined into
// one token stream, cut into consecutive windows that each start from an empty cache; every token
// after a window's first is scored by the model's prediction from the tokens before it in the window.
// A cap on the windows scores either the first ones or ones spread evenly over the whole stream.

import { checkOption, FluteError } from '../errors.js';
import type { CausalModel } from '../model/generate.js';
import type { Tokenizer } from '../tokenizer/types.js';

export interface PerplexityOptions {
  readonly window: number; // tokens per window, 2..model.seqLen
  readonly maxWindows?: number; // score at most this many windows (default all)
  /**
   * With maxWindows: score full windows spread evenly over the whole stream (window indices
   * floor(j * full / maxWindows)) instead of the first ones, so that a text whose start is easier or
   * harder than the rest is not judged by its start. Default false.
   */
  readonly spread?: boolean;
  readonly onProgress?: (done: number, total: number) => void; // after each window
  readonly signal?: AbortSignal; // checked between forward chunks; aborting throws E_ABORTED
}

export interface PerplexityResult {
  readonly perplexity: number; // exp(nll)
  readonly nll: number; // mean negative log-likelihood, nats per scored token
  readonly tokens: number; // scored tokens (window length - 1 per window)
  readonly windows: number;
  readonly windowNll: Float64Array; // mean NLL of each scored window, in stream order
  readonly windowTokens: Int32Array; // scored tokens of each window
}

/** The evaluation token stream: each "\n\n"-separated block encoded with BOS (no EOS), concatenated. */
export function evalTokens(tokenizer: Tokenizer, text: string): number[] {
  const ids: number[] = [];
  for (const block of text.split('\n\n')) for (const id of tokenizer.encode(block, { bos: true, eos: false })) ids.push(id);
  return ids;
}

/**
 * The windows [start, end) of a stream of n tokens: full windows, then a partial one if it has >= 2
 * tokens; at most maxWindows of them, the first ones or (spread) full ones spread evenly.
 */
export function windowsOf(n: number, window: number, maxWindows: number, spread = false): [number, number][] {
  const all: [number, number][] = [];
  for (let s = 0; s < n; s += window) if (Math.min(n, s + window) - s >= 2) all.push([s, Math.min(n, s + window)]);
  if (all.length <= maxWindows) return all;
  if (!spread) return all.slice(0, maxWindows);
  const full = Math.floor(n / window); // >= maxWindows here: all has at most one partial window
  return Array.from({ length: maxWindows }, (_, j) => all[Math.floor((j * full) / maxWindows)]);
}

export function perplexity(model: CausalModel, tokenizer: Tokenizer, text: string, opts: PerplexityOptions): Promise<PerplexityResult> {
  return perplexityOfTokens(model, evalTokens(tokenizer, text), opts);
}

/** perplexity() of a token stream already made by evalTokens (scoring one text under many models tokenizes it once). */
export async function perplexityOfTokens(model: CausalModel, ids: readonly number[], opts: PerplexityOptions): Promise<PerplexityResult> {
  const { window } = opts;
  checkOption(Number.isInteger(window) && window >= 2 && window <= model.seqLen, 'window', `an integer in 2..${model.seqLen} (the context length)`, window);
  const maxWindows = opts.maxWindows ?? Infinity;
  checkOption(maxWindows === Infinity || (Number.isInteger(maxWindows) && maxWindows >= 1), 'maxWindows', 'a positive integer', maxWindows);
  const windows = windowsOf(ids.length, window, maxWindows, opts.spread);
  if (windows.length === 0) throw new FluteError('E_OPTION', `text: expected at least 2 tokens to score, got ${ids.length}`);

  const vocab = model.config.vocabSize;
  let nllSum = 0; // f64 sum over scored tokens
  let scored = 0;
  const windowNll = new Float64Array(windows.length);
  const windowTokens = new Int32Array(windows.length);
  for (let w = 0; w < windows.length; w++) {
    const [start, end] = windows[w];
    model.reset();
    let sum = 0;
    // Feed tokens start..end-2 in chunks of maxBatch; row t predicts token t + 1 (the last is only a target).
    for (let off = start; off < end - 1; off += model.maxBatch) {
      await yieldAndCheck(opts.signal);
      const m = Math.min(end - 1 - off, model.maxBatch);
      const logits = await model.forward(ids.slice(off, off + m), off - start, { allLogits: true }); // [m, vocab]
      for (let j = 0; j < m; j++) sum += logSumExp(logits, j * vocab, vocab) - logits[j * vocab + ids[off + j + 1]];
    }
    windowNll[w] = sum / (end - 1 - start);
    windowTokens[w] = end - 1 - start;
    nllSum += sum;
    scored += end - 1 - start;
    opts.onProgress?.(w + 1, windows.length);
  }
  const nll = nllSum / scored;
  return { perplexity: Math.exp(nll), nll, tokens: scored, windows: windows.length, windowNll, windowTokens };
}

/** log(sum(exp(x[off..off+n)))) in f64, shifted by the max so nothing overflows. */
function logSumExp(x: Float32Array, off: number, n: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[off + i] > max) max = x[off + i];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(x[off + i] - max);
  return max + Math.log(sum);
}

/** A macrotask yield (so timers, such as an abort, can run), then throws E_ABORTED if aborted. */
async function yieldAndCheck(signal: AbortSignal | undefined): Promise<void> {
  await new Promise<void>((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));
  if (signal?.aborted) throw new FluteError('E_ABORTED', 'perplexity: aborted by the caller', { cause: signal.reason });
}
