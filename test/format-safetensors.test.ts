// safetensors reader and writer: round trips of every dtype, byte-exact output, and typed errors for
// every kind of damaged or hostile file, without allocating from untrusted header values.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FluteError } from '../src/errors.js';
import { f32ArrayToBf16, f32ArrayToF16 } from '../src/format/half.js';
import {
  MAX_HEADER_BYTES, bytesToF32, openSafetensors, serializeSafetensors, typedArrayBytes, writeSafetensors, type SafetensorsEntry,
} from '../src/format/safetensors.js';
import { memorySource, openFileSource, type ByteSource } from '../src/format/source.js';
import type { Dtype } from '../src/format/tensors.js';

const isCode = (code: string, ...res: RegExp[]) => (e: unknown) => {
  assert.ok(e instanceof FluteError, `expected a FluteError, got ${e}`);
  assert.equal(e.code, code, e.message);
  for (const re of res) assert.match(e.message, re);
  return true;
};

function scratch(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'flute-st-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A hand-made file: u64 header length (or `len`), the header (text, JSON value or raw bytes), then `data`. */
function craft(header: unknown, data = new Uint8Array(0), len?: number): Uint8Array {
  const json = header instanceof Uint8Array ? header : new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(len ?? json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const open = (bytes: Uint8Array, name = 'bad.safetensors') => openSafetensors(memorySource(bytes, name));

const ALL: { dtype: Dtype; data: ArrayBufferView; shape: number[] }[] = [
  { dtype: 'F64', data: Float64Array.of(1.5, -1e300, Math.PI), shape: [3] },
  { dtype: 'F32', data: Float32Array.of(1, -2.5, 3.25, 1e-40, -0, Infinity), shape: [2, 3] },
  { dtype: 'F16', data: f32ArrayToF16([1, -2.5, 65504, 1e-7, 70000, 0.1]), shape: [3, 2] },
  { dtype: 'BF16', data: f32ArrayToBf16([1, 3.14159, -1e38, 2 ** -130]), shape: [4] },
  { dtype: 'I64', data: BigInt64Array.of(-(2n ** 63n), 2n ** 62n), shape: [2] },
  { dtype: 'U64', data: BigUint64Array.of(2n ** 64n - 1n), shape: [1, 1] },
  { dtype: 'I32', data: Int32Array.of(-(2 ** 31), 7), shape: [2] },
  { dtype: 'U32', data: Uint32Array.of(2 ** 32 - 1), shape: [1] },
  { dtype: 'I16', data: Int16Array.of(-32768, 32767, 0), shape: [3] },
  { dtype: 'U16', data: Uint16Array.of(65535), shape: [] },
  { dtype: 'I8', data: Int8Array.of(-128, 127, 1), shape: [3, 1] },
  { dtype: 'U8', data: Uint8Array.of(0, 255, 9, 1, 2), shape: [5] },
  { dtype: 'BOOL', data: Uint8Array.of(1, 0, 1), shape: [3] },
  { dtype: 'F32', data: new Float32Array(0), shape: [0, 7] },
];
const allEntries = (): SafetensorsEntry[] => ALL.map((a, i) => ({ name: `t${i}.${a.dtype}`, dtype: a.dtype, shape: a.shape, data: typedArrayBytes(a.data) }));

test('round trip of every dtype through a file, byte-identical to the in-memory serialization', async (t) => {
  const p = join(scratch(t), 'all.safetensors');
  const md = { format: 'test', 'ünïcode': 'värde ✓', __proto__x: '{"a":1}' };
  const size = await writeSafetensors(p, allEntries(), md);
  const fileBytes = new Uint8Array(readFileSync(p));
  assert.equal(size, fileBytes.length);
  assert.deepEqual(fileBytes, await serializeSafetensors(allEntries(), md));

  const r = await openSafetensors(p);
  t.after(() => r.close());
  assert.equal(r.file, p);
  assert.deepEqual(r.metadata, md);
  assert.deepEqual(r.list().map((x) => x.name), allEntries().map((e) => e.name));
  assert.equal(r.list()[0].offset % 8, 0, 'the data section starts 8-aligned');
  for (const [i, a] of ALL.entries()) {
    const name = `t${i}.${a.dtype}`;
    const info = r.info(name);
    assert.equal(info.dtype, a.dtype);
    assert.deepEqual(info.shape, a.shape);
    assert.deepEqual(await r.readRaw(name), typedArrayBytes(a.data));
  }
  // Reading everything back and writing it again reproduces the file exactly.
  const again = r.list().map((x): SafetensorsEntry => ({ name: x.name, dtype: x.dtype, shape: x.shape, data: () => r.readRaw(x.name) }));
  assert.deepEqual(await serializeSafetensors(again, r.metadata), fileBytes);
  assert.equal(r.has('t0.F64'), true);
  assert.equal(r.has('nope'), false);
  assert.throws(() => r.info('nope'), isCode('E_NOT_FOUND', /all\.safetensors/, /"nope"/));
});

test('readF32 converts F32, F16 and BF16 exactly and refuses other dtypes', async () => {
  const r = await open(await serializeSafetensors(allEntries()), 'mem');
  assert.deepEqual(await r.readF32('t1.F32'), Float32Array.of(1, -2.5, 3.25, 1e-40, -0, Infinity));
  // f16: 65504 is the max, 1e-7 rounds to the subnormal 2^-24 * 2 (1.19e-7), 70000 overflows, 0.1 rounds.
  assert.deepEqual(Array.from(await r.readF32('t2.F16')), [1, -2.5, 65504, 2 * 2 ** -24, Infinity, 0.0999755859375]);
  // bf16 keeps 8 significant bits: pi -> 3.140625; 2^-130 is a subnormal f32 and survives exactly.
  assert.deepEqual(Array.from(await r.readF32('t3.BF16')), [1, 3.140625, Math.fround(-9.969209968386869e37), 2 ** -130]);
  assert.deepEqual(await r.readF32('t13.F32'), new Float32Array(0));
  await assert.rejects(r.readF32('t6.I32'), isCode('E_UNSUPPORTED_DTYPE', /mem/, /t6\.I32/));
});

test('readF32 copies misaligned views instead of failing', async () => {
  // A source that hands out views into one buffer: the F32 tensor after a 2-byte F16 one sits at an odd
  // multiple of 2, which a Float32Array cannot view.
  const bytes = await serializeSafetensors([
    { name: 'h', dtype: 'F16', shape: [1], data: typedArrayBytes(f32ArrayToF16([2])) },
    { name: 'f', dtype: 'F32', shape: [2], data: typedArrayBytes(Float32Array.of(1.5, -7)) },
  ]);
  const views: ByteSource = { ...memorySource(bytes, 'views'), read: async (o, n) => bytes.subarray(o, o + n) };
  const r = await openSafetensors(views);
  assert.notEqual(r.info('f').offset % 4, 0);
  assert.deepEqual(await r.readF32('f'), Float32Array.of(1.5, -7));
  assert.deepEqual(await r.readF32('h'), Float32Array.of(2));
  const odd = new Uint8Array(9).subarray(1);
  odd.set(typedArrayBytes(Float32Array.of(3, 4)));
  assert.deepEqual(bytesToF32(odd, 'F32', 'x'), Float32Array.of(3, 4));
});

test('header is padded with spaces to a multiple of 8', async () => {
  for (let n = 1; n <= 9; n++) {
    const bytes = await serializeSafetensors([{ name: 'x'.repeat(n), dtype: 'U8', shape: [1], data: Uint8Array.of(n) }]);
    const len = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(len % 8, 0);
    const text = new TextDecoder().decode(bytes.subarray(8, 8 + len));
    assert.match(text, /^\{.*\} *$/);
    assert.ok(text.length - text.trimEnd().length < 8);
    assert.equal(bytes[8 + len], n);
  }
  // No metadata key at all when none is given; an empty file is valid.
  const empty = await serializeSafetensors([]);
  assert.equal(new TextDecoder().decode(empty.subarray(8)).trim(), '{}');
  assert.deepEqual((await open(empty)).list(), []);
});

test('lazy data is produced in order, one tensor at a time, and the wrong length fails with E_SHAPE', async (t) => {
  const dir = scratch(t);
  const p = join(dir, 'q.safetensors');
  const log: string[] = [];
  const lazy = (name: string, n: number): SafetensorsEntry => ({
    name, dtype: 'F32', shape: [n], data: async () => (log.push(name), typedArrayBytes(new Float32Array(n).fill(n))),
  });
  await writeSafetensors(p, [lazy('a', 2), lazy('b', 3), { name: 'c', dtype: 'U8', shape: [1], data: () => Uint8Array.of(1) }]);
  assert.deepEqual(log, ['a', 'b']);
  const r = await openSafetensors(p);
  assert.deepEqual(await r.readF32('b'), Float32Array.of(3, 3, 3));
  await r.close();

  const before = readFileSync(p);
  const wrong: SafetensorsEntry = { name: 'short', dtype: 'F32', shape: [2, 2], data: async () => new Uint8Array(12) };
  await assert.rejects(writeSafetensors(p, [lazy('a', 2), wrong]), isCode('E_SHAPE', /q\.safetensors/, /"short"/, /16 bytes/, /got 12/));
  assert.deepEqual(readFileSync(p), before, 'the previous file is untouched');
  assert.deepEqual(readdirSync(dir), ['q.safetensors'], 'no temp file left');
  const p2 = join(dir, 'new.safetensors');
  await assert.rejects(writeSafetensors(p2, [wrong]), isCode('E_SHAPE'));
  assert.equal(existsSync(p2), false);
  await assert.rejects(serializeSafetensors([wrong]), isCode('E_SHAPE'));
});

test('writer rejects bad names, dtypes and shapes before creating a file', async (t) => {
  const dir = scratch(t);
  const p = join(dir, 'x.safetensors');
  const u8 = (name: string): SafetensorsEntry => ({ name, dtype: 'U8', shape: [1], data: Uint8Array.of(0) });
  await assert.rejects(writeSafetensors(p, [u8('a'), u8('a')]), isCode('E_OPTION', /"a"/));
  await assert.rejects(writeSafetensors(p, [u8('__metadata__')]), isCode('E_OPTION'));
  await assert.rejects(writeSafetensors(p, [{ ...u8('a'), dtype: 'F8' as Dtype }]), isCode('E_UNSUPPORTED_DTYPE'));
  await assert.rejects(writeSafetensors(p, [{ ...u8('a'), shape: [-1] }]), isCode('E_SHAPE'));
  await assert.rejects(writeSafetensors(p, [], { k: 3 as unknown as string }), isCode('E_OPTION'));
  assert.deepEqual(readdirSync(dir), []);
});

test('missing file is E_NOT_FOUND naming the path', async (t) => {
  const p = join(scratch(t), 'missing.safetensors');
  await assert.rejects(openSafetensors(p), isCode('E_NOT_FOUND', /missing\.safetensors/));
});

test('truncated files are E_TRUNCATED at every cut point', async (t) => {
  const good = await serializeSafetensors(allEntries(), { a: 'b' });
  const headerEnd = 8 + Number(new DataView(good.buffer).getBigUint64(0, true));
  const p = join(scratch(t), 'cut.safetensors');
  for (const cut of [0, 4, 7, 8, 20, headerEnd - 1, headerEnd + 3, good.length - 1]) {
    writeFileSync(p, good.subarray(0, cut));
    await assert.rejects(openSafetensors(p), isCode('E_TRUNCATED', /cut\.safetensors/), `cut at ${cut}`);
  }
  // Cutting the last data byte names the tensor that now ends past the file (the last non-empty one).
  writeFileSync(p, good.subarray(0, good.length - 1));
  await assert.rejects(openSafetensors(p), isCode('E_TRUNCATED', /tensor "t12\.BOOL"/));
});

test('malformed headers are E_BAD_HEADER naming the file and tensor', async () => {
  const f32 = (offs: unknown, shape: unknown = [2]) => ({ dtype: 'F32', shape, data_offsets: offs });
  const data = new Uint8Array(16);
  const cases: [string, Uint8Array, ...RegExp[]][] = [
    ['not JSON', craft('{"a": nope}', data), /not valid UTF-8 JSON/],
    ['not UTF-8', craft(Uint8Array.of(0x7b, 0x22, 0xff, 0x22, 0x3a, 0x7b, 0x7d, 0x7d), data), /UTF-8/],
    ['JSON array', craft([1, 2], data), /JSON object/],
    ['entry not an object', craft({ w: 5 }, data), /"w"/],
    ['missing dtype', craft({ w: { shape: [1], data_offsets: [0, 4] } }, data), /"w"/, /dtype/],
    ['negative dim', craft({ w: f32([0, 8], [-2]) }, data), /"w"/, /shape/],
    ['fractional dim', craft({ w: f32([0, 8], [1.5]) }, data), /shape/],
    ['shape not a list', craft({ w: f32([0, 8], 'big') }, data), /shape/],
    ['offsets reversed', craft({ w: f32([8, 0]) }, data), /data_offsets/],
    ['three offsets', craft({ w: f32([0, 8, 9]) }, data), /data_offsets/],
    ['wrong-length data_offsets', craft({ w: f32([0, 12]) }, data), /"w"/, /needs 8 bytes/, /span 12/],
    ['overlap', craft({ a: f32([0, 8]), b: f32([4, 12]) }, data), /"b"/, /overlaps/, /"a"/],
    ['metadata not strings', craft({ __metadata__: { n: 1 } }, data), /__metadata__/, /"n"/],
    ['metadata null', craft({ __metadata__: null }, data), /__metadata__/],
    ['header length over the cap', craft({}, data, MAX_HEADER_BYTES + 1), /limit/],
    ['header length absurd', craft({}, data, 2 ** 60), /limit/],
  ];
  for (const [what, bytes, ...res] of cases) {
    await assert.rejects(open(bytes, `case.safetensors`), isCode('E_BAD_HEADER', /case\.safetensors/, ...res), what);
  }
});

test('header length past the end of the file and offsets outside the file are E_TRUNCATED', async () => {
  await assert.rejects(open(craft({}, new Uint8Array(4), 1000)), isCode('E_TRUNCATED', /bad\.safetensors/, /1000/));
  const offs = craft({ w: { dtype: 'U8', shape: [8], data_offsets: [10, 18] } }, new Uint8Array(16));
  await assert.rejects(open(offs), isCode('E_TRUNCATED', /bad\.safetensors/, /tensor "w"/));
});

test('unsupported dtype F8_E4M3 names the tensor', async () => {
  const bytes = craft({ 'model.w': { dtype: 'F8_E4M3', shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4));
  await assert.rejects(open(bytes, 'fp8.safetensors'), isCode('E_UNSUPPORTED_DTYPE', /fp8\.safetensors/, /"model\.w"/, /F8_E4M3/));
});

test('huge shapes fail quickly without a giant allocation', async () => {
  const start = performance.now();
  // The product is not a safe integer.
  await assert.rejects(open(craft({ w: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 4] } }, new Uint8Array(4))), isCode('E_BAD_HEADER', /"w"/));
  // Consistent offsets for 4 TB of data in a 4-byte file.
  const n = 1e12;
  await assert.rejects(open(craft({ w: { dtype: 'F32', shape: [n], data_offsets: [0, 4 * n] } }, new Uint8Array(4))), isCode('E_TRUNCATED', /"w"/));
  // A zero dimension makes the tensor empty even beside absurd ones.
  const r = await open(craft({ w: { dtype: 'F32', shape: [2 ** 53 - 1, 2 ** 53 - 1, 0], data_offsets: [0, 0] } }));
  assert.equal(r.info('w').byteLength, 0);
  assert.ok(performance.now() - start < 1000);
});

test('a "__proto__" metadata key stays an ordinary entry', async () => {
  const r = await open(craft('{"__metadata__":{"__proto__":"x","b":"y"}}'));
  assert.deepEqual(Object.entries(r.metadata), [['__proto__', 'x'], ['b', 'y']]);
  assert.equal(Object.getPrototypeOf(r.metadata), Object.prototype);
});

test('byte sources: a folder is E_IO, reads past the end are E_TRUNCATED, reads after close fail', async (t) => {
  const dir = scratch(t);
  await assert.rejects(openSafetensors(dir), isCode('E_IO', new RegExp(dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))));
  const p = join(dir, 'f.safetensors');
  await writeSafetensors(p, [{ name: 'a', dtype: 'U8', shape: [3], data: Uint8Array.of(1, 2, 3) }]);
  const src = await openFileSource(p);
  await assert.rejects(src.read(src.size - 2, 3), isCode('E_TRUNCATED', /f\.safetensors/));
  assert.deepEqual(await src.read(src.size - 3, 3), Uint8Array.of(1, 2, 3));
  await src.close();
  await src.close();
  await assert.rejects(src.read(0, 1), isCode('E_IO', /after close/));
  await assert.rejects(memorySource(new Uint8Array(4), 'm').read(2, 3), isCode('E_TRUNCATED', /^m: /));
});
