// Streaming detokenization shared by every tokenizer: pieces arrive as strings or raw bytes (byte
// fallback may split one character over several tokens) and come out as whole characters.

import type { TokenStreamDecoder } from './types.js';

const utf8 = new TextEncoder();

/** A decoder over `decodePiece`; tokens for which `silent` is true contribute nothing. */
export function pieceStreamDecoder(
  decodePiece: (prevToken: number, token: number) => Uint8Array | string,
  silent: (token: number) => boolean = () => false,
): TokenStreamDecoder {
  const text = new TextDecoder('utf-8'); // streaming: holds an incomplete character until its last byte
  return {
    push: (prevToken, token) => {
      if (silent(token)) return '';
      const p = decodePiece(prevToken, token);
      return text.decode(typeof p === 'string' ? utf8.encode(p) : p, { stream: true });
    },
    flush: () => text.decode(),
  };
}

/** The text of a whole token sequence through a fresh stream decoder. */
export function decodeTokens(decoder: TokenStreamDecoder, tokens: ArrayLike<number>): string {
  let s = '';
  for (let i = 0; i < tokens.length; i++) s += decoder.push(i > 0 ? tokens[i - 1] : -1, tokens[i]);
  return s + decoder.flush();
}
