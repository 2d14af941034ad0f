// The non-matmul hot loops of a decoder layer (SwiGLU and one token's attention against the KV cache)
// as a small WebAssembly SIMD module over one memory that also holds the buffers they read, so no call
// copies anything; the plain JS loops here are the specification and the fallback.

import { F32, FuncBuilder, I32, ModuleBuilder, Op, S, V128 } from '../kernels/wasm/encoder.js';

/** silu(gate[j]) * up[j] into gate[j] for j < n (JS spec: f64 arithmetic, stored as f32). */
export function swigluJs(gate: Float32Array, up: Float32Array, n: number): void {
  for (let j = 0; j < n; j++) {
    const g = gate[j];
    gate[j] = (g / (1 + Math.exp(-g))) * up[j];
  }
}

/** One token's attention, every query head: see attention() in CpuOps for the arguments. */
export function attentionJs(
  q: Float32Array, qOff: number, keyCache: Float32Array, valueCache: Float32Array, kvOff: number,
  att: Float32Array, attOff: number, scores: Float64Array, acc: Float64Array,
  nHeads: number, group: number, headDim: number, kvDim: number, count: number, scale: number,
): void {
  for (let h = 0; h < nHeads; h++) {
    const qo = qOff + h * headDim;
    const kvo = kvOff + Math.floor(h / group) * headDim;
    let max = -Infinity;
    for (let t = 0; t < count; t++) {
      const ko = kvo + t * kvDim;
      let dot = 0;
      for (let d = 0; d < headDim; d++) dot += q[qo + d] * keyCache[ko + d];
      scores[t] = dot * scale;
      if (scores[t] > max) max = scores[t];
    }
    let sum = 0;
    for (let t = 0; t < count; t++) sum += scores[t] = Math.exp(scores[t] - max);
    // t outer, d inner: the cache is read along its rows; each d still sums over t in order
    acc.fill(0, 0, headDim);
    for (let t = 0; t < count; t++) {
      const p = scores[t];
      const vo = kvo + t * kvDim;
      for (let d = 0; d < headDim; d++) acc[d] += p * valueCache[vo + d];
    }
    const ao = attOff + h * headDim;
    for (let d = 0; d < headDim; d++) att[ao + d] = acc[d] / sum;
  }
}

/**
 * Pushes exp(x) (x: a v128 local of f32x4) with Cephes' expf scheme: k = round(x log2 e),
 * r = x - k ln2 (ln2 in two parts, k ln2_hi exact), degree-6 polynomial on |r| <= ln2/2, then
 * times 2^k as 2^(k>>1) 2^(k - (k>>1)) so that subnormal results round once and overflow gives inf.
 * x is first clamped to [-104, 89] (exp is 0 / inf in f32 beyond); min/max keep NaN.
 */
function emitExp(f: FuncBuilder, x: number, k: number, r: number, p: number, ki: number): void {
  const splat = (v: number) => f.f32(v).simd(S.f32x4_splat);
  f.get(x); splat(-104).simd(S.f32x4_max); splat(89).simd(S.f32x4_min).set(x);
  f.get(x); splat(Math.LOG2E).simd(S.f32x4_mul).simd(S.f32x4_nearest).set(k);
  f.get(x).get(k); splat(0.693359375).simd(S.f32x4_mul).simd(S.f32x4_sub);
  f.get(k); splat(-2.12194440e-4).simd(S.f32x4_mul).simd(S.f32x4_sub).set(r);
  const coef = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
  splat(coef[0]);
  for (let i = 1; i < coef.length; i++) {
    f.get(r).simd(S.f32x4_mul);
    splat(coef[i]).simd(S.f32x4_add);
  }
  f.get(r).get(r).simd(S.f32x4_mul).simd(S.f32x4_mul).get(r).simd(S.f32x4_add);
  splat(1).simd(S.f32x4_add).set(p);
  // 2^k1 and 2^k2 as f32 bit patterns (k1 = k >> 1, k2 = k - k1; both in [-75, 65])
  f.get(k).simd(S.i32x4_trunc_sat_f32x4_s).set(ki);
  f.get(p);
  f.get(ki).i32(1).simd(S.i32x4_shr_s).i32(127).simd(S.i32x4_splat).simd(S.i32x4_add).i32(23).simd(S.i32x4_shl);
  f.simd(S.f32x4_mul);
  f.get(ki).get(ki).i32(1).simd(S.i32x4_shr_s).simd(S.i32x4_sub).i32(127).simd(S.i32x4_splat).simd(S.i32x4_add).i32(23).simd(S.i32x4_shl);
  f.simd(S.f32x4_mul);
}

