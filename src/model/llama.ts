// The LLaMA forward pass (llama2.c run.c `forward`, batched): Config + Weights in, prepared once on a
// kernel backend; RunState holds the KV cache and scratch, allocated once. Every linear layer is one
// backend.matmul over the whole batch; SwiGLU and attention run in cpu-ops.ts (wasm SIMD, JS loops as
// fallback); the rest is plain loops here. Sampling is elsewhere.

import { FluteError } from '../errors.js';
import type { KernelBackend, MatmulOptions, PreparedLinear } from '../kernels/types.js';
import { stackRows, validateQuantizedLinear, type ComputeType, type Linear } from '../quant/linear.js';
import type { LlamaConfig, RopeScaling } from './config.js';
import { CpuOps, attentionJs, attentionScratchFloats, swigluJs } from './cpu-ops.js';
import { LAYER_LINEARS, STACKED_PROJECTIONS, embeddingRow, type EmbeddingTable, type LlamaWeights } from './weights.js';

export interface LlamaModelOptions {
  /** Most tokens per forward chunk: longer inputs run in chunks of this size. Default 64. */
  readonly maxBatch?: number;
  /** Cap on the context (and KV cache) length; default and maximum config.seqLen. */
  readonly seqLen?: number;
  /** Kernel compute type for quantized layers ('f16' rounds like FLUTE). Default 'f32'. */
  readonly computeType?: ComputeType;
}

export interface ForwardOptions {
  /** Return the logits of every input token [M, vocab] instead of only the last [vocab]. */
  readonly allLogits?: boolean;
}

/**
 * Projections of one input: [W_0; W_1; ...] stacked into one linear (quant/linear.ts stackRows: one
 * matmul, one activation quantization and one thread dispatch instead of several), or the parts one
 * by one when their formats differ.
 */
type Projections = readonly PreparedLinear[]; // [stacked] or [part 0, part 1, ...]

interface PreparedLayer {
  readonly attnNorm: Float32Array; // [dim]
  readonly qkv: Projections; // wq [qDim, dim], wk [kvDim, dim], wv [kvDim, dim]
  readonly wo: PreparedLinear; // [dim, qDim]
  readonly ffnNorm: Float32Array; // [dim]
  readonly gateUp: Projections; // w1 [hiddenDim, dim] gate, w3 [hiddenDim, dim] up
  readonly w2: PreparedLinear; // [dim, hiddenDim] down
  readonly bq?: Float32Array; // [qDim] q/k/v biases (config.qkvBias)
  readonly bk?: Float32Array; // [kvDim]
  readonly bv?: Float32Array; // [kvDim]
}

const NO_LOGITS = new Float32Array(0);

/** Exact-length views of the matmul inputs for a chunk of m rows: backends require x.length == m*K. */
interface ChunkViews {
  readonly xb: Float32Array; // [m, dim]
  readonly att: Float32Array; // [m, qDim]
  readonly hb: Float32Array; // [m, hiddenDim]
}

/** Scratch and KV cache (run.c RunState); sized for `maxBatch` rows and `seqLen` positions. */
class RunState {
  readonly x: Float32Array; // [B, dim] residual stream
  readonly xb: Float32Array; // [B, dim] normalized input of a block
  readonly q: Float32Array; // [B, qDim]
  readonly k: Float32Array; // [B, kvDim]
  readonly v: Float32Array; // [B, kvDim]
  readonly att: Float32Array; // [B, qDim] attention output, all heads
  readonly proj: Float32Array; // [B, dim] o_proj / down_proj output, before the residual add
  readonly hb: Float32Array; // [B, hiddenDim] gate, then silu(gate) * up
  readonly hb2: Float32Array; // [B, hiddenDim] up
  readonly stacked: Float32Array; // [B, max(qDim + 2 kvDim, 2 hiddenDim)] output of a stacked projection
  readonly scores: Float64Array; // [seqLen] one head's attention scores (JS path)
  readonly headAcc: Float64Array; // [headDim] one head's weighted value sum (JS path)
  readonly ops: CpuOps | null; // SIMD SwiGLU and attention over the memory holding the buffers they read
  readonly opsAttention: CpuOps | null; // ops, where headDim suits the SIMD attention (a multiple of 4)
  readonly attScratch: Float32Array; // the SIMD attention's scratch: a group of heads' scores and sums
  // [vocab] until a caller asks for every row's logits (perplexity): then [B, vocab] (31 MiB at B = 64
  // for a 128K vocabulary, which generation never needs)
  private logits: Float32Array;
  private logitsRow: Float32Array; // logits[0, vocab)
  // [nLayers, nKvHeads, seqLen, headDim]: a head's positions are contiguous, so attention streams them
  readonly keyCache: Float32Array;
  readonly valueCache: Float32Array;
  readonly ropeCos: Float32Array; // [seqLen, headDim/2]
  readonly ropeSin: Float32Array; // [seqLen, headDim/2]
  private readonly views: ChunkViews[] = []; // [B + 1] by m, made on first use

