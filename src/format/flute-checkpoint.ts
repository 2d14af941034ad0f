// FLUTE checkpoints (the Python package's Hugging Face format, flute.md 1.5 and 7.1): a folder with
// config.json (LlamaForCausalLM), flute_config.json (num_bits, group_size, num_sms, version) and
// safetensors holding, per decoder linear X, X.weight (I16 [N b/16, K], packed by flute-pack.ts),
// X.scales (F16/BF16 [N, K/g]), X.tables (T [2^b]) and X.tables2 (F32 [2^b, 2^b, 1] pair words).
// Reading yields QuantizedLinear layers (tables2 checked against tables and rebuilt when they
// disagree); writing makes a folder FLUTE and vLLM serve. Weights use Hugging Face's half-rotation
// RoPE layout, so q/k rows are permuted from llama2.c / GGUF order on the way out.

import { FluteError } from '../errors.js';
import type { LlamaConfig } from '../model/config.js';
import type { OpenedModel } from '../model/open.js';
import { LAYER_LINEARS, llamaTensorSpecs } from '../model/weights.js';
import { dequantize, relativeError, validateQuantizedLinear, type Linear, type QuantizedLinear } from '../quant/linear.js';
import { packIndices, unpackIndices } from '../quant/packing.js';
import { permuteRows, ropePermutation } from '../quant/permute.js';
import { quantizeRtn } from '../quant/rtn.js';
import { buildTable, TABLE_KINDS, type TableKind } from '../quant/tables.js';
import { writeFileAtomic } from './atomic.js';
import type { QuantizedLayerMeta } from './checkpoint.js';
import { metaInt } from './gguf.js';
import { isGgufModel } from './gguf-llama.js';
import { HF_CHAT_TEMPLATE, HF_CONFIG, HF_GENERATION_CONFIG, HF_TOKENIZER, HF_TOKENIZER_CONFIG, llamaConfigFromHf, openHfSafetensors, readHfTokenizerFiles } from './hf.js';
import { FLUTE_GROUP_SIZES, fluteShapeProblem, flutePackedRows, fluteTables2, isFluteBits, packFlute, unpackFlute, type FluteBits } from './flute-pack.js';
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16, F16_MAX } from './half.js';
import { bytesToF32, writeSafetensors, type SafetensorsEntry } from './safetensors.js';
import { checkLayerCount, type TensorInfo, type TensorReader } from './tensors.js';

// Folders exist only in Node: node:path is imported where a folder is used, so that browser bundles of
// the model openers (open.ts imports this module) pull in nothing from Node.
const nodePath = (): Promise<typeof import('node:path')> => import('node:path');

export const FLUTE_CONFIG_FILE = 'flute_config.json';
/** num_sms written for legacy loaders: an A100's 108 SMs selects FLUTE's tuned templates (flute.md 1.5, 7.2). */
export const FLUTE_DEFAULT_NUM_SMS = 108;
/** The flute-kernel release whose (legacy) checkpoint layout we write: tileP 32, num_sms present. */
export const FLUTE_FORMAT_VERSION = '0.3.0';

/** flute_config.json */
export interface FluteConfig {
  readonly version?: string;
  readonly num_sms?: number;
  readonly num_bits: FluteBits;
  readonly group_size: number;
}

export type FluteDtype = 'float16' | 'bfloat16';

/** The projections FLUTE quantizes: every nn.Linear under model.layers (flute.md 1.5). */
const DECODER_LINEAR = /^model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$/;

// ---------------------------------------------------------------------------------------------
// config.json

type Json = Record<string, unknown>;

/** The LlamaConfig of a FLUTE folder's config.json: hf.ts's reader, minus a FLUTE quantization_config. */
function fluteConfigToLlama(file: string, j: Json): LlamaConfig {
  const q = j.quantization_config as Json | undefined;
  const plain = q && typeof q === 'object' && q.quant_method === 'flute' ? { ...j, quantization_config: undefined } : j;
  const c = llamaConfigFromHf(plain, file);
  if (c.architecture !== undefined && c.architecture !== 'LlamaForCausalLM') {
    throw new FluteError('E_FORMAT', `${file}: FLUTE checkpoints of ${c.architecture} are not supported (LlamaForCausalLM only)`);
  }
  return c;
}

