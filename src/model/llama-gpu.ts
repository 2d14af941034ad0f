// The LLaMA forward pass on WebGPU (llama.ts's twin): weights, activations and the KV cache live in GPU
// buffers; each forward chunk is one command encoder, one compute pass and one submit, and only the
// logits come back. Linear layers are the webgpu backend's LUT/dense matmuls; everything else is
// kernels/webgpu/ops.ts. FallbackModel moves a model to a CPU backend when the device is lost.
// Sampling, tokenization and the generation loop are generate.ts's business, as for LlamaModel.
/// <reference types="@webgpu/types" />

import { FluteError } from '../errors.js';
import { BUF, MAP_READ } from '../kernels/webgpu/gpu.js';
import { GpuDeviceLostError, isDeviceLost } from '../kernels/webgpu/device-lost.js';
import { ACT_ALIGN, roundUp } from '../kernels/webgpu/layout.js';
import { LlamaOps, maxOpsRows, type OpsShape } from '../kernels/webgpu/ops.js';
import type { GpuKernelBackend, GpuMatmulEncoding, GpuMatmulOptions, GpuPreparedLinear, GpuTensor } from '../kernels/webgpu/types.js';
import type { ComputeType, Linear } from '../quant/linear.js';
import type { LlamaConfig } from './config.js';
import type { CausalModel } from './generate.js';
import { checkForwardArgs, checkLlamaConfig, checkWeights, ropeTables, type ForwardOptions } from './llama.js';
import { LAYER_LINEARS, LINEAR_KEYS, embeddingRow, type LinearKey, type LlamaWeights } from './weights.js';

export interface GpuLlamaModelOptions {
  /** Most tokens per forward chunk (default 64; lowered when the attention scratch would not fit). */
  readonly maxBatch?: number;
  /** Context (KV cache) length; default and maximum config.seqLen. */
  readonly seqLen?: number;
  /** Matmul arithmetic; default the backend's precision (f16 with shader-f16, else f32). */
  readonly computeType?: ComputeType;
  /** Called after each tensor reaches the GPU: (tensors done, total, tensor name). */
  readonly onProgress?: (done: number, total: number, name: string) => void;
}

/** One transformer block's device buffers and the op bind groups over them (made once). */
interface GpuLayer {
  readonly linears: Record<LinearKey, GpuPreparedLinear>;
  readonly buffers: GPUBuffer[]; // norms, biases, caches: freed by dispose()
  readonly keyCache: GPUBuffer; // [seqLen, kvDim] f32
  readonly valueCache: GPUBuffer; // [seqLen, kvDim] f32
  readonly groups: {
    readonly attnNorm: GPUBindGroup; // x -> xb
    readonly ffnNorm: GPUBindGroup; // x -> xb
    readonly bias: { q: GPUBindGroup; k: GPUBindGroup; v: GPUBindGroup } | null;
    readonly ropeQ: GPUBindGroup;
    readonly ropeStoreKv: GPUBindGroup;
    readonly attention: GPUBindGroup;
  };
}

/** One layer's matmuls recorded for a chunk size m (replayed every forward with that m). */
type LayerEncodings = Record<LinearKey, GpuMatmulEncoding>;

/** Device activations for `maxBatch` rows (run.c RunState), each [B, cols] padded to 64 columns. */
interface GpuRunState {
  readonly x: GpuTensor; // [B, dim] residual stream
  readonly xb: GpuTensor; // [B, dim] normalized input of a block
  readonly q: GpuTensor; // [B, qDim]
  readonly k: GpuTensor; // [B, kvDim]
  readonly v: GpuTensor; // [B, kvDim]
  readonly att: GpuTensor; // [B, qDim] attention output, all heads
  readonly proj: GpuTensor; // [B, dim] o_proj / down_proj output
  readonly hb: GpuTensor; // [B, hiddenDim] gate, then silu(gate) * up
  readonly hb2: GpuTensor; // [B, hiddenDim] up
  readonly logits: GpuTensor; // [B, vocab]
  readonly scores: GPUBuffer; // [B, nHeads, seqLen] f32 attention scratch
  readonly ropeCos: GPUBuffer; // [seqLen, headDim/2] f32
  readonly ropeSin: GPUBuffer; // [seqLen, headDim/2] f32
}

