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
  nHeads: number, group: number, headDim: number, rowStride: number, headStride: number, count: number, scale: number,
): void {
  for (let h = 0; h < nHeads; h++) {
    const qo = qOff + h * headDim;
    const kvo = kvOff + Math.floor(h / group) * headStride;
    let max = -Infinity;
    for (let t = 0; t < count; t++) {
      const ko = kvo + t * rowStride;
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
      const vo = kvo + t * rowStride;
      for (let d = 0; d < headDim; d++) acc[d] += p * valueCache[vo + d];
    }
    const ao = attOff + h * headDim;
    for (let d = 0; d < headDim; d++) att[ao + d] = acc[d] / sum;
  }
}

/** emitExp's constants, each an f32x4 (or i32x4) local set once before a function's loops. */
interface ExpConstants {
  readonly splat: (v: number) => void;
  readonly splatI32: (v: number) => void;
}

const EXP_F32 = [
  -104, 89, Math.LOG2E, 0.693359375, -2.12194440e-4,
  1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1,
  1, 12582912,
];
const EXP_I32 = [127, 0x4b400000];

/**
 * Sets one local per constant of emitExp. V8 rebuilds a splat of a constant at every use (a scalar
 * move and a shuffle); a local is a register or, where the loop needs the registers, one load from
 * the stack.
 */
function hoistExpConstants(f: FuncBuilder): ExpConstants {
  const hoist = (values: number[], push: (v: number) => void) => {
    const locals = new Map<number, number>();
    for (const v of values) {
      const l = f.local(V128);
      push(v);
      f.set(l);
      locals.set(v, l);
    }
    return (v: number) => {
      const l = locals.get(v);
      if (l === undefined) throw new Error(`cpu-ops: ${v} is not one of exp's hoisted constants`);
      f.get(l);
    };
  };
  return {
    splat: hoist(EXP_F32, (v) => f.f32(v).simd(S.f32x4_splat)),
    splatI32: hoist(EXP_I32, (v) => f.i32(v).simd(S.i32x4_splat)),
  };
}

/**
 * Pushes exp(x) (x: a v128 local of f32x4) with Cephes' expf scheme: k = round(x log2 e),
 * r = x - k ln2 (ln2 in two parts, k ln2_hi exact), degree-6 polynomial on |r| <= ln2/2, then
 * times 2^k as 2^(k>>1) 2^(k - (k>>1)) so that subnormal results round once and overflow gives inf.
 * x is first clamped to [-104, 89] (exp is 0 / inf in f32 beyond) with pmax/pmin, x first, which
 * keep a NaN x (one instruction each; V8 spends about seven on f32x4.min/max's NaN and -0 rules). k
 * is an integer in [-151, 129], so k + 1.5 2^23 holds it in its low mantissa bits exactly: an add
 * and an integer subtract instead of i32x4.trunc_sat's saturating sequence.
 */
function emitExp(f: FuncBuilder, c: ExpConstants, x: number, k: number, r: number, p: number, ki: number): void {
  const { splat, splatI32 } = c;
  f.get(x); splat(-104); f.simd(S.f32x4_pmax); splat(89); f.simd(S.f32x4_pmin).set(x);
  f.get(x); splat(Math.LOG2E); f.simd(S.f32x4_mul).simd(S.f32x4_nearest).set(k);
  f.get(x).get(k); splat(0.693359375); f.simd(S.f32x4_mul).simd(S.f32x4_sub);
  f.get(k); splat(-2.12194440e-4); f.simd(S.f32x4_mul).simd(S.f32x4_sub).set(r);
  const coef = EXP_F32.slice(5, 11);
  f.get(r); splat(coef[0]); f.simd(S.f32x4_mul);
  splat(coef[1]); f.simd(S.f32x4_add);
  for (let i = 2; i < coef.length; i++) {
    f.get(r).simd(S.f32x4_mul);
    splat(coef[i]); f.simd(S.f32x4_add);
  }
  f.get(r).get(r).simd(S.f32x4_mul).simd(S.f32x4_mul).get(r).simd(S.f32x4_add);
  splat(1); f.simd(S.f32x4_add).set(p);
  // 2^k1 and 2^k2 as f32 bit patterns (k1 = k >> 1, k2 = k - k1; both in [-75, 65])
  f.get(k); splat(12582912); f.simd(S.f32x4_add); splatI32(0x4b400000); f.simd(S.i32x4_sub).set(ki);
  f.get(p);
  f.get(ki).i32(1).simd(S.i32x4_shr_s); splatI32(127); f.simd(S.i32x4_add).i32(23).simd(S.i32x4_shl);
  f.simd(S.f32x4_mul);
  f.get(ki).get(ki).i32(1).simd(S.i32x4_shr_s).simd(S.i32x4_sub); splatI32(127); f.simd(S.i32x4_add).i32(23).simd(S.i32x4_shl);
  f.simd(S.f32x4_mul);
}