/** config.json for transformers / vLLM (LlamaForCausalLM) from a config; `ids` are BOS / EOS. */
export function configToHf(c: LlamaConfig, dtype: FluteDtype, ids: { bos: number; eos: number } = { bos: 1, eos: 2 }): Json {
  const s = c.ropeScaling;
  const ropeScaling = !s ? null
    : s.type === 'linear' ? { rope_type: 'linear', factor: s.factor }
    : { rope_type: 'llama3', factor: s.factor, low_freq_factor: s.lowFreqFactor, high_freq_factor: s.highFreqFactor, original_max_position_embeddings: s.originalMaxPositions };
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_act: 'silu',
    hidden_size: c.dim, intermediate_size: c.hiddenDim, num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads, num_key_value_heads: c.nKvHeads, head_dim: c.headDim,
    vocab_size: c.vocabSize, max_position_embeddings: c.seqLen, rms_norm_eps: c.normEps, rope_theta: c.ropeTheta,
    rope_scaling: ropeScaling, tie_word_embeddings: c.tiedEmbeddings, attention_bias: false, mlp_bias: false,
    bos_token_id: ids.bos, eos_token_id: ids.eos, torch_dtype: dtype,
  };
}

// ---------------------------------------------------------------------------------------------
// Reading

async function readJson(path: string, what: string): Promise<Json> {
  const { readFile } = await import('node:fs/promises');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FluteError(code === 'ENOENT' ? 'E_NOT_FOUND' : 'E_IO', `${path}: ${code === 'ENOENT' ? `no ${what}` : (e as Error).message}`);
  }
  try {
    const j: unknown = JSON.parse(text);
    if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error('not a JSON object');
    return j as Json;
  } catch (e) {
    throw new FluteError('E_BAD_HEADER', `${path}: ${what} is not a JSON object (${(e as Error).message})`);
  }
}

export function parseFluteConfig(file: string, j: Json): FluteConfig {
  const bits = j.num_bits;
  const g = j.group_size;
  if (typeof bits !== 'number' || !isFluteBits(bits)) throw new FluteError('E_BAD_HEADER', `${file}: num_bits must be 2, 3 or 4, got ${JSON.stringify(bits)}`);
  if (typeof g !== 'number' || !(FLUTE_GROUP_SIZES as readonly number[]).includes(g)) {
    throw new FluteError('E_BAD_HEADER', `${file}: group_size must be one of ${FLUTE_GROUP_SIZES.join(', ')}, got ${JSON.stringify(g)}`);
  }
  const sms = j.num_sms;
  if (sms !== undefined && !(Number.isInteger(sms) && (sms as number) > 0)) throw new FluteError('E_BAD_HEADER', `${file}: num_sms must be a positive integer, got ${JSON.stringify(sms)}`);
  return { num_bits: bits, group_size: g, ...(typeof j.version === 'string' ? { version: j.version } : {}), ...(sms !== undefined ? { num_sms: sms as number } : {}) };
}

function expect(r: TensorReader, name: string, dtypes: readonly string[], shape: readonly number[], where: string): void {
  if (!r.has(name)) throw new FluteError('E_NOT_FOUND', `${where}: tensor "${name}" is missing`);
  const t = r.info(name);
  if (!dtypes.includes(t.dtype) || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new FluteError('E_SHAPE', `${where}: tensor "${name}" should be ${dtypes.join('|')} [${shape.join(', ')}], got ${t.dtype} [${t.shape.join(', ')}]`);
  }
}

function u16(bytes: Uint8Array): Uint16Array {
  const b = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice();
  return new Uint16Array(b.buffer, b.byteOffset, b.length / 2);
}

/** What the reader found about one layer's tables2. */
export type Tables2Status = 'match' | 'rebuilt';

export interface FluteOpenedModel extends OpenedModel {
  readonly format: 'flute';
  readonly fluteConfig: FluteConfig;
  /** Per layer read so far: whether tables2 matched pairs(tables) or was rebuilt from tables. */
  readonly tables2: Map<string, Tables2Status>;
}

/**
 * Reads one FLUTE layer as a canonical QuantizedLinear: unpack weight with tileP 32, scales and table
 * in their dtype's exact f32 values (f16 scales stay 'f16'; bf16 ones become 'f32', which holds them
 * exactly). tables2 must equal the pairs of tables; when it does not and tables is not arange
 * (HIGGS 2-D codebooks, which a 1-D table cannot express), it is treated as damaged (the cast of
 * FLUTE issue #14) and rebuilt from tables.
 */