/** Pushes the f32 sum of a v128 local's lanes, (l0 + l1) + (l2 + l3). */
function emitHsum(f: FuncBuilder, v: number): void {
  f.get(v).lane(S.f32x4_extract_lane, 0).get(v).lane(S.f32x4_extract_lane, 1).op(Op.f32_add);
  f.get(v).lane(S.f32x4_extract_lane, 2).get(v).lane(S.f32x4_extract_lane, 3).op(Op.f32_add);
  f.op(Op.f32_add);
}

function buildModule(pages: number): Uint8Array<ArrayBuffer> {
  const mb = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: pages, maximumPages: pages, shared: false });

  // exp(n) over f32x4 in place: (ptr, count of floats, multiple of 4) — used by the tests for the ulp sweep
  {
    const f = new FuncBuilder('exp', [I32, I32]);
    const [ptr, n] = [0, 1];
    const [i, end] = f.locals(I32, 2);
    const [x, k, r, p, ki] = f.locals(V128, 5);
    f.get(ptr).get(n).i32(2).op(Op.i32_shl).op(Op.i32_add).set(end);
    f.forLoop(i, () => f.get(ptr), () => f.get(end), 16, () => {
      f.get(i).v128Load().set(x);
      f.get(i);
      emitExp(f, x, k, r, p, ki);
      f.v128Store();
    });
    mb.add(f);
  }

  // swiglu(gate, up, n): gate[j] = silu(g) up[j] with e = exp(-|g|): g / (1 + e) for g >= 0 and
  // g e / (1 + e) below, so that exp never overflows where the JS path's f64 exp does not (silu(-95)
  // is a normal f32); runs ceil(n/4)*4 lanes (buffers are padded)
  {
    const f = new FuncBuilder('swiglu', [I32, I32, I32]);
    const [gate, up, n] = [0, 1, 2];
    const [i, end, off] = f.locals(I32, 3);
    const [g, x, k, r, p, ki, e] = f.locals(V128, 7);
    f.get(n).i32(2).op(Op.i32_shl).set(end);
    f.forLoop(i, () => f.i32(0), () => f.get(end), 16, () => {
      f.get(gate).get(i).op(Op.i32_add).tee(off).v128Load().tee(g).simd(S.f32x4_abs).simd(S.f32x4_neg).set(x);
      emitExp(f, x, k, r, p, ki);
      f.set(e);
      f.get(off);
      f.get(g);
      f.f32(1).simd(S.f32x4_splat).get(e).get(g).zero().simd(S.f32x4_ge).simd(S.v128_bitselect).simd(S.f32x4_mul);
      f.get(e).f32(1).simd(S.f32x4_splat).simd(S.f32x4_add).simd(S.f32x4_div);
      f.get(up).get(i).op(Op.i32_add).v128Load().simd(S.f32x4_mul);
      f.v128Store();
    });
    mb.add(f);
  }

  // attention(q, k, v, att, scores, nHeads, group, headDim, kvDim, count, scale): the first five are
  // byte addresses (k, v: this layer's first cache row); see CpuOps.attention
  {
    const f = new FuncBuilder('attention', [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, F32]);
    const [q, kBase, vBase, att, scores, nHeads, group, headDim, kvDim, count, scale] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    const [h, qo, ko, vo, ao, t, d, hdB, rowB, cntB] = f.locals(I32, 10);
    const [max, sum] = f.locals(F32, 2);
    const [acc, x, k, r, p, ki, pv] = f.locals(V128, 7);
    f.get(headDim).i32(2).op(Op.i32_shl).set(hdB);
    f.get(kvDim).i32(2).op(Op.i32_shl).set(rowB);
    f.get(count).i32(2).op(Op.i32_shl).set(cntB);
    f.forLoop(h, () => f.i32(0), () => f.get(nHeads), 1, () => {
      f.get(q).get(h).get(hdB).op(Op.i32_mul).op(Op.i32_add).set(qo);
      f.get(att).get(h).get(hdB).op(Op.i32_mul).op(Op.i32_add).set(ao);
      // scores[t] = (q . k_t) * scale, one f32x4 accumulator per t
      f.f32(-Infinity).set(max);
      f.get(kBase).get(h).get(group).op(Op.i32_div_u).get(hdB).op(Op.i32_mul).op(Op.i32_add).set(ko);
      f.forLoop(t, () => f.i32(0), () => f.get(cntB), 4, () => {
        f.zero().set(acc);
        f.forLoop(d, () => f.i32(0), () => f.get(hdB), 16, () => {
          f.get(acc).get(qo).get(d).op(Op.i32_add).v128Load().get(ko).get(d).op(Op.i32_add).v128Load().simd(S.f32x4_mul).simd(S.f32x4_add).set(acc);
        });
        f.get(scores).get(t).op(Op.i32_add);
        emitHsum(f, acc);
        f.get(scale).op(Op.f32_mul).mem(Op.f32_store, 2, 0);
        f.get(max).get(scores).get(t).op(Op.i32_add).f32Load().op(Op.f32_max).set(max);
        f.get(ko).get(rowB).op(Op.i32_add).set(ko);
      });
      // pad the tail of the last f32x4 with -inf so that its exp is 0
      f.get(scores).get(cntB).op(Op.i32_add).f32(-Infinity).simd(S.f32x4_splat).v128Store();
      f.zero().set(acc);
      f.forLoop(t, () => f.i32(0), () => f.get(cntB), 16, () => {
        f.get(scores).get(t).op(Op.i32_add).v128Load().get(max).simd(S.f32x4_splat).simd(S.f32x4_sub).set(x);
        f.get(scores).get(t).op(Op.i32_add);
        emitExp(f, x, k, r, p, ki);
        f.tee(p).v128Store();
        f.get(acc).get(p).simd(S.f32x4_add).set(acc);
      });
      emitHsum(f, acc);
      f.set(sum);
      // att = sum_t p_t v_t, accumulated in place, then / sum
      f.forLoop(d, () => f.i32(0), () => f.get(hdB), 16, () => {
        f.get(ao).get(d).op(Op.i32_add).zero().v128Store();
      });
      f.get(vBase).get(h).get(group).op(Op.i32_div_u).get(hdB).op(Op.i32_mul).op(Op.i32_add).set(vo);
      f.forLoop(t, () => f.i32(0), () => f.get(cntB), 4, () => {
        f.get(scores).get(t).op(Op.i32_add).simdMem(S.v128_load32_splat, 2, 0).set(pv);
        f.forLoop(d, () => f.i32(0), () => f.get(hdB), 16, () => {
          f.get(ao).get(d).op(Op.i32_add);
          f.get(ao).get(d).op(Op.i32_add).v128Load();
          f.get(pv).get(vo).get(d).op(Op.i32_add).v128Load().simd(S.f32x4_mul).simd(S.f32x4_add);
          f.v128Store();
        });
        f.get(vo).get(rowB).op(Op.i32_add).set(vo);
      });
      f.forLoop(d, () => f.i32(0), () => f.get(hdB), 16, () => {
        f.get(ao).get(d).op(Op.i32_add);
        f.get(ao).get(d).op(Op.i32_add).v128Load().get(sum).simd(S.f32x4_splat).simd(S.f32x4_div);
        f.v128Store();
      });
    });
    mb.add(f);
  }
  return mb.encode();
}

