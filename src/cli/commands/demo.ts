// flute demo (npm start): the whole product on the bundled stories260K: quantize it to NF4 and NF3,
// compare file sizes and perplexity with fp32 on the bundled TinyStories text, then tell a story.

import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { perplexity } from '../../eval/perplexity.js';
import { createGenerationStats, generate } from '../../model/generate.js';
import { loadModel } from '../../model/load.js';
import { openModelFile } from '../../model/open.js';
import { quantizeModel } from '../../quant/quantize-model.js';
import { isPosInt, num, parse, str } from '../args.js';
import { BACKEND_HELP, BACKEND_OPTIONS, backendChoice } from '../backend-options.js';
import { bundledEvalTextPath, bundledModelPath } from '../paths.js';
import { progressBar } from '../progress.js';

const DEFAULTS = {
  outDir: 'out', // where the quantized checkpoints go
  groupSize: 32, // K is 64 or 172 here: g = 32 leaves a ragged last group of 12 in the FFN down projection
  window: 256,
  maxWindows: 100, // about 25,600 tokens: a few seconds per model, and stable to ~1%
  storyTokens: 200,
};

const HELP = `Usage: flute demo [options]   (what npm start runs)

Quantizes the bundled stories260K to NF4 and NF3 (g = ${DEFAULTS.groupSize}), prints file sizes and the
perplexity of fp32 and each quantized model on the bundled TinyStories text, then streams a story
from the NF4 model.

Options:
  --out-dir DIR        where the checkpoints go (default ${DEFAULTS.outDir}/)
  --max-windows N      perplexity windows of ${DEFAULTS.window} tokens per model, spread over the text (default ${DEFAULTS.maxWindows})
  --seed S             story sampling seed (default 42)
${BACKEND_HELP}`;

export async function demoCommand(argv: string[]): Promise<number> {
  const p = parse('demo', argv, { ...BACKEND_OPTIONS, 'out-dir': { type: 'string' }, 'max-windows': { type: 'string' }, seed: { type: 'string' } });
  if (p.values.help) return console.log(HELP), 0;
  const outDir = str(p, 'out-dir') ?? DEFAULTS.outDir;
  const maxWindows = num(p, 'max-windows', DEFAULTS.maxWindows, isPosInt, 'a positive integer');
  const seed = num(p, 'seed', 42, (v) => Number.isInteger(v) && v >= 0, 'an integer >= 0');
  const { backend, threads, maxMemoryBytes } = backendChoice(p);
  const model = bundledModelPath();
  const text = await readFile(bundledEvalTextPath(), 'utf8');
  await mkdir(outDir, { recursive: true });

  console.log(`flute-engine demo on the bundled ${model}\n`);
  const rows: { name: string; file: string; bytes: number; bpw: string }[] = [
    { name: 'fp32', file: model, bytes: (await stat(model)).size, bpw: '32' },
  ];
  for (const bits of [4, 3]) {
    const out = join(outDir, `stories260K-nf${bits}-g${DEFAULTS.groupSize}.safetensors`);
    const src = await openModelFile(model);
    const bar = progressBar(`quantize NF${bits}`);
    const r = await quantizeModel(src, out, { bits, groupSize: DEFAULTS.groupSize, tableKind: 'nf', onProgress: (d, t) => bar.update(d, t) });
    bar.done();
    await src.close();
    rows.push({ name: `NF${bits} g${DEFAULTS.groupSize}`, file: out, bytes: r.bytes, bpw: r.bitsPerWeight.toFixed(3) });
  }

  // spread over the whole text: its first stories are easier than the rest (QUALITY.md)
  console.log(`\nperplexity on data/tinystories_val_excerpt.txt (${maxWindows} windows of ${DEFAULTS.window} tokens spread over it):`);
  console.log(`  ${'model'.padEnd(10)} ${'file bytes'.padStart(10)}  ${'bits/weight*'.padStart(12)}  perplexity`);
  for (const row of rows) {
    const loaded = await loadModel(row.file, { backend, threads, maxMemoryBytes });
    const r = await perplexity(loaded.model, loaded.tokenizer, text, { window: DEFAULTS.window, maxWindows, spread: true });
    loaded.dispose();
    console.log(`  ${row.name.padEnd(10)} ${String(row.bytes).padStart(10)}  ${row.bpw.padStart(12)}  ${r.perplexity.toFixed(4)}`);
  }
  console.log('  * of the quantized linear layers, scales included; the embedding and norms stay fp32.\n');

  const nf4 = rows[1].file;
  const loaded = await loadModel(nf4, { backend, threads, maxMemoryBytes });
  const prompt = 'Once upon a time';
  console.log(`A story from ${nf4} (${loaded.backend.info().variant.split(';')[0]}, temperature 0.8, seed ${seed}):\n`);
  process.stdout.write(prompt);
  const stats = createGenerationStats();
  for await (const piece of generate(loaded.model, loaded.tokenizer, prompt, { maxTokens: DEFAULTS.storyTokens, temperature: 0.8, topP: 0.9, topK: 0, seed, stats })) {
    process.stdout.write(piece);
  }
  loaded.dispose();
  const tps = stats.decodeMs > 0 ? (stats.generatedTokens / stats.decodeMs) * 1000 : 0;
  console.log(`\n\n${stats.generatedTokens} tokens at ${tps.toFixed(0)} tokens/s`);
  return 0;
}
