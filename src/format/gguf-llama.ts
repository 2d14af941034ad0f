// GGUF files of llama.cpp's "llama" architecture as models: the config from llama.* metadata, tensors
// under Hugging Face names (blk.N.attn_q.weight -> model.layers.N.self_attn.q_proj.weight), Q4_0 and
// IQ4_NL linear weights as QuantizedLinear layers (no f32 expansion), the SentencePiece vocabulary as a
// llama2.c tokenizer, and the writer that turns any opened model into a GGUF file llama.cpp runs.
// The container is gguf.ts; block layouts are ggml-types.ts.

import { FluteError } from '../errors.js';
import type { LlamaConfig } from '../model/config.js';
import type { OpenedModel } from '../model/open.js';
import { llamaTensorSpecs } from '../model/weights.js';
import { dequantize, relativeError, type Linear, type QuantizedLinear } from '../quant/linear.js';
import { permuteRows, ropePermutation } from '../quant/permute.js';
import { TABLE_KINDS } from '../quant/tables.js';
import { parseLlama2cTokenizer, type Llama2cVocab } from './llama2c-tokenizer.js';
import type { QuantizedLayerMeta } from './checkpoint.js';
import {
  blocksToLinear, encodeFloat, GGML_TYPES, ggmlToF32, LUT_BLOCK_TABLE, linearBlockProblem, linearToBlocks,
  QK, quantizeQ8_0, quantizeToLutBlocks, type GgmlTypeName, type LutBlockType,
} from './ggml-types.js';
import {
  metaArray, metaBool, metaFloat, metaInt, metaString, openGguf, writeGguf,
  type GgufFile, type GgufTensorInfo, type GgufValue, type GgufWriteTensor,
} from './gguf.js';
import { baseName, type ByteSource } from './source.js';
import { checkLayerCount, type TensorInfo, type TensorReader } from './tensors.js';

// ---------------------------------------------------------------------------------------------
// Tensor names

/** Per-layer tensors: llama.cpp's name after "blk.N." -> ours after "model.layers.N.". */
const LAYER_NAMES: Readonly<Record<string, string>> = {
  'attn_norm.weight': 'input_layernorm.weight',
  'attn_q.weight': 'self_attn.q_proj.weight',
  'attn_k.weight': 'self_attn.k_proj.weight',
  'attn_v.weight': 'self_attn.v_proj.weight',
  'attn_output.weight': 'self_attn.o_proj.weight',
  'ffn_norm.weight': 'post_attention_layernorm.weight',
  'ffn_gate.weight': 'mlp.gate_proj.weight',
  'ffn_down.weight': 'mlp.down_proj.weight',
  'ffn_up.weight': 'mlp.up_proj.weight',
};
const GLOBAL_NAMES: Readonly<Record<string, string>> = {
  'token_embd.weight': 'model.embed_tokens.weight',
  'output_norm.weight': 'model.norm.weight',
  'output.weight': 'lm_head.weight',
};
const HF_LAYER = new Map(Object.entries(LAYER_NAMES).map(([g, h]) => [h, g]));
const HF_GLOBAL = new Map(Object.entries(GLOBAL_NAMES).map(([g, h]) => [h, g]));

/** Our (Hugging Face) name of a GGUF tensor; unknown names pass through unchanged. */
export function hfNameOf(ggufName: string): string {
  const m = /^blk\.(\d+)\.(.+)$/.exec(ggufName);
  if (m && LAYER_NAMES[m[2]]) return `model.layers.${m[1]}.${LAYER_NAMES[m[2]]}`;
  return GLOBAL_NAMES[ggufName] ?? ggufName;
}

/** The GGUF name of one of our tensor names; unknown names pass through unchanged. */
export function ggufNameOf(hfName: string): string {
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hfName);
  if (m && HF_LAYER.has(m[2])) return `blk.${m[1]}.${HF_LAYER.get(m[2])}`;
  return HF_GLOBAL.get(hfName) ?? hfName;
}