  constructor(c: LlamaConfig, readonly batch: number, readonly seqLen: number) {
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    this.x = new Float32Array(batch * c.dim);
    this.xb = new Float32Array(batch * c.dim);
    this.k = new Float32Array(batch * kvDim);
    this.v = new Float32Array(batch * kvDim);
    this.proj = new Float32Array(batch * c.dim);
    // The buffers the SIMD ops read live in one wasm memory, sized once (null: plain arrays, JS loops)
    const cacheSize = c.nLayers * seqLen * kvDim;
    const opSizes = [cacheSize, cacheSize, batch * qDim, batch * qDim, batch * c.hiddenDim, batch * c.hiddenDim, attentionScratchFloats(seqLen, c.nHeads / c.nKvHeads)];
    const ops = CpuOps.create(opSizes);
    const mk = ops ? (n: number) => ops.alloc(n) : (n: number) => new Float32Array(n);
    this.ops = ops;
    this.opsAttention = c.headDim % 4 === 0 ? ops : null;
    [this.keyCache, this.valueCache, this.q, this.att, this.hb, this.hb2, this.attScratch] = opSizes.map(mk);
    this.stacked = new Float32Array(batch * Math.max(qDim + 2 * kvDim, 2 * c.hiddenDim));
    this.scores = new Float64Array(seqLen);
    this.headAcc = new Float64Array(c.headDim);
    this.logits = this.logitsRow = new Float32Array(c.vocabSize);
    ({ cos: this.ropeCos, sin: this.ropeSin } = ropeTables(c, seqLen));
  }

  viewsFor(m: number, c: LlamaConfig): ChunkViews {
    return (this.views[m] ??= {
      xb: this.xb.subarray(0, m * c.dim),
      att: this.att.subarray(0, m * c.nHeads * c.headDim),
      hb: this.hb.subarray(0, m * c.hiddenDim),
    });
  }

  /** The logits buffer for m rows [m, vocab], grown on first need (m <= B); one row is a cached view. */
  logitsFor(m: number, vocab: number): Float32Array {
    if (this.logits.length < m * vocab) {
      this.logits = new Float32Array(m * vocab);
      this.logitsRow = this.logits.subarray(0, vocab);
    }
    return m === 1 ? this.logitsRow : this.logits.subarray(0, m * vocab);
  }
}

export class LlamaModel {
  readonly maxBatch: number;
  readonly seqLen: number; // usable context: min(config.seqLen, options.seqLen)
  private readonly layers: PreparedLayer[];
  private readonly output: PreparedLinear; // [vocab, dim]
  // [vocab, dim]; null when the rows come from the backend's copy of the output layer (readRow)
  private readonly tokenEmbedding: EmbeddingTable | null;
  private readonly finalNorm: Float32Array; // [dim]
  private readonly state: RunState;
  private readonly mmOpts: MatmulOptions;
  private readonly prepared: PreparedLinear[] = []; // everything backend.prepare made, for dispose()
  private cached = 0; // positions 0..cached-1 of the KV cache hold valid keys and values
  private disposed = false;

