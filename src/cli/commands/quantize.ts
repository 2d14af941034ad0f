// flute quantize: RTN-quantize a dense model into a flute-engine checkpoint, or write it as a GGUF file
// or a FLUTE checkpoint folder (quantize-export.ts).

import { readFile } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import { FluteError } from '../../errors.js';
import { writeHfCheckpointFolder } from '../../format/hf.js';
import { openModelFile } from '../../model/open.js';
import { quantizeModel } from '../../quant/quantize-model.js';
import { isTableKind, parseTableJson, type TableKind } from '../../quant/tables.js';
import { atMostOnePositional, isPosInt, num, oneOf, parse, str } from '../args.js';
import { bundledModelPath } from '../paths.js';
import { progressBar } from '../progress.js';
import { EXPORT_HELP, exportFlute, exportGguf, resolveFormat } from './quantize-export.js';
import { NFL_HELP, NFL_OPTIONS, nflChoice, nflProgress, nflSummary } from './quantize-nfl.js';
import { quantizeModelNfl, type NflResult } from '../../quant/nfl.js';

const DEFAULTS = {
  bits: 4, // FLUTE's main setting
  groupSize: 64, // FLUTE's model zoo uses g = 64; bits/weight = b + 16/g with f16 scales
  table: 'nf', // NormalFloat, FLUTE's quantizer
  scaleDtype: 'f16' as const, // as FLUTE stores them
};

const HELP = `Usage: flute quantize [model] [options]

Quantizes every linear layer inside the decoder blocks (RTN: per-group absmax scale, nearest table
entry) and writes one safetensors checkpoint. The embedding and norms stay dense, and so does the
output layer unless --quantize-output. The model may be a llama2.c file, a checkpoint, a GGUF file
or a FLUTE folder; with --format gguf or flute the output is for llama.cpp or FLUTE + vLLM instead.

Options:
  --bits B             index width, 1..8 (default ${DEFAULTS.bits})
  --group-size G       values per scale along K, any positive integer (default ${DEFAULTS.groupSize})
  --table T            nf | int | fp4 | iq4nl | FILE.json with 2^B values (default ${DEFAULTS.table})
  --scale-dtype D      f16 | f32 (default ${DEFAULTS.scaleDtype})
  --quantize-output    quantize the output layer too
  --out FILE           output path (default <model>-<table><bits>-g<G>.safetensors here); from a
                       Hugging Face folder, an output folder (model.safetensors + tokenizer + config)
  --tokenizer FILE     tokenizer to embed (default: found beside a llama2.c model)
${EXPORT_HELP}
${NFL_HELP}
  --json               print a JSON report instead of text

Examples:
  flute quantize --bits 3 --group-size 32 --table nf --out stories-nf3.safetensors
  flute quantize models/stories260K/stories260K.gguf --type iq4_nl --out stories-iq4_nl.gguf
  flute quantize my-model.bin --format flute --bits 4 --group-size 64 --out my-model-flute/`;

