// Where the numbers that readers trust sit in each seed file: header lengths, counts, dimensions,
// offsets, type ids. The mutators overwrite these with lies; finding them is this module's one job,
// done once per seed by walking the (valid) file the same way its reader does.

/** A little-endian number in a file that a reader trusts. */
export interface Field {
  readonly offset: number;
  readonly width: 1 | 2 | 4 | 8;
  /** Stored as an IEEE float rather than an integer. */
  readonly float?: boolean;
  /** What the number means: the mutators pick a kind first, so rare kinds are not drowned by many lengths. */
  readonly kind: 'length' | 'count' | 'dim' | 'offset' | 'type' | 'version' | 'value';
  readonly what: string;
}

/** A JSON text inside a file (a safetensors header, or a whole .json file). */
export interface JsonRegion {
  readonly start: number;
  readonly end: number;
  /** A u64 in front of the region that holds its length (safetensors), to keep in step when it grows. */
  readonly lengthField?: number;
}

/** The seven int32 of a llama2.c header. */
export function llama2cFields(): Field[] {
  const names = ['dim', 'hidden_dim', 'n_layers', 'n_heads', 'n_kv_heads', 'vocab_size', 'seq_len'];
  return names.map((what, i) => ({ offset: 4 * i, width: 4, kind: 'dim', what }));
}

/** llama2.c tokenizer: max_token_length, then per token its f32 score and int32 length. */
export function llama2cTokenizerFields(bytes: Uint8Array): Field[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Field[] = [{ offset: 0, width: 4, kind: 'dim', what: 'max_token_length' }];
  for (let off = 4, i = 0; off + 8 <= bytes.length; i++) {
    out.push({ offset: off, width: 4, float: true, kind: 'value', what: `token ${i} score` });
    out.push({ offset: off + 4, width: 4, kind: 'length', what: `token ${i} length` });
    off += 8 + Math.max(0, dv.getInt32(off + 4, true));
  }
  return out;
}

/** safetensors: the u64 header length, and the JSON header after it. */
export function safetensorsLayout(bytes: Uint8Array): { fields: Field[]; json: JsonRegion } {
  const len = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  return { fields: [{ offset: 0, width: 8, kind: 'length', what: 'header length' }], json: { start: 8, end: 8 + len, lengthField: 0 } };
}

const GGUF_SCALAR_BYTES = [1, 1, 2, 2, 4, 4, 4, 1, -1, -1, 8, 8, 8]; // by value type id; -1: string, array

/** Every count, length, type id, dimension and offset in a GGUF header, and where the header ends. */
export function ggufFields(bytes: Uint8Array): { fields: Field[]; headerEnd: number } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fields: Field[] = [{ offset: 4, width: 4, kind: 'version', what: 'version' }];
  let pos = 8;
  const u64 = (kind: Field['kind'], what: string) => {
    fields.push({ offset: pos, width: 8, kind, what });
    const v = Number(dv.getBigUint64(pos, true));
    pos += 8;
    return v;
  };
  const u32 = (kind: Field['kind'], what: string) => {
    fields.push({ offset: pos, width: 4, kind, what });
    const v = dv.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const str = (what: string) => {
    const len = u64('length', `${what} length`); // read first: `pos += u64()` would add to the old pos
    pos += len;
  };
  const value = (type: number, what: string) => {
    if (type === 8) return str(what);
    if (type === 9) {
      const item = u32('type', `${what} item type`);
      const count = u64('count', `${what} count`);
      // Long arrays (the vocabulary) contribute only their first items' lengths.
      for (let i = 0; i < count; i++) {
        if (item === 8 && i >= 16) pos += 8 + Number(dv.getBigUint64(pos, true));
        else value(item, `${what}[${i}]`);
      }
      return;
    }
    pos += GGUF_SCALAR_BYTES[type];
  };
  const nTensors = u64('count', 'tensor count');
  const nKv = u64('count', 'metadata count');
  for (let i = 0; i < nKv; i++) {
    str(`key ${i}`);
    value(u32('type', `key ${i} value type`), `key ${i}`);
  }
  for (let i = 0; i < nTensors; i++) {
    str(`tensor ${i} name`);
    const nDims = u32('count', `tensor ${i} n_dims`);
    for (let d = 0; d < nDims; d++) u64('dim', `tensor ${i} ne[${d}]`);
    u32('type', `tensor ${i} ggml type`);
    u64('offset', `tensor ${i} offset`);
  }
  return { fields, headerEnd: pos };
}