  constructor(readonly config: LlamaConfig, weights: LlamaWeights, readonly backend: KernelBackend, opts: LlamaModelOptions = {}) {
    checkLlamaConfig(config);
    checkWeights(config, weights);
    const maxBatch = opts.maxBatch ?? 64;
    const seqLen = opts.seqLen ?? config.seqLen;
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new FluteError('E_OPTION', `maxBatch: expected a positive integer, got ${maxBatch}`);
    if (!Number.isInteger(seqLen) || seqLen < 1 || seqLen > config.seqLen) {
      throw new FluteError('E_OPTION', `seqLen: expected an integer in 1..${config.seqLen}, got ${seqLen}`);
    }
    this.maxBatch = Math.min(maxBatch, seqLen);
    this.seqLen = seqLen;
    this.mmOpts = { computeType: opts.computeType ?? 'f32' };
    const prepare = (layer: Linear, name: string): PreparedLinear => {
      const why = backend.unsupported(layer);
      if (why !== null) throw new FluteError('E_BACKEND', `${backend.name}: cannot run tensor ${name}: ${why}`);
      const p = backend.prepare(layer);
      this.prepared.push(p);
      return p;
    };
    try {
      this.layers = weights.layers.map((w, l) => {
        const name = (key: keyof typeof LAYER_LINEARS) => `model.layers.${l}.${LAYER_LINEARS[key]}`;
        const p = (key: keyof typeof LAYER_LINEARS) => prepare(w[key], name(key));
        const projections = (keys: readonly (keyof typeof LAYER_LINEARS)[]): Projections => {
          const stacked = stackRows(keys.map((k) => w[k]));
          // a part the backend cannot run is reported by its own name (below); a stack too big for
          // the backend's limits runs as its parts
          const fits = stacked !== null && backend.unsupported(stacked) === null && keys.every((k) => backend.unsupported(w[k]) === null);
          if (fits) return [prepare(stacked, keys.map(name).join(' + '))];
          return keys.map(p);
        };
        const [qkvKeys, gateUpKeys] = STACKED_PROJECTIONS;
        return { attnNorm: w.attnNorm, qkv: projections(qkvKeys), wo: p('wo'), ffnNorm: w.ffnNorm, gateUp: projections(gateUpKeys), w2: p('w2'), bq: w.bq, bk: w.bk, bv: w.bv };
      });
      this.output = prepare(weights.output, 'lm_head.weight');
    } catch (e) {
      this.dispose(); // release what was prepared before the failure
      throw e;
    }
    // An embedding that is the quantized output layer's own table (a tied GGUF) is read back from the
    // backend's prepared copy where the backend can, so the model holds no second, JS copy of it.
    this.tokenEmbedding = weights.tokenEmbedding === weights.output && backend.readRow ? null : weights.tokenEmbedding;
    this.finalNorm = weights.finalNorm;
    this.state = new RunState(config, this.maxBatch, seqLen);
  }

  /** Number of positions in the KV cache; the next forward may start at any position up to this. */
  get position(): number {
    return this.cached;
  }

  /** Forgets the cached context: the next forward must start at position 0. */
  reset(): void {
    this.cached = 0;
  }

  /**
   * Runs tokens[0..M) at positions startPos..startPos+M-1 (chunks of maxBatch, one matmul per linear
   * layer per chunk) and returns the logits of the last token [vocab], or of all tokens [M, vocab].
   * The result may be a view of scratch memory: read it before the next call.
   */
  forward(tokens: ArrayLike<number>, startPos: number, opts: ForwardOptions = {}): Float32Array {
    if (this.disposed) throw new FluteError('E_BACKEND', 'forward: the model has been disposed');
    checkForwardArgs(tokens, startPos, this.cached, this.seqLen, this.config.vocabSize);
    const m = tokens.length;
    const { vocabSize } = this.config;
    const all = opts.allLogits ?? false;
    const result = all && m > this.maxBatch ? new Float32Array(m * vocabSize) : undefined; // [M, vocab]
    for (let off = 0; off < m; off += this.maxBatch) {
      const n = Math.min(this.maxBatch, m - off);
      const last = off + n === m;
      const logits = this.forwardChunk(tokens, off, n, startPos + off, all ? 'all' : last ? 'last' : 'none');
      if (result) result.set(logits, off * vocabSize);
      else if (last) return logits;
    }
    return result as Float32Array;
  }

