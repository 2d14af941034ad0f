// Perplexity: stories260K on a prefix of the TinyStories excerpt lands in a plausible range, the
// windowed batched scoring equals a token-by-token computation, windows can be spread over the whole
// stream, and bad options are refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FluteError } from '../src/errors.js';
import { evalTokens, perplexity, perplexityOfTokens, windowsOf } from '../src/eval/perplexity.js';
import { openLlama2c } from '../src/format/llama2c.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import { LlamaModel } from '../src/model/llama.js';
import { loadLlamaWeights } from '../src/model/weights.js';
import { Llama2cTokenizer } from '../src/tokenizer/llama2c.js';

/** A repository file, whether this test runs from test/ (tsx) or dist/test/ (compiled). */
function repoFile(rel: string): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); dirname(dir) !== dir; dir = dirname(dir)) {
    if (existsSync(join(dir, rel))) return join(dir, rel);
  }
  return join(process.cwd(), rel);
}

const tokenizer = Llama2cTokenizer.fromBytes(new Uint8Array(readFileSync(repoFile('models/stories260K/tok512.bin'))), 512, 'tok512.bin');
const reader = await openLlama2c(repoFile('models/stories260K/stories260K.bin'));
const weights = await loadLlamaWeights(reader, reader.config);
const model = new LlamaModel(reader.config, weights, createRefBackend());
const text = readFileSync(repoFile('data/tinystories_val_excerpt.txt'), 'utf8').slice(0, 20000);
const isOption = (mention: string) => (e: unknown) => e instanceof FluteError && e.code === 'E_OPTION' && e.message.includes(mention);

test('evalTokens: each "\\n\\n" block is encoded with BOS and the blocks are concatenated', () => {
  const a = tokenizer.encode('One day.', { bos: true, eos: false });
  const b = tokenizer.encode('The end.', { bos: true, eos: false });
  assert.deepEqual(evalTokens(tokenizer, 'One day.\n\nThe end.'), [...a, ...b]);
});

test('stories260K perplexity on the start of the TinyStories excerpt is in the plausible range', async () => {
  const progress: [number, number][] = [];
  const r = await perplexity(model, tokenizer, text, { window: 256, maxWindows: 6, onProgress: (d, t) => progress.push([d, t]) });
  assert.equal(r.windows, 6);
  assert.equal(r.tokens, 6 * 255); // every token after the first of each window
  assert.deepEqual(progress, [1, 2, 3, 4, 5, 6].map((d) => [d, 6]));
  assert.ok(Number.isFinite(r.nll) && Math.abs(r.perplexity - Math.exp(r.nll)) < 1e-12);
  // In-domain text: these windows measure ~3.9, the whole excerpt ~5.4 (its later stories are harder), and
  // llama2.c reports a validation loss of 1.30 (ppl 3.7).
  // A uniform guess over 512 tokens is 512, and a broken forward pass (wrong RoPE, norm or mask) lands
  // in the tens or above; 2 < ppl < 8 leaves room for the variation between windows.
  assert.ok(r.perplexity > 2 && r.perplexity < 8, `perplexity ${r.perplexity}`);
  // Pinned: this fp32 forward (whose greedy text matches llama2.c's) measured 1.3588 nats/token on these windows.
  assert.ok(Math.abs(r.nll - 1.3588) < 2e-3, `nll ${r.nll}`);
});

test('fp32 perplexity agrees with the figure in the data README under the same windowing', async () => {
  // data/README: "mean NLL of about 1.343 nats/token (perplexity about 3.83) on the TinyStories excerpt
  // (windows of 256 tokens, BOS before each \\n\\n block)". That figure matches the first ~3.3K tokens of
  // the excerpt (13 windows here: 1.3436); the whole excerpt measures 1.6947 (ppl 5.445) with the same
  // code, because its later stories are harder for this model. 0.005 nats is under 0.4% of the NLL.
  const r = await perplexity(model, tokenizer, text, { window: 256, maxWindows: 13 });
  assert.equal(r.windows, 13);
  assert.ok(Math.abs(r.nll - 1.343) < 0.005, `nll ${r.nll}`);
  assert.ok(Math.abs(r.perplexity - 3.83) < 0.02, `perplexity ${r.perplexity}`);
});