/** i8x16.shuffle lanes picking f32 lanes a, b, c, d of two f32x4 (0-3: the first, 4-7: the second). */
function f32Lanes(...lanes: number[]): number[] {
  return lanes.flatMap((l) => [4 * l, 4 * l + 1, 4 * l + 2, 4 * l + 3]);
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
    const c = hoistExpConstants(f);
    f.get(ptr).get(n).i32(2).op(Op.i32_shl).op(Op.i32_add).set(end);
    f.forLoop(i, () => f.get(ptr), () => f.get(end), 16, () => {
      f.get(i).v128Load().set(x);
      f.get(i);
      emitExp(f, c, x, k, r, p, ki);
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
    const c = hoistExpConstants(f);
    f.get(n).i32(2).op(Op.i32_shl).set(end);
    f.forLoop(i, () => f.i32(0), () => f.get(end), 16, () => {
      f.get(gate).get(i).op(Op.i32_add).tee(off).v128Load().tee(g).simd(S.f32x4_abs).simd(S.f32x4_neg).set(x);
      emitExp(f, c, x, k, r, p, ki);
      f.set(e);
      f.get(off);
      f.get(g);
      c.splat(1); f.get(e).get(g).zero().simd(S.f32x4_ge).simd(S.v128_bitselect).simd(S.f32x4_mul);
      f.get(e); c.splat(1); f.simd(S.f32x4_add).simd(S.f32x4_div);
      f.get(up).get(i).op(Op.i32_add).v128Load().simd(S.f32x4_mul);
      f.v128Store();
    });
    mb.add(f);
  }

  // attention(q, k, v, att, scratch, nHeads, group, headDim, rowStride, headStride, count, scale): the
  // first five are byte addresses (k, v: this layer's cache); see CpuOps.attention. Per kv head, its `group`
  // query heads together, so a key row is read from memory once per group rather than once per head
  // (at long contexts the cache outgrows L2): scores four keys of two heads at a time (eight independent
  // sums, each transposed into one f32x4 per head), the last count % 4 keys one at a time; a softmax
  // per head; then the values in slices of 8, 4 or 1 vectors held in locals over all positions (one
  // store per slice rather than a load and a store per position), each slice's rows read by every head
  // of the group while they sit in cache. Measured and dropped: blocks of 32 positions whose rows are
  // read whole once (the slices' running sums kept in att between blocks), with or without touching
  // each line first: no faster at 512 or 2048 positions.
  {
    const f = new FuncBuilder('attention', [I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, F32]);
    const [q, kBase, vBase, att, scratch, nHeads, group, headDim, rowStride, headStride, count, scale] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const [hk, g, qg, qo, so, ko, vo, t, d, hdB, rowB, headB, cntB, strideB, sums, k1, k2, k3, d0, vt] = f.locals(I32, 20);
    const [max] = f.locals(F32, 1);
    const [acc, x, k, r, p, ki, pv, qv] = f.locals(V128, 8);
    const a = f.locals(V128, 8);
    const [maxv, scalev, qv1, kv] = f.locals(V128, 4);
    const [qo1] = f.locals(I32, 1);
    const c = hoistExpConstants(f);
    const splatF = (v: number) => f.f32(v).simd(S.f32x4_splat);
    /** so = the scores row of head g of the group (at byte t when `at`). */
    const scoresRow = (at: boolean) => {
      f.get(scratch).get(g).get(strideB).op(Op.i32_mul).op(Op.i32_add);
      if (at) f.get(t).op(Op.i32_add);
      f.set(so);
    };
    const queryHead = () => f.get(qg).get(g).get(hdB).op(Op.i32_mul).op(Op.i32_add).set(qo);
    f.get(headDim).i32(2).op(Op.i32_shl).set(hdB);
    f.get(rowStride).i32(2).op(Op.i32_shl).set(rowB);
    f.get(headStride).i32(2).op(Op.i32_shl).set(headB);
    f.get(count).i32(2).op(Op.i32_shl).set(cntB);
    f.get(scale).simd(S.f32x4_splat).set(scalev);
    f.get(count).i32(7).op(Op.i32_add).i32(-4).op(Op.i32_and).i32(2).op(Op.i32_shl).set(strideB); // count + 4 floats of pad, rounded to 4
    f.get(scratch).get(group).get(strideB).op(Op.i32_mul).op(Op.i32_add).set(sums); // then one f32 sum per head
    f.forLoop(hk, () => f.i32(0), () => f.get(nHeads).get(group).op(Op.i32_div_u), 1, () => {
      f.get(q).get(hk).get(group).op(Op.i32_mul).get(hdB).op(Op.i32_mul).op(Op.i32_add).set(qg);
      f.get(kBase).get(hk).get(headB).op(Op.i32_mul).op(Op.i32_add).set(ko);
      f.get(vBase).get(hk).get(headB).op(Op.i32_mul).op(Op.i32_add).set(vo);
      // scores[g][t..t+3] = (q_g . k_t) * scale, four keys per pass, every head of the group
      f.forLoop(t, () => f.i32(0), () => f.get(cntB).i32(12).op(Op.i32_sub), 16, () => {
        f.get(ko).get(rowB).op(Op.i32_add).set(k1);
        f.get(k1).get(rowB).op(Op.i32_add).set(k2);
        f.get(k2).get(rowB).op(Op.i32_add).set(k3);
        // heads in pairs (eight independent sums: one head's four would wait on the add latency), an
        // odd group's last head alone
        const keyQuad = (heads: 1 | 2) => {
          queryHead();
          if (heads === 2) f.get(qo).get(hdB).op(Op.i32_add).set(qo1);
          for (let j = 0; j < 4 * heads; j++) f.zero().set(a[j]);
          f.forLoop(d, () => f.i32(0), () => f.get(hdB), 16, () => {
            f.get(qo).get(d).op(Op.i32_add).v128Load().set(qv);
            if (heads === 2) f.get(qo1).get(d).op(Op.i32_add).v128Load().set(qv1);
            [ko, k1, k2, k3].forEach((row, j) => {
              f.get(row).get(d).op(Op.i32_add).v128Load().set(kv);
              f.get(a[j]).get(qv).get(kv).simd(S.f32x4_mul).simd(S.f32x4_add).set(a[j]);
              if (heads === 2) f.get(a[4 + j]).get(qv1).get(kv).simd(S.f32x4_mul).simd(S.f32x4_add).set(a[4 + j]);
            });
          });
          for (let h = 0; h < heads; h++) {
            const [a0, a1, a2, a3] = a.slice(4 * h, 4 * h + 4);
            // lane j of the result = the sum of a[j]'s lanes: (l0 + l2) + (l1 + l3)
            f.get(a0).get(a1).shuffle(f32Lanes(0, 4, 1, 5)).get(a0).get(a1).shuffle(f32Lanes(2, 6, 3, 7)).simd(S.f32x4_add).set(x);
            f.get(a2).get(a3).shuffle(f32Lanes(0, 4, 1, 5)).get(a2).get(a3).shuffle(f32Lanes(2, 6, 3, 7)).simd(S.f32x4_add).set(k);
            scoresRow(true);
            f.get(so);
            if (h === 1) f.get(strideB).op(Op.i32_add);
            f.get(x).get(k).shuffle(f32Lanes(0, 1, 4, 5)).get(x).get(k).shuffle(f32Lanes(2, 3, 6, 7)).simd(S.f32x4_add);
            f.get(scalev).simd(S.f32x4_mul).v128Store();
          }
        };
        f.forLoop(g, () => f.i32(0), () => f.get(group).i32(1).op(Op.i32_sub), 2, () => keyQuad(2));
        f.get(g).get(group).op(Op.i32_lt_s);
        f.if(() => keyQuad(1));
        f.get(k3).get(rowB).op(Op.i32_add).set(ko);
      });
      // the last count % 4 keys, one at a time (t goes on from the loop above)
      f.forLoop(t, () => f.get(t), () => f.get(cntB), 4, () => {
        f.forLoop(g, () => f.i32(0), () => f.get(group), 1, () => {
          queryHead();
          f.zero().set(acc);
          f.forLoop(d, () => f.i32(0), () => f.get(hdB), 16, () => {
            f.get(acc).get(qo).get(d).op(Op.i32_add).v128Load().get(ko).get(d).op(Op.i32_add).v128Load().simd(S.f32x4_mul).simd(S.f32x4_add).set(acc);
          });
          scoresRow(true);
          f.get(so);
          emitHsum(f, acc);
          f.get(scale).op(Op.f32_mul).mem(Op.f32_store, 2, 0);
        });
        f.get(ko).get(rowB).op(Op.i32_add).set(ko);
      });
      // softmax per head: -inf pads the last f32x4 (so its exp is 0), max, then p = exp(s - max), sum
      f.forLoop(g, () => f.i32(0), () => f.get(group), 1, () => {
        scoresRow(false);
        f.get(so).get(cntB).op(Op.i32_add);
        splatF(-Infinity).v128Store();
        splatF(-Infinity).set(pv);
        f.forLoop(t, () => f.i32(0), () => f.get(cntB), 16, () => {
          // pmax, the running max first: a NaN score is passed over as the JS loop's > does
          f.get(pv).get(so).get(t).op(Op.i32_add).v128Load().simd(S.f32x4_pmax).set(pv);
        });
        f.get(pv).lane(S.f32x4_extract_lane, 0).get(pv).lane(S.f32x4_extract_lane, 1).op(Op.f32_max);
        f.get(pv).lane(S.f32x4_extract_lane, 2).get(pv).lane(S.f32x4_extract_lane, 3).op(Op.f32_max);
        f.op(Op.f32_max).set(max);
        f.get(max).simd(S.f32x4_splat).set(maxv);
        f.zero().set(acc);
        f.forLoop(t, () => f.i32(0), () => f.get(cntB), 16, () => {
          f.get(so).get(t).op(Op.i32_add).v128Load().get(maxv).simd(S.f32x4_sub).set(x);
          f.get(so).get(t).op(Op.i32_add);
          emitExp(f, c, x, k, r, p, ki);
          f.tee(p).v128Store();
          f.get(acc).get(p).simd(S.f32x4_add).set(acc);
        });
        f.get(sums).get(g).i32(2).op(Op.i32_shl).op(Op.i32_add);
        emitHsum(f, acc);
        f.mem(Op.f32_store, 2, 0);
      });
      // att_g = (sum_t p_gt v_t) / sum_g, in slices of 8, then 4, then 1 vectors of the head (each lane
      // sums over t in order, as the JS loop does)
      f.i32(0).set(d0);
      for (const width of [8, 4, 1]) {
        f.forLoop(d0, () => f.get(d0), () => f.get(hdB).i32(16 * (width - 1)).op(Op.i32_sub), 16 * width, () => {
          f.forLoop(g, () => f.i32(0), () => f.get(group), 1, () => {
            scoresRow(false);
            for (let j = 0; j < width; j++) f.zero().set(a[j]);
            f.get(vo).get(d0).op(Op.i32_add).set(vt);
            f.forLoop(t, () => f.i32(0), () => f.get(cntB), 4, () => {
              f.get(so).get(t).op(Op.i32_add).simdMem(S.v128_load32_splat, 2, 0).set(pv);
              for (let j = 0; j < width; j++) {
                f.get(a[j]).get(pv).get(vt).v128Load(16 * j).simd(S.f32x4_mul).simd(S.f32x4_add).set(a[j]);
              }
              f.get(vt).get(rowB).op(Op.i32_add).set(vt);
            });
            f.get(sums).get(g).i32(2).op(Op.i32_shl).op(Op.i32_add).simdMem(S.v128_load32_splat, 2, 0).set(pv);
            // att + ((hk group + g) headDim) floats + d0
            f.get(att).get(hk).get(group).op(Op.i32_mul).get(g).op(Op.i32_add).get(hdB).op(Op.i32_mul).op(Op.i32_add).get(d0).op(Op.i32_add).set(so);
            for (let j = 0; j < width; j++) {
              f.get(so).get(a[j]).get(pv).simd(S.f32x4_div).v128Store(16 * j);
            }
          });
        });
      }
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
    attention(q: number, k: number, v: number, att: number, scratch: number, nHeads: number, group: number, headDim: number, rowStride: number, headStride: number, count: number, scale: number): void;
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
   * Query heads h < nHeads of q[qOff..] against cache positions 0..count-1, head h reading kv head
   * j = floor(h / group), whose position t starts at kvOff + j headStride + t rowStride (floats):
   * att[attOff + h headDim ..] = softmax(q.k scale) V. scratch: alloc()ed with at least
   * attentionScratchFloats(count, group) floats. headDim must be a multiple of 4.
   */
  attention(
    q: Float32Array, qOff: number, keyCache: Float32Array, valueCache: Float32Array, kvOff: number,
    att: Float32Array, attOff: number, scratch: Float32Array,
    nHeads: number, group: number, headDim: number, rowStride: number, headStride: number, count: number, scale: number,
  ): void {
    this.fns.attention(q.byteOffset + qOff * 4, keyCache.byteOffset + kvOff * 4, valueCache.byteOffset + kvOff * 4, att.byteOffset + attOff * 4, scratch.byteOffset, nHeads, group, headDim, rowStride, headStride, count, scale);
  }
}

/** Floats CpuOps.attention's scratch needs: per head of a group, count scores and a pad, then its sums. */
export function attentionScratchFloats(count: number, group: number): number {
  return group * paddedFloats(count) + group;
}

/** n rounded up to a multiple of 4, plus 4: room for a SIMD tail and the -inf pad of the scores. */
function paddedFloats(n: number): number {
  return Math.ceil(n / 4) * 4 + 4;
}
