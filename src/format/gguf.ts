// The GGUF container (llama.cpp's model file, versions 2 and 3): magic "GGUF", u32 version, u64 tensor
// and metadata counts, typed key/value metadata, tensor infos (name, dims innermost first, ggml type,
// offset), then the aligned tensor data. Reader and writer round-trip a file bit for bit. Every count,
// length and offset is checked against the file size before anything is allocated from it. What the
// tensors mean for a llama model is gguf-llama.ts's job; block layouts are ggml-types.ts's.

import { FluteError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';
import { GGML_TYPES, ggmlTensorBytes, ggmlTypeById, type GgmlTypeName, type GgmlTypeTraits } from './ggml-types.js';
import { parseSource, type ByteSource } from './source.js';
import { tensorTable } from './tensors.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3; // what we write; 2 reads the same way (3 added big-endian files, which we refuse)
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_DIMS. */
export const GGUF_MAX_DIMS = 4;
/** llama.cpp refuses tensor names of GGML_MAX_NAME (64) bytes or more. */
export const GGUF_MAX_NAME_BYTES = 63;
/** Nesting limit for arrays of arrays, so a crafted file cannot recurse deeply. */
const MAX_ARRAY_DEPTH = 8;

// ---------------------------------------------------------------------------------------------
// Metadata values

/** Value types with their ids in files (gguf.h `enum gguf_type`). */
export const GGUF_VALUE_TYPES = {
  u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12,
} as const;
export type GgufValueType = keyof typeof GGUF_VALUE_TYPES;
type NumberType = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64';
type BigType = 'u64' | 'i64';
export type GgufItemType = Exclude<GgufValueType, 'array'>;

const SCALAR_BYTES: Record<GgufItemType, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, bool: 1, string: 8, u64: 8, i64: 8, f64: 8 };
const TYPE_BY_ID = new Map<number, GgufValueType>(Object.entries(GGUF_VALUE_TYPES).map(([k, v]) => [v, k as GgufValueType]));

/** The JS form of an array's items, by item type: typed arrays for numbers, plain arrays otherwise. */
export interface GgufArrayItems {
  u8: Uint8Array; i8: Int8Array; u16: Uint16Array; i16: Int16Array; u32: Uint32Array; i32: Int32Array;
  f32: Float32Array; f64: Float64Array; u64: BigUint64Array; i64: BigInt64Array; bool: boolean[]; string: string[];
  array: GgufArrayValue[];
}

export type GgufArrayValue = { [T in keyof GgufArrayItems]: { readonly type: 'array'; readonly itemType: T; readonly value: GgufArrayItems[T] } }[keyof GgufArrayItems];

export type GgufValue =
  | { readonly type: NumberType; readonly value: number }
  | { readonly type: BigType; readonly value: bigint }
  | { readonly type: 'bool'; readonly value: boolean }
  | { readonly type: 'string'; readonly value: string }
  | GgufArrayValue;

const ARRAY_CTORS = {
  u8: Uint8Array, i8: Int8Array, u16: Uint16Array, i16: Int16Array, u32: Uint32Array, i32: Int32Array,
  f32: Float32Array, f64: Float64Array, u64: BigUint64Array, i64: BigInt64Array,
} as const;

// ---------------------------------------------------------------------------------------------
// The parsed file

export interface GgufTensorInfo {
  readonly name: string;
  readonly type: GgmlTypeTraits;
  readonly ne: readonly number[]; // dims, innermost (contiguous) first: a [N, K] weight has ne = [K, N]
  /** Offset from the start of the data section, as stored. */
  readonly relOffset: number;
  /** Absolute offset in the file. */
  readonly offset: number;
  readonly byteLength: number;
}