const PAGE = 65536;
/** Largest memory used (2 GiB): byte addresses stay below 2^31, so the module's signed loop compares hold. */
const MAX_BYTES = 2 ** 31;

/** Float32Array views over one WebAssembly memory and the SIMD ops that read them by byte address. */
export class CpuOps {
  private next = 0;
  private readonly fns: {
    exp(ptr: number, n: number): void;
    swiglu(gate: number, up: number, n: number): void;
    attention(q: number, k: number, v: number, att: number, scores: number, nHeads: number, group: number, headDim: number, kvDim: number, count: number, scale: number): void;
  };

  private constructor(readonly memory: WebAssembly.Memory, instance: WebAssembly.Instance) {
    this.fns = instance.exports as unknown as CpuOps['fns'];
  }

  /**
   * A memory for buffers of `sizes` f32 each (each rounded up to 4 floats plus 4 of padding, see
   * alloc) and its module; null when WebAssembly SIMD is missing or the memory is too large or
   * cannot be had.
   */
  static create(sizes: readonly number[]): CpuOps | null {
    if (typeof WebAssembly === 'undefined') return null;
    let bytes = 0;
    for (const n of sizes) bytes += paddedFloats(n) * 4;
    if (bytes > MAX_BYTES) return null;
    const pages = Math.max(1, Math.ceil(bytes / PAGE));
    try {
      // Compiled synchronously: the module is ~1.6 KB, under the 4 KB Chrome allows on the main thread
      const code = buildModule(pages);
      if (!WebAssembly.validate(code)) return null;
      const memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
      const instance = new WebAssembly.Instance(new WebAssembly.Module(code), { env: { memory } });
      return new CpuOps(memory, instance);
    } catch {
      return null;
    }
  }

