// The LLaMA forward pass in training mode (it keeps every activation the backward needs) and its
// hand-written backward, assembled from layers.ts. It computes the same function as
// src/model/llama.ts's LlamaModel.forward (tested on the bundled model), in f64, for one sequence
// starting at position 0. Which parameters get gradients is the caller's choice (TrainGrads).

import { FluteError } from '../errors.js';
import type { LlamaConfig } from '../model/config.js';
import { addBias } from '../model/llama.js';
import { LINEAR_KEYS, embeddingF32, type LlamaWeights } from '../model/weights.js';
import { dequantize, type Linear } from '../quant/linear.js';
import {
  addInPlace, attentionBackward, attentionForward, crossEntropyBackward, crossEntropyForward, encoderBackward, encoderForward,
  matmulBackward, matmulForward, rmsnormBackward, rmsnormForward, ropeBackward, ropeForward, ropeTables, swigluBackward, swigluForward,
  type AttentionShape, type F64, type RopeTables,
} from './layers.js';

export interface TrainLayer {
  attnNorm: F64; // [dim]
  wq: F64; // [qDim, dim]
  wk: F64; // [kvDim, dim]
  wv: F64; // [kvDim, dim]
  wo: F64; // [dim, qDim]
  ffnNorm: F64; // [dim]
  w1: F64; // [hiddenDim, dim] gate
  w2: F64; // [dim, hiddenDim] down
  w3: F64; // [hiddenDim, dim] up
  // q/k/v biases (config.qkvBias, Qwen2): constants added after the projections. Never trained, and an
  // added constant leaves every input gradient as it is, so backward() needs nothing for them.
  bq?: F64; // [qDim]
  bk?: F64; // [kvDim]
  bv?: F64; // [kvDim]
}

/** f64 weights. The arrays may be changed between steps (NFL rewrites the dequantized linears). */
export interface TrainWeights {
  tokenEmbedding: F64; // [vocab, dim]
  layers: TrainLayer[]; // [nLayers]
  finalNorm: F64; // [dim]
  output: F64; // [vocab, dim]; the same array as tokenEmbedding when tied
}

/** Gradient buffers, each optional: backward() fills only those given (and accumulates into them). */
export interface TrainGrads {
  tokenEmbedding?: F64; // [vocab, dim]
  layers?: Partial<TrainLayer>[]; // [nLayers]
  finalNorm?: F64; // [dim]
  output?: F64; // [vocab, dim]; pass the tokenEmbedding buffer again for a tied model's total gradient
}

const toF64 = (l: Linear): F64 => Float64Array.from(l.kind === 'dense' ? l.weight : dequantize(l));

/** f64 copies of a model's weights; quantized linears become their dequantized (f32 rule) values. */
export function trainWeightsFrom(w: LlamaWeights): TrainWeights {
  const tokenEmbedding = Float64Array.from(embeddingF32(w.tokenEmbedding));
  const tied = (w.output.kind === 'dense' && w.output.weight === w.tokenEmbedding) || w.output === w.tokenEmbedding;
  return {
    tokenEmbedding,
    layers: w.layers.map((L) => ({
      attnNorm: Float64Array.from(L.attnNorm), ffnNorm: Float64Array.from(L.ffnNorm),
      wq: toF64(L.wq), wk: toF64(L.wk), wv: toF64(L.wv), wo: toF64(L.wo), w1: toF64(L.w1), w2: toF64(L.w2), w3: toF64(L.w3),
      ...(L.bq && L.bk && L.bv ? { bq: Float64Array.from(L.bq), bk: Float64Array.from(L.bk), bv: Float64Array.from(L.bv) } : {}),
    })),
    finalNorm: Float64Array.from(w.finalNorm),
    output: tied ? tokenEmbedding : toF64(w.output),
  };
}

/** Zero-filled gradient buffers shaped like `w`, for the parameters `which` selects. */
export function zeroGradsLike(w: TrainWeights, which: { linears?: boolean; norms?: boolean; embedding?: boolean; output?: boolean }): TrainGrads {
  const z = (a: F64) => new Float64Array(a.length);
  return {
    tokenEmbedding: which.embedding ? z(w.tokenEmbedding) : undefined,
    layers: w.layers.map((L) => {
      const g: Partial<TrainLayer> = {};
      if (which.norms) Object.assign(g, { attnNorm: z(L.attnNorm), ffnNorm: z(L.ffnNorm) });
      if (which.linears) for (const key of LINEAR_KEYS) g[key] = z(L[key]);
      return g;
    }),
    finalNorm: which.norms ? z(w.finalNorm) : undefined,
    output: which.output ? z(w.output) : undefined,
  };
}

