// Text generation (run.c `generate`): encode the prompt with BOS, prefill it in batched forwards, then
// sample one token at a time and yield its text as soon as it decodes. Abortable between tokens.

import { checkOption, FluteError } from '../errors.js';
import type { Tokenizer } from '../tokenizer/types.js';
import type { LlamaConfig } from './config.js';
import type { ForwardOptions } from './llama.js';
import { checkSamplerOptions, createRng, sample } from './sampler.js';

/**
 * What generate(), ChatSession and perplexity() need of a model: LlamaModel (CPU, synchronous) and
 * GpuLlamaModel / FallbackModel (WebGPU, asynchronous) both fit. forward's logits may be a view of
 * memory the next call reuses.
 */
export interface CausalModel {
  readonly config: LlamaConfig;
  readonly seqLen: number; // usable context
  readonly maxBatch: number; // most tokens one forward chunk runs
  readonly position: number; // positions held in the KV cache
  reset(): void;
  forward(tokens: ArrayLike<number>, startPos: number, opts?: ForwardOptions): Float32Array | Promise<Float32Array>;
  dispose(): void;
}

export interface GenerateOptions {
  readonly maxTokens: number; // tokens to generate at most (not counting the prompt)
  readonly temperature: number; // 0 = greedy
  readonly topK: number; // 0 = off
  readonly topP: number; // 1 = off
  readonly seed: number; // the sampler's RNG seed
  readonly signal?: AbortSignal; // checked between tokens; aborting throws E_ABORTED
  readonly stopAtEos?: boolean; // stop when the model emits EOS (default true)
  /** Filled in as generation runs (also after an abort); see createGenerationStats. */
  readonly stats?: GenerationStats;
}

export type StopReason = 'eos' | 'maxTokens' | 'seqLen';

export interface GenerationStats {
  promptTokens: number; // including BOS
  generatedTokens: number;
  prefillMs: number; // time in the prompt's forward passes
  decodeMs: number; // time in sampling and per-token forward passes, not in the consumer
  stopReason: StopReason | null; // null while running or after an abort
}

export function createGenerationStats(): GenerationStats {
  return { promptTokens: 0, generatedTokens: 0, prefillMs: 0, decodeMs: 0, stopReason: null };
}

// A macrotask yield at least this often (ms), so timers and I/O, such as an abort, get to run.
const YIELD_EVERY_MS = 15;

/** Yields generated text pieces; returns the stats (also written to opts.stats when given). */
export async function* generate(
  model: CausalModel,
  tokenizer: Tokenizer,
  prompt: string,
  opts: GenerateOptions,
): AsyncGenerator<string, GenerationStats, void> {
  const sampler = { temperature: opts.temperature, topK: opts.topK, topP: opts.topP };
  checkSamplerOptions(sampler);
  checkOption(Number.isInteger(opts.maxTokens) && opts.maxTokens >= 0, 'maxTokens', 'an integer >= 0', opts.maxTokens);
  const rng = createRng(opts.seed);
  const stats = opts.stats ?? createGenerationStats();
  Object.assign(stats, createGenerationStats());
  const stopAtEos = opts.stopAtEos ?? true;
  const signal = opts.signal;

  const promptIds = tokenizer.encode(prompt, { bos: true, eos: false });
  checkOption(promptIds.length <= model.seqLen, 'prompt', `at most ${model.seqLen} tokens (the context length)`, `${promptIds.length} tokens`);
  stats.promptTokens = promptIds.length;

  // Prefill: one batched forward per maxBatch chunk, yielding between chunks so an abort is seen.
  model.reset();
  let logits: Float32Array = new Float32Array(0); // [vocab] of the last token run
  for (let off = 0; off < promptIds.length; off += model.maxBatch) {
    await checkpoint(signal);
    const t0 = performance.now();
    const r = model.forward(promptIds.slice(off, off + model.maxBatch), off);
    logits = r instanceof Float32Array ? r : await r;
    stats.prefillMs += performance.now() - t0;
  }

  // Decode (run.c's loop): sample the token for position `pos` from the logits of pos - 1, emit its
  // text through a streaming decoder (a character may span byte tokens), then run it at `pos`.
  const decoder = tokenizer.createDecoder();
  const token = new Int32Array(1); // [1] the token to run, reused so decoding allocates no input arrays
  let prev = promptIds[promptIds.length - 1];
  let lastYield = performance.now();
  for (let pos = promptIds.length; ; pos++) {
    if (stats.generatedTokens >= opts.maxTokens) { stats.stopReason = 'maxTokens'; break; }
    if (pos > model.seqLen) { stats.stopReason = 'seqLen'; break; } // position pos - 1 was never run
    throwIfAborted(signal);
    if (performance.now() - lastYield >= YIELD_EVERY_MS) {
      await checkpoint(signal);
      lastYield = performance.now();
    }
    const t0 = performance.now();
    const next = sample(logits, sampler, rng);
    if (stopAtEos && next === tokenizer.eosId) { stats.stopReason = 'eos'; break; }
    stats.generatedTokens++;
    token[0] = next;
    if (stats.generatedTokens < opts.maxTokens && pos < model.seqLen) {
      const r = model.forward(token, pos);
      logits = r instanceof Float32Array ? r : await r; // a CPU model's result is used without a microtask
    }
    stats.decodeMs += performance.now() - t0;
    const text = decoder.push(prev, next);
    prev = next;
    if (text) yield text;
  }
  const rest = decoder.flush();
  if (rest) yield rest;
  return stats;
}

/** Lets timers and I/O run (a macrotask, not a microtask), then throws E_ABORTED if aborted. */
async function checkpoint(signal: AbortSignal | undefined): Promise<void> {
  // setImmediate (Node) still lets due timers run first on the next loop turn; browsers use setTimeout.
  await new Promise<void>((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));
  throwIfAborted(signal);
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new FluteError('E_ABORTED', 'generate: aborted by the caller', { cause: signal.reason });
}
