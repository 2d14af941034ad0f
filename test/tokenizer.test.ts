// llama2.c tokenizer: ids pinned to run.c's encoding of stories260K's tok512.bin, round trips with
// byte fallback, streaming decode of split characters, and typed errors for damaged files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FluteError } from '../src/errors.js';
import { parseLlama2cTokenizer } from '../src/format/llama2c-tokenizer.js';
import { Llama2cTokenizer } from '../src/tokenizer/llama2c.js';
import { rng } from './helpers.js';

/** A repository file, whether this test runs from test/ (tsx) or dist/test/ (compiled). */
function repoFile(rel: string): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); dirname(dir) !== dir; dir = dirname(dir)) {
    if (existsSync(join(dir, rel))) return join(dir, rel);
  }
  return join(process.cwd(), rel);
}

const TOK_FILE = 'tok512.bin';
const tokBytes = new Uint8Array(readFileSync(repoFile('models/stories260K/tok512.bin')));
const tok = Llama2cTokenizer.fromBytes(tokBytes, 512, TOK_FILE);
const isCode = (code: string, mention?: string) => (e: unknown) =>
  e instanceof FluteError && e.code === code && (mention === undefined || e.message.includes(mention));

test('encode: "Once upon a time" gives run.c\'s ids (BOS, " Once", " upon", " a", " time")', () => {
  assert.deepEqual(tok.encode('Once upon a time', { bos: true, eos: false }), [1, 403, 407, 261, 378]);
  assert.deepEqual(tok.encode('Once upon a time', { bos: false, eos: true }), [403, 407, 261, 378, 2]);
  assert.deepEqual(tok.encode('', { bos: true, eos: false }), [1]); // no dummy prefix for empty text
  assert.deepEqual(tok.encode('', { bos: false, eos: false }), []);
});

test('encode: characters missing from the vocab fall back to their UTF-8 bytes (id = byte + 3)', () => {
  // "日" is E6 97 A5 in UTF-8 and not a piece; "é" is one (id 485). The dummy-prefix space is " " (410).
  assert.deepEqual(tok.encode('日', { bos: false, eos: false }), [410, 0xe6 + 3, 0x97 + 3, 0xa5 + 3]);
  assert.deepEqual(tok.encode('é', { bos: false, eos: false }), [410, 485]);
  assert.equal(tok.piece(0xe6 + 3), '<0xE6>');
});

/** run.c's encode merge loop, verbatim in spirit: rescan all pairs, merge the best, repeat. */
function naiveEncode(text: string): number[] {
  const lookup = new Map<string, number>();
  for (let i = tok.vocabSize - 1; i >= 0; i--) lookup.set(tok.piece(i), i);
  const scores = parseLlama2cTokenizer(tokBytes, 512, TOK_FILE).scores;
  const ids: number[] = [];
  for (const ch of text.length ? ' ' + text : '') {
    const id = lookup.get(ch);
    if (id !== undefined) ids.push(id);
    else for (const b of new TextEncoder().encode(ch)) ids.push(b + 3);
  }
  for (;;) {
    let best = -1e10, bestId = -1, bestIdx = -1;
    for (let i = 0; i + 1 < ids.length; i++) {
      const id = lookup.get(tok.piece(ids[i]) + tok.piece(ids[i + 1]));
      if (id !== undefined && scores[id] > best) { best = scores[id]; bestId = id; bestIdx = i; }
    }
    if (bestIdx < 0) return ids;
    ids.splice(bestIdx, 2, bestId);
  }
}

