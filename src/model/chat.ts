// A conversation with a model: the messages rendered by the model's chat template (or a plain transcript
// when it has none), the KV cache kept across turns for the tokens that did not change, and each reply
// streamed until a stop token (the template's end of turn, EOS), the token limit or an abort.
// The terminal side (readline, Ctrl-C) is src/cli/commands/chat.ts's job.

import { checkOption, FluteError } from '../errors.js';
import { HfTokenizer, type ChatMessage } from '../tokenizer/hf.js';
import type { Tokenizer } from '../tokenizer/types.js';
import type { CausalModel } from './generate.js';
import { checkSamplerOptions, createRng, sample, type Rng, type SamplerOptions } from './sampler.js';

export type { ChatMessage } from '../tokenizer/hf.js';

export interface ChatSessionOptions extends SamplerOptions {
  readonly seed: number; // one RNG for the whole conversation: the same seed and inputs replay it
  readonly system?: string; // the system message, first in every rendering
}

export interface ReplyOptions {
  readonly maxTokens: number; // tokens per reply at most
  readonly signal?: AbortSignal; // checked between tokens; an abort ends the reply early (no error)
}

export type ReplyStopReason = 'stop' | 'maxTokens' | 'seqLen' | 'aborted';

export interface ReplyStats {
  promptTokens: number; // the whole rendered conversation
  reusedTokens: number; // of those, already in the KV cache from earlier turns
  generatedTokens: number; // the reply's tokens (not counting the stop token)
  droppedMessages: number; // old messages left out so the conversation fits the context
  prefillMs: number;
  decodeMs: number;
  stopReason: ReplyStopReason | null;
}

/** The transcript format for models without a chat template, and the text that ends a reply there. */
const PLAIN = {
  system: (s: string) => `${s}\n\n`,
  user: (s: string) => `User: ${s}\nAssistant:`,
  assistant: (s: string) => ` ${s}\n`,
  stop: '\nUser:',
};

const YIELD_EVERY_MS = 15; // a macrotask at least this often, so an abort (Ctrl-C) is seen

export class ChatSession {
  /** False when the model has no chat template and the plain "User:/Assistant:" transcript is used. */
  readonly templated: boolean;
  readonly messages: ChatMessage[] = []; // the conversation so far, system message excluded
  private readonly rng: Rng;
  private readonly stopIds: ReadonlySet<number>;
  private cached: number[] = []; // the tokens in the KV cache, positions 0..cached.length-1

  constructor(readonly model: CausalModel, readonly tokenizer: Tokenizer, readonly opts: ChatSessionOptions) {
    checkSamplerOptions(opts);
    this.rng = createRng(opts.seed);
    this.templated = tokenizer instanceof HfTokenizer && tokenizer.chatTemplate !== undefined;
    this.stopIds = tokenizer instanceof HfTokenizer ? tokenizer.stopIds : new Set([tokenizer.eosId]);
  }

  /** Forgets the conversation (the system message stays). */
  reset(): void {
    this.messages.length = 0;
    this.cached = [];
    this.model.reset();
  }

  /** The token ids of `messages` (after the system message), rendered to end where the assistant replies. */
  render(messages: readonly ChatMessage[]): number[] {
    const sys = this.opts.system;
    if (this.templated) {
      const tok = this.tokenizer as HfTokenizer;
      const render = (all: readonly ChatMessage[]) => tok.encode(tok.applyChatTemplate(all, { addGenerationPrompt: true }), { bos: false, eos: false });
      if (!sys) return render(messages);
      try {
        return render([{ role: 'system', content: sys }, ...messages]);
      } catch (e) {
        // Some templates refuse a system role (Mistral's raises "roles must alternate"): put it in the first user message.
        if (!(e instanceof FluteError) || e.code !== 'E_OPTION' || messages[0]?.role !== 'user') throw e;
        return render([{ role: 'user', content: `${sys}\n\n${messages[0].content}` }, ...messages.slice(1)]);
      }
    }
    let text = sys ? PLAIN.system(sys) : '';
    for (const m of messages) text += m.role === 'user' ? PLAIN.user(m.content) : m.role === 'assistant' ? PLAIN.assistant(m.content) : PLAIN.system(m.content);
    return this.tokenizer.encode(text, { bos: true, eos: false });
  }