test('windowed batched scoring equals token-by-token scoring, with a final partial window', async () => {
  const short = text.split('\n\n').slice(0, 2).join('\n\n');
  const ids = evalTokens(tokenizer, short);
  const window = 20;
  assert.ok(ids.length % window >= 2, `${ids.length} tokens: the test needs a partial last window`);
  let sum = 0, n = 0, windows = 0;
  for (let s = 0; s < ids.length; s += window, windows++) {
    model.reset();
    for (let t = s; t + 1 < Math.min(ids.length, s + window); t++) {
      const logits = model.forward([ids[t]], t - s);
      const max = Math.max(...logits);
      const lse = max + Math.log(logits.reduce((acc, x) => acc + Math.exp(x - max), 0));
      sum += lse - logits[ids[t + 1]];
      n++;
    }
  }
  const small = new LlamaModel(reader.config, weights, createRefBackend(), { maxBatch: 8 }); // several chunks per window
  const r = await perplexity(small, tokenizer, short, { window });
  assert.equal(r.windows, windows);
  assert.equal(r.tokens, n);
  assert.ok(Math.abs(r.nll - sum / n) < 1e-9, `${r.nll} vs ${sum / n}`);
});

test('perplexity refuses bad windows and texts with nothing to score; aborts with E_ABORTED', async () => {
  for (const window of [0, 1, 2.5, -3, reader.config.seqLen + 1]) {
    await assert.rejects(perplexity(model, tokenizer, text, { window }), isOption('window'), `window ${window}`);
  }
  await assert.rejects(perplexity(model, tokenizer, text, { window: 16, maxWindows: 0 }), isOption('maxWindows'));
  await assert.rejects(perplexity(model, tokenizer, '', { window: 16 }), isOption('text'));
  await assert.rejects(
    perplexity(model, tokenizer, text, { window: 64, signal: AbortSignal.abort() }),
    (e: unknown) => e instanceof FluteError && e.code === 'E_ABORTED',
  );
});

test('windowsOf: the first windows, or full ones spread evenly over the stream; perplexityOfTokens scores exactly those', async () => {
  assert.deepEqual(windowsOf(1005, 10, 3), [[0, 10], [10, 20], [20, 30]]);
  // 100 full windows, 7 spread: window indices floor(j * 100 / 7)
  assert.deepEqual(windowsOf(1005, 10, 7, true).map(([s]) => s / 10), [0, 14, 28, 42, 57, 71, 85]);
  // room for all of them: every window, the partial last one (5 tokens) included, spread or not
  assert.equal(windowsOf(1005, 10, 101, true).length, 101);
  assert.deepEqual(windowsOf(1005, 10, 101, true).at(-1), [1000, 1005]);
  assert.deepEqual(windowsOf(1005, 10, 100, true), windowsOf(1005, 10, 100), 'as many as the full windows: all of them, no partial one');

  const ids = evalTokens(tokenizer, text.slice(0, 3000));
  const window = 24;
  const r = await perplexityOfTokens(model, ids, { window, maxWindows: 4, spread: true });
  const picked = windowsOf(ids.length, window, 4, true);
  assert.ok(picked.at(-1)![0] > 3 * window, 'the picked windows reach past the first four');
  let sum = 0;
  for (const [w, [s, e]] of picked.entries()) {
    const alone = await perplexityOfTokens(model, ids.slice(s, e), { window }); // that window as a stream of its own
    assert.equal(r.windowNll[w], alone.nll);
    assert.equal(r.windowTokens[w], e - s - 1);
    sum += alone.nll * (e - s - 1);
  }
  assert.ok(Math.abs(r.nll - sum / r.tokens) < 1e-12);
});
