// The `flute` CLI end to end (compiled: run `npm run build` first, as `npm test` does): every command
// on the bundled model, and bad input giving a typed error, a non-zero exit and no output file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundledModelPath, packageRoot } from '../src/cli/paths.js';

const bin = join(packageRoot(), 'bin', 'flute.js');
let dir = '';

function flute(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: dir, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** The command failed with this error code, named `mention` in its message, and left no file behind. */
function assertFails(r: ReturnType<typeof flute>, code: string, mention: RegExp | string): void {
  assert.notEqual(r.code, 0, `expected failure, got exit 0: ${r.stdout}`);
  assert.match(r.stderr, new RegExp(`error ${code}`), r.stderr);
  assert.match(r.stderr, typeof mention === 'string' ? new RegExp(mention.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : mention);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace without --verbose');
  const leftovers = readdirSync(dir).filter((f) => f.endsWith('.safetensors') || f.endsWith('.tmp'));
  assert.deepEqual(leftovers, [], 'no output file left behind');
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'flute-cli-'));
  if (!existsSync(join(packageRoot(), 'dist', 'src', 'cli', 'main.js'))) throw new Error('build first: npm run build');
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('flute --help and each command --help', () => {
  assert.match(flute('--help').stdout, /Usage: flute <command>/);
  for (const cmd of ['quantize', 'run', 'eval', 'inspect', 'doctor', 'demo']) {
    const r = flute(cmd, '--help');
    assert.equal(r.code, 0, cmd);
    assert.match(r.stdout, new RegExp(`Usage: flute ${cmd}`));
  }
  assert.equal(flute('frobnicate').code, 2);
});

test('run greedy on the bundled model gives llama.cpp\'s text', () => {
  const ref = JSON.parse(readFileSync(join(packageRoot(), 'data', 'greedy-reference.json'), 'utf8'));
  const r = flute('run', '--temperature', '0', '--max-tokens', '60', '--json');
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.tokens, 60);
  assert.ok(out.text.length > 100 && ref.continuation.startsWith(out.text), `got ${JSON.stringify(out.text)}`);
  assert.ok(out.tokensPerSecond > 0);
});

test('quantize, inspect, run and eval a checkpoint', () => {
  const q = flute('quantize', '--bits', '3', '--group-size', '48', '--table', 'nf', '--out', 'nf3.safetensors', '--json');
  assert.equal(q.code, 0, q.stderr);
  const report = JSON.parse(q.stdout);
  assert.equal(report.layers.length, 35); // 5 layers x 7 projections
  // Per layer: 3 bits per weight, one f16 scale per (row, group of 48), one 8-entry f32 table.
  const shapes = [[64, 64], [32, 64], [32, 64], [64, 64], [172, 64], [64, 172], [172, 64]];
  const bitsOf = ([n, k]: number[]) => n * k * 3 + n * Math.ceil(k / 48) * 16 + 8 * 32;
  const want = shapes.reduce((a, s) => a + bitsOf(s), 0) / shapes.reduce((a, [n, k]) => a + n * k, 0);
  assert.ok(Math.abs(report.bitsPerWeight - want) < 1e-12, `${report.bitsPerWeight} vs ${want}`);
  assert.ok(report.worst.error.relRmse > 0 && report.worst.error.relRmse < 0.5);
  assert.ok(report.peakRssBytes > 0);

  const ins = JSON.parse(flute('inspect', 'nf3.safetensors', '--json').stdout);
  assert.equal(ins.format, 'flute-checkpoint');
  const down = ins.tensors.find((t: { name: string }) => t.name === 'model.layers.0.mlp.down_proj.weight');
  assert.deepEqual([down.bits, down.groupSize, down.table, down.shape[0], down.shape[1]], [3, 48, 'nf', 64, 172]);
  assert.ok(ins.tensors.some((t: { name: string; dtype: string }) => t.name === 'model.embed_tokens.weight' && t.dtype === 'F32'));

  const run = flute('run', 'nf3.safetensors', '--temperature', '0', '--max-tokens', '20', '--json');
  assert.equal(run.code, 0, run.stderr);
  assert.equal(JSON.parse(run.stdout).tokens, 20);

  const ev = flute('eval', 'nf3.safetensors', '--window', '128', '--max-windows', '4', '--json');
  assert.equal(ev.code, 0, ev.stderr);
  const e = JSON.parse(ev.stdout);
  assert.equal(e.window, 128);
  assert.ok(e.perplexity > 1 && e.perplexity < 20, String(e.perplexity));
  assert.equal(e.windowNll.length, 4);
  const spread = flute('eval', 'nf3.safetensors', '--window', '128', '--max-windows', '4', '--spread', '--json');
  assert.equal(spread.code, 0, spread.stderr);
  const sp = JSON.parse(spread.stdout);
  assert.equal(sp.windows, 4);
  assert.equal(sp.windowNll[0], e.windowNll[0], 'both start with the first window');
  assert.notDeepEqual(sp.windowNll, e.windowNll, 'the rest come from further into the text');
  rmSync(join(dir, 'nf3.safetensors'));
});

test('doctor checks every backend against the reference', () => {
  const r = flute('doctor', '--json');
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const d = JSON.parse(r.stdout);
  assert.ok(d.backends.find((b: { name: string; ok: boolean }) => b.name === 'ref').ok);
});

