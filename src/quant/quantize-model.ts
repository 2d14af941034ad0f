// Quantizes a whole model file into a flute-engine checkpoint, one tensor at a time: each linear
// layer inside the decoder blocks (and optionally the output layer) becomes a QuantizedLinear; the
// embedding and norms stay dense. Peak memory is one f32 tensor plus its quantized form.

import { FluteError } from '../errors.js';
import { checkpointMetadata, layerBaseName, quantizedLayerEntries, TOKENIZER_TENSOR, type QuantizedLayerMeta } from '../format/checkpoint.js';
import { serializeSafetensors, writeSafetensors, type SafetensorsEntry } from '../format/safetensors.js';
import { baseName } from '../format/source.js';
import { numel } from '../format/tensors.js';
import type { OpenedModel } from '../model/open.js';
import { groupsPerRow, type QuantizedLinear } from './linear.js';
import { quantizeRtn, quantizeWithScales, type QuantizeError, type QuantizeOptions } from './rtn.js';
import { buildTable, TABLE_KINDS } from './tables.js';

/** The linear layers FLUTE quantizes: every projection inside the decoder blocks. */
export const DECODER_LINEAR = /^model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$/;

export interface QuantizeModelOptions extends QuantizeOptions {
  /** Quantize the output layer too (a tied one gets its own quantized copy; the embedding stays dense). */
  readonly quantizeOutput?: boolean;
  readonly onProgress?: (done: number, total: number, tensor: string) => void;
  readonly signal?: AbortSignal;
  /** Given scales [N, ceil(K/g)] for a weight (by name) replace RTN's absmax ones; NFL's hook (quant/nfl.ts). */
  readonly scalesFor?: (weightName: string) => ArrayLike<number> | undefined;
}

export interface LayerReport {
  readonly name: string;
  readonly shape: readonly [number, number];
  readonly error: QuantizeError;
}

export interface QuantizeModelReport {
  readonly out: string;
  readonly layers: LayerReport[];
  readonly worst: LayerReport | undefined; // the layer with the largest relative RMS error
  readonly quantizedParams: number;
  readonly denseParams: number;
  readonly bitsPerWeight: number; // over the quantized layers, scales and tables included
  readonly bytes: number; // size of the written file
}

export async function quantizeModel(src: OpenedModel, outPath: string, opts: QuantizeModelOptions): Promise<QuantizeModelReport> {
  return quantizeInto(src, outPath, opts, (entries, metadata) => writeSafetensors(outPath, entries, metadata));
}

/** The checkpoint quantizeModel would write, in memory (browsers: no files); report.out is "<memory>". */
export async function quantizeModelToBytes(src: OpenedModel, opts: QuantizeModelOptions): Promise<{ bytes: Uint8Array; report: QuantizeModelReport }> {
  let bytes: Uint8Array = new Uint8Array(0);
  const report = await quantizeInto(src, '<memory>', opts, async (entries, metadata) => {
    bytes = await serializeSafetensors(entries, metadata);
    return bytes.length;
  });
  return { bytes, report };
}

type WriteCheckpoint = (entries: SafetensorsEntry[], metadata: Record<string, string>) => Promise<number>;