export async function quantizeCommand(argv: string[]): Promise<number> {
  const p = parse('quantize', argv, {
    bits: { type: 'string' }, 'group-size': { type: 'string' }, table: { type: 'string' }, 'scale-dtype': { type: 'string' },
    'quantize-output': { type: 'boolean' }, out: { type: 'string' }, tokenizer: { type: 'string' },
    format: { type: 'string' }, type: { type: 'string' }, ...NFL_OPTIONS,
  });
  if (p.values.help) return console.log(HELP), 0;
  const modelPath = atMostOnePositional('quantize', p) ?? bundledModelPath();
  const bits = num(p, 'bits', DEFAULTS.bits, (v) => Number.isInteger(v) && v >= 1 && v <= 8, 'an integer from 1 to 8');
  const groupSize = num(p, 'group-size', DEFAULTS.groupSize, isPosInt, 'a positive integer');
  const scaleDtype = oneOf(p, 'scale-dtype', ['f16', 'f32'] as const, DEFAULTS.scaleDtype);
  const tableArg = str(p, 'table') ?? DEFAULTS.table;
  let tableKind: TableKind;
  let tableValues: number[] | undefined;
  if (isTableKind(tableArg) && tableArg !== 'custom') {
    tableKind = tableArg;
  } else if (tableArg.endsWith('.json')) {
    tableKind = 'custom';
    let text: string;
    try {
      text = await readFile(tableArg, 'utf8');
    } catch (e) {
      throw new FluteError((e as NodeJS.ErrnoException).code === 'ENOENT' ? 'E_NOT_FOUND' : 'E_IO', `--table ${tableArg}: cannot read the file (${(e as Error).message})`);
    }
    tableValues = parseTableJson(text, tableArg);
  } else {
    throw new FluteError('E_OPTION', `--table: expected nf, int, fp4, iq4nl or a .json file of ${2 ** bits} values, got ${JSON.stringify(tableArg)}`);
  }
  const json = Boolean(p.values.json);
  const format = resolveFormat(str(p, 'format'), str(p, 'out'), str(p, 'type'));
  const nfl = await nflChoice(p); // null for RTN
  if (nfl && format !== 'checkpoint') throw new FluteError('E_OPTION', `--method nfl: writes a flute-engine checkpoint only, not --format ${format}`);
  if (format !== 'checkpoint') {
    const src = await openModelFile(modelPath, { tokenizer: str(p, 'tokenizer') });
    try {
      const common = { src, modelPath, out: str(p, 'out'), json };
      return format === 'gguf'
        ? await exportGguf({ ...common, type: str(p, 'type') })
        : await exportFlute({ ...common, bits, groupSize, tableKind, tableValues });
    } finally {
      await src.close();
    }
  }

  const src = await openModelFile(modelPath, { tokenizer: str(p, 'tokenizer') });
  // A Hugging Face folder quantizes into a folder: the checkpoint as model.safetensors, with the
  // tokenizer and config copied beside it (writeHfCheckpointFolder), so it opens like the source.
  const toFolder = src.format === 'hf';
  const stem = toFolder ? basename(modelPath) : basename(modelPath, extname(modelPath)); // "Llama-3.2-1B" has no extension
  const out = str(p, 'out') ?? `${stem}-${nfl ? 'nfl' : tableKind === 'custom' ? basename(tableArg, '.json') : tableKind}${bits}-g${groupSize}${toFolder ? '' : '.safetensors'}`;
  const bar = progressBar('quantize', { enabled: !json });
  const t0 = performance.now();
  try {
    const common = {
      bits, groupSize, tableKind, tableValues, scaleDtype, quantizeOutput: Boolean(p.values['quantize-output']),
      onProgress: (done: number, total: number, name: string) => bar.update(done, total, name),
    };
    let learned: NflResult | undefined; // NFL: learn the scales first (with a progress bar showing the loss)
    const write = (file: string) => nfl
      ? quantizeModelNfl(src, file, { ...common, ...nfl, onStep: nflProgress(progressBar('nfl', { enabled: !json })) }).then((r) => ((learned = r.nfl), r.report))
      : quantizeModel(src, file, common);
    const report = { ...(toFolder ? await writeHfCheckpointFolder(modelPath, out, write) : await write(out)), out };
    bar.done();
    const seconds = (performance.now() - t0) / 1000;
    const peakRssBytes = process.resourceUsage().maxRSS * 1024;
    const sourceBytes = src.tensors.list().reduce((a, t) => a + t.byteLength, 0);
    if (json) {
      console.log(JSON.stringify({ ...report, model: modelPath, bits, groupSize, table: tableKind, scaleDtype, sourceBytes, seconds, peakRssBytes, nfl: learned && nflSummary(learned, nfl!).json }, null, 2));
    } else {
      for (const l of report.layers) console.log(`  ${l.name.padEnd(44)} [${l.shape.join(' x ')}]  rel. RMS error ${l.error.relRmse.toFixed(4)}`);
      if (learned) console.log(nflSummary(learned, nfl!).text);
      console.log(`worst layer: ${report.worst?.name} (rel. RMS error ${report.worst?.error.relRmse.toFixed(4)})`);
      console.log(`${report.layers.length} layers quantized to ${tableKind}${bits} g=${groupSize}: ${report.bitsPerWeight.toFixed(3)} bits/weight (scales included)`);
      console.log(`wrote ${out}: ${report.bytes} bytes (source tensors ${sourceBytes} bytes) in ${seconds.toFixed(2)} s, peak RSS ${(peakRssBytes / 2 ** 20).toFixed(1)} MiB`);
    }
    return 0;
  } finally {
    await src.close();
  }
}
