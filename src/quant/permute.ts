// Row permutations of a linear layer, dense or quantized (rows of packed indices and scales move whole,
// so a quantized layer stays bit-exact), and the one every converter needs: the q/k projection rows
// between Meta's interleaved RoPE layout (GGUF, llama2.c) and Hugging Face's half-rotation layout.

import { FluteError } from '../errors.js';
import type { RopeLayout } from '../model/config.js';
import { groupsPerRow, type Linear } from './linear.js';
import { packedRowBytes } from './packing.js';

/** out row r = in row perm[r]. */
export function permuteRows(layer: Linear, perm: Int32Array, name = 'layer'): Linear {
  if (perm.length !== layer.n) throw new FluteError('E_SHAPE', `${name}: a row permutation of ${perm.length} entries for ${layer.n} rows`);
  const copyRows = <T extends Float32Array | Uint8Array>(src: T, width: number, make: (n: number) => T): T => {
    const out = make(src.length);
    for (let r = 0; r < perm.length; r++) out.set(src.subarray(perm[r] * width, perm[r] * width + width), r * width);
    return out;
  };
  if (layer.kind === 'dense') return { ...layer, weight: copyRows(layer.weight, layer.k, (n) => new Float32Array(n)) };
  return {
    ...layer,
    scales: copyRows(layer.scales, groupsPerRow(layer.k, layer.groupSize), (n) => new Float32Array(n)),
    packed: copyRows(layer.packed, packedRowBytes(layer.k, layer.bits), (n) => new Uint8Array(n)),
  };
}

/**
 * The row order that turns a q or k projection ([heads * headDim, K]) from layout `from` into `to`.
 * Within a head, interleaved row 2i + c is half-layout row c * headDim/2 + i (c = 0, 1), as Meta's
 * convert_llama_weights_to_hf.py and llama.cpp's convert_hf_to_gguf.py permute them.
 */
export function ropePermutation(heads: number, headDim: number, from: RopeLayout, to: RopeLayout): Int32Array {
  const perm = new Int32Array(heads * headDim);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let c = 0; c < 2; c++) {
        const inter = h * headDim + 2 * i + c;
        const halfRow = h * headDim + c * half + i;
        if (from === to) perm[inter] = inter;
        else if (to === 'interleaved') perm[inter] = halfRow; // out interleaved row <- in half row
        else perm[halfRow] = inter; // out half row <- in interleaved row
      }
    }
  }
  return perm;
}
