// The common view of a weights file that the model loader and quantizer read through, whatever the
// container (llama2.c .bin, safetensors, later GGUF): named tensors with shapes, read one at a time.
// Tensor names follow Hugging Face LLaMA naming (model.layers.{i}.self_attn.q_proj.weight ...).

import { FluteError } from '../errors.js';
import type { ByteSource } from './source.js';

/** Element types, with ids that are never reused. */
export type Dtype = 'F32' | 'F16' | 'BF16' | 'I8' | 'U8' | 'I16' | 'U16' | 'I32' | 'U32' | 'I64' | 'U64' | 'F64' | 'BOOL';

export const DTYPE_BYTES: Record<Dtype, number> = {
  F64: 8, I64: 8, U64: 8, F32: 4, I32: 4, U32: 4, F16: 2, BF16: 2, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1,
};

export interface TensorInfo {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  /** Absolute byte offset of the data in the file. */
  readonly offset: number;
  readonly byteLength: number;
  /** How the bytes are stored when that is not `dtype` itself: a GGUF block type ("Q4_0", "IQ4_NL",
   * "Q8_0"...) whose readF32 dequantizes; `dtype` then says what readF32 yields. */
  readonly storage?: string;
}

export interface TensorReader {
  /** The file (or URL, or "<memory>") the tensors come from, for error messages. */
  readonly file: string;
  list(): readonly TensorInfo[];
  /** Throws E_NOT_FOUND naming the tensor and the file. */
  info(name: string): TensorInfo;
  has(name: string): boolean;
  /** The tensor's raw little-endian bytes. */
  readRaw(name: string): Promise<Uint8Array>;
  /** The tensor converted to f32 (from F32, F16 or BF16); other dtypes throw E_UNSUPPORTED_DTYPE. */
  readF32(name: string): Promise<Float32Array>;
  close(): Promise<void>;
}

/**
 * A config claiming more layers than the file has tensors is refused before anything loops over the
 * layer count (a damaged count of 2^24 layers would otherwise build 150M tensor specs first). The bound
 * is one tensor per layer, though every layer has nine: the tensor count is bounded by the file size,
 * and a smaller lie still opens and is named by the loader when it finds the layer's tensors missing.
 */
export function checkLayerCount(file: string, what: string, nLayers: number, tensorCount: number): void {
  if (nLayers > tensorCount) {
    throw new FluteError('E_NOT_FOUND', `${file}: ${what} is ${nLayers}, but the weights hold only ${tensorCount} tensors (at least 9 per layer)`);
  }
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Name lookup and raw reads over tensors stored at known offsets of one source (every container's core). */
export function tensorTable<T extends { readonly name: string; readonly offset: number; readonly byteLength: number }>(
  src: ByteSource,
  list: readonly T[],
): { info(name: string): T; has(name: string): boolean; readRaw(name: string): Promise<Uint8Array> } {
  const byName = new Map(list.map((t) => [t.name, t]));
  const info = (name: string): T => {
    const t = byName.get(name);
    if (!t) throw new FluteError('E_NOT_FOUND', `${src.name}: no tensor "${name}"`);
    return t;
  };
  return {
    info,
    has: (name) => byName.has(name),
    readRaw: (name) => {
      const t = info(name);
      return src.read(t.offset, t.byteLength);
    },
  };
}
