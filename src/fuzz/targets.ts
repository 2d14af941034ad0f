// The readers under fuzz, each opened as a loader opens it: through its public entry point, then every
// tensor, quantized layer and vocabulary read, and the weights assembled as loadModel does. One entry
// per reader: its seeds and how one (mutated) case runs.

import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openCheckpoint } from '../format/checkpoint.js';
import { openFluteModel } from '../format/flute-checkpoint.js';
import { openGgufModel } from '../format/gguf-llama.js';
import { openLlama2c } from '../format/llama2c.js';
import { openSafetensors } from '../format/safetensors.js';
import { memorySource } from '../format/source.js';
import type { TensorReader } from '../format/tensors.js';
import type { OpenedModel } from '../model/open.js';
import { loadLlamaWeights } from '../model/weights.js';
import { HfTokenizer } from '../tokenizer/hf.js';
import { Llama2cTokenizer } from '../tokenizer/llama2c.js';
import type { Tokenizer } from '../tokenizer/types.js';
import { checkpointSeeds, fluteSeeds, ggufSeeds, llama2cSeeds, llama2cTokenizerSeeds, safetensorsSeeds, tokenizerJsonSeeds, type Seed } from './seeds.js';

export const READERS = ['safetensors', 'llama2c', 'llama2c-tokenizer', 'checkpoint', 'gguf', 'flute', 'tokenizer-json'] as const;
export type ReaderName = (typeof READERS)[number];

export function isReaderName(s: string): s is ReaderName {
  return (READERS as readonly string[]).includes(s);
}

/** The files of one case, by name, and a scratch folder for readers that open folders. */
export interface CaseInput {
  readonly files: ReadonlyMap<string, Uint8Array>;
  readonly scratch: string;
}

export interface FuzzTarget {
  readonly name: ReaderName;
  seeds(): Promise<Seed[]>;
  run(input: CaseInput): Promise<void>;
}

const SAMPLE_TEXT = 'Once upon a time, a ünïcode 🙂 dog said "hi"\n\t<s> </s> <0x0A>';

function only(input: CaseInput): { name: string; bytes: Uint8Array } {
  const [[name, bytes]] = [...input.files];
  return { name, bytes };
}

/** Every tensor's raw bytes, and f32 where the dtype converts. */
async function readAll(r: TensorReader): Promise<void> {
  for (const t of r.list()) {
    await r.readRaw(t.name);
    if (t.dtype === 'F32' || t.dtype === 'F16' || t.dtype === 'BF16') await r.readF32(t.name);
  }
}

/** What a user of a tokenizer does: encode with BOS, decode, stream-decode. */
function exercise(tok: Tokenizer): void {
  const ids = tok.encode(SAMPLE_TEXT, { bos: true, eos: true });
  tok.decode(ids);
  const d = tok.createDecoder();
  let prev = tok.bosId;
  for (const id of ids) {
    d.push(prev, id);
    prev = id;
  }
  d.flush();
}

/** The loader's path over an opened model: tokenizer, then the weights as loadModel assembles them. */
async function loadLikeLoader(m: OpenedModel): Promise<void> {
  try {
    const tok = await m.readTokenizer().catch((e: unknown) => {
      // A model that carries no tokenizer is fine; every other failure propagates.
      if ((e as { code?: string }).code === 'E_NOT_FOUND') return undefined;
      throw e;
    });
    if (tok) exercise(Llama2cTokenizer.fromBytes(tok.bytes, m.config.vocabSize, tok.file));
    await loadLlamaWeights(m.tensors, m.config, (name) => (m.quantized.has(name) ? m.readQuantized(name) : undefined));
  } finally {
    await m.close();
  }
}

const safetensors: FuzzTarget = {
  name: 'safetensors',
  seeds: safetensorsSeeds,
  async run(input) {
    const { name, bytes } = only(input);
    const r = await openSafetensors(memorySource(bytes, name));
    try {
      await readAll(r);
    } finally {
      await r.close();
    }
  },
};

const llama2c: FuzzTarget = {
  name: 'llama2c',
  seeds: llama2cSeeds,
  async run(input) {
    const { name, bytes } = only(input);
    const r = await openLlama2c(memorySource(bytes, name));
    try {
      await readAll(r);
      await loadLlamaWeights(r, r.config);
    } finally {
      await r.close();
    }
  },
};

const llama2cTokenizer: FuzzTarget = {
  name: 'llama2c-tokenizer',
  seeds: llama2cTokenizerSeeds,
  async run(input) {
    const { name, bytes } = only(input);
    exercise(Llama2cTokenizer.fromBytes(bytes, 512, name));
  },
};

const checkpoint: FuzzTarget = {
  name: 'checkpoint',
  seeds: checkpointSeeds,
  async run(input) {
    const { name, bytes } = only(input);
    const ck = await openCheckpoint(memorySource(bytes, name));
    try {
      for (const base of Object.keys(ck.quantization)) await ck.readQuantized(base);
      await readAll(ck.tensors);
      const tok = await ck.readTokenizer();
      if (tok) exercise(Llama2cTokenizer.fromBytes(tok, ck.config.vocabSize, name));
      const quantized = new Set(Object.keys(ck.quantization).map((b) => `${b}.weight`));
      await loadLlamaWeights(ck.tensors, ck.config, (n) => (quantized.has(n) ? ck.readQuantized(n.slice(0, -'.weight'.length)) : undefined));
    } finally {
      await ck.close();
    }
  },
};

const gguf: FuzzTarget = {
  name: 'gguf',
  seeds: ggufSeeds,
  async run(input) {
    const { name, bytes } = only(input);
    const m = await openGgufModel(memorySource(bytes, name));
    await readAll(m.tensors).catch(async (e: unknown) => {
      await m.close();
      throw e;
    });
    await loadLikeLoader(m);
  },
};

/** Writes the case's files into a fresh folder: FLUTE checkpoints are folders. */
async function writeFolder(input: CaseInput): Promise<string> {
  const dir = join(input.scratch, 'case');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  for (const [name, bytes] of input.files) await writeFile(join(dir, name), bytes);
  return dir;
}

const flute: FuzzTarget = {
  name: 'flute',
  seeds: fluteSeeds,
  async run(input) {
    const m = await openFluteModel(await writeFolder(input));
    await loadLikeLoader(m);
  },
};

const tokenizerJson: FuzzTarget = {
  name: 'tokenizer-json',
  seeds: tokenizerJsonSeeds,
  async run(input) {
    // The folder reader reads text as UTF-8 with replacement characters, as readFile(path, 'utf8') does.
    const text = (n: string) => {
      const b = input.files.get(n);
      return b === undefined ? undefined : new TextDecoder().decode(b);
    };
    const tok = new HfTokenizer({ name: 'tokenizer.json', tokenizerJson: text('tokenizer.json') ?? '', tokenizerConfigJson: text('tokenizer_config.json') }, 512);
    exercise(tok);
    if (tok.chatTemplate !== undefined) tok.applyChatTemplate([{ role: 'user', content: 'hi' }], { addGenerationPrompt: true });
  },
};

export const TARGETS: Record<ReaderName, FuzzTarget> = {
  safetensors, llama2c, 'llama2c-tokenizer': llama2cTokenizer, checkpoint, gguf, flute, 'tokenizer-json': tokenizerJson,
};
