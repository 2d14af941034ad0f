// The NFL options of `flute quantize` (--method nfl and its calibration settings) and of
// `flute eval --sweep`: parsing, the help text, reading the calibration text (by default the
// calibration part of the bundled TinyStories excerpt), and the progress line with the loss.

import { readFile } from 'node:fs/promises';
import { FluteError } from '../../errors.js';
import { MAX_ALL_SEQUENCES, NFL_DEFAULTS, NFL_FLUTE_RECIPE, describeRecipe, type NflRecipe, type NflResult } from '../../quant/nfl.js';
import { CALIBRATION_FRACTION, splitEvalCalibration } from '../../train/data.js';
import { isNonNegInt, isPosInt, num, oneOf, str, type OptionSpec, type Parsed } from '../args.js';
import { bundledEvalTextPath } from '../paths.js';
import type { ProgressBar } from '../progress.js';

export const NFL_OPTIONS: OptionSpec = {
  method: { type: 'string' },
  calib: { type: 'string' },
  'calib-sequences': { type: 'string' },
  'calib-length': { type: 'string' },
  steps: { type: 'string' },
  lr: { type: 'string' },
  param: { type: 'string' },
  schedule: { type: 'string' },
  seed: { type: 'string' },
};

/** Where the default calibration text comes from, in words (help, reports). */
export const DEFAULT_CALIB_WORDS = `the last ~${Math.round(CALIBRATION_FRACTION * 100)}% of data/tinystories_val_excerpt.txt: the stories from the first "Once upon a time" at or after ${Math.round(100 - CALIBRATION_FRACTION * 100)}% of its characters (flute eval --sweep scores only the part before)`;

export const NFL_HELP = `  --method M           rtn | nfl (default rtn). nfl: Learned NormalFloat (FLUTE): one scale per group
                       learned by Adam on the model's next-token loss over calibration text,
                       straight-through past the rounding; the output is an ordinary checkpoint
  --calib FILE         nfl calibration text, used whole (default: the last ~${Math.round(CALIBRATION_FRACTION * 100)}% of the bundled
                       data/tinystories_val_excerpt.txt, from the first "Once upon a time" story at or after
                       ${Math.round(100 - CALIBRATION_FRACTION * 100)}% of its characters; flute eval --sweep scores only the part before it)
  --calib-sequences N  nfl: calibration sequences, or all (default: all the full sequences in the
                       calibration text, at most ${MAX_ALL_SEQUENCES}; 297 in the bundled split)
  --calib-length N     nfl: tokens per sequence (default ${NFL_DEFAULTS.length})
  --steps N            nfl: Adam steps at batch 1 (default: one pass, one step per sequence)
  --lr X               nfl: Adam learning rate (default ${NFL_DEFAULTS.lr} with --param relative)
  --param P            nfl: relative (default; Adam on s/s0, the paper's sigma~) | absolute (on s, FLUTE's code)
  --schedule S         nfl: linear (default; lr decays to 0) | constant (FLUTE's)
  --seed S             nfl: order of the sequences (default ${NFL_DEFAULTS.seed})
                       FLUTE's exact recipe: --calib-sequences ${NFL_FLUTE_RECIPE.sequences} --param absolute --lr ${NFL_FLUTE_RECIPE.lr} --schedule constant
                       (${describeRecipe(NFL_FLUTE_RECIPE)}); why the default differs: QUALITY.md`;

export interface NflChoice {
  readonly calibText: string;
  readonly calibName: string; // the file, or the bundled split in words
  readonly sequences: number | 'all';
  readonly length: number;
  readonly steps?: number;
  readonly lr: number;
  readonly param: NflRecipe['param'];
  readonly schedule: NflRecipe['schedule'];
  readonly seed: number;
}

