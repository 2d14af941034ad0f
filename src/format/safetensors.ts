// Our own safetensors reader and writer: an 8-byte little-endian header length, a JSON header of
// {name: {dtype, shape, data_offsets}} plus an optional "__metadata__" string map, then the raw data.
// Every header value is checked against the file size before anything is allocated from it.

import { FluteError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';
import { bf16ArrayToF32, f16ArrayToF32 } from './half.js';
import { parseSource, type ByteSource } from './source.js';
import { DTYPE_BYTES, tensorTable, type Dtype, type TensorInfo, type TensorReader } from './tensors.js';

/** Hugging Face's own cap on the JSON header. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsReader extends TensorReader {
  /** The "__metadata__" map (empty when absent). */
  readonly metadata: Record<string, string>;
}

export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  /** The little-endian bytes, or a function producing them when the writer reaches this tensor. */
  readonly data: Uint8Array | (() => Promise<Uint8Array> | Uint8Array);
}

export function isDtype(s: unknown): s is Dtype {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

/** A byte view of a typed array. Assumes a little-endian platform (every current JS engine's target). */
export function typedArrayBytes(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Tensor bytes (little-endian) to f32 for F32, F16 and BF16; copies first when the view is misaligned. */
export function bytesToF32(bytes: Uint8Array, dtype: Dtype, where: string): Float32Array {
  const width = DTYPE_BYTES[dtype];
  const aligned = bytes.byteOffset % width === 0 ? bytes : bytes.slice();
  if (dtype === 'F32') return new Float32Array(aligned.buffer, aligned.byteOffset, aligned.length / 4);
  if (dtype === 'F16' || dtype === 'BF16') {
    const h = new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.length / 2);
    return dtype === 'F16' ? f16ArrayToF32(h) : bf16ArrayToF32(h);
  }
  throw new FluteError('E_UNSUPPORTED_DTYPE', `${where} is ${dtype}; only F32, F16 and BF16 convert to f32`);
}

/** Element count, or undefined unless every dimension is a non-negative safe integer and the product is too. */
function checkedNumel(shape: unknown): number | undefined {
  if (!Array.isArray(shape)) return undefined;
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) return undefined;
    n *= d;
  }
  // A zero dimension makes the tensor empty even when the other dimensions overflowed.
  if (shape.includes(0)) return 0;
  return Number.isSafeInteger(n) ? n : undefined;
}

// ---------------------------------------------------------------------------------------------
// Reading

function u64le(b: Uint8Array): number {
  const v = new DataView(b.buffer, b.byteOffset, 8);
  return v.getUint32(4, true) * 2 ** 32 + v.getUint32(0, true);
}

/**
 * Opens a safetensors file (a path, or any ByteSource). On success the reader owns the source and
 * closes it; on failure a source passed in stays open (the caller's), one opened from a path is closed.
 */
export async function openSafetensors(source: ByteSource | string): Promise<SafetensorsReader> {
  return parseSource(source, parse);
}

async function parse(src: ByteSource): Promise<SafetensorsReader> {
  const file = src.name;
  const bad = (msg: string) => new FluteError('E_BAD_HEADER', `${file}: ${msg}`);
  if (src.size < 8) throw new FluteError('E_TRUNCATED', `${file}: ${src.size} bytes is shorter than the 8-byte safetensors header length`);
  const headerLen = u64le(await src.read(0, 8));
  if (headerLen > MAX_HEADER_BYTES) throw bad(`safetensors header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file?)`);
  if (8 + headerLen > src.size) {
    throw new FluteError('E_TRUNCATED', `${file}: safetensors header needs ${headerLen} bytes after the length field but the file is only ${src.size} bytes long`);
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(await src.read(8, headerLen)));
  } catch (e) {
    throw new FluteError('E_BAD_HEADER', `${file}: safetensors header is not valid UTF-8 JSON (${e instanceof Error ? e.message : e})`, { cause: e });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw bad('safetensors header must be a JSON object');

  const dataStart = 8 + headerLen;
  const dataSize = src.size - dataStart;
  const metadata: Record<string, string> = {};
  const entries: { info: TensorInfo; begin: number; end: number }[] = [];
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('"__metadata__" must be an object of strings');
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string') throw bad(`"__metadata__" value "${k}" must be a string, got ${typeof s}`);
        // defineProperty so that a "__proto__" key stays an ordinary entry.
        Object.defineProperty(metadata, k, { value: s, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    const t = `tensor "${name}"`;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`${t} must be an object with dtype, shape and data_offsets`);
    const { dtype, shape, data_offsets: offs } = v as Record<string, unknown>;
    if (typeof dtype !== 'string') throw bad(`${t} has no dtype string`);
    if (!isDtype(dtype)) {
      throw new FluteError('E_UNSUPPORTED_DTYPE', `${file}: ${t} has dtype ${JSON.stringify(dtype)}; supported: ${Object.keys(DTYPE_BYTES).join(' ')}`);
    }
    const n = checkedNumel(shape);
    if (n === undefined) throw bad(`${t} shape must be a list of non-negative integers with a safe product, got ${JSON.stringify(shape)}`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[0] > offs[1]) {
      throw bad(`${t} data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offs)}`);
    }
    const [begin, end] = offs as [number, number];
    const byteLength = n * DTYPE_BYTES[dtype];
    if (end - begin !== byteLength) {
      throw bad(`${t} (${dtype} [${(shape as number[]).join(', ')}]) needs ${byteLength} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`);
    }
    if (end > dataSize) {
      throw new FluteError('E_TRUNCATED', `${file}: ${t} data ends at byte ${dataStart + end} but the file is only ${src.size} bytes long`);
    }
    entries.push({ info: { name, dtype, shape: Object.freeze([...(shape as number[])]), offset: dataStart + begin, byteLength }, begin, end });
  }
  // File order; sort is stable, so equal offsets (empty tensors) keep header order.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < entries.length; i++) {
    const p = entries[i - 1];
    const c = entries[i];
    if (c.begin < p.end) throw bad(`tensor "${c.info.name}" data [${c.begin}, ${c.end}] overlaps tensor "${p.info.name}" [${p.begin}, ${p.end}]`);
  }
  return makeReader(src, entries.map((e) => e.info), metadata);
}

