// LLaMA weights (read-only, run.c's TransformerWeights) and their loader: every tensor by its Hugging
// Face name through a TensorReader, shape-checked against the config. Quantized layers come from the
// caller's `quantized` hook; everything else is read as dense f32, except a tied embedding that is the
// quantized output layer's own table (GGUF), which stays quantized (EmbeddingTable). The copies a
// backend takes over are placed in large slabs (TensorSlabs) so that dropping them returns the memory.

import { FluteError } from '../errors.js';
import type { TensorReader } from '../format/tensors.js';
import { dequantize, dequantizeRow, type Linear, type QuantizedLinear } from '../quant/linear.js';
import type { LlamaConfig } from './config.js';

export interface LayerWeights {
  readonly attnNorm: Float32Array; // [dim] input_layernorm
  readonly wq: Linear; // [nHeads*headDim, dim] self_attn.q_proj
  readonly wk: Linear; // [nKvHeads*headDim, dim] self_attn.k_proj
  readonly wv: Linear; // [nKvHeads*headDim, dim] self_attn.v_proj
  readonly wo: Linear; // [dim, nHeads*headDim] self_attn.o_proj
  readonly ffnNorm: Float32Array; // [dim] post_attention_layernorm
  readonly w1: Linear; // [hiddenDim, dim] mlp.gate_proj
  readonly w2: Linear; // [dim, hiddenDim] mlp.down_proj
  readonly w3: Linear; // [hiddenDim, dim] mlp.up_proj
  /** q/k/v biases when config.qkvBias (Qwen2), added after the projections. */
  readonly bq?: Float32Array; // [nHeads*headDim] self_attn.q_proj.bias
  readonly bk?: Float32Array; // [nKvHeads*headDim] self_attn.k_proj.bias
  readonly bv?: Float32Array; // [nKvHeads*headDim] self_attn.v_proj.bias
}

/**
 * The token embedding table [vocab, dim]: f32 rows, or a quantized table whose rows are dequantized
 * as tokens need them (a tied GGUF model's Q4_0 / IQ4_NL token_embd, which also serves as the
 * quantized output layer: no second, f32 copy, 1 GB for LLaMA 3.2 1B). Read rows with embeddingRow.
 */
export type EmbeddingTable = Float32Array | QuantizedLinear;

/** out[at .. at + dim) = row `token` of the embedding; a quantized row by dequantize()'s f32 rule. */
export function embeddingRow(e: EmbeddingTable, dim: number, token: number, out: Float32Array, at = 0): void {
  if (e instanceof Float32Array) out.set(e.subarray(token * dim, (token + 1) * dim), at);
  else dequantizeRow(e, token, out, at);
}

/** The embedding as one f32 array [vocab, dim] (a quantized table dequantized whole). */
export function embeddingF32(e: EmbeddingTable): Float32Array {
  return e instanceof Float32Array ? e : dequantize(e);
}

/**
 * True when a tied model's embedding is the quantized output layer's own tensor: the reader serves
 * lm_head quantized and stores the embedding in a block format (`storage`: GGUF's tied token_embd).
 * A checkpoint that quantized a tied output on its own keeps a float embedding, which stays exact.
 */
export function embeddingIsQuantizedOutput(config: LlamaConfig, reader: TensorReader, quantizedOutput: boolean): boolean {
  return config.tiedEmbeddings && quantizedOutput && reader.has('model.embed_tokens.weight') && reader.info('model.embed_tokens.weight').storage !== undefined;
}

export interface LlamaWeights {
  readonly tokenEmbedding: EmbeddingTable; // [vocab, dim] model.embed_tokens
  readonly layers: readonly LayerWeights[]; // [nLayers]
  readonly finalNorm: Float32Array; // [dim] model.norm
  readonly output: Linear; // [vocab, dim] lm_head, or the embedding when tied
}

export type LinearKey = 'wq' | 'wk' | 'wv' | 'wo' | 'w1' | 'w2' | 'w3';

/** Hugging Face names of one layer's linear weights. */
export const LAYER_LINEARS: Readonly<Record<LinearKey, string>> = {
  wq: 'self_attn.q_proj.weight',
  wk: 'self_attn.k_proj.weight',
  wv: 'self_attn.v_proj.weight',
  wo: 'self_attn.o_proj.weight',
  w1: 'mlp.gate_proj.weight',
  w2: 'mlp.down_proj.weight',
  w3: 'mlp.up_proj.weight',
};

/** The linear layers of a block, in LAYER_LINEARS' order. */
export const LINEAR_KEYS = Object.keys(LAYER_LINEARS) as readonly LinearKey[];