const MAX_CACHED_CHUNK_SIZES = 4; // recorded matmul sets kept (decode's m = 1, the prefill sizes)

export class GpuLlamaModel implements CausalModel {
  readonly seqLen: number;
  readonly maxBatch: number;
  private readonly device: GPUDevice;
  private readonly ops: LlamaOps;
  private readonly state: GpuRunState;
  private readonly hostX: Float32Array<ArrayBuffer>; // [B, dimStride] embedded rows, uploaded each chunk
  private readonly hostLogits: Float32Array; // [B, vocab] what forward() returns views of
  private readonly mm: GpuMatmulOptions;
  private readonly layers: GpuLayer[]; // [nLayers]
  private readonly layerBuffers: GPUBuffer[] = []; // final norm, bias dims: freed by dispose()
  private readonly finalGroups: { all: GPUBindGroup; last: GPUBindGroup; residual: GPUBindGroup; swiglu: GPUBindGroup };
  private readonly encodings = new Map<number, LayerEncodings[]>(); // by m, least recently used first
  private readonly outputs = new Map<number, GpuMatmulEncoding>(); // lm_head by rows (1, or m for all logits)
  private readonly scratchNeed = new Map<number, number>(); // split-K bytes by m
  private splitScratch: GPUBuffer | null = null; // split-K partials shared by all recorded matmuls
  private staging: GPUBuffer | null = null; // MAP_READ copy of logits
  private lostInfo: GPUDeviceLostInfo | null = null;
  private readonly lost: Promise<GPUDeviceLostInfo>;
  private cached = 0; // positions 0..cached-1 of the KV cache are valid
  private disposed = false;

  /** Uploads the weights tensor by tensor (onProgress after each) and allocates the run state. */
  static async create(config: LlamaConfig, weights: LlamaWeights, backend: GpuKernelBackend, opts: GpuLlamaModelOptions = {}): Promise<GpuLlamaModel> {
    checkLlamaConfig(config);
    checkWeights(config, weights);
    const total = config.nLayers * (LINEAR_KEYS.length + 1) + 2; // per layer its linears and its norms; lm_head; the final norm
    let done = 0;
    const tick = (name: string) => opts.onProgress?.(++done, total, name);
    const prepared: GpuPreparedLinear[] = [];
    const prepare = async (layer: Linear, name: string): Promise<GpuPreparedLinear> => {
      const why = backend.unsupported(layer);
      if (why !== null) throw new FluteError('E_BACKEND', `webgpu: cannot run tensor ${name}: ${why}`);
      const p = await backend.prepare(layer);
      prepared.push(p);
      tick(name);
      return p;
    };
    try {
      const linears: Record<LinearKey, GpuPreparedLinear>[] = [];
      for (let l = 0; l < config.nLayers; l++) {
        const w = weights.layers[l];
        const rec = {} as Record<LinearKey, GpuPreparedLinear>;
        for (const key of LINEAR_KEYS) rec[key] = await prepare(w[key], `model.layers.${l}.${LAYER_LINEARS[key]}`);
        linears.push(rec);
      }
      const output = await prepare(weights.output, 'lm_head.weight');
      const dev = backend.gpuDevice();
      dev.pushErrorScope('out-of-memory');
      dev.pushErrorScope('validation');
      let model: GpuLlamaModel | null = null;
      try {
        model = new GpuLlamaModel(config, weights, backend, linears, output, prepared, opts, tick);
      } finally {
        const [ve, oe] = await Promise.all([dev.popErrorScope(), dev.popErrorScope()]);
        if (ve || oe) {
          model?.dispose();
          throw new FluteError('E_BACKEND', `webgpu: building the model's buffers and kernels failed: ${(oe ?? ve)!.message}`);
        }
      }
      return model;
    } catch (e) {
      for (const p of prepared) backend.release(p);
      throw e;
    }
  }

