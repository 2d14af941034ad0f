// flute-engine's quantized checkpoint: one safetensors file. Its __metadata__ records the format
// version, the model config, per quantized layer its shape, bits, group size, table kind and scale
// dtype, the tensors kept dense, and the tokenizer. Each quantized layer X is stored as
//   X.qweight  U8       [N, ceil(K*b/8)]  indices, canonical LSB-first layout (quant/packing.ts)
//   X.scales   F16|F32  [N, ceil(K/g)]    one scale per (row, group)
//   X.table    F32      [2^b]             the lookup table
// Dense tensors keep their names and are stored as F32. The tokenizer rides along as a U8 tensor.

import { FluteError } from '../errors.js';
import type { LlamaConfig } from '../model/config.js';
import { groupsPerRow, validateQuantizedLinear, type QuantizedLinear, type ScaleDtype } from '../quant/linear.js';
import { packedRowBytes } from '../quant/packing.js';
import { isTableKind, TABLE_KINDS, type TableKind } from '../quant/tables.js';
import { f16ArrayToF32, f32ArrayToF16 } from './half.js';
import { openSafetensors, type SafetensorsEntry, type SafetensorsReader } from './safetensors.js';
import type { ByteSource } from './source.js';
import { checkLayerCount, type TensorInfo, type TensorReader } from './tensors.js';

export const CHECKPOINT_FORMAT = 'flute-engine';
/** Bump when a reader of the previous version could misread a new file; readers refuse newer versions. */
export const CHECKPOINT_VERSION = 1;

export type TokenizerFormat = 'llama2c';
export const TOKENIZER_TENSOR = 'tokenizer.llama2c';

/** Per-layer record in the metadata key "quantization". */
export interface QuantizedLayerMeta {
  readonly shape: readonly [number, number]; // [N, K]
  readonly bits: number;
  readonly group_size: number;
  readonly table: TableKind;
  readonly table_id: number;
  readonly scale_dtype: ScaleDtype;
}

/** The layer's base name for a weight tensor: "a.b.weight" -> "a.b". */
export function layerBaseName(weightName: string): string {
  return weightName.endsWith('.weight') ? weightName.slice(0, -'.weight'.length) : weightName;
}

/** The three safetensors entries of one quantized layer, produced lazily by `make` (called once). */
export function quantizedLayerEntries(
  base: string,
  meta: QuantizedLayerMeta,
  make: () => Promise<QuantizedLinear>,
): SafetensorsEntry[] {
  let pending: Promise<QuantizedLinear> | undefined;
  let remaining = 3;
  // The three entries are written in order; the layer is made on the first and dropped after the last,
  // so the writer never holds more than one quantized layer.
  const get = async () => {
    pending ??= make();
    const layer = await pending;
    if (--remaining === 0) pending = undefined;
    return layer;
  };
  const [n, k] = meta.shape;
  const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  return [
    { name: `${base}.qweight`, dtype: 'U8', shape: [n, packedRowBytes(k, meta.bits)], data: async () => (await get()).packed },
    {
      name: `${base}.scales`,
      dtype: meta.scale_dtype === 'f16' ? 'F16' : 'F32',
      shape: [n, groupsPerRow(k, meta.group_size)],
      data: async () => {
        const s = (await get()).scales;
        return bytes(meta.scale_dtype === 'f16' ? f32ArrayToF16(s) : s);
      },
    },
    { name: `${base}.table`, dtype: 'F32', shape: [2 ** meta.bits], data: async () => bytes((await get()).table) },
  ];
}

export function layerMeta(layer: QuantizedLinear): QuantizedLayerMeta {
  return {
    shape: [layer.n, layer.k],
    bits: layer.bits,
    group_size: layer.groupSize,
    table: layer.tableKind,
    table_id: TABLE_KINDS[layer.tableKind].id,
    scale_dtype: layer.scaleDtype,
  };
}

export interface CheckpointMetadataInput {
  readonly config: LlamaConfig;
  readonly quantization: Record<string, QuantizedLayerMeta>;
  readonly dense: readonly string[];
  readonly tokenizer?: TokenizerFormat;
  readonly source?: string;
}

