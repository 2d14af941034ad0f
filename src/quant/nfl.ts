// Learned NormalFloat (NFL; FLUTE section 3.3, flute/integrations/learnable.py): start from RTN's
// absmax scales and learn one scale per group by Adam on the whole model's next-token loss over
// calibration text. The table stays fixed, the indices are recomputed from the current scales at
// every step, and the gradient reaches the scales through the multiply only (straight-through):
//   W^[n, k] = T[idx[n, k]] * s[n, j],   dL/ds[n, j] = sum_{k in group j} dL/dW^[n, k] * T[idx[n, k]].
// The result is an ordinary checkpoint (quantize-model.ts's scalesFor hook). The forward/backward
// pass is src/train's; tokenizing and splitting the text is the caller's (train/data.ts).

import { FluteError, checkOption } from '../errors.js';
import { evalTokens } from '../eval/perplexity.js';
import { roundToF16 } from '../format/half.js';
import type { LlamaConfig } from '../model/config.js';
import { readModelTokenizer, type OpenedModel } from '../model/open.js';
import { LAYER_LINEARS, LINEAR_KEYS, loadLlamaWeights, type LlamaWeights } from '../model/weights.js';
import { Adam } from '../train/adam.js';
import { calibrationSequences } from '../train/data.js';
import type { F64 } from '../train/layers.js';
import { TrainingLlama, trainWeightsFrom, zeroGradsLike, type TrainGrads } from '../train/model.js';
import { groupsPerRow } from './linear.js';
import { quantizeModel, type QuantizeModelOptions, type QuantizeModelReport } from './quantize-model.js';
import { NearestEntry, quantizeRtn, type QuantizeOptions } from './rtn.js';
import { buildTable } from './tables.js';
import { mulberry32 } from '../rng.js';

/** How the learned scale is parametrized for Adam. */
export type ScaleParam =
  | 'absolute' // Adam on s itself (flute/integrations/learnable.py); a step moves s by about lr
  | 'relative'; // Adam on u with s = s0 * u, u from 1 (the paper's sigma~/sigma); a step moves s by about lr * s0

/** The learning rate over the steps. */
export type LrSchedule = 'constant' | 'linear'; // linear: lr * (1 - step/steps), to 0 at the end

export interface NflRecipe {
  /** Calibration sequences, or 'all': every full sequence the calibration text holds (at most MAX_ALL_SEQUENCES). */
  readonly sequences: number | 'all';
  readonly length: number;
  readonly lr: number;
  readonly param: ScaleParam;
  readonly schedule: LrSchedule;
  readonly steps?: number;
}

/** The cap on sequences: 'all', so a large --calib file cannot turn the default into an hours-long run. */
export const MAX_ALL_SEQUENCES = 1024;

/** FLUTE's recipe as its code runs it: Adam on the scales at 1e-4, constant, one pass over 128 windows. */
export const NFL_FLUTE_RECIPE: NflRecipe = { sequences: 128, length: 256, lr: 1e-4, param: 'absolute', schedule: 'constant' };

/**
 * The default: one pass at batch 1 (FLUTE's) over every 256-token sequence of the calibration text
 * (297 for the bundled split; FLUTE takes 128), with the paper's relative parametrization at lr 1e-2
 * decaying linearly. Why not 1e-4 on absolute scales: an absolute step of 1e-4 is ~0.2% of a LLaMA-3
 * group scale (~0.05) but ~0.04% of a stories260K one (median ~0.28), and there FLUTE's recipe
 * closes 16% of NF3 g32's gap to fp32. Why all the text rather than 128 sequences: a batch-1 gradient
 * of a scale is mostly noise, and on a validation split of the calibration text the extra steps took
 * NF3 g32 from ~49% of the gap closed to ~56%, seed means (QUALITY.md has the trials; a larger
 * calibration part, with 1024 steps, scored worse on the evaluation text).
 */
export const NFL_DEFAULTS: NflRecipe & { readonly seed: number } = {
  sequences: 'all',
  length: 256, // tokens per sequence; FLUTE uses 2048, stories260K's whole context is 512
  lr: 1e-2,
  param: 'relative',
  schedule: 'linear',
  seed: 0,
};

/** One line saying what a recipe is, for help and reports. */
export function describeRecipe(r: Partial<NflRecipe>): string {
  const d = { ...NFL_DEFAULTS, ...r };
  const seqs = d.sequences === 'all' ? `all the sequences of ${d.length} tokens in the calibration text (at most ${MAX_ALL_SEQUENCES})` : `${d.sequences} sequences of ${d.length} tokens`;
  const steps = d.steps === undefined && d.sequences === 'all' ? 'one Adam step per sequence' : `${d.steps ?? d.sequences} Adam steps`;
  return `${steps} at batch 1 over ${seqs}, ${d.param} scales, lr ${d.lr} ${d.schedule === 'linear' ? 'decaying linearly to 0' : 'constant'}`;
}

