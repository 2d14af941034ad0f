// Valid seed files for each reader, built from the bundled stories260K model by our own writers (a
// quantized checkpoint, a Q4_0 GGUF, a FLUTE folder, a tokenizer.json) or taken as shipped. Node only:
// the writers go through a scratch folder, removed before returning.

import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../cli/paths.js';
import { writeFluteCheckpoint } from '../format/flute-checkpoint.js';
import { writeLlamaGguf } from '../format/gguf-llama.js';
import { parseLlama2cTokenizer } from '../format/llama2c-tokenizer.js';
import { serializeSafetensors, typedArrayBytes } from '../format/safetensors.js';
import { openModelFile } from '../model/open.js';
import { quantizeModel } from '../quant/quantize-model.js';
import { ggufFields, llama2cFields, llama2cTokenizerFields, safetensorsLayout } from './fields.js';
import type { SeedFile } from './mutate.js';
import { createRng } from './rng.js';

/** A seed: the files one case opens together (one file for most readers; a folder for FLUTE). */
export type Seed = readonly SeedFile[];

const bundled = (f: string) => join(packageRoot(), 'models', 'stories260K', f);

async function bytesOf(path: string): Promise<Uint8Array> {
  return new Uint8Array(await readFile(path));
}

function safetensorsSeedFile(name: string, bytes: Uint8Array): SeedFile {
  const { fields, json } = safetensorsLayout(bytes);
  return { name, bytes, headerEnd: json.end, fields, json };
}

function jsonSeedFile(name: string, bytes: Uint8Array): SeedFile {
  return { name, bytes, headerEnd: bytes.length, fields: [], json: { start: 0, end: bytes.length } };
}

function plainSeedFile(name: string, bytes: Uint8Array): SeedFile {
  return { name, bytes, headerEnd: bytes.length, fields: [] };
}

/** A small safetensors file with every dtype family, an empty tensor and metadata. */
export async function safetensorsSeeds(): Promise<Seed[]> {
  const f32 = Float32Array.from({ length: 15 }, (_, i) => i - 7.5);
  const bytes = await serializeSafetensors([
    { name: 'a.f32', dtype: 'F32', shape: [3, 5], data: typedArrayBytes(f32) },
    { name: 'b.f16', dtype: 'F16', shape: [4], data: typedArrayBytes(Uint16Array.of(0x3c00, 0xc000, 0x7bff, 0x0001)) },
    { name: 'c.bf16', dtype: 'BF16', shape: [2, 2], data: typedArrayBytes(Uint16Array.of(0x3f80, 0x4000, 0xbf80, 0)) },
    { name: 'd.u8', dtype: 'U8', shape: [7], data: Uint8Array.of(1, 2, 3, 4, 5, 6, 7) },
    { name: 'e.empty', dtype: 'I32', shape: [0, 3], data: new Uint8Array(0) },
    { name: 'f.i64', dtype: 'I64', shape: [2], data: typedArrayBytes(BigInt64Array.of(-1n, 1n)) },
  ], { note: 'fuzz seed', json: '{"k":[1,2,3]}' }, 'seed.safetensors');
  return [[safetensorsSeedFile('seed.safetensors', bytes)]];
}

export async function llama2cSeeds(): Promise<Seed[]> {
  return [[{ name: 'stories260K.bin', bytes: await bytesOf(bundled('stories260K.bin')), headerEnd: 28, fields: llama2cFields() }]];
}

export async function llama2cTokenizerSeeds(): Promise<Seed[]> {
  const bytes = await bytesOf(bundled('tok512.bin'));
  return [[{ name: 'tok512.bin', bytes, headerEnd: bytes.length, fields: llama2cTokenizerFields(bytes) }]];
}

