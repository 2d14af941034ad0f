// The quality sweep behind `flute eval --sweep` and QUALITY.md: perplexity of one dense model under
// every quantization method (fp32, int RTN, NF RTN, NFL, fp4) x bit width x group size, on each text.
// Models are quantized in memory and run by LlamaModel on the caller's backend; NFL's scales come from
// quant/nfl.ts. Each text is scored on windows spread evenly over all of it. Rendering the rows as
// markdown, with bootstrap standard errors on the checks, and writing the file atomically is here too.

import { dirname } from 'node:path';
import { checkOption, FluteError } from '../errors.js';
import type { KernelBackend } from '../kernels/types.js';
import type { LlamaConfig } from '../model/config.js';
import { LlamaModel } from '../model/llama.js';
import { LAYER_LINEARS, LINEAR_KEYS, type LayerWeights, type LlamaWeights } from '../model/weights.js';
import { storedBytes, type Linear } from '../quant/linear.js';
import { learnScales, NFL_FLUTE_RECIPE, type NflOptions, type NflResult } from '../quant/nfl.js';
import { quantizeRtn, quantizeWithScales } from '../quant/rtn.js';
import type { TableKind } from '../quant/tables.js';
import { mulberry32 } from '../rng.js';
import type { Tokenizer } from '../tokenizer/types.js';
import { evalTokens, perplexityOfTokens } from './perplexity.js';

/** 'nfl-flute' is NFL with FLUTE's own recipe (NFL_FLUTE_RECIPE), at g = 32 only: the recipe ablation. */
export type SweepMethod = 'fp32' | 'int' | 'nf' | 'nfl' | 'nfl-flute' | 'fp4';
export const SWEEP_METHODS: readonly SweepMethod[] = ['fp32', 'int', 'nf', 'nfl', 'nfl-flute', 'fp4'];

/** Which table each quantized method uses; NFL is NF with learned scales. */
const METHOD_TABLE: Record<Exclude<SweepMethod, 'fp32'>, TableKind> = { int: 'int', nf: 'nf', nfl: 'nf', 'nfl-flute': 'nf', fp4: 'fp4' };
const METHOD_LABEL: Record<SweepMethod, string> = { fp32: 'fp32', int: 'int RTN', nf: 'NF RTN', nfl: 'NFL', 'nfl-flute': 'NFL, FLUTE recipe', fp4: 'fp4 RTN' };
/** The group size of the headline table and of the recipe ablation. */
export const HEADLINE_GROUP = 32;
/**
 * Windows scored per text by default, spread evenly over it. The start of the TinyStories excerpt is
 * easier than the rest (fp32 4.12 on its first 40 windows, 5.41 on all 1210 of the evaluation part),
 * so the windows must come from the whole text; 600 of 256 tokens put one standard error of the 3-bit
 * check at 0.7 points (QUALITY.md prints it; 2.5 with 40 windows) at ~15 ms a window on this model.
 */
export const SWEEP_WINDOWS = 600;

export interface SweepText {
  readonly name: string; // short label, e.g. "TinyStories (eval part)"
  readonly source: string; // where it came from, for the report
  readonly text: string; // what is scored
}

type NflRecipeOptions = Omit<NflOptions, 'bits' | 'groupSize' | 'tableKind' | 'tableValues' | 'onStep' | 'signal'>;

export interface SweepOptions {
  readonly methods?: readonly SweepMethod[]; // default all five
  readonly bits?: readonly number[]; // default [2, 3, 4]; fp4 runs at 4 only
  readonly groupSizes?: readonly number[]; // default [16, 32, 64]
  readonly window?: number; // tokens per window (default 256)
  readonly maxWindows?: number; // windows scored per text, spread evenly over it (default SWEEP_WINDOWS)
  /** NFL's recipe (bits, group size and table come from the sweep); default NFL_DEFAULTS. */
  readonly nfl?: NflRecipeOptions;
  /** The recipe of 'nfl-flute' rows; default NFL_FLUTE_RECIPE. */
  readonly nflFlute?: NflRecipeOptions;
  readonly calibTokens?: ArrayLike<number>; // required when methods include 'nfl'
  readonly backend: KernelBackend;
  /** Before each model is scored (done of total), and during NFL with its step and loss. */
  readonly onProgress?: (done: number, total: number, note: string) => void;
  readonly signal?: AbortSignal;
}

