// Measures quantize's peak memory on a synthetic llama2.c model much larger than its largest tensor,
// to show that quantizing streams: peak RSS ~ runtime + one f32 tensor + its quantized form.
// Usage: node dist/bench/quantize-memory.js [--layers N] [--json]   (writes ~1 GB under the OS temp dir)

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeLlama2c } from '../src/format/llama2c.js';
import { llamaTensorSpecs } from '../src/model/weights.js';
import { numel } from '../src/format/tensors.js';
import { packageRoot } from '../src/cli/paths.js';
import { syntheticConfig, syntheticReader } from './synthetic.js';

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { layers: { type: 'string' }, json: { type: 'boolean' } } });
  // TinyLlama-1.1B's shapes (dim 2048, hidden 5632, 32 query / 4 KV heads, 32000 tokens), fewer layers.
  const config = syntheticConfig({ dim: 2048, hiddenDim: 5632, nLayers: Number(values.layers ?? 4), nHeads: 32, nKvHeads: 4, vocabSize: 32000 });
  const dir = mkdtempSync(join(tmpdir(), 'flute-qmem-'));
  try {
    const model = join(dir, 'synthetic.bin');
    await writeLlama2c(model, config, syntheticReader(config));
    const largest = Math.max(...llamaTensorSpecs(config).map((s) => numel(s.shape) * 4));
    const r = spawnSync(process.execPath, [join(packageRoot(), 'bin', 'flute.js'), 'quantize', model, '--bits', '4', '--group-size', '128', '--out', join(dir, 'q.safetensors'), '--json'], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    const rep = JSON.parse(r.stdout);
    const row = {
      modelBytes: statSync(model).size,
      largestTensorF32Bytes: largest,
      outputBytes: rep.bytes,
      peakRssBytes: rep.peakRssBytes,
      seconds: rep.seconds,
    };
    if (values.json) console.log(JSON.stringify(row, null, 2));
    else {
      const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
      console.log(`model ${mib(row.modelBytes)}, largest tensor ${mib(row.largestTensorF32Bytes)} f32, output ${mib(row.outputBytes)}: peak RSS ${mib(row.peakRssBytes)} in ${row.seconds.toFixed(1)} s`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