/** Projections of one input that LlamaModel runs as one stacked matmul when quantized alike (quant/linear.ts stackRows). */
export const STACKED_PROJECTIONS: readonly (readonly LinearKey[])[] = [['wq', 'wk', 'wv'], ['w1', 'w3']];

export interface TensorSpec {
  readonly name: string;
  readonly shape: readonly number[];
  readonly linear: boolean; // a [N, K] matmul weight that may be quantized
}

/** Every tensor a LLaMA model of this config reads, with its expected shape, in file order. */
export function llamaTensorSpecs(c: LlamaConfig): TensorSpec[] {
  const qDim = c.nHeads * c.headDim;
  const kvDim = c.nKvHeads * c.headDim;
  const shapes: Record<LinearKey, [number, number]> = {
    wq: [qDim, c.dim], wk: [kvDim, c.dim], wv: [kvDim, c.dim], wo: [c.dim, qDim],
    w1: [c.hiddenDim, c.dim], w2: [c.dim, c.hiddenDim], w3: [c.hiddenDim, c.dim],
  };
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, c.dim], linear: false }];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `model.layers.${l}.`;
    specs.push({ name: p + 'input_layernorm.weight', shape: [c.dim], linear: false });
    for (const key of ['wq', 'wk', 'wv', 'wo'] as const) specs.push({ name: p + LAYER_LINEARS[key], shape: shapes[key], linear: true });
    if (c.qkvBias) {
      for (const [key, n] of [['wq', qDim], ['wk', kvDim], ['wv', kvDim]] as const) specs.push({ name: p + biasName(key), shape: [n], linear: false });
    }
    specs.push({ name: p + 'post_attention_layernorm.weight', shape: [c.dim], linear: false });
    for (const key of ['w1', 'w2', 'w3'] as const) specs.push({ name: p + LAYER_LINEARS[key], shape: shapes[key], linear: true });
  }
  specs.push({ name: 'model.norm.weight', shape: [c.dim], linear: false });
  if (!c.tiedEmbeddings) specs.push({ name: 'lm_head.weight', shape: [c.vocabSize, c.dim], linear: true });
  return specs;
}

/** "self_attn.q_proj.weight" -> "self_attn.q_proj.bias". */
function biasName(key: 'wq' | 'wk' | 'wv'): string {
  return LAYER_LINEARS[key].replace(/\.weight$/, '.bias');
}

const showShape = (s: readonly number[]) => `[${s.join(', ')}]`;

/**
 * Reads a model's weights. `quantized(name)` may supply any linear weight (by its tensor name, e.g.
 * "model.layers.0.mlp.gate_proj.weight", or "lm_head.weight" even when tied); the others are read
 * dense with reader.readF32.
 */
export async function loadLlamaWeights(
  reader: TensorReader,
  config: LlamaConfig,
  quantized?: (name: string) => Linear | undefined | Promise<Linear | undefined>,
): Promise<LlamaWeights> {
  const tensors = new Map<string, Float32Array | Linear>();
  // read first, so never slabbed (TensorSlabs skips the first 64 MiB): a model that keeps it as its
  // embedding (a backend without readRow) keeps it as the reader made it
  const tiedQuantized = config.tiedEmbeddings ? await quantized?.('lm_head.weight') : undefined;
  const shareEmbedding = embeddingIsQuantizedOutput(config, reader, tiedQuantized?.kind === 'quantized');
  const slabs = new TensorSlabs();
  for (const spec of llamaTensorSpecs(config)) {
    if (shareEmbedding && spec.name === 'model.embed_tokens.weight') continue;
    const q = spec.linear ? slabs.linear(await quantized?.(spec.name)) : undefined;
    if (q) {
      if (q.n !== spec.shape[0] || q.k !== spec.shape[1]) {
        throw new FluteError('E_SHAPE', `${reader.file}: tensor ${spec.name}: expected ${showShape(spec.shape)}, got quantized [${q.n}, ${q.k}]`);
      }
      tensors.set(spec.name, q);
      continue;
    }
    const data = await readDense(reader, spec);
    // norms, biases and a dense embedding stay with the model, so only linear layers go into slabs
    tensors.set(spec.name, spec.linear ? { kind: 'dense', n: spec.shape[0], k: spec.shape[1], weight: slabs.floats(data) } : data);
  }
  const dense = (name: string) => tensors.get(name) as Float32Array;
  const linear = (name: string) => tensors.get(name) as Linear;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      attnNorm: dense(p + 'input_layernorm.weight'),
      wq: linear(p + LAYER_LINEARS.wq), wk: linear(p + LAYER_LINEARS.wk), wv: linear(p + LAYER_LINEARS.wv), wo: linear(p + LAYER_LINEARS.wo),
      ffnNorm: dense(p + 'post_attention_layernorm.weight'),
      w1: linear(p + LAYER_LINEARS.w1), w2: linear(p + LAYER_LINEARS.w2), w3: linear(p + LAYER_LINEARS.w3),
      ...(config.qkvBias ? { bq: dense(p + biasName('wq')), bk: dense(p + biasName('wk')), bv: dense(p + biasName('wv')) } : {}),
    });
  }
  // shareEmbedding: the quantized output layer is the embedding's own table (embeddingIsQuantizedOutput)
  const tokenEmbedding: EmbeddingTable = shareEmbedding ? (tiedQuantized as QuantizedLinear) : dense('model.embed_tokens.weight');
  const output: Linear = config.tiedEmbeddings
    ? (tiedQuantized ?? { kind: 'dense', n: config.vocabSize, k: config.dim, weight: dense('model.embed_tokens.weight') })
    : linear('lm_head.weight');
  if (output.n !== config.vocabSize || output.k !== config.dim) {
    throw new FluteError('E_SHAPE', `${reader.file}: tensor lm_head.weight: expected [${config.vocabSize}, ${config.dim}], got [${output.n}, ${output.k}]`);
  }
  return { tokenEmbedding, layers, finalNorm: dense('model.norm.weight'), output };
}

