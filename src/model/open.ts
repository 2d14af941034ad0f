// Opens a model file of any supported container (llama2.c .bin, flute-engine checkpoint, GGUF, a FLUTE
// checkpoint folder) behind one view: config, dense tensors by Hugging Face name, quantized layers,
// tokenizer bytes. Loading the weights into a runnable model is load.ts's job.
// Single files open from bytes (openModelSource: browsers too); node:fs and node:path are imported lazily
// where a path or folder is used, so that browser bundles of this module pull in nothing from Node.

import { FluteError } from '../errors.js';
import { looksLikeSafetensors, openCheckpoint, type QuantizedLayerMeta } from '../format/checkpoint.js';
import { openFluteModel } from '../format/flute-checkpoint.js';
import { looksLikeGguf } from '../format/gguf.js';
import { openGgufModel } from '../format/gguf-llama.js';
import { checkpointInFolder, openHfModel, readHfTokenizerFiles, type HfTokenizerFiles } from '../format/hf.js';
import { openLlama2c } from '../format/llama2c.js';
import { baseName, openFileSource, type ByteSource } from '../format/source.js';
import type { TensorReader } from '../format/tensors.js';
import type { QuantizedLinear } from '../quant/linear.js';
import { HfTokenizer } from '../tokenizer/hf.js';
import { Llama2cTokenizer } from '../tokenizer/llama2c.js';
import type { Tokenizer } from '../tokenizer/types.js';
import type { LlamaConfig } from './config.js';

export type ModelFormat = 'llama2c' | 'flute-checkpoint' | 'gguf' | 'flute' | 'hf';

export interface OpenedModel {
  readonly file: string;
  readonly format: ModelFormat;
  readonly config: LlamaConfig;
  /** Dense tensors (and, for checkpoints, the raw parts of quantized layers). */
  readonly tensors: TensorReader;
  /** Quantized layers by weight name ("model.layers.0.mlp.up_proj.weight"). */
  readonly quantized: ReadonlyMap<string, QuantizedLayerMeta>;
  readQuantized(weightName: string): Promise<QuantizedLinear>;
  /** The tokenizer in llama2.c format, and where it came from. */
  readTokenizer(): Promise<{ bytes: Uint8Array; file: string }>;
  /** A Hugging Face tokenizer (tokenizer.json and friends) when the model comes with one; load.ts prefers it. */
  readHfTokenizer?(): Promise<HfTokenizerFiles>;
  close(): Promise<void>;
}

/**
 * The model's tokenizer: its Hugging Face one (tokenizer.json) when it has one, else llama2.c's.
 * preferLlama2c: the caller named a llama2.c tokenizer (--tokenizer), which then wins.
 */
export async function readModelTokenizer(src: OpenedModel, opts: { readonly preferLlama2c?: boolean } = {}): Promise<Tokenizer> {
  if (src.readHfTokenizer && !opts.preferLlama2c) return new HfTokenizer(await src.readHfTokenizer(), src.config.vocabSize);
  const tok = await src.readTokenizer();
  return Llama2cTokenizer.fromBytes(tok.bytes, src.config.vocabSize, tok.file);
}

/** A llama2.c tokenizer's bytes and where they came from (a path, a URL, a picked file's name). */
export type TokenizerLoader = () => Promise<{ bytes: Uint8Array; file: string }>;

/** llama2.c keeps the tokenizer beside the model: tokenizer.bin, or tok<vocab>.bin for custom vocabularies. */
async function readLlama2cTokenizerBeside(modelPath: string, vocabSize: number): Promise<{ bytes: Uint8Array; file: string }> {
  const { existsSync } = await import('node:fs');
  const { dirname, join } = await import('node:path');
  const dir = dirname(modelPath);
  const tok = [join(dir, `tok${vocabSize}.bin`), join(dir, 'tokenizer.bin')].find((p) => existsSync(p));
  if (!tok) {
    throw new FluteError('E_NOT_FOUND', `${modelPath}: no tokenizer found beside the model (looked for tok${vocabSize}.bin and tokenizer.bin in ${dir || '.'}); pass --tokenizer FILE`);
  }
  return { bytes: await readFileBytes(tok, 'tokenizer'), file: tok };
}