async function inScratch<T>(make: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'flute-fuzz-seed-'));
  try {
    return await make(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Two quantized checkpoints: 4-bit NF g=64 f16 scales, and 3-bit int g=48 f32 scales with the output layer. */
export async function checkpointSeeds(): Promise<Seed[]> {
  return inScratch(async (dir) => {
    const src = await openModelFile(bundled('stories260K.bin'));
    try {
      const out: Seed[] = [];
      const variants = [
        { bits: 4, groupSize: 64, tableKind: 'nf' as const },
        { bits: 3, groupSize: 48, tableKind: 'int' as const, scaleDtype: 'f32' as const, quantizeOutput: true },
      ];
      for (const [i, opts] of variants.entries()) {
        const path = join(dir, `ck${i}.safetensors`);
        await quantizeModel(src, path, opts);
        out.push([safetensorsSeedFile(`ck${i}.safetensors`, await bytesOf(path))]);
      }
      return out;
    } finally {
      await src.close();
    }
  });
}

/** The bundled F32 GGUF (llama.cpp's conversion) and a Q4_0 one written by our writer. */
export async function ggufSeeds(): Promise<Seed[]> {
  const ggufSeed = (name: string, bytes: Uint8Array): Seed => {
    const { fields, headerEnd } = ggufFields(bytes);
    return [{ name, bytes, headerEnd, fields }];
  };
  const shipped = await bytesOf(bundled('stories260K.gguf'));
  const q4 = await inScratch(async (dir) => {
    const src = await openModelFile(bundled('stories260K.bin'));
    try {
      await writeLlamaGguf(src, join(dir, 'q4.gguf'), { type: 'q4_0', name: 'fuzz' });
    } finally {
      await src.close();
    }
    return bytesOf(join(dir, 'q4.gguf'));
  });
  return [ggufSeed('stories260K.gguf', shipped), ggufSeed('q4_0.gguf', q4)];
}

/**
 * A llama2.c file with FLUTE-compatible shapes (stories260K's are too small: FLUTE needs N a multiple
 * of 128 at 4 bits): dim 128, hidden 256, one layer, 2 heads, vocab 512 (tok512's), random weights.
 */
function tinyLlama2c(): Uint8Array {
  const [d, h, layers, heads, kvHeads, vocab, seq] = [128, 256, 1, 2, 2, 512, 32];
  const kv = (d / heads) * kvHeads;
  const floats = vocab * d + layers * (2 * d + 2 * d * d + 2 * kv * d + 3 * h * d) + d + seq * (d / heads);
  const out = new Uint8Array(28 + 4 * floats);
  const dv = new DataView(out.buffer);
  [d, h, layers, heads, kvHeads, vocab, seq].forEach((v, i) => dv.setInt32(4 * i, v, true));
  const r = createRng(7);
  for (let i = 0; i < floats; i++) dv.setFloat32(28 + 4 * i, (r.next() - 0.5) * 0.1, true);
  return out;
}

/** A FLUTE folder (4-bit, g=64) written by our writer: config.json, flute_config.json, weights, tokenizer. */
export async function fluteSeeds(): Promise<Seed[]> {
  return inScratch(async (dir) => {
    const out = join(dir, 'flute');
    await writeFile(join(dir, 'tiny.bin'), tinyLlama2c());
    await writeFile(join(dir, 'tok512.bin'), await bytesOf(bundled('tok512.bin')));
    const src = await openModelFile(join(dir, 'tiny.bin'));
    try {
      await writeFluteCheckpoint(src, out, { bits: 4, groupSize: 64 });
    } finally {
      await src.close();
    }
    const files: SeedFile[] = [];
    for (const name of (await readdir(out)).sort()) {
      const bytes = await bytesOf(join(out, name));
      files.push(name.endsWith('.safetensors') ? safetensorsSeedFile(name, bytes)
        : name.endsWith('.json') ? jsonSeedFile(name, bytes)
        : name === 'tokenizer.bin' ? { name, bytes, headerEnd: bytes.length, fields: llama2cTokenizerFields(bytes) }
        : plainSeedFile(name, bytes));
    }
    return [files];
  });
}

/**
 * tok512 as a LLaMA-2 style tokenizer.json (BPE with byte fallback, "▁" for spaces, merges ranked by
 * the merged piece's score) and its tokenizer_config.json.
 * Kept apart from test/hf-fixtures.ts's converter on purpose: the crash seeds recorded in
 * test/fuzz.test.ts replay only against these exact bytes.
 */
export async function tokenizerJsonSeeds(): Promise<Seed[]> {
  const v = parseLlama2cTokenizer(await bytesOf(bundled('tok512.bin')), 512, 'tok512.bin');
  const SP = '\u2581';
  const pieces = v.vocab.map((p, i) => (i < 3 || /^<0x[0-9A-F]{2}>$/.test(p) ? p : p.replaceAll(' ', SP)));
  pieces[0] = '<unk>';
  pieces[1] = '<s>';
  pieces[2] = '</s>';
  const vocab: Record<string, number> = {};
  pieces.forEach((p, i) => { if (!(p in vocab)) vocab[p] = i; });
  const merges: { a: string; b: string; score: number }[] = [];
  for (let id = 259; id < pieces.length; id++) {
    const p = pieces[id];
    for (let cut = 1; cut < p.length; cut++) {
      const a = p.slice(0, cut);
      const b = p.slice(cut);
      if (vocab[a] >= 3 && vocab[b] >= 3) merges.push({ a, b, score: v.scores[id] });
    }
  }
  merges.sort((x, y) => y.score - x.score);
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const tokenizer = {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SP }, { type: 'Replace', pattern: { String: ' ' }, content: SP }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: SP }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges: merges.map((m) => [m.a, m.b]) },
  };
  const config = {
    add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', tokenizer_class: 'LlamaTokenizer',
    chat_template: "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
  };
  const enc = new TextEncoder();
  return [[jsonSeedFile('tokenizer.json', enc.encode(JSON.stringify(tokenizer))), jsonSeedFile('tokenizer_config.json', enc.encode(JSON.stringify(config)))]];
}
