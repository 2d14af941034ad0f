// Mutators: from a valid seed file and a seeded RNG, a damaged copy plus a line saying what was done.
// Generic damage (truncation, bit flips, byte runs, inserted or deleted bytes) is aimed mostly at the
// header, where readers trust what they read; structured damage writes lies into the numbers and JSON
// values a reader sizes things from (fields.ts says where they are).

import type { Field, JsonRegion } from './fields.js';
import type { Rng } from './rng.js';

/** One file of a seed, with what is known about its structure. */
export interface SeedFile {
  readonly name: string;
  readonly bytes: Uint8Array;
  /** Bytes [0, headerEnd) are the header: most damage lands there. */
  readonly headerEnd: number;
  readonly fields: readonly Field[];
  readonly json?: JsonRegion;
}

export interface Mutated {
  readonly bytes: Uint8Array;
  /** Each step applied, in order ("truncate to 27", "tensor 3 offset := 4294967295"...). */
  readonly steps: string[];
}

/** A position: in the header three times in four, anywhere otherwise. */
function position(r: Rng, size: number, headerEnd: number): number {
  if (size === 0) return 0;
  return r.chance(0.75) && headerEnd > 0 ? r.int(0, Math.min(headerEnd, size) - 1) : r.int(0, size - 1);
}

// ---------------------------------------------------------------------------------------------
// Lies for numbers

const INT_LIES = [0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 0x7fff, 0x8000, 0xffff, 0x10000, 2 ** 24, 2 ** 30, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 48, 2 ** 53 - 1, 2 ** 53, 2 ** 63, 2 ** 64 - 1];

/** An integer lie for a field whose true value is `orig` in a file of `size` bytes (may be negative or > 2^53). */
function intLie(r: Rng, orig: bigint, size: number): bigint {
  const o = Number(orig);
  const choice = r.int(0, 9);
  switch (choice) {
    case 0: return BigInt(r.pick(INT_LIES));
    case 1: return orig + 1n;
    case 2: return orig - 1n;
    case 3: return orig * 2n;
    case 4: return orig / 2n;
    case 5: return BigInt(size + r.int(-8, 8));
    case 6: return -BigInt(r.pick(INT_LIES.slice(1, 24)));
    case 7: return orig + BigInt(r.pick(INT_LIES));
    case 8: return BigInt(Math.floor(r.next() * 2 ** 32)) * (r.chance(0.5) ? 1n : BigInt(r.int(1, 2 ** 20)));
    default: return BigInt(Math.max(0, Math.round(o * (r.next() * 4))));
  }
}

const FLOAT_LIES = [NaN, Infinity, -Infinity, 0, -0, 1e38, -1e38, 3.4e38, 1e-45, 65504, 65536];

function writeField(bytes: Uint8Array, f: Field, r: Rng): string {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (f.offset + f.width > bytes.length) return `${f.what}: past the end, skipped`;
  if (f.float) {
    const v = r.pick(FLOAT_LIES);
    if (f.width === 4) dv.setFloat32(f.offset, v, true);
    else if (f.width === 8) dv.setFloat64(f.offset, v, true);
    return `${f.what} := ${v}`;
  }
  const orig = f.width === 8 ? dv.getBigUint64(f.offset, true) : BigInt(f.width === 4 ? dv.getUint32(f.offset, true) : f.width === 2 ? dv.getUint16(f.offset, true) : dv.getUint8(f.offset));
  const bits = BigInt(f.width * 8);
  const lie = BigInt.asUintN(Number(bits), intLie(r, orig, bytes.length));
  if (f.width === 8) dv.setBigUint64(f.offset, lie, true);
  else if (f.width === 4) dv.setUint32(f.offset, Number(lie), true);
  else if (f.width === 2) dv.setUint16(f.offset, Number(lie), true);
  else dv.setUint8(f.offset, Number(lie));
  return `${f.what} (${orig}) := ${lie}`;
}

function pickField(r: Rng, fields: readonly Field[]): Field {
  const kinds = [...new Set(fields.map((f) => f.kind))];
  const kind = r.pick(kinds);
  return r.pick(fields.filter((f) => f.kind === kind));
}

// ---------------------------------------------------------------------------------------------
// Lies for JSON values

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const JSON_LIES: Json[] = [
  null, true, false, 0, -1, 1, 0.5, 1e308, -1e308, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 2 ** 64, 1e21,
  '', 'F64', 'U8', 'I16', 'BF16', 'F16', 'F32', 'BOOL', 'Q4_0', '__proto__', 'x'.repeat(300),
  [], [0], [2 ** 31, 2 ** 31], [2 ** 40, 2 ** 40, 2 ** 40], [1, 2, 3, 4, 5, 6, 7, 8, 9], [-1, 4], [0, 2 ** 53], {}, { a: 1 },
];

