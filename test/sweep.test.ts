// The quality sweep: a tiny sweep (two texts, three windows each, two bit widths, one group size, every
// method) gives exactly the expected rows, renders them as a table with standard errors and writes the
// file atomically; the bootstrap standard error agrees with the textbook one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundledEvalTextPath, bundledModelPath, bundledWikiTextPath } from '../src/cli/paths.js';
import { evalTokens, perplexity } from '../src/eval/perplexity.js';
import { bootstrapStdErr, gapClosed, renderQualityMarkdown, runSweep, writeQualityMarkdown, type SweepRow, type SweepText } from '../src/eval/sweep.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import { LlamaModel } from '../src/model/llama.js';
import { openModelFile } from '../src/model/open.js';
import { loadLlamaWeights } from '../src/model/weights.js';
import { Llama2cTokenizer } from '../src/tokenizer/llama2c.js';
import { splitEvalCalibration } from '../src/train/data.js';

const src = await openModelFile(bundledModelPath());
const config = src.config;
const dense = await loadLlamaWeights(src.tensors, config);
const tok = await src.readTokenizer();
const tokenizer = Llama2cTokenizer.fromBytes(tok.bytes, config.vocabSize, tok.file);
await src.close();
const split = splitEvalCalibration(readFileSync(bundledEvalTextPath(), 'utf8'));
const texts: SweepText[] = [
  { name: 'TinyStories', source: 'evaluation part', text: split.evaluation.slice(0, 4000) },
  { name: 'WikiText-2', source: 'wiki.test.raw', text: readFileSync(bundledWikiTextPath(), 'utf8').slice(0, 4000) },
];

let dir = '';
before(() => { dir = mkdtempSync(join(tmpdir(), 'flute-sweep-')); });
after(() => rmSync(dir, { recursive: true, force: true }));

test('bootstrapStdErr: the standard error of a mean over windows, paired across rows', () => {
  const row = (windowNll: number[]): SweepRow => ({
    method: 'fp32', bits: null, groupSize: null, bitsPerWeight: 32, text: 't', perplexity: NaN, nll: NaN, tokens: NaN,
    windowNll, windowTokens: windowNll.map(() => 255),
  });
  // 400 windows of mean NLL 1 or 2: log perplexity is their mean, whose standard error is 0.5 / sqrt(400)
  const a = row(Array.from({ length: 400 }, (_, i) => 1 + (i % 2)));
  const se = bootstrapStdErr([a], ([p]) => Math.log(p))!;
  assert.ok(Math.abs(se / 0.025 - 1) < 0.1, `bootstrap ${se}, textbook 0.025`);
  // a row that is another plus a constant: their perplexity ratio is the same in every resample
  const b = row(a.windowNll.map((v) => v + 0.3));
  assert.ok(bootstrapStdErr([a, b], ([p, q]) => q / p)! < 1e-12);
  assert.equal(bootstrapStdErr([row([1])], ([p]) => p), undefined, 'one window has no spread to measure');
  assert.equal(bootstrapStdErr([a, row([1, 2])], ([p]) => p), undefined, 'rows scored on other windows are not paired');
});

