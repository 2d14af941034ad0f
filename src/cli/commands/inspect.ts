// flute inspect: what is in a model file: format, config, tensors with dtypes, shapes, bits, groups, sizes.

import { FluteError } from '../../errors.js';
import { openModelFile } from '../../model/open.js';
import { openSafetensors } from '../../format/safetensors.js';
import { isGgufModel, metadataSummary } from '../../format/gguf-llama.js';
import { atMostOnePositional, parse } from '../args.js';
import { bundledModelPath } from '../paths.js';

const HELP = `Usage: flute inspect [FILE] [--json]

Shows the format, model config and every tensor (dtype, shape, bytes; bits, group size and table
for quantized layers) of a llama2.c model, a flute-engine checkpoint, a GGUF file (its metadata too),
a FLUTE checkpoint folder (flute_config.json) or any safetensors file.`;

interface Row { name: string; dtype: string; shape: number[]; bytes: number; bits?: number; groupSize?: number; table?: string; scaleDtype?: string }

export async function inspectCommand(argv: string[]): Promise<number> {
  const p = parse('inspect', argv, {});
  if (p.values.help) return console.log(HELP), 0;
  const file = atMostOnePositional('inspect', p) ?? bundledModelPath();
  let result: { file: string; format: string; config?: unknown; metadata?: Record<string, unknown>; tensors: Row[] };
  try {
    const m = await openModelFile(file);
    const rows: Row[] = [];
    const parts = new Set<string>();
    for (const [name, q] of m.quantized) {
      // A layer's stored parts: X.qweight/scales/table (checkpoint), X.weight/scales/tables/tables2 (FLUTE)
      // or the GGUF block tensor X.weight itself. A tied GGUF output has none of its own: no row.
      const base = name.replace(/\.weight$/, '');
      const ts = m.tensors.list().filter((t) => t.name === name || t.name.startsWith(`${base}.`));
      if (ts.length === 0) continue;
      ts.forEach((t) => parts.add(t.name));
      const dtype = ts.length === 1 && ts[0].storage ? ts[0].storage : `LUT${q.bits}`;
      rows.push({ name, dtype, shape: [...q.shape], bytes: ts.reduce((a, t) => a + t.byteLength, 0), bits: q.bits, groupSize: q.group_size, table: q.table, scaleDtype: q.scale_dtype });
    }
    for (const t of m.tensors.list()) if (!parts.has(t.name)) rows.push({ name: t.name, dtype: t.storage ?? t.dtype, shape: [...t.shape], bytes: t.byteLength });
    const metadata = isGgufModel(m) ? metadataSummary(m.gguf) : 'fluteConfig' in m ? { ...(m.fluteConfig as object) } : undefined;
    result = { file, format: m.format, config: m.config, ...(metadata ? { metadata } : {}), tensors: rows };
    await m.close();
  } catch (e) {
    // Not a model we can run: still list a plain safetensors file.
    if (!(e instanceof FluteError && e.code === 'E_FORMAT' && /not a flute-engine checkpoint/.test(e.message))) throw e;
    const st = await openSafetensors(file);
    result = { file, format: 'safetensors', metadata: st.metadata, tensors: st.list().map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape], bytes: t.byteLength })) };
    await st.close();
  }
  if (p.values.json) {
    console.log(JSON.stringify(result, null, 2));
    return 0;
  }
  console.log(`${result.file}: ${result.format}`);
  if (result.config) console.log(`config: ${JSON.stringify(result.config)}`);
  if (result.metadata) console.log(`metadata: ${JSON.stringify(result.metadata)}`);
  const total = result.tensors.reduce((a, t) => a + t.bytes, 0);
  const w = Math.max(...result.tensors.map((t) => t.name.length));
  for (const t of result.tensors) {
    const q = t.bits ? `  ${t.table}${t.bits} g=${t.groupSize} scales ${t.scaleDtype}` : '';
    console.log(`  ${t.name.padEnd(w)}  ${t.dtype.padEnd(5)} [${t.shape.join(', ')}]  ${t.bytes} bytes${q}`);
  }
  console.log(`${result.tensors.length} tensors, ${total} bytes`);
  return 0;
}
