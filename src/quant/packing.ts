// The canonical index layout every file stores and every backend starts from (backends repack into
// their own layouts inside prepare()). Row-major over N; within a row, K indices of `bits` bits each
// are packed LSB-first into a bit stream: index k occupies bits [k*b, k*b + b) of the row, bit j of
// the stream being bit (j % 8) of byte floor(j / 8). Each row starts on a byte boundary, so a row
// takes ceil(K*b/8) bytes and the unused high bits of its last byte are zero.

import { FluteError } from '../errors.js';

/** Bytes one row of K b-bit indices takes in the canonical layout. */
export function packedRowBytes(k: number, bits: number): number {
  return Math.ceil((k * bits) / 8);
}

/**
 * Packs indices [N, K] (one per byte) into the canonical layout. Throws E_OPTION naming `what` when
 * an index does not fit in `bits` bits, rather than silently truncating it.
 */
export function packIndices(indices: Uint8Array, n: number, k: number, bits: number, what = 'indices'): Uint8Array {
  if (indices.length !== n * k) {
    throw new FluteError('E_SHAPE', `${what}: expected ${n}x${k} = ${n * k} indices, got ${indices.length}`);
  }
  const rowBytes = packedRowBytes(k, bits);
  const out = new Uint8Array(n * rowBytes);
  const limit = 1 << bits;
  for (let r = 0; r < n; r++) {
    const src = r * k;
    const dst = r * rowBytes;
    let acc = 0; // bit accumulator (at most 15 live bits)
    let nacc = 0;
    let o = dst;
    for (let c = 0; c < k; c++) {
      const v = indices[src + c];
      if (v >= limit) {
        throw new FluteError('E_OPTION', `${what}: index ${v} at row ${r}, column ${c} does not fit in ${bits} bits`);
      }
      acc |= v << nacc;
      nacc += bits;
      while (nacc >= 8) {
        out[o++] = acc & 0xff;
        acc >>>= 8;
        nacc -= 8;
      }
    }
    if (nacc > 0) out[o] = acc & 0xff;
  }
  return out;
}

/** Unpacks the canonical layout back to one index per byte, [N, K]. */
export function unpackIndices(packed: Uint8Array, n: number, k: number, bits: number): Uint8Array {
  const rowBytes = packedRowBytes(k, bits);
  if (packed.length !== n * rowBytes) {
    throw new FluteError('E_SHAPE', `packed indices: expected ${n * rowBytes} bytes for ${n}x${k} at ${bits} bits, got ${packed.length}`);
  }
  const out = new Uint8Array(n * k);
  const mask = (1 << bits) - 1;
  for (let r = 0; r < n; r++) {
    let i = r * rowBytes;
    let acc = 0;
    let nacc = 0;
    const dst = r * k;
    for (let c = 0; c < k; c++) {
      while (nacc < bits) {
        acc |= packed[i++] << nacc;
        nacc += 8;
      }
      out[dst + c] = acc & mask;
      acc >>>= bits;
      nacc -= bits;
    }
  }
  return out;
}

/** Reads the index at (row, col) straight from the canonical layout (for spot checks and the ref kernel). */
export function indexAt(packed: Uint8Array, rowBytes: number, bits: number, row: number, col: number): number {
  const bit = col * bits;
  const byte = row * rowBytes + (bit >>> 3);
  const shift = bit & 7;
  // An index spans at most two bytes (bits <= 8).
  const word = packed[byte] | (shift + bits > 8 ? packed[byte + 1] << 8 : 0);
  return (word >>> shift) & ((1 << bits) - 1);
}