test('encode: the heap-based merge gives the same ids as run.c\'s rescanning loop', () => {
  const r = rng(7);
  const alphabet = 'abcdefghijklmnopqrstuvwxyz     ,.!?\'"\nTLOSéü日🙂';
  const chars = Array.from(alphabet);
  const texts = ['Once upon a time, there was a little girl named Lily.', 'the the the theee  ', 'aaaaaaaaaaaa'];
  for (let i = 0; i < 60; i++) texts.push(Array.from({ length: 1 + Math.floor(r() * 80) }, () => chars[Math.floor(r() * chars.length)]).join(''));
  for (const s of texts) assert.deepEqual(tok.encode(s, { bos: false, eos: false }), naiveEncode(s), JSON.stringify(s));
});

test('decode(encode(s)) == s, including non-ASCII text that needs byte fallback', () => {
  const texts = ['Once upon a time', 'Hello, world!\nNew line.', '  two leading spaces', 'naïve café, Übermaß', '日本語のテキスト', 'emoji 🙂🚀 end', 'a\n\nb', ''];
  for (const s of texts) assert.equal(tok.decode(tok.encode(s, { bos: true, eos: true })), s, JSON.stringify(s));
});

test('decodePiece: strips the dummy-prefix space after BOS, returns raw bytes for <0xXX> tokens', () => {
  assert.equal(tok.decodePiece(1, 403), 'Once');
  assert.equal(tok.decodePiece(261, 403), ' Once');
  assert.deepEqual(tok.decodePiece(1, 0x0a + 3), Uint8Array.of(0x0a));
  assert.throws(() => tok.decodePiece(1, 512), isCode('E_OPTION'));
});

test('streaming decoder: a character split over byte tokens comes out whole, once complete', () => {
  const ids = tok.encode('日', { bos: true, eos: false }); // BOS, " ", E6, 97, A5
  const d = tok.createDecoder();
  const out = ids.map((id, i) => d.push(i ? ids[i - 1] : -1, id));
  assert.deepEqual(out, ['', '', '', '', '日']);
  assert.equal(d.flush(), '');
  const cut = tok.createDecoder();
  cut.push(410, 0xe6 + 3);
  assert.equal(cut.flush(), '\ufffd'); // an unfinished character is not silently dropped
});

test('tokenizer file: truncation and bad headers give typed errors naming the file', () => {
  const at = (n: number) => tokBytes.subarray(0, n);
  assert.throws(() => parseLlama2cTokenizer(at(2), 512, TOK_FILE), isCode('E_TRUNCATED', TOK_FILE));
  assert.throws(() => parseLlama2cTokenizer(at(100), 512, TOK_FILE), isCode('E_TRUNCATED', TOK_FILE));
  for (const n of [4 + 8 * 512, 5000, tokBytes.length - 1]) {
    assert.throws(() => parseLlama2cTokenizer(at(n), 512, TOK_FILE), isCode('E_TRUNCATED', TOK_FILE), `cut at ${n}`);
  }
  assert.throws(() => parseLlama2cTokenizer(tokBytes, 513, TOK_FILE), isCode('E_TRUNCATED', TOK_FILE));
  assert.throws(() => parseLlama2cTokenizer(tokBytes, 511, TOK_FILE), isCode('E_FORMAT', TOK_FILE)); // bytes left over
  assert.throws(() => parseLlama2cTokenizer(tokBytes, 0, TOK_FILE), isCode('E_OPTION'));

  const bad = tokBytes.slice();
  const dv = new DataView(bad.buffer);
  dv.setInt32(0, 1 << 30, true); // max_token_length larger than the file
  assert.throws(() => parseLlama2cTokenizer(bad, 512, TOK_FILE), isCode('E_BAD_HEADER', TOK_FILE));
  dv.setInt32(0, 7, true);
  dv.setInt32(8, -5, true); // token 0's length
  assert.throws(() => parseLlama2cTokenizer(bad, 512, TOK_FILE), isCode('E_BAD_HEADER', 'token 0'));
  dv.setInt32(8, 0x7fffffff, true); // a huge length must be refused, not allocated
  assert.throws(() => parseLlama2cTokenizer(bad, 512, TOK_FILE), isCode('E_TRUNCATED', 'token 0'));
});
