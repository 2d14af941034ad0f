// Parser for llama2.c's tokenizer file (tokenizer.bin / tok512.bin): int32 max_token_length, then per
// token f32 score, int32 byte length and the UTF-8 bytes. Checks every length against the bytes there
// before trusting it; the encoding and decoding rules live in src/tokenizer/llama2c.ts.

import { FluteError } from '../errors.js';

export interface Llama2cVocab {
  readonly vocab: string[]; // [vocabSize] token pieces, UTF-8 decoded ("<0x0A>" for byte tokens)
  readonly scores: Float32Array; // [vocabSize] merge priority: higher merges first
  readonly maxTokenLength: number; // longest piece in bytes, as the file's header claims
}

/** Parses a llama2.c tokenizer file holding exactly `vocabSize` tokens; `file` names it in errors. */
export function parseLlama2cTokenizer(bytes: Uint8Array, vocabSize: number, file: string): Llama2cVocab {
  if (!Number.isInteger(vocabSize) || vocabSize < 1) {
    throw new FluteError('E_OPTION', `${file}: vocab size: expected a positive integer, got ${vocabSize}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4) throw new FluteError('E_TRUNCATED', `${file}: tokenizer file is ${bytes.length} bytes, shorter than its 4-byte header`);
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength < 1 || maxTokenLength > bytes.length) {
    throw new FluteError('E_BAD_HEADER', `${file}: max_token_length: expected 1..${bytes.length} (the file size), got ${maxTokenLength}`);
  }
  // Each token needs at least its 8-byte (score, length) record: refuse before allocating per-token arrays.
  if (4 + 8 * vocabSize > bytes.length) {
    throw new FluteError('E_TRUNCATED', `${file}: ${bytes.length} bytes cannot hold ${vocabSize} tokens (at least ${4 + 8 * vocabSize} bytes)`);
  }
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const vocab: string[] = new Array<string>(vocabSize);
  const scores = new Float32Array(vocabSize);
  let off = 4;
  for (let i = 0; i < vocabSize; i++) {
    if (off + 8 > bytes.length) throw new FluteError('E_TRUNCATED', `${file}: ends at byte ${bytes.length} inside the record of token ${i} of ${vocabSize}`);
    scores[i] = view.getFloat32(off, true);
    const len = view.getInt32(off + 4, true);
    off += 8;
    if (!Number.isFinite(scores[i])) throw new FluteError('E_NONFINITE', `${file}: token ${i}: score is ${scores[i]}`);
    if (len < 0) throw new FluteError('E_BAD_HEADER', `${file}: token ${i}: negative length ${len}`);
    if (off + len > bytes.length) {
      throw new FluteError('E_TRUNCATED', `${file}: token ${i}: ${len} bytes promised at offset ${off}, but the file ends at ${bytes.length}`);
    }
    try {
      vocab[i] = decoder.decode(bytes.subarray(off, off + len));
    } catch (e) {
      throw new FluteError('E_FORMAT', `${file}: token ${i}: piece is not valid UTF-8`, { cause: e });
    }
    off += len;
  }
  if (off !== bytes.length) {
    throw new FluteError('E_FORMAT', `${file}: ${bytes.length - off} bytes left after ${vocabSize} tokens (does the vocab size match the model?)`);
  }
  return { vocab, scores, maxTokenLength };
}
