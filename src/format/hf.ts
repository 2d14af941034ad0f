// Hugging Face model folders: config.json -> LlamaConfig (LLaMA 2/3/3.1/3.2, Mistral, Qwen2), the weights of
// model.safetensors or of a sharded model.safetensors.index.json behind ONE TensorReader (tensor by tensor,
// bf16/f16/f32), and the tokenizer files beside them. Weights keep HF's half-rotation RoPE layout. Parsing
// the tokenizer is src/tokenizer/hf.ts's job; choosing this reader for a folder is src/model/open.ts's.

import { FluteError } from '../errors.js';
import type { LlamaConfig, RopeScaling } from '../model/config.js';
import type { OpenedModel } from '../model/open.js';
import { writeError } from './atomic.js';
import { openSafetensors, type SafetensorsReader } from './safetensors.js';
import { checkLayerCount, type TensorInfo, type TensorReader } from './tensors.js';

/** The architectures this runtime runs, by config.json `architectures[0]`, with their `model_type`. */
export const HF_ARCHITECTURES = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
} as const;
export type HfArchitecture = keyof typeof HF_ARCHITECTURES;

export const HF_CONFIG = 'config.json';
export const HF_SINGLE_WEIGHTS = 'model.safetensors';
export const HF_SHARD_INDEX = 'model.safetensors.index.json';
export const HF_TOKENIZER = 'tokenizer.json';
export const HF_TOKENIZER_CONFIG = 'tokenizer_config.json';
export const HF_GENERATION_CONFIG = 'generation_config.json';
export const HF_CHAT_TEMPLATE = 'chat_template.jinja'; // newer transformers keep the template apart
/** What `flute quantize` copies beside the checkpoint it writes from a Hugging Face folder. */
export const HF_SIDECAR_FILES = [HF_CONFIG, HF_GENERATION_CONFIG, HF_TOKENIZER, HF_TOKENIZER_CONFIG, 'special_tokens_map.json', HF_CHAT_TEMPLATE] as const;

