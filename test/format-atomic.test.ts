// Atomic output: a target is either the old file or the complete new one, never a half-written mix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FluteError } from '../src/errors.js';
import { AtomicFileWriter, writeError, writeFileAtomic } from '../src/format/atomic.js';

const isCode = (code: string, re?: RegExp) => (e: unknown) =>
  e instanceof FluteError && e.code === code && (!re || re.test(e.message));

function scratch(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'flute-atomic-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('writeFileAtomic writes sync and async chunks, replaces an old file, leaves no temp file', async (t) => {
  const dir = scratch(t);
  const p = join(dir, 'out.bin');
  assert.equal(await writeFileAtomic(p, [Uint8Array.of(1, 2), Uint8Array.of(3)]), 3);
  assert.deepEqual([...readFileSync(p)], [1, 2, 3]);
  async function* gen() {
    yield Uint8Array.of(9);
    yield new Uint8Array(0);
    yield Uint8Array.of(8, 7);
  }
  await writeFileAtomic(p, gen());
  assert.deepEqual([...readFileSync(p)], [9, 8, 7]);
  assert.deepEqual(readdirSync(dir), ['out.bin']);
});

test('a failing chunk iterator keeps the old file and removes the temp file', async (t) => {
  const dir = scratch(t);
  const p = join(dir, 'model.bin');
  writeFileSync(p, 'old contents');
  async function* failing() {
    yield new Uint8Array(1000).fill(1);
    throw new Error('quantizer exploded');
  }
  await assert.rejects(writeFileAtomic(p, failing()), /quantizer exploded/);
  assert.equal(readFileSync(p, 'utf8'), 'old contents');
  assert.deepEqual(readdirSync(dir), ['model.bin']);
});

test('AtomicFileWriter: temp name beside the target, abort removes it, no use after commit', async (t) => {
  const dir = scratch(t);
  const p = join(dir, 'x.safetensors');
  const w = await AtomicFileWriter.open(p);
  assert.match(w.tempPath, new RegExp(`^${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/\\.x\\.safetensors\\.${process.pid}\\.[a-z0-9]+\\.tmp$`));
  await w.write(Uint8Array.of(1, 2, 3));
  assert.deepEqual(readdirSync(dir), [w.tempPath.slice(dir.length + 1)]);
  await w.abort();
  await w.abort(); // idempotent
  assert.deepEqual(readdirSync(dir), []);
  await assert.rejects(w.write(Uint8Array.of(1)), isCode('E_IO', /aborted/));

  const w2 = await AtomicFileWriter.open(p);
  await w2.write(Uint8Array.of(5));
  await w2.commit();
  await w2.abort(); // no-op after commit
  assert.deepEqual([...readFileSync(p)], [5]);
  await assert.rejects(w2.commit(), isCode('E_IO', /committed/));
  assert.deepEqual(readdirSync(dir), ['x.safetensors']);
});

test('unwritable destinations give E_IO naming the file', async (t) => {
  const dir = scratch(t);
  const missing = join(dir, 'no-such-folder', 'out.bin');
  await assert.rejects(writeFileAtomic(missing, [Uint8Array.of(1)]), isCode('E_IO', /out\.bin.*does not exist/));
  writeFileSync(join(dir, 'afile'), '');
  await assert.rejects(writeFileAtomic(join(dir, 'afile', 'out.bin'), [Uint8Array.of(1)]), isCode('E_IO', /afile/));
  // The target is a folder: the rename fails, the temp file goes away.
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'keep'), '');
  await assert.rejects(writeFileAtomic(join(dir, 'sub'), [Uint8Array.of(1)]), isCode('E_IO', /sub/));
  assert.deepEqual(readdirSync(dir).sort(), ['afile', 'sub']);
});

test('read-only folder gives E_IO "no permission"', { skip: process.getuid?.() === 0 ? 'root ignores permissions' : false }, async (t) => {
  const dir = scratch(t);
  const { chmodSync } = await import('node:fs');
  chmodSync(dir, 0o500);
  t.after(() => chmodSync(dir, 0o700));
  await assert.rejects(writeFileAtomic(join(dir, 'out.bin'), [Uint8Array.of(1)]), isCode('E_IO', /no permission to write/));
});

test('OS error codes map to plain messages', () => {
  const err = (code: string) => Object.assign(new Error(`${code}: boom`), { code });
  assert.equal(writeError(err('ENOSPC'), '/m/out.bin', '/m').message, 'disk full while writing /m/out.bin');
  assert.equal(writeError(err('EACCES'), '/m/out.bin', '/m').message, 'no permission to write /m/out.bin');
  assert.equal(writeError(err('EPERM'), '/m/out.bin', '/m').message, 'no permission to write /m/out.bin');
  assert.match(writeError(err('ENOENT'), '/m/out.bin', '/m').message, /folder \/m does not exist/);
  assert.equal(writeError(err('EIO'), '/m/out.bin', '/m').code, 'E_IO');
  const fe = new FluteError('E_SHAPE', 'kept');
  assert.equal(writeError(fe, '/m/x', '/m'), fe);
});