export interface NflOptions extends QuantizeOptions {
  /** Calibration sequences, or 'all' (the default): every full sequence in the text, up to MAX_ALL_SEQUENCES. */
  readonly sequences?: number | 'all';
  /** Tokens per sequence, 2..model context + 1 (default 256). */
  readonly length?: number;
  /** Adam steps at batch 1 (default: one pass, = sequences; more cycle through the sequences again). */
  readonly steps?: number;
  /** Adam learning rate (default 1e-2 on relative scales; FLUTE's code: 1e-4 on absolute ones). */
  readonly lr?: number;
  /** What Adam updates (default 'relative'). */
  readonly param?: ScaleParam;
  /** Learning-rate schedule (default 'linear'; FLUTE's is constant). */
  readonly schedule?: LrSchedule;
  /** Seeds the order in which each pass visits the sequences (default 0). */
  readonly seed?: number;
  /** After each step, with that step's training loss (nats/token, before its update). */
  readonly onStep?: (step: number, steps: number, loss: number) => void;
  /** Checked between steps; aborting throws E_ABORTED. */
  readonly signal?: AbortSignal;
}

// ---------------------------------------------------------------------------------------------
// The trainer: scales as parameters, the straight-through gradient

/** One quantized linear layer's learnable state. */
export interface NflLayer {
  readonly name: string; // "model.layers.0.self_attn.q_proj.weight"
  readonly n: number;
  readonly k: number;
  readonly groups: number; // ceil(K / g)
  readonly weight: Float32Array; // [N, K] the frozen original
  readonly scales: F64; // [N, G] the parameters, initialized to RTN's (f16-rounded) absmax scales
  readonly grad: F64; // [N, G] dL/ds of the last lossAndGrad
  readonly idx: Uint8Array; // [N, K] table indices from the current scales
  readonly wHat: F64; // [N, K] the dequantized weight T[idx] * s the model runs with (shared with it)
  readonly dW: F64; // [N, K] dL/dW^ of the last lossAndGrad
}

/**
 * Holds the f64 training model whose decoder linears are the quantized W^, and the scales. Each
 * lossAndGrad runs forward and backward on one sequence and leaves dL/ds in each layer's grad;
 * step() applies Adam. The caller decides when indices are recomputed (syncWeights).
 */
export class NflTrainer {
  readonly layers: NflLayer[];
  readonly model: TrainingLlama;
  private readonly table: Float32Array; // [2^b]
  private readonly nearest: NearestEntry;
  private readonly zeroIdx: number;
  private readonly grads: TrainGrads;
  private readonly adam: Adam;
  private readonly param: ScaleParam;
  private readonly s0: F64[]; // [layers][N*G] the initial (RTN) scales
  private readonly u: F64[]; // [layers][N*G] relative parameters s / s0 (param 'relative')
  private readonly uGrad: F64[]; // [layers][N*G] dL/du = s0 dL/ds

  constructor(readonly config: LlamaConfig, weights: LlamaWeights, readonly opts: NflOptions & { readonly maxT: number }) {
    const { bits, groupSize } = opts;
    checkOption(Number.isInteger(groupSize) && groupSize >= 1, 'group size', 'a positive integer', groupSize);
    this.table = buildTable(opts.tableKind, bits, opts.tableValues, 'table');
    this.nearest = new NearestEntry(this.table);
    this.zeroIdx = this.nearest.find(0);
    const tw = trainWeightsFrom(weights);
    this.model = new TrainingLlama(config, tw, opts.maxT);
    this.grads = zeroGradsLike(tw, { linears: true });
    this.layers = [];
    weights.layers.forEach((L, l) => {
      for (const key of LINEAR_KEYS) {
        const lin = L[key];
        const name = `model.layers.${l}.${LAYER_LINEARS[key]}`;
        if (lin.kind !== 'dense') throw new FluteError('E_OPTION', `NFL: ${name} is already quantized; learn scales from the dense model`);
        const { layer } = quantizeRtn(lin.weight, lin.n, lin.k, opts, name);
        const groups = groupsPerRow(lin.k, groupSize);
        this.layers.push({
          name, n: lin.n, k: lin.k, groups, weight: lin.weight, scales: Float64Array.from(layer.scales), grad: new Float64Array(lin.n * groups),
          idx: new Uint8Array(lin.n * lin.k), wHat: tw.layers[l][key], dW: this.grads.layers![l][key]!,
        });
      }
    });
    this.param = opts.param ?? NFL_DEFAULTS.param;
    checkOption(this.param === 'absolute' || this.param === 'relative', 'param', '"absolute" or "relative"', this.param);
    this.s0 = this.layers.map((x) => Float64Array.from(x.scales));
    this.u = this.layers.map((x) => new Float64Array(x.scales.length).fill(1));
    this.uGrad = this.layers.map((x) => new Float64Array(x.scales.length));
    const lr = opts.lr ?? NFL_DEFAULTS.lr;
    this.adam = new Adam(this.param === 'relative' ? this.u : this.layers.map((x) => x.scales), { lr });
    this.syncWeights();
  }