export interface SweepRow {
  readonly method: SweepMethod;
  readonly bits: number | null; // null for fp32
  readonly groupSize: number | null; // null for fp32
  readonly bitsPerWeight: number; // of the decoder linears, f16 scales and tables included; 32 for fp32
  readonly text: string; // SweepText.name
  readonly perplexity: number;
  readonly nll: number; // nats per scored token
  readonly tokens: number; // scored tokens
  /** Mean NLL and scored tokens of each window; every row of a text scores the same windows. */
  readonly windowNll: readonly number[];
  readonly windowTokens: readonly number[];
}

export interface SweepResult {
  readonly rows: SweepRow[];
  readonly nfl: { method: SweepMethod; bits: number; groupSize: number; seconds: number; steps: number; firstLoss: number; lastLoss: number }[];
  readonly seconds: number;
  readonly window: number;
  readonly maxWindows: number;
}

// ---------------------------------------------------------------------------------------------
// Quantizing a model in memory

export interface InMemoryQuantization {
  readonly bits: number;
  readonly groupSize: number;
  readonly tableKind: TableKind;
  /** Learned scales by weight name (NFL); absent: RTN's absmax scales. */
  readonly scalesFor?: (weightName: string) => ArrayLike<number> | undefined;
}

/**
 * The dense model with every decoder linear quantized (f16 scales, as the checkpoint writer stores
 * them); embedding, norms and output stay as they are. The result runs in LlamaModel like a loaded
 * checkpoint, with no file in between.
 */
export function quantizeLlamaWeights(dense: LlamaWeights, q: InMemoryQuantization): LlamaWeights {
  const layers = dense.layers.map((L, l): LayerWeights => {
    const out: Record<string, Linear> = {};
    for (const key of LINEAR_KEYS) {
      const lin = L[key];
      const name = `model.layers.${l}.${LAYER_LINEARS[key]}`;
      if (lin.kind !== 'dense') throw new FluteError('E_OPTION', `sweep: ${name} is already quantized; start from the dense model`);
      const opts = { bits: q.bits, groupSize: q.groupSize, tableKind: q.tableKind };
      const given = q.scalesFor?.(name);
      out[key] = (given ? quantizeWithScales(lin.weight, lin.n, lin.k, given, opts, name) : quantizeRtn(lin.weight, lin.n, lin.k, opts, name)).layer;
    }
    return { ...L, wq: out.wq, wk: out.wk, wv: out.wv, wo: out.wo, w1: out.w1, w2: out.w2, w3: out.w3 };
  });
  return { ...dense, layers };
}

/** Storage bits per weight over the decoder linears (indices, scales and tables). */
function decoderBitsPerWeight(w: LlamaWeights): number {
  let bits = 0;
  let params = 0;
  for (const L of w.layers) {
    for (const key of LINEAR_KEYS) {
      bits += storedBytes(L[key]) * 8;
      params += L[key].n * L[key].k;
    }
  }
  return bits / params;
}

// ---------------------------------------------------------------------------------------------
// The sweep

interface Config {
  readonly method: SweepMethod;
  readonly bits: number | null;
  readonly groupSize: number | null;
}

function plan(methods: readonly SweepMethod[], bits: readonly number[], groups: readonly number[]): Config[] {
  const out: Config[] = [];
  for (const method of methods) {
    if (method === 'fp32') {
      out.push({ method, bits: null, groupSize: null });
      continue;
    }
    for (const b of bits) {
      if (method === 'fp4' && b !== 4) continue; // E2M1 has exactly 4 bits
      for (const g of groups) if (method !== 'nfl-flute' || g === HEADLINE_GROUP) out.push({ method, bits: b, groupSize: g });
    }
  }
  return out;
}

