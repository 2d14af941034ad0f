// Karpathy's llama2.c "legacy" (version 0) checkpoint: 7 little-endian int32 (dim, hidden_dim, n_layers,
// n_heads, n_kv_heads, vocab_size, seq_len), then f32 tensors stacked over layers. Exposed as per-layer
// tensors under Hugging Face names, weights exactly as stored (Meta's interleaved RoPE layout).

import { FluteError } from '../errors.js';
import type { LlamaConfig } from '../model/config.js';
import { writeFileAtomic } from './atomic.js';
import { bytesToF32, typedArrayBytes } from './safetensors.js';
import { parseSource, type ByteSource } from './source.js';
import { numel, tensorTable, type TensorInfo, type TensorReader } from './tensors.js';

export const LLAMA2C_HEADER_BYTES = 28;
/** First uint32 of a version-1+ export ("ak42" in the export script). */
const MAGIC_V1 = 0x616b3432;
/** Bound on every header value, so a garbage header is rejected before any size arithmetic. */
const MAX_DIM = 1 << 24;
const NORM_EPS = 1e-5;
const ROPE_THETA = 10000;

export interface Llama2cReader extends TensorReader {
  readonly config: LlamaConfig;
}

const HEADER_FIELDS = ['dim', 'hidden_dim', 'n_layers', 'n_heads', 'n_kv_heads', 'vocab_size', 'seq_len'] as const;

/** The config a header describes, or a message saying which field is wrong. */
function configFromHeader(h: readonly number[]): LlamaConfig | string {
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = h;
  for (let i = 0; i < 7; i++) {
    const v = i === 5 ? Math.abs(h[i]) : h[i];
    if (!Number.isInteger(v) || v < 1 || v > MAX_DIM) return `${HEADER_FIELDS[i]} must be between 1 and ${MAX_DIM}, got ${h[i]}`;
  }
  if (dim % nHeads !== 0) return `dim (${dim}) must be a multiple of n_heads (${nHeads})`;
  if (nHeads % nKvHeads !== 0) return `n_heads (${nHeads}) must be a multiple of n_kv_heads (${nKvHeads})`;
  const headDim = dim / nHeads;
  if (headDim % 2 !== 0) return `head size dim/n_heads (${headDim}) must be even for RoPE`;
  return {
    dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize: Math.abs(vocab), seqLen,
    normEps: NORM_EPS, ropeTheta: ROPE_THETA, ropeLayout: 'interleaved',
    // A negative vocab_size is llama2.c's flag for a separate classifier after the RoPE tables.
    tiedEmbeddings: vocab > 0,
  };
}

interface Slot {
  readonly info: TensorInfo;
  readonly rope?: 'real' | 'imag'; // the precomputed RoPE tables, skipped by the reader
}

/** Every tensor's place in the file, in file order, and the bytes the file needs. */
function layout(c: LlamaConfig): { slots: Slot[]; end: number } {
  const { dim: d, hiddenDim: h, nLayers: L, vocabSize: v } = c;
  const kv = c.nKvHeads * c.headDim;
  const slots: Slot[] = [];
  let off = LLAMA2C_HEADER_BYTES;
  const one = (name: string, shape: number[], rope?: Slot['rope']) => {
    const byteLength = numel(shape) * 4;
    slots.push({ info: { name, dtype: 'F32', shape, offset: off, byteLength }, rope });
    off += byteLength;
  };
  const perLayer = (suffix: string, shape: number[]) => {
    for (let i = 0; i < L; i++) one(`model.layers.${i}.${suffix}`, shape);
  };
  one('model.embed_tokens.weight', [v, d]);
  perLayer('input_layernorm.weight', [d]);
  perLayer('self_attn.q_proj.weight', [d, d]);
  perLayer('self_attn.k_proj.weight', [kv, d]);
  perLayer('self_attn.v_proj.weight', [kv, d]);
  perLayer('self_attn.o_proj.weight', [d, d]);
  perLayer('post_attention_layernorm.weight', [d]);
  perLayer('mlp.gate_proj.weight', [h, d]);
  perLayer('mlp.down_proj.weight', [d, h]);
  perLayer('mlp.up_proj.weight', [h, d]);
  one('model.norm.weight', [d]);
  one('freq_cis_real', [c.seqLen, c.headDim / 2], 'real');
  one('freq_cis_imag', [c.seqLen, c.headDim / 2], 'imag');
  if (!c.tiedEmbeddings) one('lm_head.weight', [v, d]);
  return { slots, end: off };
}

/** The bytes layout() places, by formula (inexact only past 2^53, far beyond any file size). */
function fileBytes(c: LlamaConfig): number {
  const { dim: d, hiddenDim: h, nLayers: L, vocabSize: v } = c;
  const kv = c.nKvHeads * c.headDim;
  const perLayer = 2 * d + 2 * d * d + 2 * kv * d + 3 * h * d;
  const floats = v * d + L * perLayer + d + c.seqLen * c.headDim + (c.tiedEmbeddings ? 0 : v * d);
  return LLAMA2C_HEADER_BYTES + 4 * floats;
}

/** Layer-major listing order: embeddings, each layer's tensors together, final norm, classifier. */
function listRank(t: TensorInfo): number {
  const m = /^model\.layers\.(\d+)\./.exec(t.name);
  return m ? 1 + Number(m[1]) : t.name === 'model.embed_tokens.weight' ? 0 : MAX_DIM + 1;
}