  /**
   * Writes W^ = T[idx] * s into the model. With recomputeIndices (every training step, as FLUTE)
   * idx = nearest table entry to w / s first; without, the indices stay as they are, which makes the
   * loss an exactly linear function of each scale (the finite-difference test uses this).
   */
  syncWeights(recomputeIndices = true): void {
    const { table, nearest, zeroIdx } = this;
    const g = this.opts.groupSize;
    for (const L of this.layers) {
      for (let r = 0; r < L.n; r++) {
        for (let j = 0; j < L.groups; j++) {
          const s = L.scales[r * L.groups + j];
          const end = r * L.k + Math.min(L.k, (j + 1) * g);
          for (let i = r * L.k + j * g; i < end; i++) {
            if (recomputeIndices) L.idx[i] = s === 0 ? zeroIdx : nearest.find(L.weight[i] / s);
            L.wHat[i] = table[L.idx[i]] * s;
          }
        }
      }
    }
  }

  /** The mean next-token loss of one sequence (tokens[t] predicts tokens[t+1]) with the current W^. */
  loss(seq: ArrayLike<number>): number {
    const n = seq.length - 1;
    return this.model.forward(subarrayOf(seq, 0, n), subarrayOf(seq, 1, n + 1));
  }

  /** loss(seq), and each layer's grad = dL/ds by the straight-through rule. */
  lossAndGrad(seq: ArrayLike<number>): number {
    for (const L of this.layers) L.dW.fill(0);
    const loss = this.loss(seq);
    this.model.backward(this.grads);
    const g = this.opts.groupSize;
    for (const L of this.layers) {
      for (let r = 0; r < L.n; r++) {
        for (let j = 0; j < L.groups; j++) {
          let acc = 0;
          const end = r * L.k + Math.min(L.k, (j + 1) * g);
          for (let i = r * L.k + j * g; i < end; i++) acc += L.dW[i] * this.table[L.idx[i]];
          L.grad[r * L.groups + j] = acc;
        }
      }
    }
    return loss;
  }

  /** One Adam step on every layer's scales from their current grad, at learning rate lr (default: the option). */
  step(lr?: number): void {
    this.adam.lr = lr ?? this.opts.lr ?? NFL_DEFAULTS.lr;
    if (this.param === 'absolute') {
      this.adam.step(this.layers.map((x) => x.grad));
      return;
    }
    // s = s0 u, so dL/du = s0 dL/ds; Adam moves u, and s follows.
    this.layers.forEach((L, a) => {
      const s0 = this.s0[a], g = this.uGrad[a];
      for (let i = 0; i < g.length; i++) g[i] = s0[i] * L.grad[i];
    });
    this.adam.step(this.uGrad);
    this.layers.forEach((L, a) => {
      const s0 = this.s0[a], u = this.u[a];
      for (let i = 0; i < u.length; i++) L.scales[i] = s0[i] * u[i];
    });
  }

  /** The learned scales by weight name, rounded to the checkpoint's scale dtype. */
  exportScales(): Map<string, Float32Array> {
    const f16 = (this.opts.scaleDtype ?? 'f16') === 'f16';
    return new Map(this.layers.map((L) => [L.name, Float32Array.from(L.scales, (s) => (f16 ? roundToF16(s) : Math.fround(s)))]));
  }
}

function subarrayOf(a: ArrayLike<number>, from: number, to: number): ArrayLike<number> {
  return a instanceof Int32Array ? a.subarray(from, to) : Array.prototype.slice.call(a, from, to);
}

// ---------------------------------------------------------------------------------------------
// learnScales: the FLUTE recipe

export interface NflResult {
  /** Learned scales by weight name, [N, ceil(K/g)], rounded to the scale dtype: pass to scalesFor. */
  readonly scales: Map<string, Float32Array>;
  readonly losses: Float64Array; // [steps] training loss of each step, before its update
  readonly steps: number;
  readonly sequences: number;
  readonly length: number;
  readonly lr: number;
  readonly param: ScaleParam;
  readonly schedule: LrSchedule;
  readonly seconds: number;
}