// ---------------------------------------------------------------------------------------------
// Config

const MAX_DIM = 1 << 24;

/** The LlamaConfig a GGUF file describes; E_FORMAT for other architectures or features we cannot run. */
export function ggufLlamaConfig(g: GgufFile): LlamaConfig {
  const arch = metaString(g, 'general.architecture');
  if (arch !== 'llama') throw new FluteError('E_FORMAT', `${g.file}: general.architecture is ${JSON.stringify(arch)}; only "llama" models are supported`);
  const need = (key: string): number => {
    const v = metaInt(g, key);
    if (v === undefined) throw new FluteError('E_BAD_HEADER', `${g.file}: metadata "${key}" is missing`);
    if (!Number.isInteger(v) || v < 1 || v > MAX_DIM) throw new FluteError('E_BAD_HEADER', `${g.file}: metadata "${key}" must be between 1 and ${MAX_DIM}, got ${v}`);
    return v;
  };
  const dim = need('llama.embedding_length');
  const nHeads = need('llama.attention.head_count');
  const nKvHeads = g.metadata.has('llama.attention.head_count_kv') ? need('llama.attention.head_count_kv') : nHeads;
  const headDim = g.metadata.has('llama.attention.key_length') ? need('llama.attention.key_length') : dim / nHeads;
  const bad = (msg: string) => new FluteError('E_BAD_HEADER', `${g.file}: ${msg}`);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw bad(`head size ${headDim} (embedding_length / head_count) must be an even integer`);
  if (nHeads % nKvHeads !== 0) throw bad(`head_count (${nHeads}) must be a multiple of head_count_kv (${nKvHeads})`);
  const valueLen = metaInt(g, 'llama.attention.value_length');
  if (valueLen !== undefined && valueLen !== headDim) throw new FluteError('E_FORMAT', `${g.file}: value_length ${valueLen} differs from key_length ${headDim}; not supported`);
  const ropeDims = metaInt(g, 'llama.rope.dimension_count');
  if (ropeDims !== undefined && ropeDims !== headDim) throw new FluteError('E_FORMAT', `${g.file}: llama.rope.dimension_count ${ropeDims} rotates part of a ${headDim}-wide head; only full rotation is supported`);
  const scaling = metaString(g, 'llama.rope.scaling.type');
  if ((scaling !== undefined && scaling !== 'none') || g.has('rope_freqs.weight')) {
    throw new FluteError('E_FORMAT', `${g.file}: RoPE scaling (${scaling ?? 'rope_freqs.weight, LLaMA-3.1 style'}) is not supported`);
  }
  const normEps = metaFloat(g, 'llama.attention.layer_norm_rms_epsilon');
  if (normEps === undefined || !(normEps > 0 && normEps < 1)) throw bad(`llama.attention.layer_norm_rms_epsilon must be in (0, 1), got ${normEps}`);
  const ropeTheta = metaFloat(g, 'llama.rope.freq_base') ?? 10000;
  if (!(ropeTheta > 0)) throw bad(`llama.rope.freq_base must be positive, got ${ropeTheta}`);
  const embd = g.has('token_embd.weight') ? g.tensor('token_embd.weight') : undefined;
  if (!embd || embd.ne.length !== 2) throw bad('tensor token_embd.weight [dim, vocab] is missing or not 2-D');
  const vocabSize = embd.ne[1];
  const declared = metaInt(g, 'llama.vocab_size');
  if (declared !== undefined && declared !== vocabSize) throw bad(`llama.vocab_size ${declared} disagrees with token_embd.weight (${vocabSize} rows)`);
  return Object.freeze({
    dim, hiddenDim: need('llama.feed_forward_length'), nLayers: need('llama.block_count'), nHeads, nKvHeads, headDim,
    vocabSize, seqLen: need('llama.context_length'), normEps, ropeTheta,
    // llama.cpp's LLAMA architecture rotates adjacent pairs (rope type NORM): convert_hf_to_gguf.py
    // permutes Hugging Face q/k rows back to Meta's interleaved order.
    ropeLayout: 'interleaved', tiedEmbeddings: !g.has('output.weight'),
  });
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

/** tokenizer.ggml.token_type values (llama.cpp `llama_token_attr` before attributes: LLAMA_TOKEN_TYPE_*). */
export const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;
const SPACE = '\u2581'; // SentencePiece's "▁", written for a space
const BYTE_IDS = 3; // byte tokens <0x00>..<0xFF> are ids 3..258 in llama SentencePiece vocabularies

export interface GgufVocab {
  readonly tokens: readonly string[]; // [vocab] with "▁" for spaces
  readonly scores: Float32Array; // [vocab]
  readonly types: Int32Array; // [vocab] TOKEN_TYPE values
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
}

/** The llama (SentencePiece) vocabulary of a GGUF file; E_FORMAT for other tokenizer models. */
export function ggufVocab(g: GgufFile): GgufVocab {
  const model = metaString(g, 'tokenizer.ggml.model');
  if (model !== 'llama') {
    throw new FluteError('E_FORMAT', `${g.file}: tokenizer.ggml.model is ${JSON.stringify(model)}; only SentencePiece "llama" vocabularies are supported (pass --tokenizer FILE)`);
  }
  const tokens = metaArray(g, 'tokenizer.ggml.tokens', 'string');
  if (!tokens) throw new FluteError('E_BAD_HEADER', `${g.file}: tokenizer.ggml.tokens is missing`);
  const scores = metaArray(g, 'tokenizer.ggml.scores', 'f32') ?? new Float32Array(tokens.length);
  const types = metaArray(g, 'tokenizer.ggml.token_type', 'i32') ?? new Int32Array(tokens.length).fill(TOKEN_TYPE.normal);
  if (scores.length !== tokens.length || types.length !== tokens.length) {
    throw new FluteError('E_BAD_HEADER', `${g.file}: ${tokens.length} tokens but ${scores.length} scores and ${types.length} token types`);
  }
  return {
    tokens, scores, types,
    bosId: metaInt(g, 'tokenizer.ggml.bos_token_id') ?? 1,
    eosId: metaInt(g, 'tokenizer.ggml.eos_token_id') ?? 2,
    unkId: metaInt(g, 'tokenizer.ggml.unknown_token_id') ?? 0,
  };
}

/**
 * The vocabulary as llama2.c's tokenizer sees it (the same SentencePiece BPE: spaces written " ",
 * byte tokens at 3..258, BOS 1, EOS 2). E_FORMAT naming what differs when it is not that layout.
 */
export function vocabToLlama2c(v: GgufVocab, file: string): Llama2cVocab {
  const n = v.tokens.length;
  const hex = (b: number) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
  if (v.bosId !== 1 || v.eosId !== 2) throw new FluteError('E_FORMAT', `${file}: BOS/EOS are ids ${v.bosId}/${v.eosId}; the llama2.c tokenizer needs 1/2`);
  if (n < BYTE_IDS + 256) throw new FluteError('E_FORMAT', `${file}: ${n} tokens cannot hold the 256 byte tokens at ids 3..258`);
  for (let b = 0; b < 256; b++) {
    const t = v.tokens[BYTE_IDS + b];
    if (t.toUpperCase() !== hex(b).toUpperCase()) throw new FluteError('E_FORMAT', `${file}: token ${BYTE_IDS + b} is ${JSON.stringify(t)}, expected the byte token ${hex(b)}`);
  }
  const enc = new TextEncoder();
  const vocab = v.tokens.map((t) => t.replaceAll(SPACE, ' '));
  // A loop, not Math.max(...): a spread of 128K lengths overflows the stack.
  const maxTokenLength = vocab.reduce((m, p) => Math.max(m, enc.encode(p).length), 1);
  return { vocab, scores: Float32Array.from(v.scores), maxTokenLength };
}

/** The reverse: a llama2.c vocabulary as GGUF tokens, with llama.cpp's special pieces and token types. */
export function llama2cToVocab(v: Llama2cVocab): GgufVocab {
  const specials = ['<unk>', '<s>', '</s>']; // llama2.c writes "\n<s>\n" and "\n</s>\n" for ids 1 and 2
  const tokens = v.vocab.map((p, i) => (i < BYTE_IDS ? specials[i] : p.replaceAll(' ', SPACE)));
  const types = Int32Array.from(v.vocab, (p, i) =>
    i === 0 ? TOKEN_TYPE.unknown : i < BYTE_IDS ? TOKEN_TYPE.control : i < BYTE_IDS + 256 && /^<0x[0-9A-Fa-f]{2}>$/.test(p) ? TOKEN_TYPE.byte : TOKEN_TYPE.normal);
  return { tokens, scores: Float32Array.from(v.scores), types, bosId: 1, eosId: 2, unkId: 0 };
}

/** llama2.c tokenizer file bytes (run.c's format): i32 max_token_length, then per token f32 score, i32 length, bytes. */
export function serializeLlama2cTokenizer(v: Llama2cVocab): Uint8Array {
  const enc = new TextEncoder();
  const pieces = v.vocab.map((p) => enc.encode(p));
  const out = new Uint8Array(4 + pieces.reduce((a, p) => a + 8 + p.length, 0));
  const dv = new DataView(out.buffer);
  dv.setInt32(0, v.maxTokenLength, true);
  let off = 4;
  pieces.forEach((p, i) => {
    dv.setFloat32(off, v.scores[i], true);
    dv.setInt32(off + 4, p.length, true);
    out.set(p, off + 8);
    off += 8 + p.length;
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Opening a GGUF file as a model

export interface GgufOpenedModel extends OpenedModel {
  readonly format: 'gguf';
  readonly gguf: GgufFile;
}

export function isGgufModel(m: OpenedModel): m is GgufOpenedModel {
  return m.format === 'gguf' && 'gguf' in m;
}

const LUT_TYPES: ReadonlySet<GgmlTypeName> = new Set(['Q4_0', 'IQ4_NL']);

/** The [N, K] shape of a 2-D GGUF tensor (ne = [K, N]). */
function shapeOf(t: GgufTensorInfo): number[] {
  return [...t.ne].reverse();
}

/**
 * Opens a llama GGUF file as a model. Q4_0 and IQ4_NL linear weights become QuantizedLinear layers
 * (with tied embeddings, a Q4_0/IQ4_NL token_embd also serves as the quantized output layer); every
 * other tensor reads as f32, Q8_0 included (exact, and our kernels' f32 path is faster than their
 * generic 8-bit one; q8_0ToLinear gives the 8-bit LUT view for callers who prefer the memory).
 */
export async function openGgufModel(source: string | ByteSource, opts: { tokenizer?: string } = {}): Promise<GgufOpenedModel> {
  const g = await openGguf(source);
  try {
    const config = ggufLlamaConfig(g);
    checkLayerCount(g.file, 'llama.block_count', config.nLayers, g.tensors.length);
    const infos = new Map<string, { info: TensorInfo; t: GgufTensorInfo }>();
    for (const t of g.tensors) {
      const name = hfNameOf(t.name);
      const f = t.type.name === 'F16' || t.type.name === 'BF16' || t.type.name === 'F32';
      infos.set(name, {
        t,
        info: Object.freeze({ name, dtype: f ? t.type.name as 'F32' | 'F16' | 'BF16' : 'F32', shape: Object.freeze(shapeOf(t)), offset: t.offset, byteLength: t.byteLength, ...(f ? {} : { storage: t.type.name }) }),
      });
    }
    const quantizedSource = new Map<string, GgufTensorInfo>(); // HF weight name -> GGUF tensor
    const linearNames = new Set(llamaTensorSpecs(config).filter((s) => s.linear).map((s) => s.name));
    for (const [name, { t }] of infos) if (linearNames.has(name) && LUT_TYPES.has(t.type.name) && t.ne.length === 2) quantizedSource.set(name, t);
    const embd = g.tensor('token_embd.weight');
    if (config.tiedEmbeddings && LUT_TYPES.has(embd.type.name)) quantizedSource.set('lm_head.weight', embd);
    const quantized = new Map<string, QuantizedLayerMeta>();
    for (const [name, t] of quantizedSource) {
      const table = LUT_BLOCK_TABLE[t.type.name as LutBlockType];
      quantized.set(name, { shape: [t.ne[1], t.ne[0]], bits: 4, group_size: QK, table, table_id: TABLE_KINDS[table].id, scale_dtype: 'f16' });
    }
    const entry = (name: string) => {
      const e = infos.get(name);
      if (!e) throw new FluteError('E_NOT_FOUND', `${g.file}: no tensor "${name}" (GGUF name "${ggufNameOf(name)}")`);
      return e;
    };
    const list = [...infos.values()].map((e) => e.info);
    const tensors: TensorReader = {
      file: g.file,
      list: () => list,
      info: (name) => entry(name).info,
      has: (name) => infos.has(name),
      readRaw: (name) => g.readRaw(entry(name).t.name),
      async readF32(name) {
        const { t, info } = entry(name);
        return ggmlToF32(t.type, await g.readRaw(t.name), info.shape.reduce((a, b) => a * b, 1), `${g.file}: tensor "${t.name}"`);
      },
      close: () => g.close(),
    };
    return {
      file: g.file, format: 'gguf', gguf: g, config, tensors, quantized,
      async readQuantized(name) {
        const t = quantizedSource.get(name);
        if (!t) throw new FluteError('E_NOT_FOUND', `${g.file}: "${name}" is not a Q4_0 or IQ4_NL linear weight`);
        return blocksToLinear(t.type.name as LutBlockType, await g.readRaw(t.name), t.ne[1], t.ne[0], `${g.file}: ${t.name}`);
      },
      async readTokenizer() {
        if (opts.tokenizer) {
          const { readFile } = await import('node:fs/promises');
          try {
            return { bytes: new Uint8Array(await readFile(opts.tokenizer)), file: opts.tokenizer };
          } catch (e) {
            const code = (e as NodeJS.ErrnoException).code;
            throw new FluteError(code === 'ENOENT' ? 'E_NOT_FOUND' : 'E_IO', `tokenizer ${opts.tokenizer}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
          }
        }
        const v = vocabToLlama2c(ggufVocab(g), g.file);
        if (v.vocab.length !== config.vocabSize) throw new FluteError('E_FORMAT', `${g.file}: the vocabulary has ${v.vocab.length} tokens but token_embd.weight has ${config.vocabSize} rows`);
        return { bytes: serializeLlama2cTokenizer(v), file: `${g.file} (GGUF vocabulary)` };
      },
      close: () => g.close(),
    };
  } catch (e) {
    await g.close().catch(() => undefined);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Writing a model as GGUF

export const GGUF_WRITE_TYPES = ['f32', 'f16', 'q8_0', 'q4_0', 'iq4_nl'] as const;
export type GgufWriteType = (typeof GGUF_WRITE_TYPES)[number];

const WRITE_TYPE: Record<GgufWriteType, { ggml: GgmlTypeName; fileType: number }> = {
  // general.file_type values are llama.cpp's `enum llama_ftype`.
  f32: { ggml: 'F32', fileType: 0 },
  f16: { ggml: 'F16', fileType: 1 },
  q4_0: { ggml: 'Q4_0', fileType: 2 },
  q8_0: { ggml: 'Q8_0', fileType: 7 },
  iq4_nl: { ggml: 'IQ4_NL', fileType: 25 },
};

export interface WriteGgufOptions {
  readonly type: GgufWriteType;
  /** IQ4_NL scale search steps (see quantizeToLutBlocks); default 7. */
  readonly iq4nlSearch?: number;
  /** general.name; default the source file's base name. */
  readonly name?: string;
  readonly onProgress?: (done: number, total: number, tensor: string) => void;
  readonly signal?: AbortSignal;
}

export interface GgufTensorReport {
  readonly name: string; // GGUF name
  readonly type: GgmlTypeName;
  readonly shape: readonly number[]; // [N, K] or [dim]
  /** copied: the source's bytes as they were; repacked: a source layer moved into blocks exactly; converted: from f32. */
  readonly how: 'copied' | 'repacked' | 'converted';
  /** Relative RMS error against the source's f32 values, for converted block types. */
  readonly relRmse?: number;
}

export interface GgufExportReport {
  readonly out: string;
  readonly bytes: number;
  readonly type: GgufWriteType;
  readonly tensors: GgufTensorReport[];
  /** Tensors written as F16 because K is not a multiple of 32 (llama.cpp's own fallback). */
  readonly fallbacks: string[];
}

const u32 = (value: number): GgufValue => ({ type: 'u32', value });
const f32 = (value: number): GgufValue => ({ type: 'f32', value });
const str = (value: string): GgufValue => ({ type: 'string', value });

function llamaMetadata(c: LlamaConfig, name: string, fileType: number, quantized: boolean): [string, GgufValue][] {
  const md: [string, GgufValue][] = [
    ['general.architecture', str('llama')],
    ['general.name', str(name)],
    ['general.file_type', u32(fileType)],
    ['llama.context_length', u32(c.seqLen)],
    ['llama.embedding_length', u32(c.dim)],
    ['llama.block_count', u32(c.nLayers)],
    ['llama.feed_forward_length', u32(c.hiddenDim)],
    ['llama.rope.dimension_count', u32(c.headDim)],
    ['llama.attention.head_count', u32(c.nHeads)],
    ['llama.attention.head_count_kv', u32(c.nKvHeads)],
    ['llama.attention.layer_norm_rms_epsilon', f32(c.normEps)],
    ['llama.rope.freq_base', f32(c.ropeTheta)],
    ['llama.vocab_size', u32(c.vocabSize)],
  ];
  if (c.headDim * c.nHeads !== c.dim) md.push(['llama.attention.key_length', u32(c.headDim)], ['llama.attention.value_length', u32(c.headDim)]);
  if (quantized) md.push(['general.quantization_version', u32(2)]); // ggml's GGML_QNT_VERSION
  return md;
}

function vocabMetadata(v: GgufVocab): [string, GgufValue][] {
  return [
    ['tokenizer.ggml.model', str('llama')],
    ['tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: [...v.tokens] }],
    ['tokenizer.ggml.scores', { type: 'array', itemType: 'f32', value: Float32Array.from(v.scores) }],
    ['tokenizer.ggml.token_type', { type: 'array', itemType: 'i32', value: Int32Array.from(v.types) }],
    ['tokenizer.ggml.bos_token_id', u32(v.bosId)],
    ['tokenizer.ggml.eos_token_id', u32(v.eosId)],
    ['tokenizer.ggml.unknown_token_id', u32(v.unkId)],
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: true }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: false }],
  ];
}

/** The source's vocabulary metadata: a GGUF source's tokenizer.* keys verbatim, else built from its llama2.c tokenizer. */
async function tokenizerMetadata(src: OpenedModel): Promise<[string, GgufValue][]> {
  if (isGgufModel(src) && metaString(src.gguf, 'tokenizer.ggml.model') !== undefined) {
    return [...src.gguf.metadata].filter(([k]) => k.startsWith('tokenizer.'));
  }
  const tok = await src.readTokenizer().catch(() => undefined);
  if (!tok) return [];
  return vocabMetadata(llama2cToVocab(parseLlama2cTokenizer(tok.bytes, src.config.vocabSize, tok.file)));
}

/** GGUF order: embedding, final norm, output, then each block's tensors (llama.cpp's converters' order). */
function ggufOrder(c: LlamaConfig): string[] {
  const specs = llamaTensorSpecs(c).map((s) => s.name);
  const global = ['model.embed_tokens.weight', 'model.norm.weight', 'lm_head.weight'].filter((n) => specs.includes(n));
  const perLayer = ['self_attn.q_proj.weight', 'self_attn.k_proj.weight', 'self_attn.v_proj.weight', 'self_attn.o_proj.weight', 'input_layernorm.weight',
    'mlp.gate_proj.weight', 'mlp.down_proj.weight', 'mlp.up_proj.weight', 'post_attention_layernorm.weight'];
  const out = [...global];
  for (let l = 0; l < c.nLayers; l++) for (const p of perLayer) out.push(`model.layers.${l}.${p}`);
  return out;
}

/**
 * Writes any opened llama model as a GGUF file for llama.cpp: 1-D tensors F32, 2-D ones `type`
 * (F16 where K is not a multiple of 32, as llama.cpp's quantize falls back). Q/K rows are permuted
 * to the interleaved RoPE layout when the source uses the half one. A tensor already stored as the
 * target type is copied byte for byte; a QuantizedLinear that is exactly a Q4_0/IQ4_NL layer
 * (bits 4, g 32, that table, f16 scales) is repacked without loss; anything else goes through f32.
 */
export async function writeLlamaGguf(src: OpenedModel, out: string, opts: WriteGgufOptions): Promise<GgufExportReport> {
  const wt = WRITE_TYPE[opts.type];
  if (!wt) throw new FluteError('E_OPTION', `--type: expected one of ${GGUF_WRITE_TYPES.join(', ')}, got ${JSON.stringify(opts.type)}`);
  const c = src.config;
  // GGUF's llama architecture would need rope_freqs / scaling keys and bias tensors for these; refused, not dropped.
  if (c.ropeScaling) throw new FluteError('E_FORMAT', `${src.file}: GGUF export of a model with RoPE scaling (${c.ropeScaling.type}) is not supported`);
  if (c.qkvBias) throw new FluteError('E_FORMAT', `${src.file}: GGUF export of a model with q/k/v biases (${c.architecture ?? 'Qwen2'}) is not supported`);
  const target = GGML_TYPES[wt.ggml];
  const perm = (name: string): Int32Array | undefined => {
    if (c.ropeLayout === 'interleaved') return undefined;
    if (/self_attn\.q_proj\.weight$/.test(name)) return ropePermutation(c.nHeads, c.headDim, c.ropeLayout, 'interleaved');
    if (/self_attn\.k_proj\.weight$/.test(name)) return ropePermutation(c.nKvHeads, c.headDim, c.ropeLayout, 'interleaved');
    return undefined;
  };
  const names = ggufOrder(c);
  const reports: GgufTensorReport[] = [];
  const fallbacks: string[] = [];
  const tensors: GgufWriteTensor[] = [];
  let done = 0;
  for (const name of names) {
    const ggufName = ggufNameOf(name);
    const quantized = src.quantized.has(name); // names come from the config: no lm_head when tied
    const shape = quantized ? [...src.quantized.get(name)!.shape] : [...src.tensors.info(name).shape];
    let type: GgmlTypeName = shape.length === 1 ? 'F32' : target.name;
    if (shape.length === 2 && shape[1] % target.blockSize !== 0) {
      type = 'F16';
      fallbacks.push(`${ggufName} [${shape.join(', ')}]: K = ${shape[1]} is not a multiple of ${target.blockSize}, written as F16`);
    }
    const ne = [...shape].reverse();
    tensors.push({
      name: ggufName, type, ne,
      data: async () => {
        if (opts.signal?.aborted) throw new FluteError('E_ABORTED', `gguf export: aborted before ${ggufName}`);
        const r = await tensorBytes(src, name, ggufName, type, shape, quantized, perm(name), opts);
        reports.push(r.report);
        opts.onProgress?.(++done, names.length, ggufName);
        return r.bytes;
      },
    });
  }
  const vocab = await tokenizerMetadata(src);
  const metadata = [...llamaMetadata(c, opts.name ?? baseName(src.file).replace(/\.[^.]+$/, ''), wt.fileType, target.blockSize > 1), ...vocab];
  const bytes = await writeGguf(out, { metadata, tensors });
  return { out, bytes, type: opts.type, tensors: reports, fallbacks };
}

async function tensorBytes(
  src: OpenedModel, name: string, ggufName: string, type: GgmlTypeName, shape: number[], quantized: boolean,
  perm: Int32Array | undefined, opts: WriteGgufOptions,
): Promise<{ bytes: Uint8Array; report: GgufTensorReport }> {
  const where = `${src.file}: ${name}`;
  // 1. The source already holds this type: copy its bytes.
  if (!perm && isGgufModel(src) && src.gguf.has(ggufName) && src.gguf.tensor(ggufName).type.name === type && src.tensors.has(name)) {
    return { bytes: await src.tensors.readRaw(name), report: { name: ggufName, type, shape, how: 'copied' } };
  }
  let layer: Linear | undefined;
  if (quantized) layer = await src.readQuantized(name);
  if (layer && perm) layer = permuteRows(layer, perm, where);
  // 2. A quantized layer that is exactly a block layer: move its indices, no loss.
  if (layer?.kind === 'quantized' && (type === 'Q4_0' || type === 'IQ4_NL') && !linearBlockProblem(layer, type)) {
    return { bytes: linearToBlocks(layer, type, where), report: { name: ggufName, type, shape, how: 'repacked' } };
  }
  // 3. Through f32.
  let w: Float32Array;
  if (layer) w = layer.kind === 'quantized' ? dequantize(layer) : layer.weight;
  else {
    w = await src.tensors.readF32(name);
    if (perm) w = (permuteRows({ kind: 'dense', n: shape[0], k: shape[1], weight: w }, perm, where) as { weight: Float32Array }).weight;
  }
  const [n, k] = shape.length === 2 ? shape : [1, shape[0]];
  const report = (q?: QuantizedLinear): GgufTensorReport => ({ name: ggufName, type, shape, how: 'converted', ...(q ? { relRmse: relativeError(dequantize(q), w) } : {}) });
  switch (type) {
    case 'F32':
    case 'F16':
      return { bytes: encodeFloat(type, w), report: report() };
    case 'Q8_0':
      return { bytes: quantizeQ8_0(w, where), report: { ...report(), relRmse: relativeError(ggmlToF32(GGML_TYPES.Q8_0, quantizeQ8_0(w, where), w.length, where), w) } };
    case 'Q4_0':
    case 'IQ4_NL': {
      const q = quantizeToLutBlocks(type, w, n, k, where, { iq4nlSearch: opts.iq4nlSearch });
      return { bytes: linearToBlocks(q, type, where), report: report(q) };
    }
    default:
      throw new FluteError('E_UNSUPPORTED_DTYPE', `${where}: cannot write ggml type ${type}`);
  }
}

/** A GGUF file's metadata as plain JSON values (typed arrays summarized past `maxItems`), for inspect. */
export function metadataSummary(g: GgufFile, maxItems = 8): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of g.metadata) {
    let val: unknown;
    if (v.type === 'array') {
      const items = Array.from(v.value as ArrayLike<unknown>).slice(0, maxItems).map((x) => (typeof x === 'bigint' ? x.toString() : x));
      val = v.value.length > maxItems ? { items, count: v.value.length } : items;
    } else val = typeof v.value === 'bigint' ? v.value.toString() : v.value;
    Object.defineProperty(out, k, { value: val, enumerable: true, writable: true, configurable: true });
  }
  return out;
}