/** One layer's saved activations, each for up to maxT rows. */
interface LayerActs {
  readonly xIn: F64; // [T, dim] residual stream entering the block
  readonly rstd1: F64; // [T]
  readonly xb1: F64; // [T, dim] input_layernorm output (input of q/k/v)
  readonly q: F64; // [T, qDim] after RoPE
  readonly k: F64; // [T, kvDim] after RoPE
  readonly v: F64; // [T, kvDim]
  readonly att: F64; // [H, T, T] softmax probabilities
  readonly attOut: F64; // [T, qDim] attention output, input of o_proj
  readonly xMid: F64; // [T, dim] residual after attention
  readonly rstd2: F64; // [T]
  readonly xb2: F64; // [T, dim] post_attention_layernorm output (input of gate/up)
  readonly gate: F64; // [T, hiddenDim] gate_proj output, before silu
  readonly up: F64; // [T, hiddenDim] up_proj output
  readonly h: F64; // [T, hiddenDim] silu(gate) * up, input of down_proj
}

/**
 * Training-mode LLaMA for sequences of up to maxT tokens. forward(tokens, targets) returns the mean
 * next-token loss and keeps the activations; backward(grads) then accumulates dLoss/dparam into the
 * buffers in `grads`. Memory: O(nLayers * (T * (4 dim + 3 hiddenDim) + nHeads * T^2)) f64.
 */
export class TrainingLlama {
  readonly maxT: number;
  private T = 0; // rows of the last forward
  private tokens: Int32Array; // [maxT]
  private targets: Int32Array; // [maxT]
  private readonly acts: LayerActs[];
  private readonly xFinal: F64; // [maxT, dim] residual stream after the last block
  private readonly rstdF: F64; // [maxT]
  private readonly xbF: F64; // [maxT, dim] model.norm output
  /** Logits of the last forward, [T, vocab] (valid rows: the T of that call). */
  readonly logits: F64; // [maxT, vocab]
  private readonly probs: F64; // [maxT, vocab]
  private readonly rope: RopeTables;
  // backward scratch
  private readonly dx: F64; // [maxT, dim] gradient of the residual stream
  private readonly dxb: F64; // [maxT, dim]
  private readonly dq: F64; // [maxT, qDim]
  private readonly dk: F64; // [maxT, kvDim]
  private readonly dv: F64; // [maxT, kvDim]
  private readonly dAttOut: F64; // [maxT, qDim]
  private readonly dh: F64; // [maxT, hiddenDim]
  private readonly dGate: F64; // [maxT, hiddenDim]
  private readonly dUp: F64; // [maxT, hiddenDim]
  private readonly dLogits: F64; // [maxT, vocab]

  constructor(readonly config: LlamaConfig, readonly weights: TrainWeights, maxT: number) {
    const c = config;
    if (!Number.isInteger(maxT) || maxT < 1 || maxT > c.seqLen) {
      throw new FluteError('E_OPTION', `training sequence length: expected an integer in 1..${c.seqLen} (the model's context), got ${maxT}`);
    }
    this.maxT = maxT;
    const qDim = c.nHeads * c.headDim, kvDim = c.nKvHeads * c.headDim;
    const f = (n: number) => new Float64Array(n);
    this.tokens = new Int32Array(maxT);
    this.targets = new Int32Array(maxT);
    this.acts = Array.from({ length: c.nLayers }, () => ({
      xIn: f(maxT * c.dim), rstd1: f(maxT), xb1: f(maxT * c.dim), q: f(maxT * qDim), k: f(maxT * kvDim), v: f(maxT * kvDim),
      att: f(c.nHeads * maxT * maxT), attOut: f(maxT * qDim), xMid: f(maxT * c.dim), rstd2: f(maxT), xb2: f(maxT * c.dim),
      gate: f(maxT * c.hiddenDim), up: f(maxT * c.hiddenDim), h: f(maxT * c.hiddenDim),
    }));
    this.xFinal = f(maxT * c.dim);
    this.rstdF = f(maxT);
    this.xbF = f(maxT * c.dim);
    this.logits = f(maxT * c.vocabSize);
    this.probs = f(maxT * c.vocabSize);
    this.rope = ropeTables(maxT, c);
    this.dx = f(maxT * c.dim);
    this.dxb = f(maxT * c.dim);
    this.dq = f(maxT * qDim);
    this.dk = f(maxT * kvDim);
    this.dv = f(maxT * kvDim);
    this.dAttOut = f(maxT * qDim);
    this.dh = f(maxT * c.hiddenDim);
    this.dGate = f(maxT * c.hiddenDim);
    this.dUp = f(maxT * c.hiddenDim);
    this.dLogits = f(maxT * c.vocabSize);
  }