// ---------------------------------------------------------------------------------------------
// config.json

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The LlamaConfig a Hugging Face config.json describes. Unknown architectures are E_FORMAT naming the
 * architecture and the supported list; missing or malformed numbers are E_BAD_HEADER naming the key.
 *
 * Defaults are transformers' own for the three classes (LlamaConfig, MistralConfig, Qwen2Config):
 * num_key_value_heads = num_attention_heads, head_dim = hidden_size / num_attention_heads, rms_norm_eps
 * 1e-6, rope_theta 10000, tie_word_embeddings false, max_position_embeddings 2048.
 *
 * Sliding-window attention (Mistral v0.1's sliding_window = 4096, Qwen2 with use_sliding_window) is
 * not implemented: the context is capped at the window instead, where full attention equals windowed
 * attention, so results stay exact.
 */
export function llamaConfigFromHf(json: unknown, file: string): LlamaConfig {
  if (!isObject(json)) throw new FluteError('E_BAD_HEADER', `${file}: expected a JSON object`);
  const supported = Object.keys(HF_ARCHITECTURES).join(', ');
  const archs = json.architectures;
  const byType = Object.entries(HF_ARCHITECTURES).find(([, t]) => t === json.model_type)?.[0];
  const arch = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : byType;
  if (arch === undefined) {
    throw new FluteError('E_FORMAT', `${file}: no "architectures" and unknown model_type ${JSON.stringify(json.model_type)}; supported: ${supported}`);
  }
  if (!Object.prototype.hasOwnProperty.call(HF_ARCHITECTURES, arch)) {
    throw new FluteError('E_FORMAT', `${file}: architecture "${arch}" is not supported; supported: ${supported}`);
  }
  const int = (key: string, dflt?: number): number => {
    const v = json[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 1 << 24) {
      throw new FluteError('E_BAD_HEADER', `${file}: "${key}" must be a positive integer, got ${v === undefined ? 'nothing' : JSON.stringify(v)}`);
    }
    return v;
  };
  const positive = (key: string, dflt: number): number => {
    const v = json[key] ?? dflt;
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) throw new FluteError('E_BAD_HEADER', `${file}: "${key}" must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  const unsupported = (what: string) => new FluteError('E_FORMAT', `${file}: ${what} is not supported (${arch})`);

  const quant = json.quantization_config;
  if (isObject(quant)) throw unsupported(`a pre-quantized checkpoint (quantization_config.quant_method ${JSON.stringify(quant.quant_method)})`);
  const act = json.hidden_act ?? 'silu';
  if (act !== 'silu') throw unsupported(`hidden_act ${JSON.stringify(act)} (only "silu", SwiGLU)`);
  // LLaMA's optional o_proj / MLP biases are not implemented; Qwen2 always has q/k/v bias and nothing else.
  if (json.attention_bias === true && arch !== 'Qwen2ForCausalLM') throw unsupported('attention_bias: true');
  if (json.mlp_bias === true) throw unsupported('mlp_bias: true');

  const dim = int('hidden_size');
  const nHeads = int('num_attention_heads');
  if (json.head_dim === undefined && dim % nHeads !== 0) {
    throw new FluteError('E_BAD_HEADER', `${file}: hidden_size ${dim} is not a multiple of num_attention_heads ${nHeads} and there is no head_dim`);
  }
  const headDim = int('head_dim', dim / nHeads);
  const nKvHeads = int('num_key_value_heads', nHeads);
  if (nHeads % nKvHeads !== 0) throw new FluteError('E_BAD_HEADER', `${file}: num_attention_heads ${nHeads} is not a multiple of num_key_value_heads ${nKvHeads}`);
  if (headDim % 2 !== 0) throw new FluteError('E_BAD_HEADER', `${file}: head_dim ${headDim} must be even (RoPE rotates pairs)`);

  let seqLen = int('max_position_embeddings', 2048);
  const window = json.sliding_window;
  const windowed = arch === 'MistralForCausalLM' || (arch === 'Qwen2ForCausalLM' && json.use_sliding_window === true);
  if (windowed && typeof window === 'number' && Number.isInteger(window) && window >= 1) seqLen = Math.min(seqLen, window);

  const tied = json.tie_word_embeddings ?? false;
  if (typeof tied !== 'boolean') throw new FluteError('E_BAD_HEADER', `${file}: "tie_word_embeddings" must be a boolean, got ${JSON.stringify(tied)}`);
  const ropeScaling = ropeScalingFromHf(json.rope_scaling, file);
  return {
    dim, hiddenDim: int('intermediate_size'), nLayers: int('num_hidden_layers'), nHeads, nKvHeads, headDim,
    vocabSize: int('vocab_size'), seqLen, normEps: positive('rms_norm_eps', 1e-6), ropeTheta: positive('rope_theta', 10000),
    ropeLayout: 'half', tiedEmbeddings: tied,
    ...(ropeScaling ? { ropeScaling } : {}),
    ...(arch === 'Qwen2ForCausalLM' ? { qkvBias: true } : {}),
    architecture: arch,
  };
}

/** config.json `rope_scaling` (key `rope_type`, or `type` in older files); null or "default" is none. */
function ropeScalingFromHf(v: unknown, file: string): RopeScaling | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw new FluteError('E_BAD_HEADER', `${file}: "rope_scaling" must be an object or null, got ${JSON.stringify(v)}`);
  const type = v.rope_type ?? v.type;
  const num = (key: string): number => {
    const x = v[key];
    if (typeof x !== 'number' || !(x > 0) || !Number.isFinite(x)) throw new FluteError('E_BAD_HEADER', `${file}: rope_scaling.${key} must be a positive number, got ${JSON.stringify(x)}`);
    return x;
  };
  if (type === 'default') return undefined;
  if (type === 'linear') return { type: 'linear', factor: num('factor') };
  if (type === 'llama3') {
    const s = { type: 'llama3' as const, factor: num('factor'), lowFreqFactor: num('low_freq_factor'), highFreqFactor: num('high_freq_factor'), originalMaxPositions: num('original_max_position_embeddings') };
    if (!(s.highFreqFactor > s.lowFreqFactor)) throw new FluteError('E_BAD_HEADER', `${file}: rope_scaling.high_freq_factor must exceed low_freq_factor`);
    return s;
  }
  throw new FluteError('E_FORMAT', `${file}: rope_scaling type ${JSON.stringify(type)} is not supported; supported: llama3, linear`);
}

// ---------------------------------------------------------------------------------------------
// Files (Node only; node:fs is imported lazily so browser bundles can include the parsers above)

async function fsp(): Promise<typeof import('node:fs/promises')> {
  return import('node:fs/promises');
}

async function joinPath(...parts: string[]): Promise<string> {
  return (await import('node:path')).join(...parts);
}

async function exists(path: string): Promise<boolean> {
  try {
    await (await fsp()).access(path);
    return true;
  } catch {
    return false;
  }
}

/** A text file of the folder, or undefined when absent; other read errors are E_IO naming the file. */
async function readText(path: string): Promise<string | undefined> {
  try {
    return await (await fsp()).readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new FluteError('E_IO', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FluteError('E_BAD_HEADER', `${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** True when `dir` holds a config.json (the mark of a Hugging Face model folder). */
export async function isHfFolder(dir: string): Promise<boolean> {
  return exists(await joinPath(dir, HF_CONFIG));
}

/** config.json of a folder as a LlamaConfig; E_NOT_FOUND when the folder has none. */
export async function readHfConfig(dir: string): Promise<LlamaConfig> {
  const file = await joinPath(dir, HF_CONFIG);
  const text = await readText(file);
  if (text === undefined) throw new FluteError('E_NOT_FOUND', `${dir}: no ${HF_CONFIG} (not a Hugging Face model folder)`);
  return llamaConfigFromHf(parseJson(text, file), file);
}

/** The raw texts of a folder's tokenizer files, for src/tokenizer/hf.ts. */
export interface HfTokenizerFiles {
  readonly name: string; // the tokenizer.json path (or a label), for error messages
  readonly tokenizerJson: string;
  readonly tokenizerConfigJson?: string;
  readonly generationConfigJson?: string;
  /** chat_template.jinja, when the template lives in its own file. */
  readonly chatTemplate?: string;
}

/** Reads tokenizer.json (required: E_NOT_FOUND naming it) and the optional files beside it. */
export async function readHfTokenizerFiles(dir: string): Promise<HfTokenizerFiles> {
  const name = await joinPath(dir, HF_TOKENIZER);
  const tokenizerJson = await readText(name);
  if (tokenizerJson === undefined) throw new FluteError('E_NOT_FOUND', `${dir}: no ${HF_TOKENIZER} (the Hugging Face tokenizer; tokenizer.model alone is not supported)`);
  const [tokenizerConfigJson, generationConfigJson, chatTemplate] = await Promise.all(
    [HF_TOKENIZER_CONFIG, HF_GENERATION_CONFIG, HF_CHAT_TEMPLATE].map(async (f) => readText(await joinPath(dir, f))),
  );
  return { name, tokenizerJson, tokenizerConfigJson, generationConfigJson, chatTemplate };
}

// ---------------------------------------------------------------------------------------------
// Weights: one reader over one or many safetensors files

export interface HfTensorReader extends TensorReader {
  /** The safetensors files read, in shard order. */
  readonly shards: readonly string[];
}

/** Buffers that some conversions store but that follow from the config (old LLaMA-2 exports). */
const DERIVED = /\.rotary_emb\.inv_freq$/;

/**
 * Opens the weights of a Hugging Face folder: model.safetensors.index.json when present (every shard it
 * names must exist: E_NOT_FOUND naming the shard; every tensor it maps must be in its shard), else
 * model.safetensors. The reader's tensors are listed shard by shard in file order.
 */
export async function openHfSafetensors(dir: string): Promise<HfTensorReader> {
  const indexFile = await joinPath(dir, HF_SHARD_INDEX);
  const indexText = await readText(indexFile);
  if (indexText === undefined) {
    const single = await joinPath(dir, HF_SINGLE_WEIGHTS);
    if (!(await exists(single))) throw new FluteError('E_NOT_FOUND', `${dir}: no ${HF_SINGLE_WEIGHTS} and no ${HF_SHARD_INDEX}`);
    return combine(dir, [await openSafetensors(single)], [HF_SINGLE_WEIGHTS], undefined);
  }
  const index = parseJson(indexText, indexFile);
  const map = isObject(index) ? index.weight_map : undefined;
  if (!isObject(map)) throw new FluteError('E_BAD_HEADER', `${indexFile}: expected an object with a "weight_map" of tensor name -> shard file`);
  const shardNames: string[] = [];
  for (const [tensor, shard] of Object.entries(map)) {
    if (typeof shard !== 'string' || shard === '' || /[\\/]/.test(shard)) {
      throw new FluteError('E_BAD_HEADER', `${indexFile}: tensor "${tensor}" maps to ${JSON.stringify(shard)}, expected a file name in the folder`);
    }
    if (!shardNames.includes(shard)) shardNames.push(shard);
  }
  const readers: SafetensorsReader[] = [];
  try {
    for (const shard of shardNames) {
      const path = await joinPath(dir, shard);
      if (!(await exists(path))) throw new FluteError('E_NOT_FOUND', `${indexFile} names shard ${shard}, but ${path} does not exist`);
      readers.push(await openSafetensors(path));
    }
    for (const [tensor, shard] of Object.entries(map) as [string, string][]) {
      const r = readers[shardNames.indexOf(shard)];
      if (!r.has(tensor)) throw new FluteError('E_NOT_FOUND', `${indexFile} maps tensor "${tensor}" to ${shard}, but that shard has no such tensor`);
    }
    return combine(dir, readers, shardNames, map as Record<string, string>);
  } catch (e) {
    await Promise.all(readers.map((r) => r.close().catch(() => undefined)));
    throw e;
  }
}

/** One reader over the shards; with an index, only the tensors it maps, each from the shard it names. */
function combine(dir: string, readers: readonly SafetensorsReader[], names: readonly string[], map: Record<string, string> | undefined): HfTensorReader {
  const owner = new Map<string, SafetensorsReader>();
  const list: TensorInfo[] = [];
  readers.forEach((r, i) => {
    for (const t of r.list()) {
      if (DERIVED.test(t.name)) continue;
      if (map && map[t.name] !== names[i]) continue; // not this shard's by the index
      if (owner.has(t.name)) throw new FluteError('E_BAD_HEADER', `${dir}: tensor "${t.name}" is in both ${owner.get(t.name)?.file} and ${r.file}`);
      owner.set(t.name, r);
      list.push(t);
    }
  });
  const get = (name: string): SafetensorsReader => {
    const r = owner.get(name);
    if (!r) throw new FluteError('E_NOT_FOUND', `${dir}: tensor ${name} not found in ${names.join(', ')}`);
    return r;
  };
  return {
    file: dir,
    shards: readers.map((r) => r.file),
    list: () => list,
    info: (name) => get(name).info(name),
    has: (name) => owner.has(name),
    readRaw: (name) => get(name).readRaw(name),
    readF32: (name) => get(name).readF32(name),
    close: async () => {
      await Promise.all(readers.map((r) => r.close()));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The folder as a model

/** A Hugging Face folder as an OpenedModel: dense tensors, HF names, the tokenizer from tokenizer.json. */
export async function openHfModel(dir: string, opts: { tokenizer?: string } = {}): Promise<OpenedModel> {
  const config = await readHfConfig(dir);
  const tensors = await openHfSafetensors(dir);
  try {
    checkLayerCount(dir, `${HF_CONFIG} num_hidden_layers`, config.nLayers, tensors.list().length);
  } catch (e) {
    await tensors.close();
    throw e;
  }
  return {
    file: dir,
    format: 'hf',
    config,
    tensors,
    quantized: new Map(),
    readQuantized: (name) => Promise.reject(new FluteError('E_NOT_FOUND', `${dir}: "${name}" is not a quantized layer (Hugging Face weights are dense)`)),
    async readTokenizer() {
      // The llama2.c tokenizer path is only for an explicit --tokenizer; the folder's own is tokenizer.json.
      if (!opts.tokenizer) throw new FluteError('E_NOT_FOUND', `${dir}: a Hugging Face folder has no llama2.c tokenizer (it uses ${HF_TOKENIZER})`);
      const bytes = await (await fsp()).readFile(opts.tokenizer).catch((e: NodeJS.ErrnoException) => {
        throw new FluteError(e.code === 'ENOENT' ? 'E_NOT_FOUND' : 'E_IO', `tokenizer ${opts.tokenizer}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`);
      });
      return { bytes: new Uint8Array(bytes), file: opts.tokenizer };
    },
    readHfTokenizer: () => readHfTokenizerFiles(dir),
    close: () => tensors.close(),
  };
}

/** The path of model.safetensors in `dir` when it is a flute-engine checkpoint (what `flute quantize` writes there). */
export async function checkpointInFolder(dir: string): Promise<string | undefined> {
  const file = await joinPath(dir, HF_SINGLE_WEIGHTS);
  if (!(await exists(file))) return undefined;
  const fh = await (await fsp()).open(file, 'r');
  try {
    const head = new Uint8Array(8);
    await fh.read(head, 0, 8, 0);
    const len = Number(new DataView(head.buffer).getBigUint64(0, true));
    // A header longer than the file is not ours; refusing it here also keeps a lying length from sizing the buffer.
    if (len > 100_000_000 || 8 + len > (await fh.stat()).size) return undefined;
    const json = new Uint8Array(len);
    await fh.read(json, 0, len, 8);
    // The metadata sits in the header; a cheap check before the full checkpoint reader runs.
    return /"format"\s*:\s*"flute-engine"/.test(new TextDecoder().decode(json)) ? file : undefined;
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Writing a checkpoint folder

/**
 * `flute quantize` of a Hugging Face folder writes a folder: our checkpoint as model.safetensors, with
 * config.json, tokenizer.json, tokenizer_config.json, generation_config.json (those present) copied
 * beside it, so the result opens like the source folder. All of it goes to a temporary folder beside
 * `outDir` that is renamed into place at the end: a failure leaves nothing, and a previous output
 * folder is replaced only once the new one is complete. An existing `outDir` is replaced only when it
 * is empty or looks like such an output (config.json + model.safetensors); anything else is E_OPTION.
 */
export async function writeHfCheckpointFolder<T>(srcDir: string, outDir: string, write: (checkpointFile: string) => Promise<T>): Promise<T> {
  const fs = await fsp();
  const { dirname, basename, join } = await import('node:path');
  const parent = dirname(outDir);
  if (/\.safetensors$/i.test(outDir)) {
    throw new FluteError('E_OPTION', `--out ${outDir}: a Hugging Face model quantizes into a folder (model.safetensors beside its tokenizer and config); name a folder`);
  }
  const previous = await fs.stat(outDir).catch(() => undefined);
  if (previous && !previous.isDirectory()) throw new FluteError('E_OPTION', `--out ${outDir}: a Hugging Face model quantizes into a folder, but this is a file`);
  if (previous) {
    const names = await fs.readdir(outDir);
    if (names.length > 0 && !(names.includes(HF_SINGLE_WEIGHTS) && names.includes(HF_CONFIG))) {
      throw new FluteError('E_OPTION', `--out ${outDir}: the folder exists and is not a flute checkpoint folder; not replacing it`);
    }
  }
  const tag = `${process.pid}.${Math.random().toString(36).slice(2, 10)}`;
  const tmp = join(parent, `.${basename(outDir)}.${tag}.tmp`);
  try {
    await fs.mkdir(tmp);
  } catch (e) {
    throw writeError(e, outDir, parent);
  }
  try {
    const result = await write(join(tmp, HF_SINGLE_WEIGHTS));
    for (const f of HF_SIDECAR_FILES) {
      await fs.copyFile(join(srcDir, f), join(tmp, f)).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw writeError(e, join(outDir, f), outDir);
      });
    }
    const old = previous ? join(parent, `.${basename(outDir)}.${tag}.old`) : undefined;
    try {
      if (old) await fs.rename(outDir, old);
      await fs.rename(tmp, outDir);
    } catch (e) {
      if (old) await fs.rename(old, outDir).catch(() => undefined);
      throw writeError(e, outDir, parent);
    }
    if (old) await fs.rm(old, { recursive: true, force: true });
    return result;
  } finally {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
  }
}