  private constructor(
    readonly config: LlamaConfig,
    private readonly weights: LlamaWeights,
    readonly backend: GpuKernelBackend,
    linears: Record<LinearKey, GpuPreparedLinear>[],
    private readonly output: GpuPreparedLinear,
    private readonly prepared: GpuPreparedLinear[],
    opts: GpuLlamaModelOptions,
    tick: (name: string) => void,
  ) {
    const c = config;
    const dev = backend.gpuDevice();
    this.device = dev;
    this.lost = dev.lost.then((info) => (this.lostInfo = info));
    const seqLen = opts.seqLen ?? c.seqLen;
    if (!Number.isInteger(seqLen) || seqLen < 1 || seqLen > c.seqLen) throw new FluteError('E_OPTION', `seqLen: expected an integer in 1..${c.seqLen}, got ${seqLen}`);
    const maxBatchOpt = opts.maxBatch ?? 64;
    if (!Number.isInteger(maxBatchOpt) || maxBatchOpt < 1) throw new FluteError('E_OPTION', `maxBatch: expected a positive integer, got ${maxBatchOpt}`);
    this.seqLen = seqLen;
    this.mm = { computeType: opts.computeType ?? backend.precision };
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const shape: OpsShape = {
      dim: c.dim, dimStride: roundUp(c.dim, ACT_ALIGN), qStride: roundUp(qDim, ACT_ALIGN), kvDim, kvStride: roundUp(kvDim, ACT_ALIGN),
      hiddenStride: roundUp(c.hiddenDim, ACT_ALIGN), nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim, seqLen, normEps: c.normEps, ropeLayout: c.ropeLayout,
    };
    // The attention scratch [B, nHeads, seqLen] and the logits [B, vocab] must each fit one binding.
    const binding = Math.min(dev.limits.maxStorageBufferBindingSize, dev.limits.maxBufferSize);
    const rowBytes = Math.max(c.nHeads * seqLen * 4, roundUp(c.vocabSize, ACT_ALIGN) * 4, kvDim * 4);
    if (seqLen * kvDim * 4 > binding) throw new FluteError('E_SHAPE', `webgpu: a KV cache of ${seqLen} positions x ${kvDim} exceeds the storage binding limit ${binding}; lower seqLen`);
    this.maxBatch = Math.max(1, Math.min(maxBatchOpt, seqLen, Math.floor(binding / rowBytes), maxOpsRows(shape, dev.limits.maxComputeWorkgroupsPerDimension)));

    this.ops = new LlamaOps(dev, shape);
    const B = this.maxBatch;
    const t = (cols: number, label: string) => backend.createTensor(B, cols, label);
    const f32Buffer = (data: Float32Array, label: string): GPUBuffer => {
      const b = dev.createBuffer({ size: roundUp(Math.max(data.byteLength, 16), 4), usage: BUF.STORAGE | BUF.COPY_DST, mappedAtCreation: true, label });
      new Float32Array(b.getMappedRange(), 0, data.length).set(data);
      b.unmap();
      return b;
    };
    const storage = (bytes: number, label: string) => dev.createBuffer({ size: Math.max(bytes, 16), usage: BUF.STORAGE, label });

    const { cos, sin } = ropeTables(c, seqLen); // the CPU model's tables, so both rotate alike
    this.state = {
      x: t(c.dim, 'x'), xb: t(c.dim, 'xb'), q: t(qDim, 'q'), k: t(kvDim, 'k'), v: t(kvDim, 'v'), att: t(qDim, 'att'), proj: t(c.dim, 'proj'),
      hb: t(c.hiddenDim, 'hb'), hb2: t(c.hiddenDim, 'hb2'), logits: t(c.vocabSize, 'logits'),
      scores: storage(B * c.nHeads * seqLen * 4, 'attention scores'), ropeCos: f32Buffer(cos, 'rope cos'), ropeSin: f32Buffer(sin, 'rope sin'),
    };
    const s = this.state;
    const biasQ = this.ops.biasDims(qDim, shape.qStride);
    const biasKv = this.ops.biasDims(kvDim, shape.kvStride);
    this.layerBuffers.push(biasQ, biasKv);

    this.layers = linears.map((lin, l) => {
      const w = weights.layers[l];
      const p = `model.layers.${l}.`;
      const attnNorm = f32Buffer(w.attnNorm, p + 'input_layernorm.weight');
      const ffnNorm = f32Buffer(w.ffnNorm, p + 'post_attention_layernorm.weight');
      const keyCache = storage(seqLen * kvDim * 4, p + 'key cache');
      const valueCache = storage(seqLen * kvDim * 4, p + 'value cache');
      const buffers = [attnNorm, ffnNorm, keyCache, valueCache];
      let bias: GpuLayer['groups']['bias'] = null;
      if (c.qkvBias && w.bq && w.bk && w.bv) { // checkWeights: all three are there when qkvBias is set
        const [bq, bk, bv] = [f32Buffer(w.bq, p + 'q bias'), f32Buffer(w.bk, p + 'k bias'), f32Buffer(w.bv, p + 'v bias')];
        buffers.push(bq, bk, bv);
        bias = {
          q: this.ops.bind('addBias', [biasQ, s.q.buffer, bq]),
          k: this.ops.bind('addBias', [biasKv, s.k.buffer, bk]),
          v: this.ops.bind('addBias', [biasKv, s.v.buffer, bv]),
        };
      }
      tick(p + 'norms');
      return {
        linears: lin, buffers, keyCache, valueCache,
        groups: {
          attnNorm: this.ops.bind('rmsnorm', [s.x.buffer, attnNorm, s.xb.buffer]),
          ffnNorm: this.ops.bind('rmsnorm', [s.x.buffer, ffnNorm, s.xb.buffer]),
          bias,
          ropeQ: this.ops.bind('ropeQ', [s.q.buffer, s.ropeCos, s.ropeSin]),
          ropeStoreKv: this.ops.bind('ropeStoreKv', [s.k.buffer, s.v.buffer, s.ropeCos, s.ropeSin, keyCache, valueCache]),
          attention: this.ops.bind('attention', [s.q.buffer, keyCache, valueCache, s.scores, s.att.buffer]),
        },
      };
    });
    const finalNorm = f32Buffer(weights.finalNorm, 'model.norm.weight');
    this.layerBuffers.push(finalNorm);
    this.finalGroups = {
      all: this.ops.bind('rmsnorm', [s.x.buffer, finalNorm, s.xb.buffer]),
      last: this.ops.bind('rmsnormLast', [s.x.buffer, finalNorm, s.xb.buffer]),
      residual: this.ops.bind('add', [s.x.buffer, s.proj.buffer]),
      swiglu: this.ops.bind('swiglu', [s.hb.buffer, s.hb2.buffer]),
    };
    tick('model.norm.weight');
    this.hostX = new Float32Array(B * shape.dimStride);
    this.hostLogits = new Float32Array(B * c.vocabSize);
  }