  /** Releases the backend's prepared layers; the model cannot run afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const p of this.prepared) this.backend.release(p);
    this.prepared.length = 0;
  }

  // ---------------------------------------------------------------- the transformer, one chunk

  /** Tokens [off, off+m) at positions pos0..; returns the logits of all rows [m, vocab], the last row [vocab] or none. */
  private forwardChunk(tokens: ArrayLike<number>, off: number, m: number, pos0: number, logits: 'all' | 'last' | 'none'): Float32Array {
    const c = this.config;
    const s = this.state;
    const mm = this.mmOpts;
    const { dim, headDim, nHeads, nKvHeads, hiddenDim } = c;
    const qDim = nHeads * headDim;
    const kvDim = nKvHeads * headDim;
    const v = s.viewsFor(m, c);
    const seqLen = this.seqLen;

    // Token embedding (model.embed_tokens): x[i] = E[token_i]
    for (let i = 0; i < m; i++) {
      if (this.tokenEmbedding) embeddingRow(this.tokenEmbedding, dim, tokens[off + i], s.x, i * dim);
      else this.backend.readRow!(this.output, tokens[off + i], s.x, i * dim);
    }

    for (let l = 0; l < c.nLayers; l++) {
      const L = this.layers[l];
      const cacheBase = l * seqLen * kvDim; // start of layer l in [nLayers, nKvHeads, seqLen, headDim]

      // Attention RMSNorm (input_layernorm), then q/k/v projections: [m, dim] -> [m, qDim], [m, kvDim] x2
      rmsnorm(s.xb, s.x, L.attnNorm, m, dim, c.normEps);
      this.project(L.qkv, v.xb, m, [s.q, s.k, s.v], [qDim, kvDim, kvDim]);
      // Qwen2's q/k/v biases (self_attn.{q,k,v}_proj.bias), before RoPE as in transformers
      if (L.bq && L.bk && L.bv) {
        addBias(s.q, L.bq, m);
        addBias(s.k, L.bk, m);
        addBias(s.v, L.bv, m);
      }

      // RoPE on q and k at each token's position, then append k and v to the cache at that position
      for (let i = 0; i < m; i++) {
        const pos = pos0 + i;
        this.rope(s.q, i * qDim, nHeads, pos);
        this.rope(s.k, i * kvDim, nKvHeads, pos);
        // per kv head, a plain copy (no subarray views made per token, head and layer)
        for (let h = 0; h < nKvHeads; h++) {
          const from = i * kvDim + h * headDim;
          const at = cacheBase + (h * seqLen + pos) * headDim;
          for (let d = 0; d < headDim; d++) {
            s.keyCache[at + d] = s.k[from + d];
            s.valueCache[at + d] = s.v[from + d];
          }
        }
      }

      // Grouped-query attention with a causal mask: token i attends to positions 0..pos0+i;
      // query head h reads key/value head h / (nHeads / nKvHeads).
      const group = nHeads / nKvHeads;
      const scale = 1 / Math.sqrt(headDim);
      for (let i = 0; i < m; i++) {
        if (s.opsAttention) {
          s.opsAttention.attention(s.q, i * qDim, s.keyCache, s.valueCache, cacheBase, s.att, i * qDim, s.attScratch, nHeads, group, headDim, headDim, seqLen * headDim, pos0 + i + 1, scale);
        } else {
          attentionJs(s.q, i * qDim, s.keyCache, s.valueCache, cacheBase, s.att, i * qDim, s.scores, s.headAcc, nHeads, group, headDim, headDim, seqLen * headDim, pos0 + i + 1, scale);
        }
      }

      // Output projection (o_proj) and residual: x += att Wo^T
      this.backend.matmul(L.wo, v.att, m, s.proj, mm);
      for (let j = 0; j < m * dim; j++) s.x[j] += s.proj[j];

      // SwiGLU feed-forward (post_attention_layernorm, mlp): x += W2 (silu(W1 xb) * (W3 xb))
      rmsnorm(s.xb, s.x, L.ffnNorm, m, dim, c.normEps);
      this.project(L.gateUp, v.xb, m, [s.hb, s.hb2], [hiddenDim, hiddenDim]);
      if (s.ops) s.ops.swiglu(s.hb, s.hb2, m * hiddenDim);
      else swigluJs(s.hb, s.hb2, m * hiddenDim);
      this.backend.matmul(L.w2, v.hb, m, s.proj, mm);
      for (let j = 0; j < m * dim; j++) s.x[j] += s.proj[j];
    }
    this.cached = pos0 + m;

    // Final RMSNorm (model.norm) and classifier (lm_head): all rows, or only the last into row 0
    if (logits === 'none') return NO_LOGITS; // a middle chunk's logits are not wanted
    if (logits === 'all') {
      rmsnorm(s.xb, s.x, this.finalNorm, m, dim, c.normEps);
      return this.backend.matmul(this.output, v.xb, m, s.logitsFor(m, c.vocabSize), mm);
    }
    rmsnorm(s.xb, s.x, this.finalNorm, 1, dim, c.normEps, m - 1);
    const one = s.viewsFor(1, c);
    return this.backend.matmul(this.output, one.xb, 1, s.logitsFor(1, c.vocabSize), mm);
  }

