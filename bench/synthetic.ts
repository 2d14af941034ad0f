// Synthetic LLaMA models with real shapes and random weights, made on the fly: the speed and memory
// of quantizing and running a model do not depend on the weights' values.

import type { LlamaConfig } from '../src/model/config.js';
import { llamaTensorSpecs } from '../src/model/weights.js';
import { FluteError } from '../src/errors.js';
import { DTYPE_BYTES, numel, type TensorInfo, type TensorReader } from '../src/format/tensors.js';

export function syntheticConfig(over: Partial<LlamaConfig> & Pick<LlamaConfig, 'dim' | 'hiddenDim' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'vocabSize'>): LlamaConfig {
  return { seqLen: 2048, normEps: 1e-5, ropeTheta: 10000, ropeLayout: 'interleaved', tiedEmbeddings: true, headDim: over.dim / over.nHeads, ...over };
}

/** A TensorReader whose tensors are N(0, 0.02^2)-ish noise (norms are 1), generated per read. */
export function syntheticReader(config: LlamaConfig, seed = 1): TensorReader {
  let offset = 0;
  const infos: TensorInfo[] = llamaTensorSpecs(config).map((s) => {
    const byteLength = numel(s.shape) * DTYPE_BYTES.F32;
    const t = { name: s.name, dtype: 'F32' as const, shape: s.shape, offset, byteLength };
    offset += byteLength;
    return t;
  });
  const byName = new Map(infos.map((t) => [t.name, t]));
  const info = (name: string) => {
    const t = byName.get(name);
    if (!t) throw new FluteError('E_NOT_FOUND', `<synthetic>: no tensor "${name}"`);
    return t;
  };
  const readF32 = async (name: string) => {
    const t = info(name);
    const out = new Float32Array(numel(t.shape));
    if (/norm/.test(name)) return out.fill(1);
    let s = (seed * 2654435761 + t.offset) >>> 0;
    for (let i = 0; i < out.length; i++) {
      // xorshift32 mapped to a symmetric triangular distribution (sum of two uniforms), std ~0.02
      s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
      out[i] = (((s & 0xffff) + (s >>> 16)) / 65536 - 1) * 0.049;
    }
    return out;
  };
  return {
    file: '<synthetic>',
    list: () => infos,
    info,
    has: (name) => byName.has(name),
    readF32,
    async readRaw(name) {
      const f = await readF32(name);
      return new Uint8Array(f.buffer);
    },
    close: async () => {},
  };
}