function makeReader(src: ByteSource, list: readonly TensorInfo[], metadata: Record<string, string>): SafetensorsReader {
  const file = src.name;
  const { info, has, readRaw } = tensorTable(src, list);
  return {
    file,
    metadata,
    list: () => list,
    info,
    has,
    readRaw,
    async readF32(name) {
      const t = info(name);
      return bytesToF32(await readRaw(name), t.dtype, `${file}: tensor "${name}"`);
    },
    close: () => src.close(),
  };
}

// ---------------------------------------------------------------------------------------------
// Writing

interface Layout {
  readonly header: Uint8Array; // length prefix + JSON padded with spaces to a multiple of 8
  readonly byteLengths: readonly number[]; // per entry, in order
}

/** Builds the header from dtypes and shapes alone, so it is written before any tensor data exists. */
function layout(file: string, tensors: readonly SafetensorsEntry[], metadata?: Record<string, string>): Layout {
  const parts: string[] = [];
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new FluteError('E_OPTION', `${file}: metadata value "${k}" must be a string, got ${typeof v}`);
    }
    parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  const seen = new Set<string>();
  const byteLengths: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    if (typeof t.name !== 'string' || t.name === '' || t.name === '__metadata__' || seen.has(t.name)) {
      throw new FluteError('E_OPTION', `${file}: tensor name ${JSON.stringify(t.name)} is empty, reserved or repeated`);
    }
    seen.add(t.name);
    if (!isDtype(t.dtype)) throw new FluteError('E_UNSUPPORTED_DTYPE', `${file}: tensor "${t.name}" has unknown dtype ${JSON.stringify(t.dtype)}`);
    const n = checkedNumel(t.shape);
    if (n === undefined) throw new FluteError('E_SHAPE', `${file}: tensor "${t.name}" shape must be non-negative integers, got ${JSON.stringify(t.shape)}`);
    const len = n * DTYPE_BYTES[t.dtype];
    byteLengths.push(len);
    parts.push(`${JSON.stringify(t.name)}:${JSON.stringify({ dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + len] })}`);
    offset += len;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = Math.ceil(json.length / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  const v = new DataView(header.buffer);
  v.setUint32(0, padded % 2 ** 32, true);
  v.setUint32(4, Math.floor(padded / 2 ** 32), true);
  header.set(json, 8);
  return { header, byteLengths };
}

/** The header, then each tensor's bytes, producing lazy data only when its turn comes. */
async function* chunks(file: string, tensors: readonly SafetensorsEntry[], lay: Layout): AsyncGenerator<Uint8Array> {
  yield lay.header;
  for (let i = 0; i < tensors.length; i++) {
    const t = tensors[i];
    const data = typeof t.data === 'function' ? await t.data() : t.data;
    if (!(data instanceof Uint8Array) || data.length !== lay.byteLengths[i]) {
      const got = data instanceof Uint8Array ? `${data.length} bytes` : 'not a Uint8Array';
      throw new FluteError('E_SHAPE', `${file}: tensor "${t.name}" (${t.dtype} [${t.shape.join(', ')}]) needs ${lay.byteLengths[i]} bytes of data, got ${got}`);
    }
    yield data;
  }
}

/** Writes a safetensors file atomically, tensors in the given order; returns the file size. */
export async function writeSafetensors(path: string, tensors: readonly SafetensorsEntry[], metadata?: Record<string, string>): Promise<number> {
  const lay = layout(path, tensors, metadata); // bad names/shapes fail before a temp file exists
  return writeFileAtomic(path, chunks(path, tensors, lay));
}

/** The same bytes writeSafetensors would write, in memory. */
export async function serializeSafetensors(tensors: readonly SafetensorsEntry[], metadata?: Record<string, string>, name = '<memory>'): Promise<Uint8Array> {
  const lay = layout(name, tensors, metadata);
  const out = new Uint8Array(lay.header.length + lay.byteLengths.reduce((a, b) => a + b, 0));
  let at = 0;
  for await (const c of chunks(name, tensors, lay)) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