/** Every place in a JSON value, as a path; strings holding JSON objects or arrays are entered too. */
interface Place {
  readonly path: (string | number)[];
  readonly nestedIn?: number; // index into the path where a JSON-in-a-string begins
}

function places(v: Json, path: (string | number)[], out: Place[], depth: number, nestedIn?: number): void {
  if (out.length > 4000 || depth > 12) return;
  out.push({ path, nestedIn });
  if (Array.isArray(v)) {
    const n = v.length;
    // Long arrays (vocabularies, merges) contribute a sample of their items.
    for (let i = 0; i < n; i += n > 32 ? Math.ceil(n / 32) : 1) places(v[i], [...path, i], out, depth + 1, nestedIn);
  } else if (v !== null && typeof v === 'object') {
    for (const k of Object.keys(v)) places(v[k], [...path, k], out, depth + 1, nestedIn);
  } else if (typeof v === 'string' && (v.startsWith('{') || v.startsWith('['))) {
    try {
      const inner = JSON.parse(v) as Json;
      places(inner, [...path, '<json>'], out, depth + 1, path.length);
    } catch {
      /* a plain string */
    }
  }
}

/** Applies `f` to the value at `path` (entering JSON-in-string segments), returning the new root. */
function update(v: Json, path: readonly (string | number)[], f: (old: Json, parent: Json, key: string | number) => Json | undefined): Json {
  if (path.length === 0) return f(v, null, '') ?? null;
  const [head, ...rest] = path;
  if (head === '<json>' && typeof v === 'string') return JSON.stringify(update(JSON.parse(v) as Json, rest, f));
  if (Array.isArray(v) && typeof head === 'number') {
    const copy = [...v];
    if (rest.length === 0) {
      const nv = f(copy[head], copy, head);
      if (nv === undefined) copy.splice(head, 1);
      else copy[head] = nv;
    } else copy[head] = update(copy[head], rest, f);
    return copy;
  }
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && typeof head === 'string') {
    const copy: { [k: string]: Json } = { ...v };
    if (rest.length === 0) {
      const nv = f(copy[head], copy, head);
      if (nv === undefined) delete copy[head];
      else copy[head] = nv;
    } else copy[head] = update(copy[head], rest, f);
    return copy;
  }
  return v;
}

function jsonLie(r: Rng, old: Json): Json | undefined {
  const c = r.int(0, 9);
  if (c === 0) return undefined; // delete the key or item
  if (c <= 2 && typeof old === 'number') return Number(intLie(r, BigInt(Math.trunc(Number.isFinite(old) ? old : 0)), 1 << 20));
  if (c === 3 && Array.isArray(old)) return [...old, ...old]; // more dimensions or items than expected
  if (c === 4 && Array.isArray(old) && old.length > 0) return old.map((x) => (typeof x === 'number' ? x * r.int(2, 1 << 16) : x));
  if (c === 5 && typeof old === 'string') return old.slice(0, r.int(0, old.length)) + (r.chance(0.5) ? '\u0000\ud800' : '');
  return structuredClone(r.pick(JSON_LIES));
}

/** Replaces one JSON value in the region by a lie, keeping the length field (if any) in step. */
function mutateJson(bytes: Uint8Array, region: JsonRegion, r: Rng): { bytes: Uint8Array; step: string } | undefined {
  let root: Json;
  try {
    root = JSON.parse(new TextDecoder().decode(bytes.subarray(region.start, region.end))) as Json;
  } catch {
    return undefined; // an earlier step broke it
  }
  const all: Place[] = [];
  places(root, [], all, 0);
  const place = r.pick(all.slice(1).length > 0 ? all.slice(1) : all);
  let desc = '';
  const next = update(root, place.path, (old) => {
    const lie = jsonLie(r, old);
    desc = `${place.path.join('.')} (${JSON.stringify(old)?.slice(0, 40)}) := ${lie === undefined ? '<deleted>' : JSON.stringify(lie).slice(0, 60)}`;
    return lie;
  });
  let text = new TextEncoder().encode(JSON.stringify(next));
  const oldLen = region.end - region.start;
  // Keep the data where it was when the new text fits (padding with spaces, as safetensors writers do).
  if (region.lengthField !== undefined && text.length <= oldLen && r.chance(0.8)) {
    const padded = new Uint8Array(oldLen).fill(0x20);
    padded.set(text);
    text = padded;
  }
  const out = new Uint8Array(bytes.length - oldLen + text.length);
  out.set(bytes.subarray(0, region.start));
  out.set(text, region.start);
  out.set(bytes.subarray(region.end), region.start + text.length);
  if (region.lengthField !== undefined && r.chance(0.9)) {
    new DataView(out.buffer).setBigUint64(region.lengthField, BigInt(text.length), true);
  }
  return { bytes: out, step: `json ${desc}` };
}