test('bad input: typed errors, non-zero exit, no output file', () => {
  assertFails(flute('run', 'nope.bin'), 'E_NOT_FOUND', 'nope.bin');
  assertFails(flute('quantize', '--bits', '0', '--out', 'x.safetensors'), 'E_OPTION', '--bits');
  assertFails(flute('quantize', '--bits', '9', '--out', 'x.safetensors'), 'E_OPTION', '--bits');
  assertFails(flute('quantize', '--group-size', '0', '--out', 'x.safetensors'), 'E_OPTION', '--group-size');
  assertFails(flute('run', '--top-p', '1.5'), 'E_OPTION', '--top-p');
  assertFails(flute('eval', '--window', '1'), 'E_OPTION', '--window');
  assertFails(flute('eval', '--spread'), 'E_OPTION', '--spread');
  writeFileSync(join(dir, 'table3.json'), JSON.stringify([0, 1, 2]));
  assertFails(flute('quantize', '--bits', '2', '--table', 'table3.json', '--out', 'x.safetensors'), 'E_SHAPE', 'needs 4 values, got 3');
  writeFileSync(join(dir, 'bad.json'), '{"values": [1, "a"]}');
  assertFails(flute('quantize', '--table', 'bad.json', '--out', 'x.safetensors'), 'E_FORMAT', 'bad.json');

  // A truncated llama2.c file, with its tokenizer beside it.
  const model = readFileSync(bundledModelPath());
  writeFileSync(join(dir, 'trunc.bin'), model.subarray(0, 50_000));
  assertFails(flute('run', 'trunc.bin'), 'E_TRUNCATED', 'trunc.bin');
  assertFails(flute('quantize', 'trunc.bin', '--out', 'x.safetensors'), 'E_TRUNCATED', 'trunc.bin');

  // NaN in a weight: quantize names the tensor and writes nothing.
  const nan = Buffer.from(model);
  const qOffset = 28 + (512 * 64 + 5 * 64) * 4; // first value of layer 0's wq
  nan.writeFloatLE(NaN, qOffset + 4 * 10);
  writeFileSync(join(dir, 'nan.bin'), nan);
  copyFileSync(join(packageRoot(), 'models', 'stories260K', 'tok512.bin'), join(dir, 'tok512.bin'));
  assertFails(flute('quantize', 'nan.bin', '--out', 'x.safetensors'), 'E_NONFINITE', 'model.layers.0.self_attn.q_proj.weight');
});

test('bad checkpoints: truncated, offsets outside the file, unsupported dtype', () => {
  const q = flute('quantize', '--bits', '4', '--group-size', '32', '--out', 'ok.safetensors');
  assert.equal(q.code, 0, q.stderr);
  const good = readFileSync(join(dir, 'ok.safetensors'));
  rmSync(join(dir, 'ok.safetensors'));
  const headerLen = Number(good.readBigUInt64LE(0));
  const header = JSON.parse(good.subarray(8, 8 + headerLen).toString('utf8'));
  const data = good.subarray(8 + headerLen);
  // Re-serialize an edited header in front of the same data.
  const withHeader = (edit: (h: Record<string, { dtype: string; data_offsets: number[] }>) => void) => {
    const h = structuredClone(header);
    edit(h);
    const json = Buffer.from(JSON.stringify(h), 'utf8');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    return Buffer.concat([len, json, data]);
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ['trunc', good.subarray(0, good.length - 1000), /error E_TRUNCATED/],
    ['offsets', withHeader((h) => { h['model.norm.weight'].data_offsets = [data.length - 8, data.length + 248]; }), /error E_(TRUNCATED|BAD_HEADER)/],
    ['dtype', withHeader((h) => { h['model.norm.weight'].dtype = 'F8_E4M3'; }), /error E_UNSUPPORTED_DTYPE/],
    ['garbage', Buffer.from('this is not a model file at all, not even close'), /error E_(TRUNCATED|FORMAT|BAD_HEADER)/],
  ];
  for (const [name, bytes, code] of cases) {
    writeFileSync(join(dir, `${name}.safetensors`), bytes);
    for (const cmd of ['run', 'inspect']) {
      const r = flute(cmd, `${name}.safetensors`);
      assert.notEqual(r.code, 0, `${cmd} ${name}`);
      assert.match(r.stderr, code, `${cmd} ${name}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`${name}\\.safetensors`), `${cmd} ${name} names the file: ${r.stderr}`);
    }
    rmSync(join(dir, `${name}.safetensors`));
  }
});

test('flute run --max-memory refuses a model over the limit before loading, and rejects a bad size', () => {
  assertFails(flute('run', bundledModelPath(), '--max-memory', '1M', '--max-tokens', '4'), 'E_RESOURCE', /stories260K\.bin: needs about [\d.]+ MiB .*--max-memory limit of 1\.00 MiB/);
  assertFails(flute('run', bundledModelPath(), '--max-memory', '12 parsecs'), 'E_OPTION', '--max-memory');
  const ok = flute('run', bundledModelPath(), '--max-memory', '1G', '--max-tokens', '4', '--temperature', '0');
  assert.equal(ok.code, 0, ok.stderr);
});