export interface GgufFile {
  readonly file: string;
  readonly version: number;
  readonly alignment: number;
  /** Metadata in file order. */
  readonly metadata: ReadonlyMap<string, GgufValue>;
  /** Tensor infos in file order. */
  readonly tensors: readonly GgufTensorInfo[];
  /** Absolute offset of the data section. */
  readonly dataOffset: number;
  readonly size: number;
  tensor(name: string): GgufTensorInfo;
  has(name: string): boolean;
  readRaw(name: string): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** True when the bytes start with the GGUF magic. */
export function looksLikeGguf(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x47 && head[1] === 0x47 && head[2] === 0x55 && head[3] === 0x46;
}

// ---------------------------------------------------------------------------------------------
// Reading: a cursor over the header that fetches windows of the source on demand

const WINDOW = 1 << 20;

class Cursor {
  pos = 0;
  private buf: Uint8Array = new Uint8Array(0);
  private view = new DataView(this.buf.buffer);
  private start = 0; // file offset of buf[0]
  private readonly decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

  constructor(readonly src: ByteSource) {}

  get remaining(): number {
    return this.src.size - this.pos;
  }

  /** Makes bytes [pos, pos + n) available; E_TRUNCATED naming `what` when the file ends first. */
  async need(n: number, what: string): Promise<void> {
    if (n > this.remaining) {
      throw new FluteError('E_TRUNCATED', `${this.src.name}: ${what} needs ${n} bytes at offset ${this.pos}, but the file ends at ${this.src.size}`);
    }
    if (this.pos >= this.start && this.pos + n <= this.start + this.buf.length) return;
    const len = Math.min(this.src.size - this.pos, Math.max(n, WINDOW));
    this.buf = await this.src.read(this.pos, len);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.length);
    this.start = this.pos;
  }

  private at(n: number): number {
    const i = this.pos - this.start;
    this.pos += n;
    return i;
  }

  async u32(what: string): Promise<number> {
    await this.need(4, what);
    return this.view.getUint32(this.at(4), true);
  }

  /** A u64 as a number; E_BAD_HEADER when it is beyond 2^53 (no file is that big). */
  async u64(what: string): Promise<number> {
    await this.need(8, what);
    const i = this.at(8);
    const hi = this.view.getUint32(i + 4, true);
    const v = hi * 2 ** 32 + this.view.getUint32(i, true);
    if (hi >= 2 ** 21) throw new FluteError('E_BAD_HEADER', `${this.src.name}: ${what} is ${this.view.getBigUint64(i, true)}, beyond any file size`);
    return v;
  }

  async bytes(n: number, what: string): Promise<Uint8Array> {
    await this.need(n, what);
    const i = this.at(n);
    return this.buf.subarray(i, i + n);
  }

  async string(what: string): Promise<string> {
    const len = await this.u64(`${what} (length)`);
    const b = await this.bytes(len, what);
    try {
      return this.decoder.decode(b);
    } catch (e) {
      throw new FluteError('E_BAD_HEADER', `${this.src.name}: ${what} at offset ${this.pos - len} is not valid UTF-8`, { cause: e });
    }
  }

  async scalar(type: Exclude<GgufItemType, 'string'>, what: string): Promise<number | bigint | boolean> {
    const n = SCALAR_BYTES[type];
    await this.need(n, what);
    const i = this.at(n);
    const v = this.view;
    switch (type) {
      case 'u8': return v.getUint8(i);
      case 'i8': return v.getInt8(i);
      case 'u16': return v.getUint16(i, true);
      case 'i16': return v.getInt16(i, true);
      case 'u32': return v.getUint32(i, true);
      case 'i32': return v.getInt32(i, true);
      case 'f32': return v.getFloat32(i, true);
      case 'f64': return v.getFloat64(i, true);
      case 'u64': return v.getBigUint64(i, true);
      case 'i64': return v.getBigInt64(i, true);
      case 'bool': {
        const b = v.getUint8(i);
        if (b > 1) throw new FluteError('E_BAD_HEADER', `${this.src.name}: ${what} is a bool stored as ${b}, expected 0 or 1`);
        return b === 1;
      }
    }
  }

  /** `count` fixed-size items as a typed array: one bulk read (count * width is checked by need()). */
  async typed<T extends keyof typeof ARRAY_CTORS>(type: T, count: number, what: string): Promise<GgufArrayItems[T]> {
    const width = SCALAR_BYTES[type];
    const raw = (await this.bytes(count * width, what)).slice(); // aligned copy we own
    return new ARRAY_CTORS[type](raw.buffer, 0, count) as GgufArrayItems[T];
  }
}

