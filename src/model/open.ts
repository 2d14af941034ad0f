// Opens a model file of any supported container (llama2.c .bin, flute-engine checkpoint, GGUF, a FLUTE
// checkpoint folder) behind one view: config, dense tensors by Hugging Face name, quantized layers,
// tokenizer bytes. Loading the weights into a runnable model is load.ts's job.

import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FluteError } from '../errors.js';
import { looksLikeSafetensors, openCheckpoint, type QuantizedLayerMeta } from '../format/checkpoint.js';
import { openFluteModel } from '../format/flute-checkpoint.js';
import { looksLikeGguf } from '../format/gguf.js';
import { openGgufModel } from '../format/gguf-llama.js';
import { checkpointInFolder, openHfModel, readHfTokenizerFiles, type HfTokenizerFiles } from '../format/hf.js';
import { openLlama2c } from '../format/llama2c.js';
import { openFileSource } from '../format/source.js';
import type { TensorReader } from '../format/tensors.js';
import type { QuantizedLinear } from '../quant/linear.js';
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

/** llama2.c keeps the tokenizer beside the model: tokenizer.bin, or tok<vocab>.bin for custom vocabularies. */
function findLlama2cTokenizer(modelPath: string, vocabSize: number): string | undefined {
  const dir = dirname(modelPath);
  return [join(dir, `tok${vocabSize}.bin`), join(dir, 'tokenizer.bin')].find((p) => existsSync(p));
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
  // A folder is a FLUTE checkpoint (flute_config.json), else a Hugging Face folder (config.json): its own
  // weights, or the checkpoint `flute quantize` wrote there (model.safetensors) beside HF's tokenizer.
  if (existsSync(path) && statSync(path).isDirectory()) {
    if (existsSync(join(path, 'flute_config.json'))) return openFluteModel(path, opts);
    const ck = await checkpointInFolder(path);
    if (!ck) return openHfModel(path, opts);
    const m = await openModelFile(ck, opts);
    return { ...m, readHfTokenizer: () => readHfTokenizerFiles(path) };
  }
  const src = await openFileSource(path);
  const head = await src.read(0, Math.min(16, src.size));
  await src.close();
  if (looksLikeGguf(head)) return openGgufModel(path, opts);
  if (looksLikeSafetensors(head)) {
    const ck = await openCheckpoint(path);
    const quantized = new Map(Object.entries(ck.quantization).map(([base, m]) => [`${base}.weight`, m] as const));
    return {
      file: ck.file,
      format: 'flute-checkpoint',
      config: ck.config,
      tensors: ck.tensors,
      quantized,
      readQuantized: (name) => ck.readQuantized(name.replace(/\.weight$/, '')),
      async readTokenizer() {
        if (opts.tokenizer) return { bytes: await readFileBytes(opts.tokenizer, 'tokenizer'), file: opts.tokenizer };
        const bytes = await ck.readTokenizer();
        if (!bytes) throw new FluteError('E_NOT_FOUND', `${path}: the checkpoint carries no tokenizer; pass --tokenizer FILE`);
        return { bytes, file: `${path} (embedded tokenizer)` };
      },
      close: () => ck.close(),
    };
  }
  const reader = await openLlama2c(path);
  return {
    file: path,
    format: 'llama2c',
    config: reader.config,
    tensors: reader,
    quantized: new Map(),
    readQuantized: (name) => Promise.reject(new FluteError('E_NOT_FOUND', `${path}: "${name}" is not a quantized layer (llama2.c files are dense)`)),
    async readTokenizer() {
      const tok = opts.tokenizer ?? findLlama2cTokenizer(path, reader.config.vocabSize);
      if (!tok) {
        throw new FluteError('E_NOT_FOUND', `${path}: no tokenizer found beside the model (looked for tok${reader.config.vocabSize}.bin and tokenizer.bin in ${dirname(path) || '.'}); pass --tokenizer FILE`);
      }
      return { bytes: await readFileBytes(tok, 'tokenizer'), file: tok };
    },
    close: () => reader.close(),
  };
}

export function describeModel(m: OpenedModel): string {
  return `${basename(m.file)} (${m.format}${m.quantized.size ? `, ${m.quantized.size} quantized layers` : ''})`;
}