  /** Number of positions in the KV cache; the next forward may start at any position up to this. */
  get position(): number {
    return this.cached;
  }

  reset(): void {
    this.cached = 0;
  }

  /**
   * Runs tokens[0..M) at positions startPos.. (chunks of maxBatch, one submit each) and resolves to
   * the logits of the last token [vocab], or of all tokens [M, vocab]. The result may be a view of
   * memory the next call reuses. Rejects with GpuDeviceLostError when the device is lost.
   */
  async forward(tokens: ArrayLike<number>, startPos: number, opts: ForwardOptions = {}): Promise<Float32Array> {
    if (this.disposed) throw new FluteError('E_BACKEND', 'forward: the model has been disposed');
    checkForwardArgs(tokens, startPos, this.cached, this.seqLen, this.config.vocabSize);
    const m = tokens.length;
    const { vocabSize } = this.config;
    if (this.lostInfo) throw new GpuDeviceLostError(String(this.lostInfo.reason), this.lostInfo.message);
    const all = opts.allLogits ?? false;
    const result = all && m > this.maxBatch ? new Float32Array(m * vocabSize) : undefined; // [M, vocab]
    try {
      for (let off = 0; off < m; off += this.maxBatch) {
        const n = Math.min(this.maxBatch, m - off);
        const last = off + n === m;
        const logits = await this.forwardChunk(tokens, off, n, startPos + off, all ? 'all' : last ? 'last' : 'none');
        if (result) result.set(logits, off * vocabSize);
        else if (last) return logits;
      }
      return result as Float32Array;
    } catch (e) {
      throw await this.explain(e);
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.dropRecordings();
    for (const p of this.prepared) this.backend.release(p);
    const s = this.state;
    for (const t of [s.x, s.xb, s.q, s.k, s.v, s.att, s.proj, s.hb, s.hb2, s.logits]) this.backend.releaseTensor(t);
    for (const b of [s.scores, s.ropeCos, s.ropeSin, this.splitScratch, this.staging, ...this.layerBuffers, ...this.layers.flatMap((L) => L.buffers)]) b?.destroy();
    this.ops.dispose();
  }

  // ---------------------------------------------------------------- the transformer, one chunk

  /** Tokens [off, off+m) at positions pos0..; returns logits [m, vocab], the last row [vocab] or nothing. */
  private async forwardChunk(tokens: ArrayLike<number>, off: number, m: number, pos0: number, logits: 'all' | 'last' | 'none'): Promise<Float32Array> {
    const c = this.config;
    const dev = this.backend.gpuDevice(); // throws GpuDeviceLostError once the loss is known
    const s = this.state;
    const ops = this.ops;
    const rows = logits === 'all' ? m : 1; // logits rows computed and read back
    this.reserveScratch([m, rows]); // first: growing it drops recordings
    const layerEnc = this.recordedLayers(m);
    const outputEnc = logits === 'none' ? null : this.recordedOutput(rows);
    const dimStride = s.x.stride;

    // Token embedding (model.embed_tokens) gathered on the CPU: x[i] = E[token_i], m rows uploaded
    // (the table itself never goes to the GPU: vocab x dim f32 would be 1 GB for LLaMA 3.2 1B).
    for (let i = 0; i < m; i++) embeddingRow(this.weights.tokenEmbedding, c.dim, tokens[off + i], this.hostX, i * dimStride);
    dev.pushErrorScope('out-of-memory');
    dev.pushErrorScope('validation');
    dev.queue.writeBuffer(s.x.buffer, 0, this.hostX, 0, m * dimStride);
    ops.setStep(m, pos0);

    const encoder = dev.createCommandEncoder({ label: 'forward' });
    const pass = encoder.beginComputePass({ label: 'forward' });
    for (let l = 0; l < c.nLayers; l++) {
      const L = this.layers[l];
      const M = layerEnc[l];
      const g = L.groups;
      // Attention RMSNorm (input_layernorm), q/k/v projections: [m, dim] -> [m, qDim], [m, kvDim] x2
      ops.dispatch(pass, 'rmsnorm', g.attnNorm, m);
      M.wq.record(pass);
      M.wk.record(pass);
      M.wv.record(pass);
      // Qwen2's q/k/v biases, before RoPE as in transformers
      if (g.bias) {
        ops.dispatch(pass, 'addBias', g.bias.q, m, s.q.cols);
        ops.dispatch(pass, 'addBias', g.bias.k, m, s.k.cols);
        ops.dispatch(pass, 'addBias', g.bias.v, m, s.v.cols);
      }
      // RoPE on q in place; RoPE on k, then k and v into the cache at positions pos0..pos0+m-1
      ops.dispatch(pass, 'ropeQ', g.ropeQ, m);
      ops.dispatch(pass, 'ropeStoreKv', g.ropeStoreKv, m);
      // Causal grouped-query attention over cache positions 0..pos0+i: att [m, qDim]
      ops.dispatch(pass, 'attention', g.attention, m);
      // Output projection (o_proj) and residual: x += att Wo^T
      M.wo.record(pass);
      ops.dispatch(pass, 'add', this.finalGroups.residual, m);
      // SwiGLU feed-forward (post_attention_layernorm, mlp): x += W2 (silu(W1 xb) * (W3 xb))
      ops.dispatch(pass, 'rmsnorm', g.ffnNorm, m);
      M.w1.record(pass);
      M.w3.record(pass);
      ops.dispatch(pass, 'swiglu', this.finalGroups.swiglu, m);
      M.w2.record(pass);
      ops.dispatch(pass, 'add', this.finalGroups.residual, m);
    }
    // Final RMSNorm (model.norm) and classifier (lm_head): all rows, or the last row into row 0
    if (outputEnc) {
      ops.dispatch(pass, logits === 'all' ? 'rmsnorm' : 'rmsnormLast', logits === 'all' ? this.finalGroups.all : this.finalGroups.last, m);
      outputEnc.record(pass);
    }
    pass.end();
    const bytes = rows * s.logits.stride * 4;
    const staging = logits === 'none' ? null : this.stagingFor(bytes);
    if (staging) encoder.copyBufferToBuffer(s.logits.buffer, 0, staging, 0, bytes);
    dev.queue.submit([encoder.finish()]);
    const scopes = Promise.all([dev.popErrorScope(), dev.popErrorScope()]);
    const mapped = staging ? staging.mapAsync(MAP_READ, 0, bytes).then(() => null, (e: unknown) => e) : Promise.resolve(null);
    const [[ve, oe], mapError] = await Promise.all([scopes, mapped]);
    if (ve || oe) {
      if (staging && !mapError) staging.unmap();
      const compile = ve ? await this.ops.errors() : [];
      throw new FluteError('E_BACKEND', `webgpu forward: ${(oe ?? ve)!.message}${compile.length ? `\n${compile.join('\n')}` : ''}`);
    }
    if (mapError) throw new FluteError('E_BACKEND', `webgpu forward: reading the logits back failed: ${(mapError as Error).message}`, { cause: mapError });
    this.cached = pos0 + m;
    if (!staging) return this.hostLogits.subarray(0, 0);
    // Drop the padding columns: [rows, stride] -> [rows, vocab]
    const src = new Float32Array(staging.getMappedRange(0, bytes));
    const V = c.vocabSize;
    for (let r = 0; r < rows; r++) this.hostLogits.set(src.subarray(r * s.logits.stride, r * s.logits.stride + V), r * V);
    staging.unmap();
    return this.hostLogits.subarray(0, rows * V);
  }

  // ---------------------------------------------------------------- recorded matmuls and buffers

  /** The layers' matmuls for chunk size m, recorded on first use; a few sizes are kept. */
  private recordedLayers(m: number): LayerEncodings[] {
    const got = this.encodings.get(m);
    if (got) {
      this.encodings.delete(m); // re-inserted below: most recently used last
      this.encodings.set(m, got);
      return got;
    }
    const s = this.state;
    const rec = (layer: GpuPreparedLinear, x: GpuTensor, y: GpuTensor) => this.backend.encodeMatmul(layer, { ...x, rows: m }, m, y, { ...this.mm, scratch: this.splitScratch! });
    const made = this.layers.map((L) => ({
      wq: rec(L.linears.wq, s.xb, s.q), wk: rec(L.linears.wk, s.xb, s.k), wv: rec(L.linears.wv, s.xb, s.v), wo: rec(L.linears.wo, s.att, s.proj),
      w1: rec(L.linears.w1, s.xb, s.hb), w3: rec(L.linears.w3, s.xb, s.hb2), w2: rec(L.linears.w2, s.hb, s.proj),
    }));
    this.encodings.set(m, made);
    evictOldest(this.encodings, (old) => old.forEach((L) => LINEAR_KEYS.forEach((k) => L[k].release())));
    return made;
  }

  /** lm_head over the first `rows` rows of xb into logits, recorded on first use. */
  private recordedOutput(rows: number): GpuMatmulEncoding {
    let enc = this.outputs.get(rows);
    if (!enc) {
      enc = this.backend.encodeMatmul(this.output, { ...this.state.xb, rows }, rows, this.state.logits, { ...this.mm, scratch: this.splitScratch! });
      this.outputs.set(rows, enc);
      evictOldest(this.outputs, (old) => old.release());
    }
    return enc;
  }

  /**
   * Makes the split-K scratch large enough for every matmul at these chunk sizes. Growing it replaces
   * the buffer, so every recording made over the old one is dropped (re-recorded on next use).
   */
  private reserveScratch(sizes: readonly number[]): void {
    let need = 16;
    for (const m of sizes) {
      let bytes = this.scratchNeed.get(m);
      if (bytes === undefined) {
        bytes = 0;
        for (const L of this.layers) for (const k of LINEAR_KEYS) bytes = Math.max(bytes, this.backend.plan(L.linears[k], m, this.mm).scratchBytes);
        bytes = Math.max(bytes, this.backend.plan(this.output, m, this.mm).scratchBytes);
        this.scratchNeed.set(m, bytes);
      }
      need = Math.max(need, bytes);
    }
    if (this.splitScratch && this.splitScratch.size >= need) return;
    this.dropRecordings();
    this.splitScratch?.destroy();
    this.splitScratch = this.device.createBuffer({ size: roundUp(need, 256), usage: BUF.STORAGE, label: 'split-k partials' });
  }

  private dropRecordings(): void {
    for (const layers of this.encodings.values()) for (const L of layers) for (const k of LINEAR_KEYS) L[k].release();
    for (const o of this.outputs.values()) o.release();
    this.encodings.clear();
    this.outputs.clear();
  }

  private stagingFor(bytes: number): GPUBuffer {
    if (!this.staging || this.staging.size < bytes) {
      this.staging?.destroy();
      this.staging = this.device.createBuffer({ size: roundUp(bytes, 256), usage: MAP_READ | BUF.COPY_DST, label: 'logits readback' });
    }
    return this.staging;
  }

  /** A failure becomes GpuDeviceLostError when the device turns out lost (the loss may be reported late). */
  private async explain(e: unknown): Promise<unknown> {
    if (isDeviceLost(e) || this.disposed) return e;
    if (!this.lostInfo) await Promise.race([this.lost, new Promise((r) => setTimeout(r, 200))]);
    return this.lostInfo ? new GpuDeviceLostError(String(this.lostInfo.reason), this.lostInfo.message) : e;
  }
}

/** Drops the least recently used entries of `map` beyond MAX_CACHED_CHUNK_SIZES. */
function evictOldest<T>(map: Map<number, T>, release: (v: T) => void): void {
  while (map.size > MAX_CACHED_CHUNK_SIZES) {
    const [key, value] = map.entries().next().value as [number, T];
    release(value);
    map.delete(key);
  }
}

// ---------------------------------------------------------------- device-lost fallback

export interface CpuFallbackOptions {
  /** Builds the replacement (e.g. LlamaModel on wasm over the same weights); called at most once. */
  readonly create: () => Promise<CausalModel>;
  /** Told when the switch happens (the CLI prints a warning). */
  readonly onFallback?: (cause: GpuDeviceLostError, replacement: CausalModel) => void;
}

/**
 * Wraps a GPU model so that a lost device does not end generation: the tokens in the KV cache are
 * remembered, and on GpuDeviceLostError the replacement model is built, the cached tokens are
 * prefilled again, and the failed forward is repeated there. Other errors pass through.
 */
export class FallbackModel implements CausalModel {
  private current: CausalModel;
  private history: number[] = []; // the token at each cached position
  private switched = false;

