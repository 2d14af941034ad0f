// Perplexity of a model on a text: the text's "\n\n" blocks are encoded with BOS each and joined into
// one token stream, cut into consecutive windows that each start from an empty cache; every token
// after a window's first is scored by the model's prediction from the tokens before it in the window.

import { checkOption, FluteError } from '../errors.js';
import type { CausalModel } from '../model/generate.js';
import type { Tokenizer } from '../tokenizer/types.js';

export interface PerplexityOptions {
  readonly window: number; // tokens per window, 2..model.seqLen
  readonly maxWindows?: number; // score only the first windows (default all)
  readonly onProgress?: (done: number, total: number) => void; // after each window
  readonly signal?: AbortSignal; // checked between forward chunks; aborting throws E_ABORTED
}

export interface PerplexityResult {
  readonly perplexity: number; // exp(nll)
  readonly nll: number; // mean negative log-likelihood, nats per scored token
  readonly tokens: number; // scored tokens (window length - 1 per window)
  readonly windows: number;
}

/** The evaluation token stream: each "\n\n"-separated block encoded with BOS (no EOS), concatenated. */
export function evalTokens(tokenizer: Tokenizer, text: string): number[] {
  const ids: number[] = [];
  for (const block of text.split('\n\n')) for (const id of tokenizer.encode(block, { bos: true, eos: false })) ids.push(id);
  return ids;
}

/** The windows [start, end) of the stream: full windows, then a partial one if it has >= 2 tokens. */
function windowsOf(n: number, window: number, maxWindows: number): [number, number][] {
  const out: [number, number][] = [];
  for (let s = 0; s < n && out.length < maxWindows; s += window) if (Math.min(n, s + window) - s >= 2) out.push([s, Math.min(n, s + window)]);
  return out;
}

export async function perplexity(model: CausalModel, tokenizer: Tokenizer, text: string, opts: PerplexityOptions): Promise<PerplexityResult> {
  const { window } = opts;
  checkOption(Number.isInteger(window) && window >= 2 && window <= model.seqLen, 'window', `an integer in 2..${model.seqLen} (the context length)`, window);
  const maxWindows = opts.maxWindows ?? Infinity;
  checkOption(maxWindows === Infinity || (Number.isInteger(maxWindows) && maxWindows >= 1), 'maxWindows', 'a positive integer', maxWindows);
  const ids = evalTokens(tokenizer, text);
  const windows = windowsOf(ids.length, window, maxWindows);
  if (windows.length === 0) throw new FluteError('E_OPTION', `text: expected at least 2 tokens to score, got ${ids.length}`);

  const vocab = model.config.vocabSize;
  let nllSum = 0; // f64 sum over scored tokens
  let scored = 0;
  for (let w = 0; w < windows.length; w++) {
    const [start, end] = windows[w];
    model.reset();
    // Feed tokens start..end-2 in chunks of maxBatch; row t predicts token t + 1 (the last is only a target).
    for (let off = start; off < end - 1; off += model.maxBatch) {
      await yieldAndCheck(opts.signal);
      const m = Math.min(end - 1 - off, model.maxBatch);
      const logits = await model.forward(ids.slice(off, off + m), off - start, { allLogits: true }); // [m, vocab]
      for (let j = 0; j < m; j++) nllSum += logSumExp(logits, j * vocab, vocab) - logits[j * vocab + ids[off + j + 1]];
      scored += m;
    }
    opts.onProgress?.(w + 1, windows.length);
  }
  const nll = nllSum / scored;
  return { perplexity: Math.exp(nll), nll, tokens: scored, windows: windows.length };
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