  /**
   * Adds the user's message and streams the reply's text; returns its stats (also when aborted, with
   * stopReason 'aborted'). The reply, whole or partial, joins the conversation.
   */
  async *reply(user: string, opts: ReplyOptions, stats: ReplyStats = createReplyStats()): AsyncGenerator<string, ReplyStats, void> {
    checkOption(Number.isInteger(opts.maxTokens) && opts.maxTokens >= 1, 'maxTokens', 'an integer >= 1', opts.maxTokens);
    Object.assign(stats, createReplyStats());
    const model = this.model;
    // Fit the conversation in the context with room for at least one reply token: drop the oldest turns.
    let history = [...this.messages, { role: 'user' as const, content: user }];
    let ids = this.render(history);
    while (ids.length >= model.seqLen && history.length > 1) {
      history = history.slice(history[0].role === 'user' && history.length > 2 ? 2 : 1);
      stats.droppedMessages = this.messages.length + 1 - history.length;
      ids = this.render(history);
    }
    if (ids.length >= model.seqLen) {
      throw new FluteError('E_OPTION', `chat: the message takes ${ids.length} tokens with the template, more than the context of ${model.seqLen} allows`);
    }
    if (stats.droppedMessages > 0) this.messages.splice(0, stats.droppedMessages);
    this.messages.push({ role: 'user', content: user });
    stats.promptTokens = ids.length;

    // Prefill only what differs from the cache (the last token always runs: its logits are the first sample).
    // The session owns the model's KV cache; if the model ran something else meanwhile, start over.
    if (model.position !== this.cached.length) this.cached = [];
    let reuse = 0;
    while (reuse < ids.length - 1 && reuse < this.cached.length && ids[reuse] === this.cached[reuse]) reuse++;
    stats.reusedTokens = reuse;
    this.cached = ids.slice(0, reuse);
    let logits: Float32Array = new Float32Array(0); // [vocab]
    let aborted = false;
    for (let off = reuse; off < ids.length && !aborted; off += model.maxBatch) {
      aborted = await pause(opts.signal);
      if (aborted) break;
      const t0 = performance.now();
      const chunk = ids.slice(off, off + model.maxBatch);
      const r = model.forward(chunk, off);
      logits = r instanceof Float32Array ? r : await r;
      this.cached.push(...chunk);
      stats.prefillMs += performance.now() - t0;
    }

    // Decode: sample, stop on a stop token, stream the text (held back while it could be the start of
    // the plain transcript's "\nUser:"), run the token.
    const decoder = this.tokenizer.createDecoder();
    let reply = '';
    let emitted = 0; // characters of `reply` already yielded
    let prev = ids[ids.length - 1];
    let lastYield = performance.now();
    while (!aborted) {
      if (stats.generatedTokens >= opts.maxTokens) { stats.stopReason = 'maxTokens'; break; }
      if (this.cached.length >= model.seqLen) { stats.stopReason = 'seqLen'; break; }
      if (performance.now() - lastYield >= YIELD_EVERY_MS) {
        aborted = await pause(opts.signal);
        lastYield = performance.now();
        if (aborted) break;
      }
      const t0 = performance.now();
      const next = sample(logits, this.opts, this.rng);
      if (this.stopIds.has(next)) { stats.stopReason = 'stop'; break; }
      stats.generatedTokens++;
      const r = model.forward([next], this.cached.length);
      logits = r instanceof Float32Array ? r : await r;
      this.cached.push(next);
      stats.decodeMs += performance.now() - t0;
      reply += decoder.push(prev, next);
      prev = next;
      if (!this.templated) {
        const at = reply.indexOf(PLAIN.stop);
        if (at >= 0) { reply = reply.slice(0, at); stats.stopReason = 'stop'; break; }
      }
      // The transcript's reply starts after "Assistant:": its leading space is format, not reply.
      if (!this.templated && emitted === 0) emitted = reply.length - reply.trimStart().length;
      const safe = this.templated ? reply.length : reply.length - heldBack(reply, PLAIN.stop);
      if (safe > emitted) {
        yield reply.slice(emitted, safe);
        emitted = safe;
      }
    }
    if (aborted) stats.stopReason = 'aborted';
    if (stats.stopReason !== 'stop' || this.templated) reply += decoder.flush();
    if (reply.length > emitted) yield reply.slice(emitted);
    this.messages.push({ role: 'assistant', content: this.templated ? reply : reply.trim() });
    return stats;
  }
}

export function createReplyStats(): ReplyStats {
  return { promptTokens: 0, reusedTokens: 0, generatedTokens: 0, droppedMessages: 0, prefillMs: 0, decodeMs: 0, stopReason: null };
}

/** Characters at the end of `text` that could begin `stop` (so they are not shown yet). */
function heldBack(text: string, stop: string): number {
  for (let n = Math.min(stop.length - 1, text.length); n > 0; n--) if (stop.startsWith(text.slice(text.length - n))) return n;
  return 0;
}

/** Lets timers and I/O run (a macrotask: Ctrl-C arrives this way); true when the signal has aborted. */
async function pause(signal: AbortSignal | undefined): Promise<boolean> {
  await new Promise<void>((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));
  return signal?.aborted ?? false;
}