  constructor(first: CausalModel, private readonly opts: CpuFallbackOptions) {
    this.current = first;
  }

  get config(): LlamaConfig {
    return this.current.config;
  }
  get seqLen(): number {
    return this.current.seqLen;
  }
  get maxBatch(): number {
    return this.current.maxBatch;
  }
  get position(): number {
    return this.current.position;
  }
  /** The model now running (the GPU one until a loss, then the replacement). */
  get active(): CausalModel {
    return this.current;
  }
  get fellBack(): boolean {
    return this.switched;
  }

  reset(): void {
    this.history = [];
    this.current.reset();
  }

  async forward(tokens: ArrayLike<number>, startPos: number, opts?: ForwardOptions): Promise<Float32Array> {
    let logits: Float32Array;
    try {
      logits = await this.current.forward(tokens, startPos, opts);
    } catch (e) {
      if (!isDeviceLost(e) || this.switched) throw e;
      const next = await this.opts.create();
      this.switched = true;
      const lostModel = this.current;
      this.current = next;
      try {
        lostModel.dispose();
      } catch {
        // freeing buffers of a lost device may fail; they are gone with it anyway
      }
      this.opts.onFallback?.(e, next);
      if (startPos > 0) await next.forward(this.history.slice(0, startPos), 0); // replay the cached context
      logits = await next.forward(tokens, startPos, opts);
    }
    this.history.length = startPos;
    for (let i = 0; i < tokens.length; i++) this.history.push(tokens[i]);
    return logits;
  }

  dispose(): void {
    this.current.dispose();
  }
}
