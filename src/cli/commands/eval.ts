// flute eval: perplexity of a model over a text file, in fixed windows of tokens.

import { readFile } from 'node:fs/promises';
import { FluteError } from '../../errors.js';
import { perplexity } from '../../eval/perplexity.js';
import { loadModel } from '../../model/load.js';
import { atMostOnePositional, isPosInt, num, parse, str } from '../args.js';
import { BACKEND_HELP, BACKEND_OPTIONS, backendChoice, reportBackend, terminalLoadOptions } from '../backend-options.js';
import { bundledEvalTextPath, bundledModelPath } from '../paths.js';
import { progressBar } from '../progress.js';
import { rejectSweepOptions, SWEEP_HELP, SWEEP_OPTIONS, sweepCommand } from './eval-sweep.js';

const DEFAULTS = {
  window: 256, // tokens per window, each scored from a fresh context
};

const HELP = `Usage: flute eval [model] [options]

Perplexity over a text: the text is split at blank lines, each block tokenized with BOS, the token
stream cut into windows, and every token after the first of each window scored.

Options:
  --text FILE          text to score (default: the bundled TinyStories excerpt, data/tinystories_val_excerpt.txt)
  --window N           tokens per window, at least 2 (default ${DEFAULTS.window})
  --max-windows N      score only the first N windows (default: all)
  --spread             with --max-windows: N full windows spread evenly over the whole text instead
${BACKEND_HELP}
  --json               print {perplexity, nll, tokens, window, windows, windowNll, ...}
  NFL checkpoints calibrated on the default text were trained on the excerpt's last 20%: score them
  with --sweep, or on text that excludes it.

${SWEEP_HELP}

Examples:
  flute eval stories-nf3.safetensors --text data/wiki.test.raw --window 512 --max-windows 20 --spread
  flute eval --sweep --out QUALITY.md`;

export async function evalCommand(argv: string[]): Promise<number> {
  const p = parse('eval', argv, { ...BACKEND_OPTIONS, ...SWEEP_OPTIONS, text: { type: 'string' }, window: { type: 'string' }, 'max-windows': { type: 'string' }, spread: { type: 'boolean' } });
  if (p.values.help) return console.log(HELP), 0;
  const modelPath = atMostOnePositional('eval', p) ?? bundledModelPath();
  const textPath = str(p, 'text') ?? bundledEvalTextPath();
  const window = num(p, 'window', DEFAULTS.window, (v) => Number.isInteger(v) && v >= 2, 'an integer >= 2');
  const maxWindows = p.values['max-windows'] === undefined ? undefined : num(p, 'max-windows', 1, isPosInt, 'a positive integer');
  const spread = Boolean(p.values.spread);
  if (spread && maxWindows === undefined) throw new FluteError('E_OPTION', '--spread: only with --max-windows (without it every window is scored)');
  const json = Boolean(p.values.json);
  const { backend, threads, maxMemoryBytes } = backendChoice(p);
  if (p.values.sweep && backend === 'webgpu') throw new FluteError('E_OPTION', '--backend webgpu: the quality sweep runs exact f32 arithmetic on the CPU (wasm or ref); drop --backend or pick one of those');
  if (p.values.sweep && spread) throw new FluteError('E_OPTION', '--spread: the sweep always spreads its windows; drop it');
  if (p.values.sweep) return sweepCommand(p, argv, atMostOnePositional('eval', p), { window, maxWindows, backend, threads });
  rejectSweepOptions(p);
  let text: string;
  try {
    text = await readFile(textPath, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FluteError(code === 'ENOENT' ? 'E_NOT_FOUND' : 'E_IO', `--text ${textPath}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  const loaded = await loadModel(modelPath, { backend, threads, maxMemoryBytes, tokenizer: str(p, 'tokenizer'), ...terminalLoadOptions(json) });
  reportBackend('eval', loaded);
  const bar = progressBar('eval', { enabled: !json });
  const t0 = performance.now();
  try {
    const r = await perplexity(loaded.model, loaded.tokenizer, text, { window, maxWindows, spread, onProgress: (d, t) => bar.update(d, t) });
    bar.done();
    const seconds = (performance.now() - t0) / 1000;
    const info = loaded.backend.info();
    if (json) {
      console.log(JSON.stringify({ model: modelPath, text: textPath, backend: info.name, ...r, windowNll: Array.from(r.windowNll), windowTokens: Array.from(r.windowTokens), window, spread, seconds }, null, 2));
    } else {
      console.log(`perplexity ${r.perplexity.toFixed(4)} (mean NLL ${r.nll.toFixed(4)} nats/token) over ${r.tokens} tokens in ${r.windows} windows of ${window}${spread ? ' spread over the text' : ''}; ${seconds.toFixed(1)} s on ${info.name}`);
    }
    return 0;
  } finally {
    loaded.dispose();
  }
}