export async function readFluteLayer(r: TensorReader, base: string, cfg: FluteConfig, where: string): Promise<{ layer: QuantizedLinear; tables2: Tables2Status }> {
  const b = cfg.num_bits;
  const g = cfg.group_size;
  if (!r.has(`${base}.scales`) || !r.has(`${base}.weight`)) throw new FluteError('E_NOT_FOUND', `${where}: layer "${base}" needs ${base}.weight and ${base}.scales`);
  const sInfo = r.info(`${base}.scales`);
  const wInfo = r.info(`${base}.weight`);
  if (sInfo.shape.length !== 2 || wInfo.shape.length !== 2) throw new FluteError('E_SHAPE', `${where}: ${base}.weight and .scales must be 2-D`);
  const n = sInfo.shape[0];
  const k = wInfo.shape[1];
  const why = fluteShapeProblem(n, k, b, g);
  if (why) throw new FluteError('E_SHAPE', `${where}: layer "${base}" [${n}, ${k}]: ${why}`);
  const dtype = sInfo.dtype;
  expect(r, `${base}.scales`, ['F16', 'BF16'], [n, k / g], where);
  expect(r, `${base}.weight`, ['I16', 'U16'], [flutePackedRows(n, b), k], where);
  expect(r, `${base}.tables`, ['F16', 'BF16', 'F32'], [2 ** b], where);
  if (!r.has(`${base}.tables2`)) throw new FluteError('E_NOT_FOUND', `${where}: tensor "${base}.tables2" is missing`);
  const t2Info = r.info(`${base}.tables2`);
  if (t2Info.dtype !== 'F32' || t2Info.shape.reduce((a, v) => a * v, 1) !== 4 ** b || t2Info.shape[0] !== 2 ** b) {
    throw new FluteError('E_SHAPE', `${where}: tensor "${base}.tables2" should be F32 [${2 ** b}, ${2 ** b}, 1], got ${t2Info.dtype} [${t2Info.shape.join(', ')}]`);
  }
  const tInfo = r.info(`${base}.tables`);
  const tableRaw = await r.readRaw(`${base}.tables`);
  const table = bytesToF32(tableRaw, tInfo.dtype, `${where}: ${base}.tables`).slice();
  // The 16-bit patterns tables2 is built from: the table in the scales' dtype T.
  const tableBits = tInfo.dtype === 'F32' ? (dtype === 'F16' ? f32ArrayToF16(table) : f32ArrayToBf16(table)) : u16(tableRaw).slice();
  const want = fluteTables2(tableBits);
  const got = new Uint32Array((await r.readRaw(`${base}.tables2`)).slice().buffer);
  let status: Tables2Status = 'match';
  if (got.some((v, i) => v !== want[i])) {
    if (table.every((v, i) => v === i)) {
      throw new FluteError('E_FORMAT', `${where}: layer "${base}" has tables = arange and its own tables2: a 2-D vector (HIGGS) codebook, which this runtime cannot express`);
    }
    status = 'rebuilt';
  }
  const scalesRaw = u16((await r.readRaw(`${base}.scales`)).slice());
  const scales = dtype === 'F16' ? f16ArrayToF32(scalesRaw) : bf16ArrayToF32(scalesRaw);
  const packedFlute = u16((await r.readRaw(`${base}.weight`)).slice());
  const indices = unpackFlute(packedFlute, n, k, b, `${where}: ${base}.weight`);
  const layer: QuantizedLinear = {
    kind: 'quantized', n, k, bits: b, groupSize: g, tableKind: detectTableKind(table, b, dtype), table,
    scaleDtype: dtype === 'F16' ? 'f16' : 'f32', scales, packed: packIndices(indices, n, k, b, `${where}: ${base}`),
  };
  return { layer: validateQuantizedLinear(layer, `${where}: ${base}`), tables2: status };
}

/** The registry kind whose table, rounded to the checkpoint's dtype, is `table`; 'custom' otherwise. */
function detectTableKind(table: Float32Array, bits: number, dtype: string): TableKind {
  const round = (a: Float32Array) => (dtype === 'BF16' ? bf16ArrayToF32(f32ArrayToBf16(a)) : f16ArrayToF32(f32ArrayToF16(a)));
  for (const kind of Object.keys(TABLE_KINDS) as TableKind[]) {
    if (kind === 'custom' || TABLE_KINDS[kind].unsupportedBits(bits)) continue;
    const t = round(buildTable(kind, bits));
    if (t.every((v, i) => v === table[i])) return kind;
  }
  return 'custom';
}