/**
 * Copies of tensors under 32 MiB, packed into 64 MiB buffers. A backend copies each layer into its
 * own memory and the caller then drops these. glibc's malloc serves the 64 MiB buffers with mmap and
 * unmaps them when freed, while tensor-sized buffers come from its heap once freeing an mmapped one
 * has raised the dynamic mmap threshold (up to 32 MiB), and that heap stays with the process: a
 * 1B-shape IQ4_NL model measured 1656-1661 MiB RSS after loading without slabs, 1130-1136 with them
 * (Node 20, wasm, 1 thread, three loads each). Tensors of 32 MiB and more are mmapped as they are and are left alone,
 * and so are the first 64 MiB of tensors: a slab is made only once that much has been read, so a small
 * file never costs a 64 MiB buffer, and a slab never exceeds the tensor bytes already read.
 */
class TensorSlabs {
  private static readonly SLAB = 64 * 2 ** 20;
  private static readonly LARGE = 32 * 2 ** 20;
  private slab: ArrayBuffer | null = null;
  private used = 0;
  private seen = 0; // bytes of tensors offered so far

  private place<T extends Float32Array | Uint8Array>(a: T, make: (buffer: ArrayBuffer, offset: number, length: number) => T): T {
    const before = this.seen;
    this.seen += a.byteLength;
    if (a.byteLength >= TensorSlabs.LARGE || before < TensorSlabs.SLAB) return a;
    const bytes = Math.ceil(a.byteLength / 64) * 64;
    if (!this.slab || this.used + bytes > this.slab.byteLength) {
      this.slab = new ArrayBuffer(TensorSlabs.SLAB);
      this.used = 0;
    }
    const copy = make(this.slab, this.used, a.length);
    copy.set(a);
    this.used += bytes;
    return copy;
  }

  floats(a: Float32Array): Float32Array {
    return this.place(a, (b, o, n) => new Float32Array(b, o, n));
  }

  linear<L extends Linear | undefined>(l: L): L {
    if (!l) return l;
    if (l.kind === 'dense') return { ...l, weight: this.floats(l.weight) };
    return { ...l, scales: this.floats(l.scales), packed: this.place(l.packed, (b, o, n) => new Uint8Array(b, o, n)) };
  }
}

async function readDense(reader: TensorReader, spec: TensorSpec): Promise<Float32Array> {
  if (!reader.has(spec.name)) throw new FluteError('E_NOT_FOUND', `${reader.file}: tensor ${spec.name} not found`);
  const { shape } = reader.info(spec.name);
  if (shape.length !== spec.shape.length || shape.some((d, i) => d !== spec.shape[i])) {
    throw new FluteError('E_SHAPE', `${reader.file}: tensor ${spec.name}: expected ${showShape(spec.shape)}, got ${showShape(shape)}`);
  }
  const data = await reader.readF32(spec.name);
  const want = spec.shape.reduce((a, b) => a * b, 1);
  if (data.length !== want) {
    throw new FluteError('E_SHAPE', `${reader.file}: tensor ${spec.name}: expected ${want} values, read ${data.length}`);
  }
  return data;
}