/**
 * Learns per-group scales for every decoder linear of a dense model from a calibration token stream
 * (tokens as eval/perplexity.ts evalTokens makes them). Adam at batch 1: step i trains on one
 * sequence; each pass over the sequences visits them in a seeded random order.
 */
export async function learnScales(config: LlamaConfig, weights: LlamaWeights, calibTokens: ArrayLike<number>, opts: NflOptions): Promise<NflResult> {
  const length = opts.length ?? NFL_DEFAULTS.length;
  const asked = opts.sequences ?? NFL_DEFAULTS.sequences;
  // 'all' with too little text for even one sequence falls through to calibrationSequences' error.
  const count = asked === 'all' ? Math.max(1, Math.min(MAX_ALL_SEQUENCES, Math.floor(calibTokens.length / Math.max(1, length)))) : asked;
  const steps = opts.steps ?? count;
  const lr = opts.lr ?? NFL_DEFAULTS.lr;
  checkOption(Number.isInteger(length) && length >= 2 && length - 1 <= config.seqLen, 'calibration length', `an integer in 2..${config.seqLen + 1} (the model's context + 1)`, length);
  checkOption(Number.isInteger(steps) && steps >= 0, 'steps', 'an integer >= 0', steps);
  checkOption(Number.isFinite(lr) && lr > 0, 'lr', 'a positive number', lr);
  const seqs = calibrationSequences(calibTokens, count, length);
  const t0 = performance.now();
  const trainer = new NflTrainer(config, weights, { ...opts, lr, maxT: length - 1 });
  const random = mulberry32(opts.seed ?? NFL_DEFAULTS.seed); // the order of the sequences
  const losses = new Float64Array(steps);
  const schedule = opts.schedule ?? NFL_DEFAULTS.schedule;
  checkOption(schedule === 'constant' || schedule === 'linear', 'schedule', '"constant" or "linear"', schedule);
  let order: number[] = [];
  for (let step = 0; step < steps; step++) {
    await yieldAndCheck(opts.signal);
    if (step % count === 0) order = shuffled(count, random);
    trainer.syncWeights(); // indices from the current scales, as FLUTE recomputes them every step
    losses[step] = trainer.lossAndGrad(seqs[order[step % count]]);
    trainer.step(schedule === 'linear' ? lr * (1 - step / steps) : lr);
    opts.onStep?.(step + 1, steps, losses[step]);
  }
  return { scales: trainer.exportScales(), losses, steps, sequences: count, length, lr, param: opts.param ?? NFL_DEFAULTS.param, schedule, seconds: (performance.now() - t0) / 1000 };
}

function shuffled(n: number, random: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** A macrotask yield (so an abort or a redraw can run), then E_ABORTED if the signal fired. */
async function yieldAndCheck(signal: AbortSignal | undefined): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  if (signal?.aborted) throw new FluteError('E_ABORTED', 'NFL: aborted by the caller', { cause: signal.reason });
}

// ---------------------------------------------------------------------------------------------
// The whole command: learn, then write the checkpoint

export interface NflModelOptions extends NflOptions, Omit<QuantizeModelOptions, 'scalesFor' | 'signal'> {
  /** The calibration text (the caller reads the file; see train/data.ts for the bundled split). */
  readonly calibText: string;
  /** Names the calibration text in errors. */
  readonly calibName?: string;
}

/** Learns the scales of a dense model file, then writes an ordinary checkpoint with them. */
export async function quantizeModelNfl(src: OpenedModel, outPath: string, opts: NflModelOptions): Promise<{ report: QuantizeModelReport; nfl: NflResult; calibTokens: number }> {
  if (src.quantized.size > 0) {
    throw new FluteError('E_OPTION', `${src.file}: already quantized (${src.quantized.size} quantized layers); learn NFL scales from the original dense model`);
  }
  buildTable(opts.tableKind, opts.bits, opts.tableValues, 'table'); // bad options fail before any work
  const tokenizer = await readModelTokenizer(src);
  const tokens = evalTokens(tokenizer, opts.calibText);
  const weights = await loadLlamaWeights(src.tensors, src.config);
  let nfl: NflResult;
  try {
    nfl = await learnScales(src.config, weights, tokens, opts);
  } catch (e) {
    // Name the calibration file in the one error the user can fix by giving more text.
    if (e instanceof FluteError && e.code === 'E_OPTION' && opts.calibName && e.message.startsWith('calibration text')) {
      throw new FluteError('E_OPTION', e.message.replace('calibration text', `--calib ${opts.calibName}`));
    }
    throw e;
  }
  const scales = nfl.scales;
  const report = await quantizeModel(src, outPath, { ...opts, signal: opts.signal, scalesFor: (name) => scales.get(name) });
  return { report, nfl, calibTokens: tokens.length };
}
