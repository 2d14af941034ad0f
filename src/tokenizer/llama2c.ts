// llama2.c's SentencePiece-BPE tokenizer (run.c `encode`/`decode`), pinned to its ids: 0 <unk>,
// 1 BOS, 2 EOS, 3..258 byte-fallback tokens <0x00>..<0xFF>, then pieces. File parsing lives in
// src/format/llama2c-tokenizer.ts.

import { FluteError } from '../errors.js';
import { parseLlama2cTokenizer, type Llama2cVocab } from '../format/llama2c-tokenizer.js';
import { decodeTokens, pieceStreamDecoder } from './stream.js';
import type { EncodeOptions, Tokenizer, TokenStreamDecoder } from './types.js';

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;
const BYTE_OFFSET = 3; // byte b is token b + 3: ids 0..2 are <unk>, BOS, EOS

/** A candidate merge of the adjacent symbols at positions `left` and `right` (see `mergePairs`). */
interface Candidate {
  score: number;
  left: number;
  right: number;
  leftId: number; // the ids when queued: a mismatch later means the candidate is stale
  rightId: number;
  merged: number;
}

export class Llama2cTokenizer implements Tokenizer {
  readonly bosId = 1;
  readonly eosId = 2;
  readonly vocabSize: number;
  readonly maxTokenLength: number;
  private readonly vocab: string[]; // [vocab] pieces
  private readonly scores: Float32Array; // [vocab]
  private readonly lookup = new Map<string, number>(); // piece -> id (first id wins, like a stable sort)
  private readonly bytes: Uint8Array[]; // [vocab] each token's output bytes (1 byte for byte tokens)
  private readonly byteToken: boolean[]; // [vocab]
  private readonly utf8 = new TextEncoder();

  constructor(v: Llama2cVocab) {
    if (v.vocab.length < BYTE_OFFSET + 256) {
      throw new FluteError('E_SHAPE', `llama2.c tokenizer: expected at least ${BYTE_OFFSET + 256} tokens (specials + 256 bytes), got ${v.vocab.length}`);
    }
    this.vocab = v.vocab;
    this.scores = v.scores;
    this.vocabSize = v.vocab.length;
    this.maxTokenLength = v.maxTokenLength;
    v.vocab.forEach((p, i) => { if (!this.lookup.has(p)) this.lookup.set(p, i); });
    this.byteToken = v.vocab.map((p) => BYTE_TOKEN.test(p));
    this.bytes = v.vocab.map((p, i) => (this.byteToken[i] ? Uint8Array.of(parseInt(p.slice(3, 5), 16)) : this.utf8.encode(p)));
  }

  /** Parses a tokenizer file's bytes (see parseLlama2cTokenizer); `file` names it in errors. */
  static fromBytes(bytes: Uint8Array, vocabSize: number, file: string): Llama2cTokenizer {
    return new Llama2cTokenizer(parseLlama2cTokenizer(bytes, vocabSize, file));
  }

  // ---------------------------------------------------------------- encode

  encode(text: string, opts: EncodeOptions): number[] {
    const symbols: number[] = [];
    // SentencePiece's add_dummy_prefix: the text starts with a space, so "Once" at the start encodes as " Once".
    if (text.length > 0) this.pushSymbol(' ', symbols);
    for (const ch of text) this.pushSymbol(ch, symbols); // one code point at a time, as run.c groups UTF-8 bytes
    const ids = this.mergePairs(symbols);
    if (opts.bos) ids.unshift(this.bosId);
    if (opts.eos) ids.push(this.eosId);
    return ids;
  }

  private pushSymbol(ch: string, out: number[]): void {
    const id = this.lookup.get(ch);
    if (id !== undefined) out.push(id);
    else for (const b of this.utf8.encode(ch)) out.push(b + BYTE_OFFSET); // byte fallback: not in the vocab
  }

  /**
   * run.c's merge loop: repeatedly merge the adjacent pair whose concatenation is in the vocab with the
   * best score, the leftmost on ties. Done with a heap over a linked list instead of run.c's rescans
   * (O(n log n), same result: a symbol keeps its left index when merged, so index order is list order).
   */
  private mergePairs(symbols: number[]): number[] {
    const n = symbols.length;
    const id = Int32Array.from(symbols); // [n] current id per position, -1 once merged into its left neighbour
    const next = new Int32Array(n); // [n] next live position or -1
    const prev = new Int32Array(n); // [n] previous live position or -1
    for (let i = 0; i < n; i++) { next[i] = i + 1 < n ? i + 1 : -1; prev[i] = i - 1; }
    const heap: Candidate[] = [];
    const consider = (left: number): void => {
      const right = left < 0 ? -1 : next[left];
      if (right < 0) return;
      const merged = this.lookup.get(this.vocab[id[left]] + this.vocab[id[right]]);
      if (merged !== undefined) heapPush(heap, { score: this.scores[merged], left, right, leftId: id[left], rightId: id[right], merged });
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    for (let c = heapPop(heap); c; c = heapPop(heap)) {
      if (id[c.left] !== c.leftId || id[c.right] !== c.rightId) continue; // a neighbour merged meanwhile
      id[c.left] = c.merged;
      id[c.right] = -1;
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      consider(prev[c.left]);
      consider(c.left);
    }
    const out: number[] = [];
    for (let i = n > 0 ? 0 : -1; i >= 0; i = next[i]) out.push(id[i]);
    return out;
  }

  // ---------------------------------------------------------------- decode

  decodePiece(prevToken: number, token: number): Uint8Array | string {
    this.checkToken(token);
    if (this.byteToken[token]) return this.bytes[token];
    const piece = this.vocab[token];
    // SentencePiece strips the dummy-prefix space of the first piece after BOS (run.c `decode`).
    return prevToken === this.bosId && piece.startsWith(' ') ? piece.slice(1) : piece;
  }

  createDecoder(): TokenStreamDecoder {
    const silent = (token: number) => {
      if (token !== this.bosId && token !== this.eosId) return false;
      this.checkToken(token);
      return true;
    };
    return pieceStreamDecoder((prev, token) => this.decodePiece(prev, token), silent);
  }

  decode(tokens: ArrayLike<number>): string {
    return decodeTokens(this.createDecoder(), tokens);
  }

  /** The raw piece of a token, as stored in the vocabulary. */
  piece(token: number): string {
    this.checkToken(token);
    return this.vocab[token];
  }

  private checkToken(token: number): void {
    if (!Number.isInteger(token) || token < 0 || token >= this.vocabSize) {
      throw new FluteError('E_OPTION', `token id: expected an integer in 0..${this.vocabSize - 1}, got ${token}`);
    }
  }
}

// ---------------------------------------------------------------- binary heap: best score first, then leftmost

function better(a: Candidate, b: Candidate): boolean {
  return a.score > b.score || (a.score === b.score && a.left < b.left);
}

function heapPush(h: Candidate[], c: Candidate): void {
  let i = h.push(c) - 1;
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (!better(h[i], h[p])) break;
    [h[i], h[p]] = [h[p], h[i]];
    i = p;
  }
}

function heapPop(h: Candidate[]): Candidate | undefined {
  const top = h[0];
  const last = h.pop();
  if (h.length === 0 || last === undefined) return top;
  h[0] = last;
  for (let i = 0; ;) {
    const l = 2 * i + 1, r = l + 1;
    let m = i;
    if (l < h.length && better(h[l], h[m])) m = l;
    if (r < h.length && better(h[r], h[m])) m = r;
    if (m === i) break;
    [h[i], h[m]] = [h[m], h[i]];
    i = m;
  }
  return top;
}