/** llama2.c tokenizers beside the weights: tokenizer.bin (what the writer puts there) or tok<vocab>.bin. */
async function readFolderTokenizer(dir: string, vocabSize: number, override?: string): Promise<{ bytes: Uint8Array; file: string }> {
  const { readFile } = await import('node:fs/promises');
  const { existsSync } = await import('node:fs');
  const { join } = await nodePath();
  const path = override ?? [join(dir, 'tokenizer.bin'), join(dir, `tok${vocabSize}.bin`)].find((p) => existsSync(p));
  if (!path) throw new FluteError('E_NOT_FOUND', `${dir}: no llama2.c tokenizer (tokenizer.bin or tok${vocabSize}.bin) in the folder; pass --tokenizer FILE`);
  try {
    return { bytes: new Uint8Array(await readFile(path)), file: path };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FluteError(code === 'ENOENT' ? 'E_NOT_FOUND' : 'E_IO', `tokenizer ${path}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
}

/**
 * Opens a FLUTE checkpoint folder as a model. Layers are read (and checked) when asked for. The
 * tokenizer is the folder's tokenizer.json when there is one (load.ts prefers it), else a llama2.c
 * tokenizer.bin beside the weights (what the writer adds for llama2.c and GGUF sources).
 */
export async function openFluteModel(dir: string, opts: { tokenizer?: string } = {}): Promise<FluteOpenedModel> {
  const { join } = await nodePath();
  const fluteConfig = parseFluteConfig(join(dir, FLUTE_CONFIG_FILE), await readJson(join(dir, FLUTE_CONFIG_FILE), 'flute_config.json (is this a FLUTE checkpoint folder?)'));
  const config = fluteConfigToLlama(join(dir, HF_CONFIG), await readJson(join(dir, HF_CONFIG), HF_CONFIG));
  const reader = await openHfSafetensors(dir);
  const { existsSync } = await import('node:fs');
  const hasHfTokenizer = existsSync(join(dir, HF_TOKENIZER));
  try {
    checkLayerCount(dir, `${HF_CONFIG} num_hidden_layers`, config.nLayers, reader.list().length);
    const quantized = new Map<string, QuantizedLayerMeta>();
    const tableKinds = new Map<string, TableKind>();
    for (const spec of llamaTensorSpecs(config)) {
      if (!DECODER_LINEAR.test(spec.name)) continue;
      const base = spec.name.slice(0, -'.weight'.length);
      if (!reader.has(`${base}.scales`)) continue; // left dense
      const t = reader.info(`${base}.tables`);
      const table = bytesToF32(await reader.readRaw(`${base}.tables`), t.dtype, `${dir}: ${base}.tables`);
      const kind = detectTableKind(table, fluteConfig.num_bits, reader.info(`${base}.scales`).dtype);
      tableKinds.set(spec.name, kind);
      quantized.set(spec.name, {
        shape: [spec.shape[0], spec.shape[1]], bits: fluteConfig.num_bits, group_size: fluteConfig.group_size, table: kind,
        table_id: TABLE_KINDS[kind].id, scale_dtype: reader.info(`${base}.scales`).dtype === 'F16' ? 'f16' : 'f32',
      });
    }
    const tables2 = new Map<string, Tables2Status>();
    return {
      file: dir, format: 'flute', config, fluteConfig, tensors: reader, quantized, tables2,
      async readQuantized(name) {
        if (!quantized.has(name)) throw new FluteError('E_NOT_FOUND', `${dir}: "${name}" is not a FLUTE-quantized layer`);
        const { layer, tables2: status } = await readFluteLayer(reader, name.slice(0, -'.weight'.length), fluteConfig, dir);
        tables2.set(name, status);
        return layer;
      },
      readTokenizer: () => readFolderTokenizer(dir, config.vocabSize, opts.tokenizer),
      ...(hasHfTokenizer ? { readHfTokenizer: () => readHfTokenizerFiles(dir) } : {}),
      close: () => reader.close(),
    };
  } catch (e) {
    await reader.close().catch(() => undefined);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface WriteFluteOptions {
  readonly bits: number; // 2, 3 or 4
  readonly groupSize: number; // 32, 64, 128 or 256
  /** The table for layers quantized here (default nf, FLUTE's NormalFloat). */
  readonly tableKind?: TableKind;
  readonly tableValues?: ArrayLike<number>;
  readonly numSms?: number;
  readonly onProgress?: (done: number, total: number, tensor: string) => void;
  readonly signal?: AbortSignal;
}

export interface FluteLayerReport {
  readonly name: string;
  readonly shape: readonly [number, number];
  /** quantized: RTN from f32 here; reused: the source's own layer, only its table rounded to f16. */
  readonly how: 'quantized' | 'reused';
  readonly relRmse?: number; // against the source f32 weights, when quantized here
}

export interface FluteExportReport {
  readonly out: string;
  readonly bytes: number; // model.safetensors
  readonly layers: FluteLayerReport[];
  readonly files: string[];
}

/** Every decoder linear's shape checked against FLUTE's rules before anything is read or written. */
function checkExportShapes(src: OpenedModel, bits: number, g: number): void {
  const problems: string[] = [];
  for (const spec of llamaTensorSpecs(src.config)) {
    if (!DECODER_LINEAR.test(spec.name)) continue;
    const why = fluteShapeProblem(spec.shape[0], spec.shape[1], bits, g);
    if (why) problems.push(`${spec.name} [${spec.shape.join(', ')}]: ${why}`);
  }
  if (problems.length) {
    const more = problems.length > 3 ? ` (and ${problems.length - 3} more)` : '';
    throw new FluteError('E_SHAPE', `${src.file}: FLUTE cannot hold ${problems.length} of this model's layers at ${bits} bits, g=${g}: ${problems.slice(0, 3).join('; ')}${more}`);
  }
}

/** A quantized source layer as FLUTE stores it: table and scales rounded to f16 (exact for f16 scales). */
function toFluteDtype(layer: QuantizedLinear, where: string): QuantizedLinear {
  const table = f16ArrayToF32(f32ArrayToF16(layer.table));
  let scales = layer.scales;
  if (layer.scaleDtype !== 'f16') {
    if (layer.scales.some((s) => Math.abs(s) > F16_MAX)) throw new FluteError('E_OPTION', `${where}: a scale exceeds f16's range; FLUTE stores f16 scales`);
    scales = f16ArrayToF32(f32ArrayToF16(layer.scales));
  }
  return validateQuantizedLinear({ ...layer, table, scales, scaleDtype: 'f16', tableKind: layer.tableKind }, where);
}

/**
 * Writes a FLUTE checkpoint folder from any opened llama model: decoder linears packed as FLUTE
 * layers (the source's own quantized layers when they already have `bits` and `groupSize`, RTN with
 * `tableKind` otherwise; a quantized source at other settings is refused rather than quantized twice),
 * everything else dense F32 (transformers and vLLM cast it to float16 at load). The folder is built
 * beside `outDir` and renamed into place, so a failure leaves no partial checkpoint.
 */
export async function writeFluteCheckpoint(src: OpenedModel, outDir: string, opts: WriteFluteOptions): Promise<FluteExportReport> {
  const { bits, groupSize: g } = opts;
  if (!isFluteBits(bits)) throw new FluteError('E_OPTION', `--bits: FLUTE packs 2, 3 or 4 bits, got ${bits}`);
  if (!(FLUTE_GROUP_SIZES as readonly number[]).includes(g)) throw new FluteError('E_OPTION', `--group-size: FLUTE's group size must be one of ${FLUTE_GROUP_SIZES.join(', ')}, got ${g}`);
  const tableKind = opts.tableKind ?? 'nf';
  buildTable(tableKind, bits, opts.tableValues, 'table');
  const arch = src.config.architecture;
  if (src.config.qkvBias || (arch !== undefined && arch !== 'LlamaForCausalLM')) {
    throw new FluteError('E_FORMAT', `${src.file}: FLUTE checkpoints hold LlamaForCausalLM models; this is ${arch ?? 'a model with q/k/v biases'}`);
  }
  checkExportShapes(src, bits, g);
  for (const [name, m] of src.quantized) {
    if (DECODER_LINEAR.test(name) && (m.bits !== bits || m.group_size !== g)) {
      throw new FluteError('E_OPTION', `${src.file}: ${name} is already quantized at ${m.bits} bits, g=${m.group_size}; export it with --bits ${m.bits} --group-size ${m.group_size}, or quantize the dense model`);
    }
  }
  const c = src.config;
  const perm = (name: string): Int32Array | undefined => {
    if (c.ropeLayout === 'half') return undefined;
    if (name.endsWith(LAYER_LINEARS.wq)) return ropePermutation(c.nHeads, c.headDim, c.ropeLayout, 'half');
    if (name.endsWith(LAYER_LINEARS.wk)) return ropePermutation(c.nKvHeads, c.headDim, c.ropeLayout, 'half');
    return undefined;
  };
  const specs = llamaTensorSpecs(c);
  const total = specs.filter((s) => DECODER_LINEAR.test(s.name)).length;
  const layers: FluteLayerReport[] = [];
  const entries: SafetensorsEntry[] = [];
  const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let done = 0;
  for (const spec of specs) {
    if (!DECODER_LINEAR.test(spec.name)) {
      entries.push({ name: spec.name, dtype: 'F32', shape: spec.shape, data: async () => bytesOf(await readF32(src, spec.name)) });
      continue;
    }
    const [n, k] = spec.shape as [number, number];
    const base = spec.name.slice(0, -'.weight'.length);
    let pending: Promise<QuantizedLinear> | undefined;
    let remaining = 4;
    // The four entries are written in order; the layer is made on the first and dropped after the last.
    const get = async () => {
      pending ??= makeLayer(spec.name, n, k);
      const layer = await pending;
      if (--remaining === 0) pending = undefined;
      return layer;
    };
    entries.push(
      { name: `${base}.weight`, dtype: 'I16', shape: [flutePackedRows(n, bits), k], data: async () => bytesOf(packFlute(unpackIndices((await get()).packed, n, k, bits), n, k, bits, `${src.file}: ${spec.name}`)) },
      { name: `${base}.scales`, dtype: 'F16', shape: [n, k / g], data: async () => bytesOf(f32ArrayToF16((await get()).scales)) },
      { name: `${base}.tables`, dtype: 'F16', shape: [2 ** bits], data: async () => bytesOf(f32ArrayToF16((await get()).table)) },
      { name: `${base}.tables2`, dtype: 'F32', shape: [2 ** bits, 2 ** bits, 1], data: async () => bytesOf(fluteTables2(f32ArrayToF16((await get()).table))) },
    );
  }

  async function makeLayer(name: string, n: number, k: number): Promise<QuantizedLinear> {
    if (opts.signal?.aborted) throw new FluteError('E_ABORTED', `FLUTE export: aborted before ${name}`);
    const where = `${src.file}: ${name}`;
    const p = perm(name);
    let layer: QuantizedLinear;
    if (src.quantized.has(name)) {
      let q: Linear = await src.readQuantized(name);
      if (p) q = permuteRows(q, p, where);
      layer = toFluteDtype(q as QuantizedLinear, where);
      layers.push({ name, shape: [n, k], how: 'reused' });
    } else {
      let w = await src.tensors.readF32(name);
      if (p) w = (permuteRows({ kind: 'dense', n, k, weight: w }, p, where) as { weight: Float32Array }).weight;
      const q = quantizeRtn(w, n, k, { bits, groupSize: g, tableKind, tableValues: opts.tableValues, scaleDtype: 'f16' }, where).layer;
      layer = toFluteDtype(q, where);
      layers.push({ name, shape: [n, k], how: 'quantized', relRmse: relativeError(dequantize(layer), w) });
    }
    opts.onProgress?.(++done, total, name);
    return layer;
  }

  const tok = await src.readTokenizer().catch(() => undefined);
  const hfTok = src.readHfTokenizer ? await src.readHfTokenizer().catch(() => undefined) : undefined;
  const configJson = await hfConfigFor(src);
  const { join } = await nodePath();
  const fluteConfig: FluteConfig = { version: FLUTE_FORMAT_VERSION, num_sms: opts.numSms ?? FLUTE_DEFAULT_NUM_SMS, num_bits: bits, group_size: g };
  return stageFolder(outDir, async (tmp) => {
    const bytes = await writeSafetensors(join(tmp, 'model.safetensors'), entries, { format: 'pt' });
    const text = (t: string) => [new TextEncoder().encode(t)];
    const files: string[] = ['model.safetensors'];
    const put = async (name: string, t: string) => {
      await writeFileAtomic(join(tmp, name), text(t));
      files.push(name);
    };
    await put(HF_CONFIG, JSON.stringify(configJson, null, 2) + '\n');
    await put(FLUTE_CONFIG_FILE, JSON.stringify(fluteConfig, null, 2) + '\n');
    // The source's Hugging Face tokenizer goes along as it was, so transformers and vLLM find it.
    if (hfTok) {
      await put(HF_TOKENIZER, hfTok.tokenizerJson);
      if (hfTok.tokenizerConfigJson !== undefined) await put(HF_TOKENIZER_CONFIG, hfTok.tokenizerConfigJson);
      if (hfTok.generationConfigJson !== undefined) await put(HF_GENERATION_CONFIG, hfTok.generationConfigJson);
      if (hfTok.chatTemplate !== undefined) await put(HF_CHAT_TEMPLATE, hfTok.chatTemplate);
    }
    if (tok) {
      await writeFileAtomic(join(tmp, 'tokenizer.bin'), [tok.bytes]);
      files.push('tokenizer.bin');
    }
    return { out: outDir, bytes, layers, files };
  });
}

/**
 * config.json for the output: the source folder's own (a Hugging Face folder, or one `flute quantize`
 * wrote) with torch_dtype float16 and no quantization_config, so every field transformers reads
 * (token ids, rope_scaling...) survives; otherwise one built from the config, with a GGUF source's
 * BOS/EOS ids or llama2.c's 1/2.
 */
async function hfConfigFor(src: OpenedModel): Promise<Json> {
  const { existsSync } = await import('node:fs');
  const { dirname, join } = await nodePath();
  const dir = src.format === 'hf' || src.format === 'flute' ? src.file : dirname(src.file);
  const path = join(dir, HF_CONFIG);
  if ((src.format === 'hf' || src.format === 'flute' || src.readHfTokenizer) && existsSync(path)) {
    const j = await readJson(path, HF_CONFIG);
    const { quantization_config: _dropped, ...rest } = j;
    return { ...rest, torch_dtype: 'float16' };
  }
  // A GGUF source names its own special tokens; llama2.c's are always 1 and 2.
  const ids = isGgufModel(src)
    ? { bos: metaInt(src.gguf, 'tokenizer.ggml.bos_token_id') ?? 1, eos: metaInt(src.gguf, 'tokenizer.ggml.eos_token_id') ?? 2 }
    : undefined;
  return configToHf({ ...src.config, ropeLayout: 'half' }, 'float16', ids);
}

/** The dense tensors: f32 straight from the reader, or a dequantized source layer (e.g. a quantized lm_head). */
async function readF32(src: OpenedModel, name: string): Promise<Float32Array> {
  if (src.quantized.has(name) && !(src.config.tiedEmbeddings && name === 'lm_head.weight')) return dequantize(await src.readQuantized(name));
  return src.tensors.readF32(name);
}

/**
 * Builds a folder in a temp sibling, then renames it to `outDir`. An existing `outDir` is replaced
 * only when it is empty or itself a FLUTE checkpoint (it holds flute_config.json), never otherwise.
 */
async function stageFolder<T>(outDir: string, fill: (tmp: string) => Promise<T>): Promise<T> {
  const fs = await import('node:fs/promises');
  const { existsSync } = await import('node:fs');
  const { basename, dirname, join } = await nodePath();
  const parent = dirname(outDir) || '.';
  if (!existsSync(parent)) throw new FluteError('E_IO', `cannot write ${outDir}: folder ${parent} does not exist`);
  let replace = false;
  if (existsSync(outDir)) {
    const st = await fs.stat(outDir);
    const entries = st.isDirectory() ? await fs.readdir(outDir) : null;
    if (!entries || (entries.length > 0 && !entries.includes(FLUTE_CONFIG_FILE))) {
      throw new FluteError('E_OPTION', `--out ${outDir}: exists and is not an empty folder or a FLUTE checkpoint; refusing to replace it`);
    }
    replace = true;
  }
  const tmp = join(parent, `.${basename(outDir)}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.tmp`);
  await fs.mkdir(tmp);
  try {
    const result = await fill(tmp);
    if (replace) {
      const old = `${tmp}.old`;
      await fs.rename(outDir, old);
      await fs.rename(tmp, outDir);
      await fs.rm(old, { recursive: true, force: true });
    } else await fs.rename(tmp, outDir);
    return result;
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw e;
  }
}

