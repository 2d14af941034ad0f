// The tokenizer interface the model runtime (generate, perplexity) is written against, so llama2.c,
// Hugging Face or GGUF vocabularies can plug in. Implementations live beside this file.

export interface EncodeOptions {
  readonly bos: boolean; // prepend the begin-of-sequence token
  readonly eos: boolean; // append the end-of-sequence token
}

/** Turns tokens into text as they arrive; characters split across byte tokens come out whole. */
export interface TokenStreamDecoder {
  /** The text completed by `token` (possibly ""), given the token before it. */
  push(prevToken: number, token: number): string;
  /** Whatever is still pending (an incomplete UTF-8 sequence comes out as U+FFFD). */
  flush(): string;
}

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  encode(text: string, opts: EncodeOptions): number[];
  /** One token's text: a string, or raw bytes for a byte-fallback token (may be part of a character). */
  decodePiece(prevToken: number, token: number): Uint8Array | string;
  createDecoder(): TokenStreamDecoder;
  /** The text of a token sequence; BOS/EOS contribute nothing. */
  decode(tokens: ArrayLike<number>): string;
}