/** The calibration text: --calib FILE whole, or the calibration part of the bundled excerpt. */
export async function readCalibText(p: Parsed): Promise<{ text: string; name: string; file: string; split: boolean; from: number }> {
  const file = str(p, 'calib');
  if (file === undefined) {
    const bundled = bundledEvalTextPath();
    const split = splitEvalCalibration(await readText(bundled, 'bundled text'));
    return { text: split.calibration, name: `${bundled} (calibration part)`, file: bundled, split: true, from: split.cut + 2 };
  }
  return { text: await readText(file, '--calib'), name: file, file, split: false, from: 0 };
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FluteError(code === 'ENOENT' ? 'E_NOT_FOUND' : 'E_IO', `${what} ${path}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
}

/** The NFL recipe options, without reading any file; `defaults` fills what is not given. */
export function nflRecipe(p: Parsed, defaults: NflRecipe = NFL_DEFAULTS): NflRecipe & { readonly seed: number } {
  const steps = p.values.steps === undefined ? defaults.steps : num(p, 'steps', 0, isNonNegInt, 'an integer >= 0');
  const seqs = str(p, 'calib-sequences');
  return {
    sequences: seqs === undefined ? defaults.sequences : seqs === 'all' ? 'all' : num(p, 'calib-sequences', 0, isPosInt, 'a positive integer or "all"'),
    length: num(p, 'calib-length', defaults.length, (v) => Number.isInteger(v) && v >= 2, 'an integer >= 2'),
    steps,
    lr: num(p, 'lr', defaults.lr, (v) => v > 0, 'a positive number'),
    param: oneOf(p, 'param', ['relative', 'absolute'] as const, defaults.param),
    schedule: oneOf(p, 'schedule', ['linear', 'constant'] as const, defaults.schedule),
    seed: num(p, 'seed', NFL_DEFAULTS.seed, isNonNegInt, 'an integer >= 0'),
  };
}

/** --method and the NFL options of flute quantize; null for RTN (which refuses NFL-only options). */
export async function nflChoice(p: Parsed): Promise<NflChoice | null> {
  const method = oneOf(p, 'method', ['rtn', 'nfl'] as const, 'rtn');
  if (method === 'rtn') {
    const stray = Object.keys(NFL_OPTIONS).find((k) => k !== 'method' && p.values[k] !== undefined);
    if (stray) throw new FluteError('E_OPTION', `--${stray}: only with --method nfl (RTN needs no calibration)`);
    return null;
  }
  const recipe = nflRecipe(p);
  const calib = await readCalibText(p);
  return { ...recipe, calibText: calib.text, calibName: calib.name };
}

/** An onStep callback that draws the NFL progress with the step's loss and a running mean. */
export function nflProgress(bar: ProgressBar): (step: number, steps: number, loss: number) => void {
  let mean = NaN;
  return (step, steps, loss) => {
    mean = Number.isNaN(mean) ? loss : 0.9 * mean + 0.1 * loss; // smooths batch-1 noise
    bar.update(step, steps, `loss ${loss.toFixed(3)} (avg ${mean.toFixed(3)})`);
  };
}

/** What flute quantize reports about an NFL run: a JSON object and one line of text. */
export function nflSummary(r: NflResult, choice: NflChoice): { json: Record<string, unknown>; text: string } {
  const q = Math.max(1, Math.min(16, Math.floor(r.losses.length / 4)));
  const mean = (a: Float64Array) => (a.length ? a.reduce((s, v) => s + v, 0) / a.length : NaN);
  const first = mean(r.losses.subarray(0, q));
  const last = mean(r.losses.subarray(r.losses.length - q));
  return {
    json: { calib: choice.calibName, steps: r.steps, sequences: r.sequences, length: r.length, lr: r.lr, param: r.param, schedule: r.schedule, seconds: r.seconds, firstLoss: first, lastLoss: last, losses: Array.from(r.losses) },
    text: `NFL: ${describeRecipe(r)} from ${choice.calibName} in ${r.seconds.toFixed(1)} s; training loss ${first.toFixed(4)} -> ${last.toFixed(4)} (mean of the first and last ${q} steps)`,
  };
}