test('a tiny sweep gives one row per method x bits x g x text (fp4 only at 4 bits, FLUTE-recipe NFL at g = 32) and renders them', async () => {
  const notes: string[] = [];
  const result = await runSweep(config, dense, tokenizer, texts, {
    bits: [2, 4], groupSizes: [32], window: 32, maxWindows: 3, backend: createRefBackend(),
    nfl: { sequences: 2, length: 17, steps: 2, lr: 1e-3 }, nflFlute: { sequences: 2, length: 17 }, calibTokens: evalTokens(tokenizer, split.calibration.slice(0, 2000)),
    onProgress: (_d, _t, note) => notes.push(note),
  });
  const key = (r: { method: string; bits: number | null; groupSize: number | null; text: string }) => `${r.method}/${r.bits}/${r.groupSize}/${r.text}`;
  const want = ['fp32/null/null', 'int/2/32', 'int/4/32', 'nf/2/32', 'nf/4/32', 'nfl/2/32', 'nfl/4/32', 'nfl-flute/2/32', 'nfl-flute/4/32', 'fp4/4/32'].flatMap((c) => [`${c}/TinyStories`, `${c}/WikiText-2`]);
  assert.deepEqual(result.rows.map(key), want);
  for (const r of result.rows) {
    assert.equal(r.tokens, 3 * 31, key(r)); // three windows of 32: every token after the first
    assert.equal(r.windowNll.length, 3, key(r));
    assert.ok(Number.isFinite(r.perplexity) && r.perplexity > 1, key(r));
    if (r.method === 'fp32') assert.equal(r.bitsPerWeight, 32);
    // b-bit indices + 16-bit scales per 32 (more for the ragged K = 172 groups) + a tiny table
    else assert.ok(r.bitsPerWeight > r.bits! + 0.5 && r.bitsPerWeight < r.bits! + 0.7, `${key(r)}: ${r.bitsPerWeight} bits/weight`);
  }
  assert.equal(result.nfl.length, 4);
  assert.deepEqual(result.nfl.map((n) => n.steps), [2, 2, 2, 2]);
  assert.ok(notes.some((n) => n.includes('NFL step 2/2')));

  // The fp32 row is exactly what perplexity() gives on a LlamaModel of the dense weights, on windows
  // spread over the whole text (not its first three).
  const m = new LlamaModel(config, dense, createRefBackend(), { maxBatch: 32, seqLen: 32 });
  const direct = await perplexity(m, tokenizer, texts[1].text, { window: 32, maxWindows: 3, spread: true });
  const first = await perplexity(m, tokenizer, texts[1].text, { window: 32, maxWindows: 3 });
  assert.equal(result.rows[1].perplexity, direct.perplexity);
  assert.deepEqual(result.rows[1].windowNll, Array.from(direct.windowNll));
  assert.notEqual(direct.perplexity, first.perplexity);
  m.dispose();

  const md = renderQualityMarkdown(result, {
    command: 'flute eval --sweep --test', model: 'stories260K', backend: 'ref', texts, calibration: 'the tail', nflRecipe: '2 steps',
  });
  assert.ok(md.includes('```sh\nflute eval --sweep --test\n```'));
  assert.ok(md.includes('## Headline (g = 32)'));
  assert.match(md, /\| fp4 RTN \| 4 \| 32 \|/);
  assert.doesNotMatch(md, /\| fp4 RTN \| 2 \|/);
  assert.match(md, /\| NFL \| 2 \| 32 \|/);
  assert.match(md, /\| NFL, FLUTE recipe \| 4 \| 32 \|/);
  const closed = gapClosed(result.rows, 4, 32, 'TinyStories');
  assert.ok(closed !== undefined && md.includes(`${(closed * 100).toFixed(1)}%`));
  assert.match(md, /NFL at 4 bits, g = 32, within 2% of fp32 on TinyStories: [\d.]+% (above|below) fp32 \(\+-[\d.]+%, one standard error over windows\), \*\*(met|not met)\*\*/);
  assert.match(md, /NFL closes at least half of NF RTN's gap to fp32 at 2 bits, g = 32, on TinyStories: [-\d.]+% closed \(\+-[\d.]+ points, one standard error over windows\)/);
  assert.match(md, /Scored text "WikiText-2": wiki\.test\.raw; 3 windows of 32 tokens spread evenly over it, each from an empty context \(93 scored tokens\): the fp32 perplexity here estimates the whole text's to \+-[\d.]+%/);

  const out = join(dir, 'QUALITY.md');
  await writeQualityMarkdown(out, md);
  assert.equal(readFileSync(out, 'utf8'), md);
  assert.deepEqual(readdirSync(dir), ['QUALITY.md']); // no temporary file left behind
});

test('flute eval --sweep and flute quantize --method nfl run from the command line', async () => {
  const { main } = await import('../src/cli/main.js');
  const out = join(dir, 'Q.md');
  const ck = join(dir, 'nfl.safetensors');
  const printed: string[] = [];
  const errors: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => void printed.push(a.join(' '));
  console.error = (...a: unknown[]) => void errors.push(a.join(' '));
  try {
    const sweepArgs = ['--sweep', '--methods', 'fp32,nf,nfl', '--bits', '4', '--group-sizes', '32', '--window', '32', '--max-windows', '1', '--calib-sequences', '2', '--calib-length', '17', '--backend', 'ref', '--out', out, '--json'];
    assert.equal(await main(['eval', ...sweepArgs]), 0);
    assert.equal(await main(['quantize', '--method', 'nfl', '--bits', '3', '--group-size', '32', '--calib-sequences', '2', '--calib-length', '17', '--out', ck, '--json']), 0);
    assert.equal(await main(['eval', '--sweep', '--calib', bundledEvalTextPath(), '--out', out]), 2, 'calibrating on the scored text is refused');
    assert.equal(await main(['eval', '--out', out]), 2, 'sweep options without --sweep are refused');
    assert.equal(await main(['eval', '--sweep', '--max-windows', '5000', '--backend', 'ref', '--out', out]), 2, 'more windows than the evaluation part holds are refused');
  } finally {
    console.log = log;
    console.error = error;
  }
  assert.match(errors[0], /E_OPTION: --calib .*this is the scored --text/);
  assert.match(errors[1], /E_OPTION: --out: only with --sweep/);
  const room = Math.floor(evalTokens(tokenizer, split.evaluation).length / 256);
  assert.ok(room >= 40 && room < 5000, `${room} windows`);
  assert.match(errors[2], new RegExp(`E_OPTION: --max-windows 5000: the evaluation part of .* \\(characters 0\\.\\.${split.cut};.* room for ${room} windows of 256`));
  const md = readFileSync(out, 'utf8');
  assert.ok(md.includes(['flute eval', ...['--sweep', '--methods', 'fp32,nf,nfl']].join(' ')));
  assert.equal(JSON.parse(printed[0]).rows.length, 6); // fp32, NF4, NFL4 on two texts
  const report = JSON.parse(printed[1]);
  assert.equal(report.nfl.steps, 2);
  assert.equal(report.layers.length, 35);
});