async function readValueType(c: Cursor, what: string): Promise<GgufValueType> {
  const id = await c.u32(`${what} type`);
  const t = TYPE_BY_ID.get(id);
  if (!t) throw new FluteError('E_BAD_HEADER', `${c.src.name}: ${what} has value type ${id}; known types are 0..12`);
  return t;
}

async function readValue(c: Cursor, type: GgufValueType, what: string, depth: number): Promise<GgufValue> {
  if (type === 'string') return { type, value: await c.string(what) };
  if (type !== 'array') {
    const v = await c.scalar(type, what);
    return { type, value: v } as GgufValue;
  }
  if (depth >= MAX_ARRAY_DEPTH) throw new FluteError('E_BAD_HEADER', `${c.src.name}: ${what}: arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
  const itemType = await readValueType(c, `${what} item`);
  const count = await c.u64(`${what} (count)`);
  // Each item takes at least this many bytes, so a lying count fails here, before any allocation.
  const minItem = itemType === 'array' ? 12 : SCALAR_BYTES[itemType];
  if (count * minItem > c.remaining) {
    throw new FluteError('E_TRUNCATED', `${c.src.name}: ${what} claims ${count} ${itemType} items (at least ${count * minItem} bytes) but only ${c.remaining} bytes follow`);
  }
  switch (itemType) {
    case 'string': {
      const out: string[] = [];
      for (let i = 0; i < count; i++) out.push(await c.string(`${what}[${i}]`));
      return { type: 'array', itemType, value: out };
    }
    case 'bool': {
      const out: boolean[] = [];
      for (let i = 0; i < count; i++) out.push((await c.scalar('bool', `${what}[${i}]`)) as boolean);
      return { type: 'array', itemType, value: out };
    }
    case 'array': {
      const out: GgufArrayValue[] = [];
      for (let i = 0; i < count; i++) out.push((await readValue(c, 'array', `${what}[${i}]`, depth + 1)) as GgufArrayValue);
      return { type: 'array', itemType, value: out };
    }
    default:
      return { type: 'array', itemType, value: await c.typed(itemType, count, what) } as GgufArrayValue;
  }
}

/**
 * Opens a GGUF file (a path, or any ByteSource) and parses its header; tensor data is read on demand.
 * On success the reader owns the source; on failure a source passed in stays open (the caller's).
 */
export async function openGguf(source: ByteSource | string): Promise<GgufFile> {
  return parseSource(source, parse);
}

async function parse(src: ByteSource): Promise<GgufFile> {
  const file = src.name;
  const bad = (msg: string) => new FluteError('E_BAD_HEADER', `${file}: ${msg}`);
  const c = new Cursor(src);
  if (src.size < 4 || !looksLikeGguf(await src.read(0, 4))) {
    throw new FluteError('E_FORMAT', `${file}: not a GGUF file (it does not start with the magic "GGUF")`);
  }
  c.pos = 4;
  const version = await c.u32('version');
  if (version === 1) throw new FluteError('E_FORMAT', `${file}: GGUF version 1 (32-bit counts, 2023) is not supported; re-convert with a current llama.cpp`);
  if (version !== 2 && version !== 3) {
    // A byte-swapped version means a big-endian file (allowed since version 3).
    const swapped = ((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24);
    const why = swapped === 2 || swapped === 3 ? 'a big-endian GGUF file; only little-endian files are supported' : 'this reader knows versions 2 and 3';
    throw new FluteError('E_FORMAT', `${file}: GGUF version ${version}: ${why}`);
  }
  const tensorCount = await c.u64('tensor count');
  const kvCount = await c.u64('metadata count');
  // A key/value takes at least 13 bytes (8 length, 4 type, 1 value), a tensor info at least 24.
  if (kvCount * 13 + tensorCount * 24 > c.remaining) {
    throw new FluteError('E_TRUNCATED', `${file}: header claims ${kvCount} metadata entries and ${tensorCount} tensors, more than the ${src.size}-byte file can hold`);
  }

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = await c.string(`metadata key ${i}`);
    if (metadata.has(key)) throw bad(`metadata key "${key}" appears twice`);
    const type = await readValueType(c, `metadata "${key}"`);
    metadata.set(key, await readValue(c, type, `metadata "${key}"`, 0));
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = metadata.get('general.alignment');
  if (al !== undefined) {
    if (al.type !== 'u32' || al.value === 0 || (al.value & (al.value - 1)) !== 0) {
      throw bad(`general.alignment must be a u32 power of two, got ${al.type} ${String(al.value)}`);
    }
    alignment = al.value;
  }

  const raw: { name: string; type: GgmlTypeTraits; ne: number[]; relOffset: number }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = await c.string(`tensor ${i} name`);
    const where = `tensor "${name}"`;
    if (new TextEncoder().encode(name).length > GGUF_MAX_NAME_BYTES) throw bad(`${where}: name is longer than ${GGUF_MAX_NAME_BYTES} bytes`);
    if (names.has(name)) throw bad(`${where} appears twice`);
    names.add(name);
    const nDims = await c.u32(`${where} dimension count`);
    if (nDims > GGUF_MAX_DIMS) throw bad(`${where} has ${nDims} dimensions; at most ${GGUF_MAX_DIMS}`);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) ne.push(await c.u64(`${where} ne[${d}]`));
    const typeId = await c.u32(`${where} type`);
    const type = ggmlTypeById(typeId);
    if (!type) throw new FluteError('E_UNSUPPORTED_DTYPE', `${file}: ${where} has ggml type id ${typeId}, which this reader does not know`);
    const relOffset = await c.u64(`${where} offset`);
    raw.push({ name, type, ne, relOffset });
  }
  const dataOffset = alignUp(c.pos, alignment);
  if (dataOffset > src.size && raw.length > 0) throw new FluteError('E_TRUNCATED', `${file}: the data section would start at ${dataOffset}, past the end of the ${src.size}-byte file`);

  const tensors: GgufTensorInfo[] = raw.map(({ name, type, ne, relOffset }) => {
    const where = `tensor "${name}"`;
    let count = 1;
    for (const d of ne) count *= d;
    if (!Number.isSafeInteger(count)) throw bad(`${where} dims [${ne.join(', ')}] overflow`);
    const byteLength = ggmlTensorBytesChecked(type, ne, `${file}: ${where}`);
    if (relOffset % alignment !== 0) throw bad(`${where} data offset ${relOffset} is not a multiple of the alignment ${alignment}`);
    const offset = dataOffset + relOffset;
    if (offset + byteLength > src.size) {
      throw new FluteError('E_TRUNCATED', `${file}: ${where} (${type.name} [${ne.join(', ')}], ${byteLength} bytes) ends at byte ${offset + byteLength}, past the end of the ${src.size}-byte file`);
    }
    return Object.freeze({ name, type, ne: Object.freeze(ne), relOffset, offset, byteLength });
  });
  const sorted = [...tensors].sort((a, b) => a.offset - b.offset || a.byteLength - b.byteLength);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1];
    const t = sorted[i];
    if (t.offset < p.offset + p.byteLength) throw bad(`tensor "${t.name}" data overlaps tensor "${p.name}"`);
  }
  return makeFile(src, version, alignment, metadata, tensors, dataOffset);
}

function ggmlTensorBytesChecked(type: GgmlTypeTraits, ne: readonly number[], where: string): number {
  const n = ggmlTensorBytes(type, ne, where);
  if (!Number.isSafeInteger(n)) throw new FluteError('E_BAD_HEADER', `${where}: size overflows`);
  return n;
}

function makeFile(src: ByteSource, version: number, alignment: number, metadata: Map<string, GgufValue>, tensors: GgufTensorInfo[], dataOffset: number): GgufFile {
  const { info: tensor, has, readRaw } = tensorTable(src, tensors);
  return {
    file: src.name, version, alignment, metadata, tensors, dataOffset, size: src.size,
    tensor,
    has,
    readRaw,
    close: () => src.close(),
  };
}

export function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

// ---------------------------------------------------------------------------------------------
// Typed metadata access

/** Reads an integer metadata value of any integer type; E_BAD_HEADER names the key otherwise. */
export function metaInt(g: Pick<GgufFile, 'file' | 'metadata'>, key: string): number | undefined {
  const v = g.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type === 'u64' || v.type === 'i64') {
    if (v.value > BigInt(Number.MAX_SAFE_INTEGER) || v.value < -BigInt(Number.MAX_SAFE_INTEGER)) throw new FluteError('E_BAD_HEADER', `${g.file}: metadata "${key}" = ${v.value} is out of range`);
    return Number(v.value);
  }
  if (v.type === 'u8' || v.type === 'i8' || v.type === 'u16' || v.type === 'i16' || v.type === 'u32' || v.type === 'i32') return v.value;
  throw new FluteError('E_BAD_HEADER', `${g.file}: metadata "${key}" should be an integer, got ${v.type}`);
}

export function metaFloat(g: Pick<GgufFile, 'file' | 'metadata'>, key: string): number | undefined {
  const v = g.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type === 'f32' || v.type === 'f64') return v.value;
  return metaInt(g, key);
}

export function metaString(g: Pick<GgufFile, 'file' | 'metadata'>, key: string): string | undefined {
  const v = g.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type !== 'string') throw new FluteError('E_BAD_HEADER', `${g.file}: metadata "${key}" should be a string, got ${v.type}`);
  return v.value;
}

export function metaBool(g: Pick<GgufFile, 'file' | 'metadata'>, key: string): boolean | undefined {
  const v = g.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type !== 'bool') throw new FluteError('E_BAD_HEADER', `${g.file}: metadata "${key}" should be a bool, got ${v.type}`);
  return v.value;
}

/** An array metadata value of the given item type; E_BAD_HEADER when it is something else. */
export function metaArray<T extends keyof GgufArrayItems>(g: Pick<GgufFile, 'file' | 'metadata'>, key: string, itemType: T): GgufArrayItems[T] | undefined {
  const v = g.metadata.get(key);
  if (v === undefined) return undefined;
  if (v.type !== 'array' || v.itemType !== itemType) {
    throw new FluteError('E_BAD_HEADER', `${g.file}: metadata "${key}" should be an array of ${itemType}, got ${v.type === 'array' ? `an array of ${v.itemType}` : v.type}`);
  }
  return v.value as GgufArrayItems[T];
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface GgufWriteTensor {
  readonly name: string;
  readonly type: GgmlTypeName;
  readonly ne: readonly number[]; // innermost first
  /** The bytes, or a function producing them when the writer reaches this tensor. */
  readonly data: Uint8Array | (() => Promise<Uint8Array> | Uint8Array);
}

export interface GgufWriteSpec {
  /** Metadata in the order to write; general.alignment, when present, sets the alignment. */
  readonly metadata: ReadonlyMap<string, GgufValue> | readonly (readonly [string, GgufValue])[];
  readonly tensors: readonly GgufWriteTensor[];
  readonly version?: 2 | 3;
}

interface Layout {
  readonly header: Uint8Array; // everything before the data section, padded to the alignment
  readonly lengths: readonly number[]; // bytes per tensor
  readonly alignment: number;
}

class ByteWriter {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private grow(n: number): number {
    if (this.length + n > this.buf.length) {
      const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
      next.set(this.buf.subarray(0, this.length));
      this.buf = next;
      this.view = new DataView(next.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  // grow() may swap buf and view, so each writer takes the offset first and only then the buffer.
  u32(v: number) {
    const at = this.grow(4);
    this.view.setUint32(at, v, true);
  }
  u64(v: number) {
    const at = this.grow(8);
    this.view.setBigUint64(at, BigInt(v), true);
  }
  bytes(b: Uint8Array) {
    const at = this.grow(b.length);
    this.buf.set(b, at);
  }
  string(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  scalar(type: Exclude<GgufItemType, 'string'>, v: number | bigint | boolean) {
    const at = this.grow(SCALAR_BYTES[type]);
    const d = this.view;
    switch (type) {
      case 'u8': d.setUint8(at, v as number); break;
      case 'i8': d.setInt8(at, v as number); break;
      case 'u16': d.setUint16(at, v as number, true); break;
      case 'i16': d.setInt16(at, v as number, true); break;
      case 'u32': d.setUint32(at, v as number, true); break;
      case 'i32': d.setInt32(at, v as number, true); break;
      case 'f32': d.setFloat32(at, v as number, true); break;
      case 'f64': d.setFloat64(at, v as number, true); break;
      case 'u64': d.setBigUint64(at, v as bigint, true); break;
      case 'i64': d.setBigInt64(at, v as bigint, true); break;
      case 'bool': d.setUint8(at, v ? 1 : 0); break;
    }
  }
  pad(alignment: number) { this.grow(alignUp(this.length, alignment) - this.length); }
  result(): Uint8Array { return this.buf.slice(0, this.length); }
}

function checkScalar(key: string, type: GgufValueType, v: unknown): void {
  const ok =
    type === 'bool' ? typeof v === 'boolean'
    : type === 'string' ? typeof v === 'string'
    : type === 'u64' ? typeof v === 'bigint' && v >= 0n && v < 1n << 64n
    : type === 'i64' ? typeof v === 'bigint' && v >= -(1n << 63n) && v < 1n << 63n
    : type === 'f32' || type === 'f64' ? typeof v === 'number'
    : typeof v === 'number' && Number.isInteger(v) && (() => {
      const [lo, hi] = { u8: [0, 255], i8: [-128, 127], u16: [0, 65535], i16: [-32768, 32767], u32: [0, 2 ** 32 - 1], i32: [-(2 ** 31), 2 ** 31 - 1] }[type as 'u8'] as [number, number];
      return v >= lo && v <= hi;
    })();
  if (!ok) throw new FluteError('E_OPTION', `GGUF metadata "${key}": ${formatScalar(v)} is not a valid ${type}`);
}

function formatScalar(v: unknown): string {
  return typeof v === 'bigint' ? `${v}n` : JSON.stringify(v) ?? String(v);
}

function writeValue(w: ByteWriter, key: string, v: GgufValue, depth: number): void {
  if (v.type === 'string') {
    checkScalar(key, 'string', v.value);
    w.string(v.value);
    return;
  }
  if (v.type !== 'array') {
    checkScalar(key, v.type, v.value);
    w.scalar(v.type, v.value);
    return;
  }
  if (depth >= MAX_ARRAY_DEPTH) throw new FluteError('E_OPTION', `GGUF metadata "${key}": arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
  w.u32(GGUF_VALUE_TYPES[v.itemType]);
  w.u64(v.value.length);
  if (v.itemType === 'string') for (const s of v.value) { checkScalar(key, 'string', s); w.string(s); }
  else if (v.itemType === 'bool') for (const b of v.value) { checkScalar(key, 'bool', b); w.scalar('bool', b); }
  else if (v.itemType === 'array') {
    // Items of an array of arrays carry no tag of their own: each is (item type, count, items).
    for (const a of v.value) {
      if (a?.type !== 'array') throw new FluteError('E_OPTION', `GGUF metadata "${key}": an array of arrays holds a non-array`);
      writeValue(w, key, a, depth + 1);
    }
  }
  else {
    const a = v.value;
    if (!(a instanceof ARRAY_CTORS[v.itemType])) throw new FluteError('E_OPTION', `GGUF metadata "${key}": an array of ${v.itemType} must be a ${ARRAY_CTORS[v.itemType].name}`);
    w.bytes(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)); // little-endian platform
  }
}