export function checkpointMetadata(m: CheckpointMetadataInput): Record<string, string> {
  const md: Record<string, string> = {
    format: CHECKPOINT_FORMAT,
    format_version: String(CHECKPOINT_VERSION),
    config: JSON.stringify(m.config),
    quantization: JSON.stringify(m.quantization),
    dense: JSON.stringify(m.dense),
  };
  if (m.tokenizer) md.tokenizer = m.tokenizer;
  if (m.source) md.source = m.source;
  return md;
}

// ---------------------------------------------------------------------------------------------
// Reading

export interface Checkpoint {
  readonly file: string;
  readonly version: number;
  readonly config: LlamaConfig;
  readonly quantization: Readonly<Record<string, QuantizedLayerMeta>>; // by layer base name
  readonly dense: readonly string[];
  readonly tokenizer?: TokenizerFormat;
  /** The dense tensors (and the raw quantized parts) through the common reader interface. */
  readonly tensors: SafetensorsReader;
  /** Reads and validates one quantized layer by base name (e.g. "model.layers.0.mlp.up_proj"). */
  readQuantized(base: string): Promise<QuantizedLinear>;
  readTokenizer(): Promise<Uint8Array | undefined>;
  close(): Promise<void>;
}

function parseJsonField<T>(file: string, md: Record<string, string>, key: string): T {
  const raw = md[key];
  if (raw === undefined) throw new FluteError('E_BAD_HEADER', `${file}: metadata key "${key}" is missing`);
  try {
    return JSON.parse(raw) as T;
  } catch {
    throw new FluteError('E_BAD_HEADER', `${file}: metadata "${key}" is not valid JSON`);
  }
}

const CONFIG_NUMBERS = ['dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads', 'headDim', 'vocabSize', 'seqLen'] as const;

function validateConfig(file: string, c: LlamaConfig): LlamaConfig {
  if (typeof c !== 'object' || c === null || Array.isArray(c)) throw new FluteError('E_BAD_HEADER', `${file}: metadata "config" must be a JSON object`);
  for (const key of CONFIG_NUMBERS) {
    const v = c[key];
    if (!Number.isInteger(v) || v < 1 || v > 1 << 24) {
      throw new FluteError('E_BAD_HEADER', `${file}: config.${key} must be a positive integer, got ${JSON.stringify(v)}`);
    }
  }
  if (c.nHeads % c.nKvHeads !== 0) throw new FluteError('E_BAD_HEADER', `${file}: config.nHeads (${c.nHeads}) must be a multiple of nKvHeads (${c.nKvHeads})`);
  if (!(c.normEps > 0) || !(c.ropeTheta > 0)) throw new FluteError('E_BAD_HEADER', `${file}: config.normEps and ropeTheta must be positive`);
  if (c.ropeLayout !== 'interleaved' && c.ropeLayout !== 'half') throw new FluteError('E_BAD_HEADER', `${file}: config.ropeLayout must be "interleaved" or "half", got ${JSON.stringify(c.ropeLayout)}`);
  if (typeof c.tiedEmbeddings !== 'boolean') throw new FluteError('E_BAD_HEADER', `${file}: config.tiedEmbeddings must be a boolean`);
  return c;
}

function validateLayerMeta(file: string, base: string, m: QuantizedLayerMeta): void {
  const bad = (what: string) => new FluteError('E_BAD_HEADER', `${file}: quantization of "${base}": ${what}`);
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw bad(`expected an object with shape, bits, group_size, table and scale_dtype, got ${JSON.stringify(m)}`);
  if (!Array.isArray(m.shape) || m.shape.length !== 2 || !m.shape.every((d) => Number.isInteger(d) && d > 0)) throw bad(`shape must be [N, K] positive integers, got ${JSON.stringify(m.shape)}`);
  if (!Number.isInteger(m.bits) || m.bits < 1 || m.bits > 8) throw bad(`bits must be 1..8, got ${JSON.stringify(m.bits)}`);
  if (!Number.isInteger(m.group_size) || m.group_size < 1) throw bad(`group_size must be a positive integer, got ${JSON.stringify(m.group_size)}`);
  if (typeof m.table !== 'string' || !isTableKind(m.table)) throw bad(`unknown table kind ${JSON.stringify(m.table)}`);
  if (m.scale_dtype !== 'f16' && m.scale_dtype !== 'f32') throw bad(`scale_dtype must be "f16" or "f32", got ${JSON.stringify(m.scale_dtype)}`);
}