  // ---------------------------------------------------------------- forward

  /**
   * Runs tokens [T] from position 0 and returns the mean of -log p(targets[t] | tokens[0..t]) over t,
   * or NaN without targets (then only the logits are wanted).
   */
  forward(tokens: ArrayLike<number>, targets?: ArrayLike<number>): number {
    const c = this.config;
    const W = this.weights;
    const T = tokens.length;
    if (T < 1 || T > this.maxT) throw new FluteError('E_SHAPE', `training forward: expected 1..${this.maxT} tokens, got ${T}`);
    if (targets && targets.length !== T) throw new FluteError('E_SHAPE', `training forward: expected ${T} targets, got ${targets.length}`);
    for (let t = 0; t < T; t++) {
      const ok = (id: number) => Number.isInteger(id) && id >= 0 && id < c.vocabSize;
      if (!ok(tokens[t]) || (targets && !ok(targets[t]))) {
        throw new FluteError('E_OPTION', `training forward: token ${t}: expected ids in 0..${c.vocabSize - 1}, got ${tokens[t]} -> ${targets?.[t]}`);
      }
      this.tokens[t] = tokens[t];
      if (targets) this.targets[t] = targets[t];
    }
    this.T = T;
    const { dim, hiddenDim, nHeads, nKvHeads, headDim } = c;
    const qDim = nHeads * headDim, kvDim = nKvHeads * headDim;
    const shape: AttentionShape = { T, H: nHeads, Hkv: nKvHeads, hd: headDim };
    const interleaved = c.ropeLayout === 'interleaved';

    // Token embedding: x = E[tokens]                                   [T, dim]
    encoderForward(this.acts[0].xIn, tokens, W.tokenEmbedding, T, dim);
    for (let l = 0; l < c.nLayers; l++) {
      const a = this.acts[l];
      const L = W.layers[l];
      // Attention block: xb1 = rmsnorm(x); q, k, v = xb1 Wq^T, xb1 Wk^T, xb1 Wv^T; RoPE on q, k
      rmsnormForward(a.xb1, a.rstd1, a.xIn, L.attnNorm, T, dim, c.normEps);
      matmulForward(a.q, a.xb1, L.wq, T, dim, qDim);
      matmulForward(a.k, a.xb1, L.wk, T, dim, kvDim);
      matmulForward(a.v, a.xb1, L.wv, T, dim, kvDim);
      if (c.qkvBias) {
        if (!L.bq || !L.bk || !L.bv) throw new FluteError('E_NOT_FOUND', `training forward: layer ${l}: config.qkvBias is set but the q/k/v biases are missing`);
        addBias(a.q, L.bq, T);
        addBias(a.k, L.bk, T);
        addBias(a.v, L.bv, T);
      }
      ropeForward(a.q, T, nHeads, headDim, interleaved, this.rope);
      ropeForward(a.k, T, nKvHeads, headDim, interleaved, this.rope);
      attentionForward(a.attOut, a.att, a.q, a.k, a.v, shape);
      // xMid = x + attOut Wo^T                                          [T, dim]
      matmulForward(a.xMid, a.attOut, L.wo, T, qDim, dim);
      addInPlace(a.xMid, a.xIn, T * dim);
      // SwiGLU block: xb2 = rmsnorm(xMid); h = silu(xb2 W1^T) * (xb2 W3^T); xOut = xMid + h W2^T
      rmsnormForward(a.xb2, a.rstd2, a.xMid, L.ffnNorm, T, dim, c.normEps);
      matmulForward(a.gate, a.xb2, L.w1, T, dim, hiddenDim);
      matmulForward(a.up, a.xb2, L.w3, T, dim, hiddenDim);
      swigluForward(a.h, a.gate, a.up, T * hiddenDim);
      const xOut = l + 1 < c.nLayers ? this.acts[l + 1].xIn : this.xFinal;
      matmulForward(xOut, a.h, L.w2, T, hiddenDim, dim);
      addInPlace(xOut, a.xMid, T * dim);
    }
    // Final norm and classifier: logits = rmsnorm(x) Wout^T            [T, vocab]
    rmsnormForward(this.xbF, this.rstdF, this.xFinal, W.finalNorm, T, dim, c.normEps);
    matmulForward(this.logits, this.xbF, W.output, T, dim, c.vocabSize);
    if (!targets) return NaN;
    return crossEntropyForward(this.probs, this.logits, this.targets, T, c.vocabSize);
  }

