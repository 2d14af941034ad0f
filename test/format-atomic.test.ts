// Atomic output: a target is either the old file or the complete new one, never a half-written mix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FluteError } from '../src/errors.js';
import { AtomicFileWriter, writeError, writeFileAtomic } from '../src/format/atomic.js';
import { repoFile } from './hf-fixtures.js';

/** A string as a literal inside a RegExp. */
const escapeRe = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

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
  assert.match(w.tempPath, new RegExp(`^${escapeRe(dir)}/\\.x\\.safetensors\\.${process.pid}\\.[a-z0-9]+\\.tmp$`));
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

test('read-only folder gives E_IO "no permission" naming the file, and leaves the old file', async (t) => {
  const dir = scratch(t);
  const { chmodSync } = await import('node:fs');
  const target = join(dir, 'out.bin');
  writeFileSync(target, 'old');
  chmodSync(dir, 0o555);
  try {
    await checkNoPermission(target);
  } finally {
    chmodSync(dir, 0o700); // before scratch()'s removal
  }
  assert.equal(readFileSync(target, 'utf8'), 'old');
  assert.deepEqual(readdirSync(dir), ['out.bin']);
});

async function checkNoPermission(target: string): Promise<void> {
  if (process.getuid?.() !== 0) {
    await assert.rejects(writeFileAtomic(target, [Uint8Array.of(1)]), isCode('E_IO', new RegExp(`no permission to write ${escapeRe(target)}`)));
  } else {
    // Root ignores permission bits, so the write runs as the unprivileged user "nobody" (uid 65534).
    const { spawnSync } = await import('node:child_process');
    const atomic = new URL('../src/format/atomic.js', import.meta.url).href;
    const script = `import(${JSON.stringify(atomic)}).then((m) => m.writeFileAtomic(${JSON.stringify(target)}, [new Uint8Array(1)]))
      .then(() => console.log('{}'), (e) => console.log(JSON.stringify({ code: e.code, message: e.message })))`;
    const r = spawnSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { code?: string; message?: string };
    assert.equal(got.code, 'E_IO');
    assert.equal(got.message, `no permission to write ${target}`);
  }
}

/**
 * A 64 KiB tmpfs when this process may mount one (root with CAP_SYS_ADMIN), else undefined. The
 * caller unmounts it.
 */
async function tinyTmpfs(dir: string): Promise<string | undefined> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return undefined;
  const { spawnSync } = await import('node:child_process');
  const mnt = join(dir, 'tiny');
  mkdirSync(mnt);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { encoding: 'utf8' });
  return r.status === 0 ? mnt : undefined;
}

/** The full-disk checks on a real tmpfs: the library and the CLI. */
async function fullTmpfs(mnt: string, big: Uint8Array): Promise<void> {
  const { spawnSync } = await import('node:child_process');
  console.log('  full disk: a real 64 KiB tmpfs');
  const target = join(mnt, 'model.safetensors');
  writeFileSync(target, 'previous');
  await assert.rejects(writeFileAtomic(target, [big, big, big]), isCode('E_IO', new RegExp(`^disk full while writing ${escapeRe(target)}$`)));
  assert.equal(readFileSync(target, 'utf8'), 'previous');
  assert.deepEqual(readdirSync(mnt), ['model.safetensors']);
  // The CLI says the same and exits non-zero.
  const flute = repoFile('bin/flute.js');
  const cli = spawnSync(process.execPath, [flute, 'quantize', '--out', join(mnt, 'q.safetensors')], { encoding: 'utf8' });
  assert.notEqual(cli.status, 0);
  assert.match(cli.stderr, new RegExp(`disk full while writing ${escapeRe(join(mnt, 'q.safetensors'))}`));
  assert.deepEqual(readdirSync(mnt), ['model.safetensors']);
}

test('a full disk gives E_IO "disk full while writing <file>", no partial file, the old file kept', async (t) => {
  const dir = scratch(t);
  const mnt = await tinyTmpfs(dir);
  const big = new Uint8Array(48 * 1024).fill(7); // three chunks: 144 KiB, more than the 64 KiB disk
  if (mnt) {
    const { spawnSync } = await import('node:child_process');
    try {
      await fullTmpfs(mnt, big);
    } finally {
      spawnSync('umount', [mnt]); // before scratch()'s removal
    }
  } else console.log('  full disk: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); ENOSPC injected only');
  // Everywhere: the OS's ENOSPC injected into FileHandle.write after 64 KiB.
  const fsp = await import('node:fs/promises');
  const probe = await fsp.open(join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { write: (...a: unknown[]) => Promise<{ bytesWritten: number }> };
  await probe.close();
  const realWrite = proto.write;
  let room = 64 * 1024;
  proto.write = async function (this: unknown, ...args: unknown[]) {
    const n = Number(args[2] ?? (args[0] as Uint8Array).length);
    if ((room -= n) < 0) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    return realWrite.apply(this, args);
  };
  try {
    const target = join(dir, 'model.safetensors');
    writeFileSync(target, 'previous');
    await assert.rejects(writeFileAtomic(target, [big, big, big]), isCode('E_IO', /^disk full while writing .*model\.safetensors$/));
    assert.equal(readFileSync(target, 'utf8'), 'previous');
    assert.deepEqual(readdirSync(dir).filter((f) => f !== 'tiny').sort(), ['model.safetensors', 'probe']);
  } finally {
    proto.write = realWrite;
  }
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