function expectTensor(file: string, r: TensorReader, name: string, dtype: string, shape: readonly number[]): TensorInfo {
  if (!r.has(name)) throw new FluteError('E_NOT_FOUND', `${file}: tensor "${name}" is missing`);
  const t = r.info(name);
  if (t.dtype !== dtype || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new FluteError('E_SHAPE', `${file}: tensor "${name}" should be ${dtype} [${shape.join(', ')}], got ${t.dtype} [${t.shape.join(', ')}]`);
  }
  return t;
}

/** True when the bytes start like a safetensors file (u64 header length, then '{'). */
export function looksLikeSafetensors(head: Uint8Array): boolean {
  return head.length >= 9 && head[8] === 0x7b && head[6] === 0 && head[7] === 0;
}

export async function openCheckpoint(source: ByteSource | string): Promise<Checkpoint> {
  const st = await openSafetensors(source);
  const file = st.file;
  try {
    const md = st.metadata;
    if (md.format !== CHECKPOINT_FORMAT) {
      throw new FluteError('E_FORMAT', `${file}: not a flute-engine checkpoint (metadata "format" is ${JSON.stringify(md.format)}, expected "${CHECKPOINT_FORMAT}")`);
    }
    const version = Number(md.format_version);
    if (!Number.isInteger(version) || version < 1 || version > CHECKPOINT_VERSION) {
      throw new FluteError('E_FORMAT', `${file}: checkpoint format_version ${JSON.stringify(md.format_version)} is not supported (this reader knows 1..${CHECKPOINT_VERSION})`);
    }
    const config = validateConfig(file, parseJsonField<LlamaConfig>(file, md, 'config'));
    checkLayerCount(file, 'config.nLayers', config.nLayers, st.list().length);
    const quantization = parseJsonField<Record<string, QuantizedLayerMeta>>(file, md, 'quantization');
    if (typeof quantization !== 'object' || quantization === null || Array.isArray(quantization)) {
      throw new FluteError('E_BAD_HEADER', `${file}: metadata "quantization" must be an object`);
    }
    for (const [base, m] of Object.entries(quantization)) validateLayerMeta(file, base, m);
    const dense = parseJsonField<string[]>(file, md, 'dense');
    if (!Array.isArray(dense) || !dense.every((d) => typeof d === 'string')) throw new FluteError('E_BAD_HEADER', `${file}: metadata "dense" must be a list of tensor names`);
    const tokenizer = md.tokenizer as TokenizerFormat | undefined;
    if (tokenizer !== undefined && tokenizer !== 'llama2c') throw new FluteError('E_FORMAT', `${file}: unknown tokenizer format ${JSON.stringify(tokenizer)}`);

    return {
      file, version, config, quantization, dense, tokenizer, tensors: st,
      async readQuantized(base) {
        const m = quantization[base];
        if (!m) throw new FluteError('E_NOT_FOUND', `${file}: no quantized layer "${base}"`);
        const [n, k] = m.shape;
        const g = groupsPerRow(k, m.group_size);
        expectTensor(file, st, `${base}.qweight`, 'U8', [n, packedRowBytes(k, m.bits)]);
        expectTensor(file, st, `${base}.scales`, m.scale_dtype === 'f16' ? 'F16' : 'F32', [n, g]);
        expectTensor(file, st, `${base}.table`, 'F32', [2 ** m.bits]);
        const packed = await st.readRaw(`${base}.qweight`);
        const rawScales = await st.readRaw(`${base}.scales`);
        const scales = m.scale_dtype === 'f16'
          ? f16ArrayToF32(new Uint16Array(rawScales.slice().buffer))
          : new Float32Array(rawScales.slice().buffer);
        const table = new Float32Array((await st.readRaw(`${base}.table`)).slice().buffer);
        const layer: QuantizedLinear = {
          kind: 'quantized', n, k, bits: m.bits, groupSize: m.group_size, tableKind: m.table, table, scaleDtype: m.scale_dtype, scales, packed,
        };
        return validateQuantizedLinear(layer, `${file}: ${base}`);
      },
      async readTokenizer() {
        return tokenizer && st.has(TOKENIZER_TENSOR) ? st.readRaw(TOKENIZER_TENSOR) : undefined;
      },
      close: () => st.close(),
    };
  } catch (e) {
    await st.close();
    throw e;
  }
}