const describe = (c: LlamaConfig) =>
  `dim ${c.dim}, hidden_dim ${c.hiddenDim}, n_layers ${c.nLayers}, n_heads ${c.nHeads}, n_kv_heads ${c.nKvHeads}, vocab ${c.vocabSize}${c.tiedEmbeddings ? ' (tied)' : ' (separate classifier)'}, seq_len ${c.seqLen}`;

/**
 * Opens a legacy llama2.c checkpoint (a path, or any ByteSource). The header and file size are
 * checked before any tensor is read. The reader owns the source on success, as openSafetensors.
 */
export async function openLlama2c(source: ByteSource | string): Promise<Llama2cReader> {
  return parseSource(source, parse);
}

async function parse(src: ByteSource): Promise<Llama2cReader> {
  const file = src.name;
  const head = await src.read(0, Math.min(src.size, LLAMA2C_HEADER_BYTES));
  const dv = new DataView(head.buffer, head.byteOffset, head.length);
  if (head.length >= 4 && dv.getUint32(0, true) === MAGIC_V1) {
    throw new FluteError('E_FORMAT', `${file}: this is a llama2.c version-1+ export (magic "ak42"); only the legacy (version 0) export is supported (re-export with export.py --version 0)`);
  }
  if (head.length < LLAMA2C_HEADER_BYTES) {
    throw new FluteError('E_TRUNCATED', `${file}: ${src.size} bytes is shorter than the ${LLAMA2C_HEADER_BYTES}-byte llama2.c header`);
  }
  const fields = Array.from({ length: 7 }, (_, i) => dv.getInt32(4 * i, true));
  const config = configFromHeader(fields);
  if (typeof config === 'string') throw new FluteError('E_BAD_HEADER', `${file}: not a valid llama2.c header: ${config}`);
  // Size check before layout(): a lying n_layers would otherwise build millions of slots first.
  // Files longer than needed are accepted, as llama2.c itself does.
  const needed = fileBytes(config);
  if (src.size < needed) {
    throw new FluteError('E_TRUNCATED', `${file}: a llama2.c checkpoint with ${describe(config)} needs ${needed} bytes, but the file is only ${src.size} bytes long`);
  }
  const { slots } = layout(config);
  const list = slots.filter((s) => !s.rope).map((s) => s.info);
  list.sort((a, b) => listRank(a) - listRank(b)); // stable: file order within a layer
  const { info, has, readRaw } = tensorTable(src, list);
  return {
    file,
    config: Object.freeze(config),
    list: () => list,
    info,
    has,
    readRaw,
    readF32: async (name) => bytesToF32(await readRaw(name), 'F32', `${file}: tensor "${name}"`),
    close: () => src.close(),
  };
}

/**
 * llama2.c's precomputed RoPE table: cos (real) or sin (imag) of pos * theta^(-2i/headDim), rounded
 * through f32 at each step as the PyTorch export does (all but ~5% of stories260K's values match exactly).
 */
function ropeTable(c: LlamaConfig, part: 'real' | 'imag'): Float32Array {
  const f = Math.fround;
  const half = c.headDim / 2;
  const out = new Float32Array(c.seqLen * half); // [seqLen, headDim/2] f32
  for (let i = 0; i < half; i++) {
    const freq = f(1 / f(c.ropeTheta ** f((2 * i) / c.headDim)));
    for (let p = 0; p < c.seqLen; p++) out[p * half + i] = (part === 'real' ? Math.cos : Math.sin)(f(p * freq));
  }
  return out;
}

/**
 * Writes `reader`'s tensors (Hugging Face names, any dtype readF32 handles) as a legacy llama2.c
 * checkpoint, atomically and one tensor at a time. The format records only the seven header values,
 * so a config it cannot represent (other eps, theta or RoPE layout) is refused rather than lost.
 */
export async function writeLlama2c(path: string, config: LlamaConfig, reader: TensorReader): Promise<number> {
  const c = config;
  const header = [c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.tiedEmbeddings ? c.vocabSize : -c.vocabSize, c.seqLen];
  const parsed = configFromHeader(header);
  if (typeof parsed === 'string') throw new FluteError('E_OPTION', `${path}: cannot write a llama2.c checkpoint: ${parsed}`);
  if (c.headDim !== parsed.headDim || c.normEps !== NORM_EPS || c.ropeTheta !== ROPE_THETA || c.ropeLayout !== 'interleaved') {
    throw new FluteError('E_OPTION', `${path}: a llama2.c checkpoint implies headDim = dim/nHeads, normEps 1e-5, ropeTheta 10000 and interleaved RoPE; got headDim ${c.headDim}, normEps ${c.normEps}, ropeTheta ${c.ropeTheta}, ropeLayout ${c.ropeLayout}`);
  }
  const { slots } = layout(parsed);
  async function* chunks(): AsyncGenerator<Uint8Array> {
    yield typedArrayBytes(Int32Array.from(header));
    for (const { info: t, rope } of slots) {
      if (rope) {
        yield typedArrayBytes(ropeTable(c, rope));
        continue;
      }
      const src = reader.info(t.name);
      if (src.shape.length !== t.shape.length || src.shape.some((d, i) => d !== t.shape[i])) {
        throw new FluteError('E_SHAPE', `${reader.file}: tensor "${t.name}" has shape [${src.shape.join(', ')}], the config needs [${t.shape.join(', ')}]`);
      }
      yield typedArrayBytes(await reader.readF32(t.name));
    }
  }
  return writeFileAtomic(path, chunks());
}