  // ---------------------------------------------------------------- backward

  /** Accumulates d(mean loss of the last forward)/dparam into every buffer present in `g`. */
  backward(g: TrainGrads): void {
    const T = this.T;
    if (T === 0) throw new FluteError('E_SHAPE', 'training backward: call forward with targets first');
    const c = this.config;
    const W = this.weights;
    const { dim, hiddenDim, nHeads, nKvHeads, headDim, vocabSize } = c;
    const qDim = nHeads * headDim, kvDim = nKvHeads * headDim;
    const shape: AttentionShape = { T, H: nHeads, Hkv: nKvHeads, hd: headDim };
    const interleaved = c.ropeLayout === 'interleaved';
    const zero = (a: F64, n: number) => a.fill(0, 0, n);

    // Loss -> logits -> final norm -> residual stream gradient dx      [T, dim]
    zero(this.dLogits, T * vocabSize);
    crossEntropyBackward(this.dLogits, this.probs, this.targets, T, vocabSize);
    zero(this.dxb, T * dim);
    matmulBackward(this.dxb, g.output ?? null, this.dLogits, this.xbF, W.output, T, dim, vocabSize);
    zero(this.dx, T * dim);
    rmsnormBackward(this.dx, g.finalNorm ?? null, this.dxb, this.xFinal, W.finalNorm, this.rstdF, T, dim);

    for (let l = c.nLayers - 1; l >= 0; l--) {
      const a = this.acts[l];
      const L = W.layers[l];
      const G = g.layers?.[l] ?? {};
      // SwiGLU block. dx is the gradient of xOut = xMid + h W2^T, so it is also xMid's residual share.
      zero(this.dh, T * hiddenDim);
      matmulBackward(this.dh, G.w2 ?? null, this.dx, a.h, L.w2, T, hiddenDim, dim);
      zero(this.dGate, T * hiddenDim);
      zero(this.dUp, T * hiddenDim);
      swigluBackward(this.dGate, this.dUp, this.dh, a.gate, a.up, T * hiddenDim);
      zero(this.dxb, T * dim);
      matmulBackward(this.dxb, G.w1 ?? null, this.dGate, a.xb2, L.w1, T, dim, hiddenDim);
      matmulBackward(this.dxb, G.w3 ?? null, this.dUp, a.xb2, L.w3, T, dim, hiddenDim);
      rmsnormBackward(this.dx, G.ffnNorm ?? null, this.dxb, a.xMid, L.ffnNorm, a.rstd2, T, dim); // dx is now dL/dxMid

      // Attention block: xMid = xIn + attOut Wo^T
      zero(this.dAttOut, T * qDim);
      matmulBackward(this.dAttOut, G.wo ?? null, this.dx, a.attOut, L.wo, T, qDim, dim);
      zero(this.dq, T * qDim);
      zero(this.dk, T * kvDim);
      zero(this.dv, T * kvDim);
      attentionBackward(this.dq, this.dk, this.dv, this.dAttOut, a.att, a.q, a.k, a.v, shape);
      ropeBackward(this.dq, T, nHeads, headDim, interleaved, this.rope);
      ropeBackward(this.dk, T, nKvHeads, headDim, interleaved, this.rope);
      zero(this.dxb, T * dim);
      matmulBackward(this.dxb, G.wq ?? null, this.dq, a.xb1, L.wq, T, dim, qDim);
      matmulBackward(this.dxb, G.wk ?? null, this.dk, a.xb1, L.wk, T, dim, kvDim);
      matmulBackward(this.dxb, G.wv ?? null, this.dv, a.xb1, L.wv, T, dim, kvDim);
      rmsnormBackward(this.dx, G.attnNorm ?? null, this.dxb, a.xIn, L.attnNorm, a.rstd1, T, dim); // dx is now dL/dxIn
    }
    if (g.tokenEmbedding) encoderBackward(g.tokenEmbedding, this.dx, this.tokens, T, dim);
  }
}