export async function runSweep(config: LlamaConfig, dense: LlamaWeights, tokenizer: Tokenizer, texts: readonly SweepText[], opts: SweepOptions): Promise<SweepResult> {
  const methods = opts.methods ?? SWEEP_METHODS;
  const bits = opts.bits ?? [2, 3, 4];
  const groups = opts.groupSizes ?? [16, 32, 64];
  const window = opts.window ?? 256;
  const maxWindows = opts.maxWindows ?? SWEEP_WINDOWS;
  for (const m of methods) checkOption(SWEEP_METHODS.includes(m), 'methods', `a list of ${SWEEP_METHODS.join(', ')}`, m);
  for (const b of bits) checkOption(Number.isInteger(b) && b >= 1 && b <= 8, 'bits', 'integers from 1 to 8', b);
  for (const g of groups) checkOption(Number.isInteger(g) && g >= 1, 'group sizes', 'positive integers', g);
  checkOption(Number.isInteger(window) && window >= 2 && window <= config.seqLen, 'window', `an integer in 2..${config.seqLen}`, window);
  checkOption(Number.isInteger(maxWindows) && maxWindows >= 1, 'max windows', 'a positive integer', maxWindows);
  if ((methods.includes('nfl') || methods.includes('nfl-flute')) && !opts.calibTokens) throw new FluteError('E_OPTION', 'sweep: NFL needs calibration tokens (calibTokens)');
  const configs = plan(methods, bits, groups);
  const t0 = performance.now();
  const scored = texts.map((t) => ({ ...t, ids: evalTokens(tokenizer, t.text) })); // tokenized once for every row

  const rows: SweepRow[] = [];
  const nflRuns: SweepResult['nfl'][number][] = [];
  for (let i = 0; i < configs.length; i++) {
    const c = configs[i];
    const label = c.method === 'fp32' ? 'fp32' : `${METHOD_LABEL[c.method]} b=${c.bits} g=${c.groupSize}`;
    opts.onProgress?.(i, configs.length, label);
    let weights = dense;
    if (c.method !== 'fp32') {
      const q = { bits: c.bits!, groupSize: c.groupSize!, tableKind: METHOD_TABLE[c.method] };
      let learned: NflResult | undefined;
      if (c.method === 'nfl' || c.method === 'nfl-flute') {
        const recipe = c.method === 'nfl' ? opts.nfl : { ...NFL_FLUTE_RECIPE, ...opts.nflFlute };
        learned = await learnScales(config, dense, opts.calibTokens!, {
          ...recipe, ...q, signal: opts.signal,
          onStep: (s, n, loss) => opts.onProgress?.(i, configs.length, `${label}: NFL step ${s}/${n} loss ${loss.toFixed(3)}`),
        });
        const L = learned.losses;
        const k = Math.max(1, Math.min(16, Math.floor(L.length / 4))); // mean of the first and last quarter (at most 16 steps)
        const mean = (a: Float64Array) => a.reduce((s, v) => s + v, 0) / a.length;
        nflRuns.push({ method: c.method, bits: q.bits, groupSize: q.groupSize, seconds: learned.seconds, steps: learned.steps, firstLoss: L.length ? mean(L.subarray(0, k)) : NaN, lastLoss: L.length ? mean(L.subarray(L.length - k)) : NaN });
      }
      const scales = learned?.scales;
      weights = quantizeLlamaWeights(dense, { ...q, scalesFor: scales ? (name) => scales.get(name) : undefined });
    }
    const bitsPerWeight = c.method === 'fp32' ? 32 : decoderBitsPerWeight(weights);
    const model = new LlamaModel(config, weights, opts.backend, { maxBatch: window, seqLen: window });
    try {
      for (const t of scored) {
        const r = await perplexityOfTokens(model, t.ids, { window, maxWindows, spread: true, signal: opts.signal });
        rows.push({
          method: c.method, bits: c.bits, groupSize: c.groupSize, bitsPerWeight, text: t.name, perplexity: r.perplexity, nll: r.nll, tokens: r.tokens,
          windowNll: Array.from(r.windowNll), windowTokens: Array.from(r.windowTokens),
        });
      }
    } finally {
      model.dispose();
    }
  }
  opts.onProgress?.(configs.length, configs.length, 'done');
  return { rows, nfl: nflRuns, seconds: (performance.now() - t0) / 1000, window, maxWindows };
}