async function readFileBytes(path: string, what: string): Promise<Uint8Array> {
  const { readFile } = await import('node:fs/promises');
  try {
    return new Uint8Array(await readFile(path));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FluteError(code === 'ENOENT' ? 'E_NOT_FOUND' : 'E_IO', `${what} ${path}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
}

export async function openModelFile(path: string, opts: { tokenizer?: string } = {}): Promise<OpenedModel> {
  const { existsSync, statSync } = await import('node:fs');
  // A folder is a FLUTE checkpoint (flute_config.json), else a Hugging Face folder (config.json): its own
  // weights, or the checkpoint `flute quantize` wrote there (model.safetensors) beside HF's tokenizer.
  if (existsSync(path) && statSync(path).isDirectory()) {
    const { join } = await import('node:path');
    if (existsSync(join(path, 'flute_config.json'))) return openFluteModel(path, opts);
    const ck = await checkpointInFolder(path);
    if (!ck) return openHfModel(path, opts);
    const m = await openModelFile(ck, opts);
    return { ...m, readHfTokenizer: () => readHfTokenizerFiles(path) };
  }
  const explicit = opts.tokenizer;
  const src = await openFileSource(path);
  let m: OpenedModel;
  try {
    m = await openModelSource(src, { tokenizer: explicit ? async () => ({ bytes: await readFileBytes(explicit, 'tokenizer'), file: explicit }) : undefined });
  } catch (e) {
    await src.close().catch(() => undefined);
    throw e;
  }
  return m.format === 'llama2c' && !explicit ? { ...m, readTokenizer: () => readLlama2cTokenizerBeside(path, m.config.vocabSize) } : m;
}

export interface OpenModelSourceOptions {
  /** A llama2.c tokenizer that replaces the model's own; the only one a llama2.c checkpoint can have. */
  readonly tokenizer?: TokenizerLoader;
}

/**
 * Opens one model file's bytes (a file, a download, a file picked in a browser), the container told by
 * its first bytes: GGUF, a flute-engine checkpoint (safetensors), else a llama2.c checkpoint. On success
 * the model owns `src` (close() closes it); on failure it stays the caller's to close.
 */
export async function openModelSource(src: ByteSource, opts: OpenModelSourceOptions = {}): Promise<OpenedModel> {
  const head = await src.read(0, Math.min(16, src.size));
  if (looksLikeGguf(head)) {
    const m = await openGgufModel(src);
    return opts.tokenizer ? { ...m, readTokenizer: opts.tokenizer } : m;
  }
  if (looksLikeSafetensors(head)) {
    const ck = await openCheckpoint(src);
    const quantized = new Map(Object.entries(ck.quantization).map(([base, m]) => [`${base}.weight`, m] as const));
    return {
      file: ck.file,
      format: 'flute-checkpoint',
      config: ck.config,
      tensors: ck.tensors,
      quantized,
      readQuantized: (name) => ck.readQuantized(name.replace(/\.weight$/, '')),
      async readTokenizer() {
        if (opts.tokenizer) return opts.tokenizer();
        const bytes = await ck.readTokenizer();
        if (!bytes) throw new FluteError('E_NOT_FOUND', `${ck.file}: the checkpoint carries no tokenizer; pass --tokenizer FILE`);
        return { bytes, file: `${ck.file} (embedded tokenizer)` };
      },
      close: () => ck.close(),
    };
  }
  const reader = await openLlama2c(src);
  const vocab = reader.config.vocabSize;
  return {
    file: src.name,
    format: 'llama2c',
    config: reader.config,
    tensors: reader,
    quantized: new Map(),
    readQuantized: (name) => Promise.reject(new FluteError('E_NOT_FOUND', `${src.name}: "${name}" is not a quantized layer (llama2.c files are dense)`)),
    readTokenizer: opts.tokenizer ?? (() => Promise.reject(new FluteError('E_NOT_FOUND', `${src.name}: llama2.c checkpoints carry no tokenizer; give its tokenizer file too (tok${vocab}.bin or tokenizer.bin)`))),
    close: () => reader.close(),
  };
}

export function describeModel(m: OpenedModel): string {
  return `${baseName(m.file)} (${m.format}${m.quantized.size ? `, ${m.quantized.size} quantized layers` : ''})`;
}