  /** outs[j][i, :] = x[i, :] W_j^T (widths[j] columns each) for the m rows of x, from stacked or separate projections. */
  private project(p: Projections, x: Float32Array, m: number, outs: readonly Float32Array[], widths: readonly number[]): void {
    const mm = this.mmOpts;
    if (p.length === outs.length) {
      for (let j = 0; j < p.length; j++) this.backend.matmul(p[j], x, m, outs[j].subarray(0, m * widths[j]), mm);
      return;
    }
    let total = 0;
    for (const w of widths) total += w;
    const y = this.backend.matmul(p[0], x, m, this.state.stacked.subarray(0, m * total), mm); // [m, total]
    for (let i = 0, at = 0; i < m; i++) {
      for (let j = 0; j < outs.length; j++) {
        outs[j].set(y.subarray(at, at + widths[j]), i * widths[j]);
        at += widths[j];
      }
    }
  }

  /** Rotates each head's pairs of buf[off..] by pos * theta^(-2i/headDim); pairs per config.ropeLayout. */
  private rope(buf: Float32Array, off: number, heads: number, pos: number): void {
    const hd = this.config.headDim;
    const half = hd / 2;
    const interleaved = this.config.ropeLayout === 'interleaved';
    const step = interleaved ? 2 : 1; // pair i starts at 2i (interleaved) or i (half)
    const partner = interleaved ? 1 : half; // and its partner is the next element, or half a head away
    const cos = this.state.ropeCos, sin = this.state.ropeSin;
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const a = off + h * hd + i * step;
        const b = a + partner;
        const fc = cos[pos * half + i], fs = sin[pos * half + i];
        const x0 = buf[a], x1 = buf[b];
        buf[a] = x0 * fc - x1 * fs;
        buf[b] = x0 * fs + x1 * fc;
      }
    }
  }
}

// ---------------------------------------------------------------- helpers

/** x[i, j] += b[j] for m rows of b.length values (f32 here, f64 in the training pass). */
export function addBias<T extends Float32Array | Float64Array>(x: T, b: T, m: number): void {
  const n = b.length;
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) x[i * n + j] += b[j];
}

/** The config fields RoPE's rotation depends on. */
export type RopeConfig = Pick<LlamaConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>;

/**
 * cos and sin of position p times pair i's frequency, [seqLen, headDim/2] each (f64 angles rounded to
 * f32): the rotation tables of both forward passes (this file and llama-gpu.ts). Pair i's frequency is
 * theta^(-2i/headDim), then scaled (ropeInvFreq), in both layouts; only which elements pair up differs.
 */