// ---------------------------------------------------------------------------------------------
// QUALITY.md

export interface QualityReportInfo {
  readonly command: string; // the command line that made the report
  readonly model: string;
  readonly backend: string;
  readonly texts: readonly SweepText[];
  readonly calibration: string; // what NFL calibrated on, in words
  readonly nflRecipe: string; // NFL's settings, in words
  readonly nflFluteRecipe?: string; // the 'nfl-flute' rows' settings, in words
  readonly notes?: readonly string[]; // extra paragraphs (the precision argument, the recipe's argument)
}

const fmt = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '—' : x >= 1000 ? x.toFixed(0) : x >= 100 ? x.toFixed(1) : x.toFixed(3));

function find(rows: readonly SweepRow[], method: SweepMethod, bits: number | null, g: number | null, text: string): SweepRow | undefined {
  return rows.find((r) => r.method === method && r.bits === bits && r.groupSize === g && r.text === text);
}

/** Share of NF RTN's perplexity gap to fp32 that NFL closes: (nf - nfl) / (nf - fp32). */
export function gapClosed(rows: readonly SweepRow[], bits: number, g: number, text: string, method: SweepMethod = 'nfl'): number | undefined {
  const fp = find(rows, 'fp32', null, null, text)?.perplexity;
  const nf = find(rows, 'nf', bits, g, text)?.perplexity;
  const nfl = find(rows, method, bits, g, text)?.perplexity;
  if (fp === undefined || nf === undefined || nfl === undefined || nf === fp) return undefined;
  return (nf - nfl) / (nf - fp);
}

/** A row's perplexity over some of its windows (`pick`: window indices, repeats allowed), token-weighted. */
function perplexityOver(row: SweepRow, pick: Int32Array): number {
  let nll = 0;
  let tokens = 0;
  for (const w of pick) {
    nll += row.windowNll[w] * row.windowTokens[w];
    tokens += row.windowTokens[w];
  }
  return Math.exp(nll / tokens);
}

/**
 * One standard error of a statistic of several rows of one text: the standard deviation of the
 * statistic over 1000 resamples of the scored windows with replacement, the same windows for every
 * row (they were scored on the same text, so their errors are paired). The seed is fixed, so a report
 * is reproducible. undefined with fewer than 2 windows.
 */
export function bootstrapStdErr(rows: readonly SweepRow[], stat: (perplexities: number[]) => number, resamples = 1000): number | undefined {
  const n = rows[0]?.windowNll.length ?? 0;
  if (n < 2 || rows.some((r) => r.windowNll.length !== n)) return undefined;
  const next = mulberry32(20261123);
  const pick = new Int32Array(n);
  let sum = 0;
  let sumSq = 0;
  for (let i = 0; i < resamples; i++) {
    for (let j = 0; j < n; j++) pick[j] = Math.floor(next() * n);
    const v = stat(rows.map((r) => perplexityOver(r, pick)));
    sum += v;
    sumSq += v * v;
  }
  const mean = sum / resamples;
  return Math.sqrt(Math.max(0, sumSq / resamples - mean * mean));
}