async function quantizeInto(src: OpenedModel, out: string, opts: QuantizeModelOptions, write: WriteCheckpoint): Promise<QuantizeModelReport> {
  if (src.quantized.size > 0) {
    throw new FluteError('E_OPTION', `${src.file}: already quantized (${src.quantized.size} quantized layers); quantize the original dense model instead`);
  }
  // Fail on bad options before reading any tensor or creating any file.
  buildTable(opts.tableKind, opts.bits, opts.tableValues, 'table');
  if (!Number.isInteger(opts.groupSize) || opts.groupSize < 1) {
    throw new FluteError('E_OPTION', `group size: expected a positive integer, got ${opts.groupSize}`);
  }
  const cfg = src.config;
  const scaleDtype = opts.scaleDtype ?? 'f16';
  const tied = cfg.tiedEmbeddings;
  const outputSource = tied ? 'model.embed_tokens.weight' : 'lm_head.weight';

  // Plan: which tensor becomes what, in file order.
  type Plan = { name: string; from: string; quantize: boolean; shape: readonly number[] };
  const plan: Plan[] = [];
  for (const t of src.tensors.list()) {
    const quantize = DECODER_LINEAR.test(t.name) || (Boolean(opts.quantizeOutput) && !tied && t.name === 'lm_head.weight');
    plan.push({ name: t.name, from: t.name, quantize, shape: t.shape });
  }
  if (opts.quantizeOutput && tied) {
    plan.push({ name: 'lm_head.weight', from: outputSource, quantize: true, shape: src.tensors.info(outputSource).shape });
  }
  const quantized = plan.filter((p) => p.quantize);
  if (quantized.length === 0) throw new FluteError('E_FORMAT', `${src.file}: no linear layers to quantize were found`);

  const layers: LayerReport[] = [];
  const quantization: Record<string, QuantizedLayerMeta> = {};
  const entries: SafetensorsEntry[] = [];
  let done = 0;
  let quantizedParams = 0;
  let quantizedBits = 0;
  let denseParams = 0;
  for (const p of plan) {
    if (!p.quantize) {
      denseParams += numel(p.shape);
      entries.push({ name: p.name, dtype: 'F32', shape: p.shape, data: async () => {
        const f = await src.tensors.readF32(p.from);
        return new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
      } });
      continue;
    }
    if (p.shape.length !== 2) throw new FluteError('E_SHAPE', `${src.file}: tensor "${p.from}" should be 2-D [N, K], got [${p.shape.join(', ')}]`);
    const [n, k] = p.shape as [number, number];
    const base = layerBaseName(p.name);
    const meta: QuantizedLayerMeta = {
      shape: [n, k], bits: opts.bits, group_size: opts.groupSize, table: opts.tableKind,
      table_id: TABLE_KINDS[opts.tableKind].id, scale_dtype: scaleDtype,
    };
    quantization[base] = meta;
    quantizedParams += n * k;
    quantizedBits += n * k * opts.bits + n * groupsPerRow(k, opts.groupSize) * (scaleDtype === 'f16' ? 16 : 32) + 2 ** opts.bits * 32;
    entries.push(...quantizedLayerEntries(base, meta, async (): Promise<QuantizedLinear> => {
      if (opts.signal?.aborted) throw new FluteError('E_ABORTED', `quantize: aborted before ${p.name}`);
      const w = await src.tensors.readF32(p.from);
      const given = opts.scalesFor?.(p.name);
      const { layer, error } = given
        ? quantizeWithScales(w, n, k, given, opts, `${src.file}: ${p.from}`)
        : quantizeRtn(w, n, k, opts, `${src.file}: ${p.from}`);
      layers.push({ name: p.name, shape: [n, k], error });
      opts.onProgress?.(++done, quantized.length, p.name);
      return layer;
    }));
  }
  const tok = await src.readTokenizer().catch(() => undefined);
  if (tok) entries.push({ name: TOKENIZER_TENSOR, dtype: 'U8', shape: [tok.bytes.length], data: tok.bytes });
  const config = opts.quantizeOutput && tied ? { ...cfg, tiedEmbeddings: false } : cfg;
  const metadata = checkpointMetadata({
    config,
    quantization,
    dense: plan.filter((p) => !p.quantize).map((p) => p.name),
    tokenizer: tok ? 'llama2c' : undefined,
    source: baseName(src.file),
  });
  const bytes = await write(entries, metadata);
  const worst = layers.reduce<LayerReport | undefined>((w, l) => (!w || l.error.relRmse > w.error.relRmse ? l : w), undefined);
  return { out, layers, worst, quantizedParams, denseParams, bitsPerWeight: quantizedBits / quantizedParams, bytes };
}
