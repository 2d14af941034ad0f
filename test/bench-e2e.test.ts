// The end-to-end benchmark's pieces in-process and quickly: one stories260K configuration dense and W4
// (rows as `flute bench e2e --json` prints them), and the BENCHMARKS.md section written and replaced.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatE2eTable, runE2eCase, type E2eRow } from '../bench/e2e.js';
import { updateE2eMarkdown } from '../src/cli/bench-e2e.js';
import { repoFile } from './hf-fixtures.js';

test('e2e rows: stories260K dense and W4G128 on the reference backend, and the Markdown section', async () => {
  const rows: E2eRow[] = [];
  for (const weights of ['f32', 'W4G128'] as const) {
    rows.push(await runE2eCase({ model: 'stories260K', weights, backend: 'ref', promptTokens: 8, decodeTokens: 4, storiesPath: repoFile('models/stories260K/stories260K.bin') }));
  }
  const [dense, w4] = rows;
  assert.equal(dense.bits, null);
  assert.equal(w4.bits, 4);
  assert.equal(w4.outputLayer, 'quantized');
  for (const r of rows) {
    assert.equal(r.backend, 'ref');
    assert.ok(r.prefillTokensPerSecond > 0 && r.decodeTokensPerSecond > 0 && r.peakMemoryBytes > 1e6, JSON.stringify(r));
  }
  assert.ok(w4.weightBytes < dense.weightBytes / 5, `W4 holds ${w4.weightBytes} bytes vs dense ${dense.weightBytes}`);
  assert.match(formatE2eTable(rows), /\| stories260K \| ref \| W4G128 \| 4 \|/);

  const dir = mkdtempSync(join(tmpdir(), 'flute-e2e-'));
  try {
    const md = join(dir, 'BENCHMARKS.md');
    writeFileSync(md, '# Benchmarks\n\n## Kernels\n\n<!-- kernels:begin -->\nkeep\n<!-- kernels:end -->\n');
    await updateE2eMarkdown(md, rows, 'flute bench e2e --model stories260K');
    await updateE2eMarkdown(md, rows.slice(0, 1), 'flute bench e2e --model stories260K --weights f32');
    const text = readFileSync(md, 'utf8');
    assert.equal(text.split('<!-- e2e:begin -->').length, 2, 'one section, replaced in place');
    assert.match(text, /<!-- kernels:begin -->\nkeep\n<!-- kernels:end -->/);
    assert.match(text, /Command: `flute bench e2e --model stories260K --weights f32`/);
    assert.doesNotMatch(text, /W4G128/);
    assert.deepEqual(readdirSync(dir), ['BENCHMARKS.md'], 'no temporary file left');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