/** gapClosed with its bootstrap standard error. */
function gapClosedWithError(rows: readonly SweepRow[], bits: number, g: number, text: string): { value: number; stdErr: number | undefined } | undefined {
  const value = gapClosed(rows, bits, g, text);
  const fp = find(rows, 'fp32', null, null, text);
  const nf = find(rows, 'nf', bits, g, text);
  const nfl = find(rows, 'nfl', bits, g, text);
  if (value === undefined || !fp || !nf || !nfl) return undefined;
  return { value, stdErr: bootstrapStdErr([fp, nf, nfl], ([f, q, l]) => (q - l) / (q - f)) };
}

const pm = (stdErr: number | undefined, scale: number, digits: number, unit: string) => (stdErr === undefined ? '' : ` (+-${(stdErr * scale).toFixed(digits)}${unit}, one standard error over windows)`);

/** The markdown report: headline at g = 32, the acceptance checks, then every row. */
export function renderQualityMarkdown(result: SweepResult, info: QualityReportInfo): string {
  const { rows } = result;
  const texts = info.texts.map((t) => t.name);
  const inDomain = texts[0];
  const out: string[] = [];
  out.push('# Quality: perplexity by method, bit width and group size', '');
  out.push('Generated by:', '', '```sh', info.command, '```', '');
  out.push(`- Model: ${info.model}. Backend: ${info.backend}. Sweep time: ${result.seconds.toFixed(0)} s.`);
  for (const t of info.texts) {
    const any = rows.find((r) => r.text === t.name);
    const fpRow = find(rows, 'fp32', null, null, t.name);
    // how far a perplexity of this sample may sit from the whole text's, from the spread between windows
    const se = fpRow ? bootstrapStdErr([fpRow], ([p]) => Math.log(p)) : undefined;
    out.push(`- Scored text "${t.name}": ${t.source}; ${any?.windowNll.length ?? '?'} windows of ${result.window} tokens spread evenly over it, each from an empty context (${any?.tokens ?? '?'} scored tokens)${se === undefined ? '' : `: the fp32 perplexity here estimates the whole text's to +-${(100 * se).toFixed(1)}% (one standard error)`}.`);
  }
  out.push(`- NFL calibration: ${info.calibration}`);
  out.push(`- NFL recipe: ${info.nflRecipe}.`);
  if (info.nflFluteRecipe && rows.some((r) => r.method === 'nfl-flute')) out.push(`- "NFL, FLUTE recipe" rows: ${info.nflFluteRecipe}, as flute/integrations/learnable.py runs it.`);
  out.push('- Bits per weight: storage of the quantized decoder linears (b-bit indices, one f16 scale per group, the f32 table), as the checkpoint stores them; the embedding, norms and output layer stay fp32 in every row.');
  for (const n of info.notes ?? []) out.push(`- ${n}`);
  out.push('');

  // Headline: g = 32
  const headlineG = HEADLINE_GROUP;
  const bitsList = [...new Set(rows.filter((r) => r.bits !== null).map((r) => r.bits as number))].sort((a, b) => b - a);
  if (rows.some((r) => r.groupSize === headlineG)) {
    out.push(`## Headline (g = ${headlineG})`, '');
    out.push(`| method | bits | bits/weight | ${texts.map((t) => `${t} ppl`).join(' | ')} | NF gap closed by NFL (${inDomain}) |`);
    out.push(`|---|---:|---:|${texts.map(() => '---:|').join('')}---:|`);
    const fpRow = (t: string) => find(rows, 'fp32', null, null, t);
    if (fpRow(inDomain)) out.push(`| fp32 | 32 | 32 | ${texts.map((t) => fmt(fpRow(t)?.perplexity)).join(' | ')} | |`);
    for (const b of bitsList) {
      for (const m of ['nf', 'nfl', 'nfl-flute'] as const) {
        const r0 = find(rows, m, b, headlineG, inDomain);
        if (!r0) continue;
        const closed = m === 'nf' ? undefined : gapClosed(rows, b, headlineG, inDomain, m);
        out.push(`| ${METHOD_LABEL[m]} | ${b} | ${r0.bitsPerWeight.toFixed(3)} | ${texts.map((t) => fmt(find(rows, m, b, headlineG, t)?.perplexity)).join(' | ')} | ${closed === undefined ? '' : `${(closed * 100).toFixed(1)}%`} |`);
      }
    }
    out.push('');
    // The acceptance checks of the NFL work, computed from the rows.
    const checks: string[] = [];
    for (const b of [3, 2]) {
      const c = gapClosedWithError(rows, b, headlineG, inDomain);
      if (c !== undefined) checks.push(`- NFL closes at least half of NF RTN's gap to fp32 at ${b} bits, g = ${headlineG}, on ${inDomain}: ${(c.value * 100).toFixed(1)}% closed${pm(c.stdErr, 100, 1, ' points')}, **${c.value >= 0.5 ? 'met' : 'not met'}**.`);
    }
    const fpIn = fpRow(inDomain);
    const nfl4 = find(rows, 'nfl', 4, headlineG, inDomain);
    if (fpIn && nfl4) {
      const rel = nfl4.perplexity / fpIn.perplexity - 1;
      const se = bootstrapStdErr([fpIn, nfl4], ([f, l]) => l / f - 1);
      checks.push(`- NFL at 4 bits, g = ${headlineG}, within 2% of fp32 on ${inDomain}: ${Math.abs(rel * 100).toFixed(2)}% ${rel >= 0 ? 'above' : 'below'} fp32${pm(se, 100, 2, '%')}, **${rel <= 0.02 ? 'met' : 'not met'}**.`);
    }
    if (checks.length) out.push('Checks:', '', ...checks, '');
  }

  // Every row
  out.push('## All rows', '');
  out.push(`| method | bits | g | bits/weight | ${texts.map((t) => `${t} ppl`).join(' | ')} | ${texts.map((t) => `${t} NLL`).join(' | ')} |`);
  out.push(`|---|---:|---:|---:|${texts.map(() => '---:|').join('')}${texts.map(() => '---:|').join('')}`);
  const seen = new Set<string>();
  for (const r of rows) {
    const key = `${r.method}/${r.bits}/${r.groupSize}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const per = texts.map((t) => find(rows, r.method, r.bits, r.groupSize, t));
    out.push(`| ${METHOD_LABEL[r.method]} | ${r.bits ?? 32} | ${r.groupSize ?? '—'} | ${r.bitsPerWeight.toFixed(3)} | ${per.map((p) => fmt(p?.perplexity)).join(' | ')} | ${per.map((p) => (p ? p.nll.toFixed(4) : '—')).join(' | ')} |`);
  }
  out.push('');
  if (result.nfl.length) {
    out.push('## NFL runs', '');
    out.push('| recipe | bits | g | steps | seconds | mean training loss, first quarter | mean training loss, last quarter |');
    out.push('|---|---:|---:|---:|---:|---:|---:|');
    for (const n of result.nfl) out.push(`| ${METHOD_LABEL[n.method]} | ${n.bits} | ${n.groupSize} | ${n.steps} | ${n.seconds.toFixed(1)} | ${n.firstLoss.toFixed(4)} | ${n.lastLoss.toFixed(4)} |`);
    out.push('');
  }
  return out.join('\n');
}

/** Writes the report atomically: a temporary file in the same folder, then a rename. */
export async function writeQualityMarkdown(path: string, markdown: string): Promise<void> {
  const { writeFileAtomic } = await import('../format/atomic.js');
  try {
    await writeFileAtomic(path, [new TextEncoder().encode(markdown)]);
  } catch (e) {
    if (e instanceof FluteError) throw e;
    throw new FluteError('E_IO', `--out ${path}: cannot write in ${dirname(path)} (${(e as Error).message})`, { cause: e });
  }
}