function isEntryList(m: GgufWriteSpec['metadata']): m is readonly (readonly [string, GgufValue])[] {
  return Array.isArray(m);
}

function layout(where: string, spec: GgufWriteSpec): Layout {
  const md = spec.metadata;
  const entries: (readonly [string, GgufValue])[] = isEntryList(md) ? [...md] : [...md.entries()];
  const keys = new Set<string>();
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  for (const [key, v] of entries) {
    if (keys.has(key)) throw new FluteError('E_OPTION', `${where}: metadata key "${key}" given twice`);
    keys.add(key);
    if (key === 'general.alignment') {
      if (v.type !== 'u32' || v.value < 1 || (v.value & (v.value - 1)) !== 0) throw new FluteError('E_OPTION', `${where}: general.alignment must be a u32 power of two`);
      alignment = v.value;
    }
  }
  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(spec.version ?? GGUF_VERSION);
  w.u64(spec.tensors.length);
  w.u64(entries.length);
  for (const [key, v] of entries) {
    w.string(key);
    w.u32(GGUF_VALUE_TYPES[v.type]);
    writeValue(w, key, v, 0);
  }
  const names = new Set<string>();
  const lengths: number[] = [];
  let offset = 0;
  for (const t of spec.tensors) {
    const tw = `${where}: tensor "${t.name}"`;
    if (typeof t.name !== 'string' || t.name === '' || names.has(t.name) || new TextEncoder().encode(t.name).length > GGUF_MAX_NAME_BYTES) {
      throw new FluteError('E_OPTION', `${tw}: names must be non-empty, unique and at most ${GGUF_MAX_NAME_BYTES} bytes`);
    }
    names.add(t.name);
    const type = GGML_TYPES[t.type];
    if (!type) throw new FluteError('E_UNSUPPORTED_DTYPE', `${tw}: unknown ggml type ${JSON.stringify(t.type)}`);
    if (t.ne.length < 1 || t.ne.length > GGUF_MAX_DIMS || !t.ne.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new FluteError('E_SHAPE', `${tw}: dims must be 1 to ${GGUF_MAX_DIMS} non-negative integers, got [${t.ne.join(', ')}]`);
    }
    const len = ggmlTensorBytes(type, t.ne, tw);
    w.string(t.name);
    w.u32(t.ne.length);
    for (const d of t.ne) w.u64(d);
    w.u32(type.id);
    w.u64(offset);
    lengths.push(len);
    offset = alignUp(offset + len, alignment);
  }
  w.pad(alignment);
  return { header: w.result(), lengths, alignment };
}