  /** A zeroed view of n floats, 16-byte aligned, followed by padding that SIMD tails may overwrite. */
  alloc(n: number): Float32Array {
    const out = new Float32Array(this.memory.buffer, this.next, n);
    this.next += paddedFloats(n) * 4;
    return out;
  }

  /** exp of a[0..n) in place (n a multiple of 4); the approximation swiglu and attention use. */
  exp(a: Float32Array, n: number): void {
    this.fns.exp(a.byteOffset, n);
  }

  /** gate[j] = silu(gate[j]) * up[j] for j < n; gate and up from alloc(). */
  swiglu(gate: Float32Array, up: Float32Array, n: number): void {
    this.fns.swiglu(gate.byteOffset, up.byteOffset, n);
  }

  /**
   * Query heads h < nHeads of q[qOff..] against cache rows 0..count-1 starting at kvOff (row stride
   * kvDim), head h reading kv head floor(h / group): att[attOff + h headDim ..] = softmax(q.k scale) V.
   * scores: alloc()ed with at least count + 4 floats. headDim must be a multiple of 4.
   */
  attention(
    q: Float32Array, qOff: number, keyCache: Float32Array, valueCache: Float32Array, kvOff: number,
    att: Float32Array, attOff: number, scores: Float32Array,
    nHeads: number, group: number, headDim: number, kvDim: number, count: number, scale: number,
  ): void {
    this.fns.attention(q.byteOffset + qOff * 4, keyCache.byteOffset + kvOff * 4, valueCache.byteOffset + kvOff * 4, att.byteOffset + attOff * 4, scores.byteOffset, nHeads, group, headDim, kvDim, count, scale);
  }
}

/** n rounded up to a multiple of 4, plus 4: room for a SIMD tail and the -inf pad of the scores. */
function paddedFloats(n: number): number {
  return Math.ceil(n / 4) * 4 + 4;
}