export function ropeTables(c: RopeConfig, seqLen: number): { cos: Float32Array; sin: Float32Array } {
  const half = c.headDim / 2;
  const invFreq = ropeInvFreq(c); // [headDim/2]
  const cos = new Float32Array(seqLen * half);
  const sin = new Float32Array(seqLen * half);
  for (let p = 0; p < seqLen; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * invFreq[i];
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * RoPE inverse frequencies [headDim/2]: f_i = theta^(-2i/headDim), then config.ropeScaling:
 *  - linear: f_i / factor.
 *  - llama3 (transformers `_compute_llama3_parameters`): with wavelength w_i = 2 pi / f_i and
 *    L = originalMaxPositions, keep f_i where w_i < L / highFreqFactor, use f_i / factor where
 *    w_i > L / lowFreqFactor, and in between blend (1 - s) f_i / factor + s f_i with
 *    s = (L / w_i - lowFreqFactor) / (highFreqFactor - lowFreqFactor).
 * Both forward passes rotate by these through ropeTables.
 */
export function ropeInvFreq(c: RopeConfig): Float64Array {
  const half = c.headDim / 2;
  const out = new Float64Array(half);
  for (let i = 0; i < half; i++) out[i] = scaleRopeFreq(Math.pow(c.ropeTheta, (-2 * i) / c.headDim), c.ropeScaling);
  return out;
}

function scaleRopeFreq(f: number, s: RopeScaling | undefined): number {
  if (!s) return f;
  if (s.type === 'linear') return f / s.factor;
  const wavelen = (2 * Math.PI) / f;
  const lowWavelen = s.originalMaxPositions / s.lowFreqFactor; // longer than this: fully scaled
  const highWavelen = s.originalMaxPositions / s.highFreqFactor; // shorter than this: untouched
  if (wavelen < highWavelen) return f;
  if (wavelen > lowWavelen) return f / s.factor;
  const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
  return (1 - smooth) * (f / s.factor) + smooth * f;
}

/** out[i] = w * x[from + i] / sqrt(mean(x[from + i]^2) + eps) for m rows of n values. */
function rmsnorm(out: Float32Array, x: Float32Array, w: Float32Array, m: number, n: number, eps: number, from = 0): void {
  for (let i = 0; i < m; i++) {
    const xo = (from + i) * n;
    let ss = 0;
    for (let j = 0; j < n; j++) ss += x[xo + j] * x[xo + j];
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let j = 0; j < n; j++) out[i * n + j] = w[j] * (inv * x[xo + j]);
  }
}

/** Throws E_BAD_HEADER unless the config describes a model this runtime can run. */
export function checkLlamaConfig(c: LlamaConfig): void {
  const ints: (keyof LlamaConfig)[] = ['dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads', 'headDim', 'vocabSize', 'seqLen'];
  for (const key of ints) {
    const v = c[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new FluteError('E_BAD_HEADER', `config ${key}: expected a positive integer, got ${String(v)}`);
  }
  if (c.nHeads % c.nKvHeads !== 0) throw new FluteError('E_BAD_HEADER', `config nKvHeads: expected a divisor of nHeads=${c.nHeads}, got ${c.nKvHeads}`);
  if (c.headDim % 2 !== 0) throw new FluteError('E_BAD_HEADER', `config headDim: expected an even number (RoPE rotates pairs), got ${c.headDim}`);
  if (!(c.normEps > 0) || !Number.isFinite(c.normEps)) throw new FluteError('E_BAD_HEADER', `config normEps: expected a positive number, got ${c.normEps}`);
  if (!(c.ropeTheta > 0) || !Number.isFinite(c.ropeTheta)) throw new FluteError('E_BAD_HEADER', `config ropeTheta: expected a positive number, got ${c.ropeTheta}`);
  if (c.ropeLayout !== 'interleaved' && c.ropeLayout !== 'half') {
    throw new FluteError('E_BAD_HEADER', `config ropeLayout: expected "interleaved" or "half", got ${JSON.stringify(c.ropeLayout)}`);
  }
  checkRopeScaling(c.ropeScaling);
}

function checkRopeScaling(s: RopeScaling | undefined): void {
  if (s === undefined) return;
  const pos = (v: unknown, what: string) => {
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) throw new FluteError('E_BAD_HEADER', `config ropeScaling.${what}: expected a positive number, got ${String(v)}`);
  };
  if (s.type !== 'llama3' && s.type !== 'linear') {
    throw new FluteError('E_BAD_HEADER', `config ropeScaling.type: expected "llama3" or "linear", got ${JSON.stringify((s as { type: unknown }).type)}`);
  }
  pos(s.factor, 'factor');
  if (s.type === 'llama3') {
    pos(s.lowFreqFactor, 'lowFreqFactor');
    pos(s.highFreqFactor, 'highFreqFactor');
    pos(s.originalMaxPositions, 'originalMaxPositions');
    if (!(s.highFreqFactor > s.lowFreqFactor)) {
      throw new FluteError('E_BAD_HEADER', `config ropeScaling: expected highFreqFactor > lowFreqFactor, got ${s.highFreqFactor} and ${s.lowFreqFactor}`);
    }
  }
}

/** Throws E_SHAPE / E_OPTION unless forward(tokens, startPos) fits the cache (`cached` valid positions of `seqLen`) and the vocabulary (both forward passes). */
export function checkForwardArgs(tokens: ArrayLike<number>, startPos: number, cached: number, seqLen: number, vocabSize: number): void {
  const m = tokens.length;
  if (m < 1) throw new FluteError('E_SHAPE', 'forward: expected at least one token, got 0');
  if (!Number.isInteger(startPos) || startPos < 0 || startPos > cached) {
    throw new FluteError('E_OPTION', `forward: start position: expected an integer in 0..${cached} (the cached positions), got ${startPos}`);
  }
  if (startPos + m > seqLen) {
    throw new FluteError('E_SHAPE', `forward: positions ${startPos}..${startPos + m - 1} exceed the context length ${seqLen}`);
  }
  for (let i = 0; i < m; i++) {
    const t = tokens[i];
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize) {
      throw new FluteError('E_OPTION', `forward: token ${i}: expected an id in 0..${vocabSize - 1}, got ${t}`);
    }
  }
}