async function* chunks(where: string, spec: GgufWriteSpec, lay: Layout): AsyncGenerator<Uint8Array> {
  yield lay.header;
  for (let i = 0; i < spec.tensors.length; i++) {
    const t = spec.tensors[i];
    const data = typeof t.data === 'function' ? await t.data() : t.data;
    if (!(data instanceof Uint8Array) || data.length !== lay.lengths[i]) {
      const got = data instanceof Uint8Array ? `${data.length} bytes` : 'not a Uint8Array';
      throw new FluteError('E_SHAPE', `${where}: tensor "${t.name}" (${t.type} [${t.ne.join(', ')}]) needs ${lay.lengths[i]} bytes of data, got ${got}`);
    }
    yield data;
    const pad = alignUp(data.length, lay.alignment) - data.length;
    if (pad > 0) yield new Uint8Array(pad);
  }
}

/** Writes a GGUF file atomically, tensors in the given order, each padded to the alignment; returns its size. */
export async function writeGguf(path: string, spec: GgufWriteSpec): Promise<number> {
  const lay = layout(path, spec); // bad names, types and dims fail before a temp file exists
  return writeFileAtomic(path, chunks(path, spec, lay));
}

/** The bytes writeGguf would write, in memory. */
export async function serializeGguf(spec: GgufWriteSpec, name = '<memory>'): Promise<Uint8Array> {
  const lay = layout(name, spec);
  const parts: Uint8Array[] = [];
  for await (const c of chunks(name, spec, lay)) parts.push(c);
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A write spec that reproduces an opened file: same version, metadata, tensor order and bytes. */
export function ggufCopySpec(g: GgufFile): GgufWriteSpec {
  return {
    version: g.version as 2 | 3,
    metadata: g.metadata,
    tensors: g.tensors.map((t) => ({ name: t.name, type: t.type.name, ne: t.ne, data: () => g.readRaw(t.name) })),
  };
}
