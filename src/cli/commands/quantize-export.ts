// The two foreign outputs of `flute quantize`: a GGUF file for llama.cpp (--format gguf --type T) and a
// FLUTE checkpoint folder for FLUTE + vLLM (--format flute). quantize.ts parses the options and calls here.

import { basename, extname } from 'node:path';
import { FluteError } from '../../errors.js';
import { writeFluteCheckpoint } from '../../format/flute-checkpoint.js';
import { GGUF_WRITE_TYPES, writeLlamaGguf, type GgufWriteType } from '../../format/gguf-llama.js';
import type { OpenedModel } from '../../model/open.js';
import type { TableKind } from '../../quant/tables.js';
import { progressBar } from '../progress.js';

export type OutputFormat = 'checkpoint' | 'gguf' | 'flute';
export const OUTPUT_FORMATS: readonly OutputFormat[] = ['checkpoint', 'gguf', 'flute'];

export const EXPORT_DEFAULTS = {
  ggufType: 'q4_0' as GgufWriteType, // llama.cpp's classic 4-bit: our 'int' table at g = 32
};

export const EXPORT_HELP = `  --format F           checkpoint | gguf | flute (default: gguf when --out ends in .gguf or --type is
                       given, else checkpoint). gguf writes a llama.cpp file; flute writes a folder
                       FLUTE and vLLM load (config.json, flute_config.json, model.safetensors)
  --type T             gguf only: ${GGUF_WRITE_TYPES.join(' | ')} (default ${EXPORT_DEFAULTS.ggufType}); 1-D tensors stay
                       F32, and a tensor whose K is not a multiple of 32 is written F16`;

/** --format, from the flag or from --out / --type. */
export function resolveFormat(format: string | undefined, out: string | undefined, type: string | undefined): OutputFormat {
  if (format !== undefined) {
    if (!(OUTPUT_FORMATS as readonly string[]).includes(format)) throw new FluteError('E_OPTION', `--format: expected one of ${OUTPUT_FORMATS.join(', ')}, got ${JSON.stringify(format)}`);
    if (type !== undefined && format !== 'gguf') throw new FluteError('E_OPTION', `--type: only applies to --format gguf, got --format ${format}`);
    return format as OutputFormat;
  }
  return out?.toLowerCase().endsWith('.gguf') || type !== undefined ? 'gguf' : 'checkpoint';
}

export interface GgufExportArgs {
  readonly src: OpenedModel;
  readonly modelPath: string;
  readonly out: string | undefined;
  readonly type: string | undefined;
  readonly json: boolean;
}

export async function exportGguf(a: GgufExportArgs): Promise<number> {
  const type = (a.type ?? EXPORT_DEFAULTS.ggufType) as GgufWriteType;
  if (!(GGUF_WRITE_TYPES as readonly string[]).includes(type)) throw new FluteError('E_OPTION', `--type: expected one of ${GGUF_WRITE_TYPES.join(', ')}, got ${JSON.stringify(a.type)}`);
  const out = a.out ?? `${basename(a.modelPath, extname(a.modelPath))}-${type}.gguf`;
  const bar = progressBar('gguf', { enabled: !a.json });
  const t0 = performance.now();
  const report = await writeLlamaGguf(a.src, out, { type, onProgress: (d, t, n) => bar.update(d, t, n) });
  bar.done();
  const seconds = (performance.now() - t0) / 1000;
  if (a.json) {
    console.log(JSON.stringify({ ...report, model: a.modelPath, format: 'gguf', seconds }, null, 2));
    return 0;
  }
  for (const t of report.tensors) {
    const err = t.relRmse !== undefined ? `  rel. RMS error ${t.relRmse.toFixed(4)}` : '';
    console.log(`  ${t.name.padEnd(28)} ${t.type.padEnd(6)} [${t.shape.join(' x ')}] ${t.how}${err}`);
  }
  for (const f of report.fallbacks) console.log(`note: ${f}`);
  console.log(`wrote ${out}: ${report.bytes} bytes (GGUF, ${type}) in ${seconds.toFixed(2)} s`);
  return 0;
}

export interface FluteExportArgs {
  readonly src: OpenedModel;
  readonly modelPath: string;
  readonly out: string | undefined;
  readonly bits: number;
  readonly groupSize: number;
  readonly tableKind: TableKind;
  readonly tableValues: number[] | undefined;
  readonly json: boolean;
}

export async function exportFlute(a: FluteExportArgs): Promise<number> {
  const out = a.out ?? `${basename(a.modelPath, extname(a.modelPath))}-flute-${a.tableKind}${a.bits}-g${a.groupSize}`;
  const bar = progressBar('flute', { enabled: !a.json });
  const t0 = performance.now();
  const report = await writeFluteCheckpoint(a.src, out, {
    bits: a.bits, groupSize: a.groupSize, tableKind: a.tableKind, tableValues: a.tableValues, onProgress: (d, t, n) => bar.update(d, t, n),
  });
  bar.done();
  const seconds = (performance.now() - t0) / 1000;
  if (a.json) {
    console.log(JSON.stringify({ ...report, model: a.modelPath, format: 'flute', bits: a.bits, groupSize: a.groupSize, table: a.tableKind, seconds }, null, 2));
    return 0;
  }
  for (const l of report.layers) {
    console.log(`  ${l.name.padEnd(44)} [${l.shape.join(' x ')}] ${l.how}${l.relRmse !== undefined ? `  rel. RMS error ${l.relRmse.toFixed(4)}` : ''}`);
  }
  console.log(`wrote ${out}/ (${report.files.join(', ')}): FLUTE ${a.bits}-bit g=${a.groupSize}, model.safetensors ${report.bytes} bytes, in ${seconds.toFixed(2)} s`);
  console.log(`serve it on GPUs with: python -m flute.integrations.vllm vllm.entrypoints.openai.api_server --model ${out} --quantization flute`);
  return 0;
}