/**
 * Throws E_SHAPE / E_NOT_FOUND unless every tensor of `w` has the shape `c` asks for (both forward
 * passes): weights built by hand (not by loadLlamaWeights) get the same shape checks.
 */
export function checkWeights(c: LlamaConfig, w: LlamaWeights): void {
  const qDim = c.nHeads * c.headDim;
  const kvDim = c.nKvHeads * c.headDim;
  const vec = (a: Float32Array, n: number, name: string) => {
    if (a.length !== n) throw new FluteError('E_SHAPE', `weights ${name}: expected ${n} values, got ${a.length}`);
  };
  const lin = (a: Linear, n: number, k: number, name: string) => {
    if (a.n !== n || a.k !== k) throw new FluteError('E_SHAPE', `weights ${name}: expected [${n}, ${k}], got [${a.n}, ${a.k}]`);
  };
  if (w.tokenEmbedding instanceof Float32Array) vec(w.tokenEmbedding, c.vocabSize * c.dim, 'model.embed_tokens.weight');
  else lin(validateQuantizedLinear(w.tokenEmbedding, 'model.embed_tokens.weight'), c.vocabSize, c.dim, 'model.embed_tokens.weight');
  if (w.layers.length !== c.nLayers) throw new FluteError('E_SHAPE', `weights: expected ${c.nLayers} layers, got ${w.layers.length}`);
  w.layers.forEach((L, l) => {
    const p = `model.layers.${l}.`;
    vec(L.attnNorm, c.dim, p + 'input_layernorm.weight');
    vec(L.ffnNorm, c.dim, p + 'post_attention_layernorm.weight');
    lin(L.wq, qDim, c.dim, p + LAYER_LINEARS.wq);
    lin(L.wk, kvDim, c.dim, p + LAYER_LINEARS.wk);
    lin(L.wv, kvDim, c.dim, p + LAYER_LINEARS.wv);
    lin(L.wo, c.dim, qDim, p + LAYER_LINEARS.wo);
    lin(L.w1, c.hiddenDim, c.dim, p + LAYER_LINEARS.w1);
    lin(L.w2, c.dim, c.hiddenDim, p + LAYER_LINEARS.w2);
    lin(L.w3, c.hiddenDim, c.dim, p + LAYER_LINEARS.w3);
    if (c.qkvBias) {
      if (!L.bq || !L.bk || !L.bv) throw new FluteError('E_NOT_FOUND', `weights ${p}self_attn: config.qkvBias is set but the q/k/v biases are missing`);
      vec(L.bq, qDim, p + 'self_attn.q_proj.bias');
      vec(L.bk, kvDim, p + 'self_attn.k_proj.bias');
      vec(L.bv, kvDim, p + 'self_attn.v_proj.bias');
    }
  });
  vec(w.finalNorm, c.dim, 'model.norm.weight');
  lin(w.output, c.vocabSize, c.dim, 'lm_head.weight');
}