// ---------------------------------------------------------------------------------------------
// One mutation, then a stack of them

type Step = (b: Uint8Array, f: SeedFile, r: Rng) => { bytes: Uint8Array; step: string } | undefined;

const STEPS: { weight: number; name: string; run: Step }[] = [
  {
    weight: 2, name: 'truncate', run: (b, f, r) => {
      const at = r.chance(0.5) ? position(r, b.length, f.headerEnd) : r.int(0, b.length);
      return { bytes: b.slice(0, at), step: `truncate to ${at} of ${b.length}` };
    },
  },
  {
    weight: 3, name: 'bitflip', run: (b, f, r) => {
      const out = b.slice();
      const at: number[] = [];
      for (let i = r.int(1, 8); i > 0 && out.length > 0; i--) {
        const p = position(r, out.length, f.headerEnd);
        out[p] ^= 1 << r.int(0, 7);
        at.push(p);
      }
      return { bytes: out, step: `flip bits at ${at.join(',')}` };
    },
  },
  {
    weight: 2, name: 'bytes', run: (b, f, r) => {
      if (b.length === 0) return undefined;
      const out = b.slice();
      const p = position(r, out.length, f.headerEnd);
      const n = Math.min(out.length - p, r.pick([1, 2, 4, 8, 16, 64]));
      const fill = r.pick([0x00, 0xff, 0x7f, 0x80, -1]);
      for (let i = 0; i < n; i++) out[p + i] = fill < 0 ? r.int(0, 255) : fill;
      return { bytes: out, step: `${n} bytes at ${p} := ${fill < 0 ? 'random' : `0x${fill.toString(16)}`}` };
    },
  },
  {
    weight: 1, name: 'insert-delete', run: (b, f, r) => {
      const p = position(r, b.length, f.headerEnd);
      const n = r.pick([1, 3, 4, 8, 13, 100]);
      if (r.chance(0.5)) {
        const ins = new Uint8Array(n).map(() => r.int(0, 255));
        const out = new Uint8Array(b.length + n);
        out.set(b.subarray(0, p));
        out.set(ins, p);
        out.set(b.subarray(p), p + n);
        return { bytes: out, step: `insert ${n} bytes at ${p}` };
      }
      const cut = Math.min(n, b.length - p);
      const out = new Uint8Array(b.length - cut);
      out.set(b.subarray(0, p));
      out.set(b.subarray(p + cut), p);
      return { bytes: out, step: `delete ${cut} bytes at ${p}` };
    },
  },
  {
    weight: 5, name: 'field', run: (b, f, r) => {
      if (f.fields.length === 0) return undefined;
      const out = b.slice();
      return { bytes: out, step: writeField(out, pickField(r, f.fields), r) };
    },
  },
  {
    weight: 8, name: 'json', run: (b, f, r) => (f.json && f.json.end <= b.length ? mutateJson(b, f.json, r) : undefined),
  },
];

/** Applies one to three mutations (mostly one) to a copy of the file. */
export function mutate(file: SeedFile, r: Rng): Mutated {
  let bytes = file.bytes;
  const steps: string[] = [];
  const count = r.chance(0.7) ? 1 : r.int(2, 3);
  const usable = STEPS.filter((s) => (s.name !== 'field' || file.fields.length > 0) && (s.name !== 'json' || file.json));
  const total = usable.reduce((a, s) => a + s.weight, 0);
  for (let i = 0; i < count; i++) {
    let x = r.next() * total;
    const s = usable.find((u) => (x -= u.weight) < 0) ?? usable[0];
    const res = s.run(bytes, file, r);
    if (res) {
      bytes = res.bytes;
      steps.push(res.step);
    }
  }
  if (steps.length === 0) {
    const res = STEPS[1].run(bytes, file, r);
    if (res) {
      bytes = res.bytes;
      steps.push(res.step);
    }
  }
  return { bytes, steps };
}
