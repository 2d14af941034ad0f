// The command line around GGUF and FLUTE files: quantize to GGUF, inspect and run it, option errors,
// FLUTE refusals that leave nothing behind, and the race's help (which installs nothing).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../src/cli/main.js';
import { packageRoot } from '../src/cli/paths.js';

const GGUF = join(packageRoot(), 'models', 'stories260K', 'stories260K.gguf');
const dir = mkdtempSync(join(tmpdir(), 'flute-gguf-cli-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** Runs the CLI in-process, capturing what it prints. */
async function flute(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  const write = process.stderr.write.bind(process.stderr);
  console.log = (...a: unknown[]) => { out.push(a.join(' ')); };
  console.error = (...a: unknown[]) => { err.push(a.join(' ')); };
  process.stderr.write = ((chunk: string | Uint8Array) => { err.push(String(chunk)); return true; }) as typeof process.stderr.write;
  try {
    const code = await main(args);
    return { code, stdout: out.join('\n'), stderr: err.join('\n') };
  } finally {
    console.log = log;
    console.error = error;
    process.stderr.write = write;
  }
}

test('flute quantize x.gguf --type iq4_nl, then inspect and run the result', async () => {
  const out = join(dir, 'stories-iq4_nl.gguf');
  const q = await flute('quantize', GGUF, '--type', 'iq4_nl', '--out', out, '--json');
  assert.equal(q.code, 0, q.stderr);
  const report = JSON.parse(q.stdout);
  assert.equal(report.format, 'gguf');
  assert.equal(report.fallbacks.length, 5);
  assert.ok(existsSync(out));
  const i = await flute('inspect', out, '--json');
  assert.equal(i.code, 0, i.stderr);
  const info = JSON.parse(i.stdout);
  assert.equal(info.format, 'gguf');
  const q0 = info.tensors.find((t: { name: string }) => t.name === 'model.layers.0.self_attn.q_proj.weight');
  assert.deepEqual([q0.dtype, q0.bits, q0.groupSize, q0.table, q0.bytes], ['IQ4_NL', 4, 32, 'iq4nl', 64 * 64 / 32 * 18]);
  assert.equal(info.metadata['general.file_type'], 25);
  const r = await flute('run', out, '--temperature', '0', '--max-tokens', '20', '--backend', 'ref', '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).tokens, 20);
});

test('flute quantize: --type needs gguf, a bad --type or --format is an option error', async () => {
  const bad = await flute('quantize', GGUF, '--format', 'checkpoint', '--type', 'q4_0', '--out', join(dir, 'x.safetensors'));
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /E_OPTION.*--type: only applies to --format gguf/);
  const t = await flute('quantize', GGUF, '--type', 'q5_k', '--out', join(dir, 'x.gguf'));
  assert.equal(t.code, 2);
  assert.match(t.stderr, /--type: expected one of f32, f16, q8_0, q4_0, iq4_nl/);
  const f = await flute('quantize', GGUF, '--format', 'onnx');
  assert.equal(f.code, 2);
  assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith('x.')), []);
});

test('flute quantize --format flute refuses stories260K by tensor and rule, leaving nothing', async () => {
  const out = join(dir, 'stories-flute');
  const r = await flute('quantize', GGUF, '--format', 'flute', '--bits', '4', '--group-size', '64', '--out', out);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /E_SHAPE.*model\.layers\.0\.self_attn\.q_proj\.weight \[64, 64\]: 4-bit FLUTE needs N \(out features\) to be a multiple of 128/);
  assert.equal(existsSync(out), false);
  assert.deepEqual(readdirSync(dir).filter((n) => n.includes('stories-flute')), []);
});

test('flute bench vs-llama-cpp --help describes the race without installing anything', async () => {
  const r = await flute('bench', 'vs-llama-cpp', '--help');
  assert.equal(r.code, 0);
  assert.match(r.stdout, /Usage: flute bench vs-llama-cpp/);
  assert.match(r.stdout, /fluteTokensPerSecond/);
  assert.match(r.stdout, /--node LIST/);
  const bad = await flute('bench', 'vs-llama-cpp', '--models', 'gpt5');
  assert.equal(bad.code, 2);
  // --node items are checked before anything is installed or run
  for (const [item, why] of [['12', /major version from 16/], ['latest', /expected "current", a major version/], ['/no/such/node', /no such file/], ['26,', /comma list/]] as const) {
    const r2 = await flute('bench', 'vs-llama-cpp', '--node', item, '--cache', '/nonexistent-flute-cache');
    assert.equal(r2.code, 2, `--node ${item}`);
    assert.match(r2.stderr, /E_OPTION/);
    assert.match(r2.stderr, why);
  }
  assert.equal(existsSync('/nonexistent-flute-cache'), false, 'nothing was installed');
});
