// Generates the wasm backend's kernel module: LUT matmul kernels for layout bits 2, 3, 4 (exact f32
// and integer-activation paths), a dense f32 kernel, a scalar generic LUT kernel, and `work(tid)`,
// which reads the job block in shared memory and runs the job's kernel on runs of row quads it takes
// from a shared counter until none are left. One module per variant (SIMD128, or SIMD128 + relaxed
// SIMD, which also exports probe_dot for index.ts); layouts are in layout.ts.
//
// Every kernel has the signature (rq0, rq1) -> () and reads its parameters from the job block; it
// loops over its row quads, then over activation tiles of up to MT rows (bodies specialised for tile
// sizes 1..MT so a decoded weight vector is reused by every row of the tile: GEMV at M=1, a small
// GEMM for M>1, never M separate GEMVs), then over groups and 32-k chunks, fully unrolled inside a chunk.

import { FluteError } from '../../errors.js';
import { A, F32, FuncBuilder, I32, ModuleBuilder, Op, S, V128, type MemoryImport } from './encoder.js';
import { CHUNK, chunkBytes } from './layout.js';
import { CTRL } from './threads.js';

// ---------------------------------------------------------------------------------------------
// The job block: kernel parameters, written by the calling thread before it releases the workers

/** Byte address of the job block (the control words of threads.ts sit below it). */
export const JOB_ADDR = 256;

/**
 * Byte addresses of the two control words `work` updates (threads.ts CTRL): units not yet taken,
 * counted down by every taker, and units computed, counted up.
 */
export const LEFT_ADDR = 4 * CTRL.left;
export const FINISHED_ADDR = 4 * CTRL.finished;

/** i32 word indices in the job block. */
export const J = {
  fn: 0, // kernel id (FN)
  threads: 1, // threads taking part (informational: work() takes runs from the counter, any thread any run)
  units: 2, // row quads (rows for the generic kernel) of the job
  w: 3, // weights
  s: 4, // scales
  table: 5, // byte planes (exact) / 16-byte codebook (int) / f32[256] table (generic)
  x: 6, // activations (tiles; plain [M][K] f32 for generic)
  p: 7, // per-(block,row) activation params (int paths)
  y: 8, // output [M][yStride/4] f32
  m: 9, // M
  groups: 10, // G
  inner: 11, // exact: chunks per group; int: chunks per activation block; dense: padded K / 4
  blocks: 12, // int: activation blocks per group
  quadBytes: 13, // weight bytes per row quad (per row for generic)
  yStride: 14, // bytes between output rows
  k: 15, // K (generic)
  groupSize: 16, // g (generic)
  kp: 17, // padded K of the activation tiles (elements)
  n: 18, // N (generic: rows to skip past N)
  grab: 19, // units a thread takes at a time from the counter at LEFT_ADDR
} as const;
export const JOB_WORDS = 32;

/** Tile sizes (rows of M per pass) per kernel family. */
export const MT = { int: 4, exact: 4, dense: 4 } as const;

/** Kernel ids, in the order `work` dispatches them. */
export const FN = {
  exact2: 0,
  exact3: 1,
  exact4: 2,
  int2: 3,
  int3: 4,
  int4: 5,
  dense: 6,
  generic: 7,
  // Relaxed modules only: the SIMD128 integer kernels (int16 activations x 8-bit codes), for layers whose
  // table the 7-bit codebook represents too coarsely (index.ts intPathFor).
  wide2: 8,
  wide3: 9,
  wide4: 10,
  // The integer kernels specialised for one chunk per group and activation block (g <= 32; lutIntKernel's
  // `flat`), then the same for the SIMD128 ones of relaxed modules.
  int2f: 11,
  int3f: 12,
  int4f: 13,
  wide2f: 14,
  wide3f: 15,
  wide4f: 16,
  // Relaxed modules only: the integer kernels for tables whose 7-bit codes are index + c0 (lutIntKernel's
  // `affine`: 'int' tables, GGUF Q4_0), general and flat.
  affine2: 17,
  affine3: 18,
  affine4: 19,
  affine2f: 20,
  affine3f: 21,
  affine4f: 22,
  // Modules with f16 (KernelVariant.f16) only: the flat kernels of each family for layers in the
  // records layout (layout.ts packF16Records: each group's chunk followed by its rows' four f16 scales).
  exact2h: 23,
  exact3h: 24,
  exact4h: 25,
  int2h: 26,
  int3h: 27,
  int4h: 28,
  wide2h: 29,
  wide3h: 30,
  wide4h: 31,
  affine2h: 32,
  affine3h: 33,
  affine4h: 34,
} as const;
export type KernelId = (typeof FN)[keyof typeof FN];

/**
 * The integer kernel for layout bits `bits` of a family: 'int' (the module's own), 'wide' (a relaxed
 * module's SIMD128 ones), 'affine' (relaxed, codes = index + c0); the `flat` one where `flat`, the
 * one for the records layout (always flat) where `records`.
 */
export function intKernelId(family: 'int' | 'wide' | 'affine', bits: 2 | 3 | 4, flat: boolean, records = false): KernelId {
  return FN[`${family}${bits}${records ? 'h' : flat ? 'f' : ''}`];
}

export interface KernelVariant {
  /** Use relaxed SIMD (relaxed_swizzle, relaxed int8 dot, relaxed_madd). */
  readonly relaxed: boolean;
  /**
   * Relaxed int8 dot as one i32x4.relaxed_dot_i8x16_i7x16_add_s ('fused'), or as i16x8.relaxed_dot +
   * i32x4.extadd_pairwise_i16x8_s + i32x4.add ('split': the same three x64 instructions without
   * VNNI, and it avoids V8 11.3 Liftoff's wrong code for the fused form, whose temporary register
   * may alias the accumulator).
   */
  readonly dot?: 'fused' | 'split';
  /**
   * The host has the fp16 proposal's f32x4.promote_low_f16x8 (one vcvtph2ps on x64): the module then
   * also has the records-layout kernels, which read a group's four f16 scales from the weight stream.
   */
  readonly f16?: boolean;
}

/** The memory import every variant declares: any memory up to 4 GiB matches it (shared when threads are possible). */
export function memoryImport(shared: boolean): MemoryImport {
  return { module: 'env', name: 'memory', initialPages: 1, maximumPages: 65536, shared };
}

// ---------------------------------------------------------------------------------------------
// Shared emit helpers

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Pushes job word `w` (an i32) on the stack. */
function job(f: FuncBuilder, w: number): void {
  f.i32(0).i32Load(JOB_ADDR + 4 * w);
}

/** local = local + c */
function bump(f: FuncBuilder, local: number, c: number): void {
  f.get(local).i32(c).op(Op.i32_add).set(local);
}

/** s4 = the row quad's scales of its next group (one v128 of 4 f32 at local `s`); advances s. */
function nextGroupScales(f: FuncBuilder, s: number, s4: number): void {
  f.get(s).v128Load(0).set(s4);
  bump(f, s, 16);
}

/** s4 = the four f16 scales at w + offset as f32 (exact): the records layout's scales of a group. */
function recordScales(f: FuncBuilder, w: number, offset: number, s4: number): void {
  f.get(w).simdMem(S.v128_load64_zero, 3, offset).simd(S.f32x4_promote_low_f16x8).set(s4);
}

/**
 * Emits the decode of one chunk's 8 index vectors from the weights at local `w`, calling `use(j)` as
 * soon as IV_j (in local `iv`) is ready, so each lives briefly; leaves `w` advanced past the chunk.
 * Pointers are bumped rather than addressed with many constant offsets: V8 keeps memory_base + offset
 * in a register per distinct offset, and a GEMM body with dozens of them spills.
 */
function emitIndexVectors(f: FuncBuilder, bits: 2 | 3 | 4, w: number, masks: Masks, use: (j: number) => void, iv: number): void {
  const raw = masks.raw;
  if (bits === 4) {
    for (let v = 0; v < 4; v++) {
      f.get(w).v128Load(0).set(raw);
      bump(f, w, 16);
      f.get(raw).get(masks.m0f).simd(S.v128_and).set(iv);
      use(2 * v);
      f.get(raw).i32(4).simd(S.i16x8_shr_u).get(masks.m0f).simd(S.v128_and).set(iv);
      use(2 * v + 1);
    }
    return;
  }
  if (bits === 3) f.get(w).v128Load(32).set(masks.hi);
  for (let v = 0; v < 2; v++) {
    f.get(w).v128Load(0).set(raw);
    bump(f, w, 16);
    for (let s = 0; s < 4; s++) {
      const j = 4 * v + s;
      f.get(raw);
      if (s > 0) f.i32(2 * s).simd(S.i16x8_shr_u);
      f.get(masks.m03).simd(S.v128_and);
      if (bits === 3) {
        // bit j of the high plane -> bit 2; the i16 shift's spill-over from the other byte is masked off
        f.get(masks.hi);
        if (j < 2) f.i32(2 - j).simd(S.i16x8_shl);
        else if (j > 2) f.i32(j - 2).simd(S.i16x8_shr_u);
        f.get(masks.m04).simd(S.v128_and).simd(S.v128_or);
      }
      f.set(iv);
      use(j);
    }
  }
  if (bits === 3) bump(f, w, 16);
}

interface Masks {
  m0f: number;
  m03: number;
  m04: number;
  raw: number;
  hi: number;
}

function makeMasks(f: FuncBuilder): Masks {
  const m: Masks = { m0f: f.local(V128), m03: f.local(V128), m04: f.local(V128), raw: f.local(V128), hi: f.local(V128) };
  f.splatConst8(0x0f).set(m.m0f);
  f.splatConst8(0x03).set(m.m03);
  f.splatConst8(0x04).set(m.m04);
  return m;
}

/** Byte lanes of i8x16.shuffle for zips (punpckl/h bw, wd) and i32 even/odd picks. */
const ZIP8_LO = range(16).map((i) => (i % 2 ? 16 : 0) + (i >> 1));
const ZIP8_HI = ZIP8_LO.map((l) => l + 8);
const ZIP16_LO = range(16).map((i) => ((i >> 1) % 2 ? 16 : 0) + (i >> 2) * 2 + (i % 2));
const ZIP16_HI = ZIP16_LO.map((l) => l + 8);
const I32_EVEN = [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27];
const I32_ODD = I32_EVEN.map((l) => l + 4);

/** acc = acc + a*b (f32x4), fused where relaxed. Expects nothing on the stack; a, b pushed by callbacks. */
function fmaInto(f: FuncBuilder, v: KernelVariant, acc: number, a: () => void, b: () => void): void {
  if (v.relaxed) {
    a();
    b();
    f.get(acc).simd(S.f32x4_relaxed_madd).set(acc);
  } else {
    f.get(acc);
    a();
    b();
    f.simd(S.f32x4_mul).simd(S.f32x4_add).set(acc);
  }
}

/**
 * The loop skeleton every tiled kernel shares: for rq in [rq0, rq1): for tiles of up to `mt` rows:
 * body(mt, ctx). `ctx` holds locals the body needs (rq, m0).
 */
function tiledLoops(f: FuncBuilder, maxTile: number, body: (mt: number, rq: number, m0: number) => void): void {
  const rq = f.local(I32);
  const m0 = f.local(I32);
  const left = f.local(I32);
  f.forLoop(rq, () => f.get(0), () => f.get(1), 1, () => {
    f.forLoop(m0, () => f.i32(0), () => job(f, J.m), maxTile, () => {
      job(f, J.m);
      f.get(m0).op(Op.i32_sub).set(left);
      // dispatch on the tile size: left >= maxTile takes the full body, else the exact remainder
      const emitFrom = (t: number) => {
        if (t === 1) {
          body(1, rq, m0);
          return;
        }
        f.get(left).i32(t).op(Op.i32_ge_s);
        f.if(() => body(t, rq, m0), () => emitFrom(t - 1));
      };
      emitFrom(maxTile);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// LUT kernels, integer activations

/**
 * y[m, rows of rq] += sum over groups of s4 * sum over blocks of d[m,b] * (sum_k code[q] * xq[m,k] + nc[m,b]).
 * Relaxed: one i32x4 per tile row, relaxed_dot(xq (i8), u, acc): lane r = row r, with u = code + 64
 * (7-bit codes, xq in [-127, 127]) or u = code + 128 (8-bit codes, xq in [-64, 64], where probe_dot
 * shows the engine reads u unsigned without saturating); nc = -offset * sum(xq) (act_quant's corr with
 * the offset negated) takes the offset back out. A block's sums start from nc rather than from zero:
 * the fused dot then adds its first products straight onto it, with no zero vector and no subtraction
 * at the fold (two of the 35 SIMD operations per 128 weights where the dot is one VPDPBUSD).
 * The two differ only in the table bytes and the activation parameters, not in this code.
 * SIMD128: codes are signed i8 widened to i16, xq is i16; i32x4.dot_i16x8_s on rows {0,1} and {2,3}
 * gives two accumulators per tile row whose even/odd lanes are added at the end of a block.
 *
 * `flat`: the kernel for layers whose padded group is one chunk and one activation block (g <= 32:
 * every GGUF Q4_0 / IQ4_NL layer), where the general kernel's group, block and chunk loops each run
 * once per 32 k, with their job-block loads, counters and V8's per-iteration stack checks: one loop over
 * groups, chunk and fold straight-line (unrolling two groups per pass measured no faster).
 * `records` (flat): the same over the records layout, a group's scales read as f16 from the weight
 * stream right after its chunk rather than as f32 from a stream of their own: one stream of 4.5 bits
 * a weight instead of two of 5 at 4 bits (1-thread decode of a 1B IQ4_NL model about 3% faster, Node
 * 24 and 26, 2026-11-24; f16 scales in a separate stream, or converted without the fp16 proposal's
 * one instruction, measured no faster).
 * `affine` (relaxed): for tables whose 7-bit codes are c_j = c0 + j ('int' tables, GGUF Q4_0): u = the
 * index j itself, no table lookup, nc = c0 * sum(xq). With u <= 15 an i16 pair sum is at most
 * 2 * 15 * 127 = 3810, so a chunk's eight are summed in i16 and widened once per chunk, not once per
 * index vector: about 3.7 instead of 5.5 SIMD ops per index vector at M = 1.
 * All variants compute the same integers acc + nc and fold them with the same f32 operations in the
 * same order, so their results are bit-identical (test/kernels-wasm.test.ts checks it).
 */
function lutIntKernel(v: KernelVariant, bits: 2 | 3 | 4, name: string, opts: { flat?: boolean; affine?: boolean; records?: boolean } = {}): FuncBuilder {
  const { affine = false, records = false } = opts;
  const flat = opts.flat === true || records;
  if (affine && !v.relaxed) throw new FluteError('E_BACKEND', `wasm codegen: ${name}: the affine integer kernels need the relaxed variant`);
  const f = new FuncBuilder(name, [I32, I32]);
  const masks = makeMasks(f);
  const table = f.local(V128);
  const iv = f.local(V128);
  const wv = f.local(V128);
  const wlo = f.local(V128);
  const whi = f.local(V128);
  const s4 = f.local(V128);
  const tmp = f.local(V128);
  const w = f.local(I32);
  const s = f.local(I32);
  const x = f.local(I32);
  const p = f.local(I32);
  const pin = f.local(I32);
  const gi = f.local(I32);
  const bi = f.local(I32);
  const ci = f.local(I32);
  const tot = f.locals(V128, MT.int);
  const accA = f.locals(V128, MT.int);
  const accB = f.locals(V128, MT.int);
  const eb = v.relaxed ? 1 : 2; // activation element bytes
  const ones16 = f.local(V128);
  f.v128Const([1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]).set(ones16);
  // Index vectors between stores of the tile's sums into its own output slot (`pin`; storeTile overwrites
  // it). TurboFan keeps wasm loads in program order but sinks pure SIMD ops to their uses, so a body's
  // loads all issue first and their values spill; a store needs its value computed, so each store
  // keeps the arithmetic up with the loads. Measured (x64, V8 11.3, 1 thread, g = 32 and 128): every
  // 8 / 4 / 2 / 1 vectors at tiles of 1 / 2 / 3 / 4 rows (none at 1 row in the general kernel, where the
  // chunk loop does it); the SIMD128 kernels run faster without.
  const pinEvery = (mt: number) => (!v.relaxed ? 0 : mt === 1 ? (flat ? 8 : 0) : 8 >> (mt - 1));

  job(f, J.table);
  f.v128Load(0).set(table);

  /** Pushes tile row m's nc (= -offset * sum(xq) of the block at p) as an i32x4. */
  const pushNc = (m: number) => f.get(p).simdMem(S.v128_load32_splat, 2, m * 8 + 4);
  /** One chunk's integer sums into accA (and accB); `fresh`: the first chunk of a block starts them (from nc where relaxed). */
  const chunk = (mt: number, fresh: boolean) => {
    const every = pinEvery(mt);
    const acc16 = accB; // affine: the chunk's i16 pair sums per tile row
    emitIndexVectors(f, bits, w, masks, (j) => {
      if (affine) {
        // u = the index itself: i16 pair sums of at most 2 * 15 * 127, eight of them still fit i16
        for (let m = 0; m < mt; m++) {
          f.get(x).simdMem(S.v128_load32_splat, 2, m * 4).get(iv).simd(S.i16x8_relaxed_dot_i8x16_i7x16_s);
          if (j > 0) f.get(acc16[m]).simd(S.i16x8_add);
          f.set(acc16[m]);
        }
      } else {
        const set = fresh && j === 0;
        // int8 weights for 4 rows x 4 k
        f.get(table).get(iv).simd(v.relaxed ? S.i8x16_relaxed_swizzle : S.i8x16_swizzle).set(wv);
        if (v.relaxed) {
          for (let m = 0; m < mt; m++) relaxedDotInto(f, v, set ? () => pushNc(m) : accA[m], accA[m], () => f.get(x).simdMem(S.v128_load32_splat, 2, m * 4), wv, ones16);
        } else {
          f.get(wv).simd(S.i16x8_extend_low_i8x16_s).set(wlo);
          f.get(wv).simd(S.i16x8_extend_high_i8x16_s).set(whi);
          for (let m = 0; m < mt; m++) {
            f.get(x).simdMem(S.v128_load64_splat, 3, m * 8).set(tmp);
            if (set) {
              f.get(wlo).get(tmp).simd(S.i32x4_dot_i16x8_s).set(accA[m]);
              f.get(whi).get(tmp).simd(S.i32x4_dot_i16x8_s).set(accB[m]);
            } else {
              f.get(accA[m]).get(wlo).get(tmp).simd(S.i32x4_dot_i16x8_s).simd(S.i32x4_add).set(accA[m]);
              f.get(accB[m]).get(whi).get(tmp).simd(S.i32x4_dot_i16x8_s).simd(S.i32x4_add).set(accB[m]);
            }
          }
        }
      }
      bump(f, x, 4 * mt * eb);
      if (every && (j + 1) % every === 0) {
        for (let m = 0; m < mt; m++) f.get(pin).get(affine ? acc16[m] : accA[m]).v128Store(0);
      }
    }, iv);
    if (affine) {
      for (let m = 0; m < mt; m++) {
        if (fresh) pushNc(m);
        else f.get(accA[m]);
        f.get(acc16[m]).get(ones16).simd(S.i32x4_dot_i16x8_s).simd(S.i32x4_add).set(accA[m]);
      }
    }
  };
  /** Folds a block's sums (relaxed: they started from nc): tot += f32(acc) * d * s4; advances p. */
  const fold = (mt: number) => {
    for (let m = 0; m < mt; m++) {
      if (v.relaxed) {
        f.get(accA[m]);
      } else {
        f.get(accA[m]).get(accB[m]).shuffle(I32_EVEN).get(accA[m]).get(accB[m]).shuffle(I32_ODD).simd(S.i32x4_add);
      }
      f.simd(S.f32x4_convert_i32x4_s).get(p).simdMem(S.v128_load32_splat, 2, m * 8).simd(S.f32x4_mul).set(tmp);
      fmaInto(f, v, tot[m], () => f.get(tmp), () => f.get(s4));
    }
    bump(f, p, 8 * mt);
  };

  tiledLoops(f, MT.int, (mt, rq, m0) => {
    // pointers for this (row quad, tile)
    job(f, J.w);
    f.get(rq);
    job(f, J.quadBytes);
    f.op(Op.i32_mul, Op.i32_add).set(w);
    job(f, J.s);
    f.get(rq);
    job(f, J.groups);
    f.op(Op.i32_mul).i32(16).op(Op.i32_mul, Op.i32_add).set(s);
    job(f, J.x);
    f.get(m0);
    job(f, J.kp);
    f.op(Op.i32_mul).i32(eb).op(Op.i32_mul, Op.i32_add).set(x);
    job(f, J.p);
    f.get(m0);
    job(f, J.groups);
    if (!flat) job(f, J.blocks);
    f.op(...(flat ? [Op.i32_mul] : [Op.i32_mul, Op.i32_mul])).i32(8).op(Op.i32_mul, Op.i32_add).set(p);
    if (pinEvery(mt)) {
      job(f, J.y);
      f.get(m0);
      job(f, J.yStride);
      f.op(Op.i32_mul, Op.i32_add).get(rq).i32(16).op(Op.i32_mul, Op.i32_add).set(pin);
    }
    for (let m = 0; m < mt; m++) f.zero().set(tot[m]);
    job(f, J.groups);
    f.set(gi);
    if (flat) {
      f.repeat(gi, () => {
        chunk(mt, true);
        if (records) {
          recordScales(f, w, 0, s4); // the chunk left w at its group's scales
          bump(f, w, 8);
        } else {
          nextGroupScales(f, s, s4);
        }
        fold(mt);
      });
    } else {
      f.repeat(gi, () => {
        nextGroupScales(f, s, s4);
        job(f, J.blocks);
        f.set(bi);
        f.repeat(bi, () => {
          for (let m = 0; m < mt; m++) {
            if (!affine) (v.relaxed ? pushNc(m) : f.zero()).set(accA[m]);
            if (!v.relaxed) f.zero().set(accB[m]);
          }
          job(f, J.inner);
          f.set(ci);
          if (affine) {
            // the first chunk sets the block's sums, the others add to them
            chunk(mt, true);
            f.get(ci).i32(1).op(Op.i32_sub).set(ci);
          }
          f.repeat(ci, () => chunk(mt, false));
          fold(mt);
        });
      });
    }
    storeTile(f, mt, rq, m0, tot);
  });
  return f;
}

/**
 * out = acc + relaxed_dot(a, b) (i32x4: lane r = sum of bytes 4r..4r+3 of a times b), in the variant's
 * form; acc is a local or pushes the i32x4 to start from. a (signed i8) pushed by `pushA`, b (the codes)
 * in local `b`, `ones16` holds i16x8 ones. Shared by the kernels and probe_dot, so the probe measures
 * exactly the instructions the kernels run.
 */
function relaxedDotInto(f: FuncBuilder, v: KernelVariant, acc: number | (() => void), out: number, pushA: () => void, b: number, ones16: number): void {
  const pushAcc = () => (typeof acc === 'number' ? f.get(acc) : acc());
  if (v.dot === 'split') {
    pushAcc();
    pushA();
    // pairwise widening by pmaddwd with a ones register (extadd_pairwise reloads a constant each time)
    f.get(b).simd(S.i16x8_relaxed_dot_i8x16_i7x16_s).get(ones16).simd(S.i32x4_dot_i16x8_s).simd(S.i32x4_add).set(out);
  } else {
    pushA();
    f.get(b);
    pushAcc();
    f.simd(S.i32x4_relaxed_dot_i8x16_i7x16_add_s).set(out);
  }
}

/**
 * probe_dot(p) (relaxed modules): the kernels' relaxed dot on a = i8x16 at p, b = i8x16 at p+16,
 * acc = i32x4 at p+32, result stored at p+48. The relaxed-SIMD spec leaves the dot's result
 * implementation-defined where b's top bit is set (b read as signed or unsigned, i16 pair sums
 * saturated or not); index.ts calls this once per module to learn whether 8-bit codes (b in [0, 255])
 * are exact with activations in [-64, 64].
 */
function probeDotFunction(v: KernelVariant): FuncBuilder {
  const f = new FuncBuilder('probe_dot', [I32]);
  const a = f.local(V128);
  const b = f.local(V128);
  const acc = f.local(V128);
  const ones16 = f.local(V128);
  f.v128Const([1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]).set(ones16);
  f.get(0).v128Load(0).set(a);
  f.get(0).v128Load(16).set(b);
  f.get(0).v128Load(32).set(acc);
  relaxedDotInto(f, v, acc, acc, () => f.get(a), b, ones16);
  f.get(0).get(acc).v128Store(48);
  return f;
}

/** y[(m0+m)*yStride + rq*16] = tot[m] (lanes = the quad's 4 rows). */
function storeTile(f: FuncBuilder, mt: number, rq: number, m0: number, tot: number[]): void {
  for (let m = 0; m < mt; m++) {
    job(f, J.y);
    f.get(m0).i32(m).op(Op.i32_add);
    job(f, J.yStride);
    f.op(Op.i32_mul, Op.i32_add).get(rq).i32(16).op(Op.i32_mul, Op.i32_add);
    f.get(tot[m]).v128Store(0);
  }
}

// ---------------------------------------------------------------------------------------------
// LUT kernels, exact f32

/**
 * y[m, n] = sum_k fl(T[q] * s) * x[m, k] in f32, with the reference's weights exactly. Each index vector
 * is transposed (one shuffle) to byte 4t+r, then the f32 table is gathered with four swizzles over its
 * byte planes and a zip network (bitnet TL1's trick): one f32x4 per k whose lanes are the quad's 4 rows,
 * times the 4 rows' scales, then accumulated like the dense kernel (splat activations, one accumulator
 * per tile row, two interleaved chains at M=1 so the add latency does not bound a GEMV).
 */
function lutExactKernel(v: KernelVariant, bits: 2 | 3 | 4, records = false): FuncBuilder {
  const f = new FuncBuilder(`lut_exact${bits}${records ? '_records' : ''}`, [I32, I32]);
  const masks = makeMasks(f);
  const planes = f.locals(V128, 4);
  const iv = f.local(V128);
  const pl = f.locals(V128, 4);
  const l01 = f.local(V128);
  const l23 = f.local(V128);
  const wt = f.local(V128);
  const s4 = f.local(V128);
  const w = f.local(I32);
  const s = f.local(I32);
  const x = f.local(I32);
  const gi = f.local(I32);
  const ci = f.local(I32);
  const acc = range(MT.exact).map(() => f.locals(V128, 2)); // [m][chain]
  const sw = v.relaxed ? S.i8x16_relaxed_swizzle : S.i8x16_swizzle;

  for (let p = 0; p < 4; p++) {
    job(f, J.table);
    f.v128Load(16 * p).set(planes[p]);
  }

  tiledLoops(f, MT.exact, (mt, rq, m0) => {
    const chains = mt === 1 ? 2 : 1;
    job(f, J.w);
    f.get(rq);
    job(f, J.quadBytes);
    f.op(Op.i32_mul, Op.i32_add).set(w);
    job(f, J.s);
    f.get(rq);
    job(f, J.groups);
    f.op(Op.i32_mul).i32(16).op(Op.i32_mul, Op.i32_add).set(s);
    job(f, J.x);
    f.get(m0);
    job(f, J.kp);
    f.op(Op.i32_mul).i32(4).op(Op.i32_mul, Op.i32_add).set(x);
    for (let m = 0; m < mt; m++) for (let c = 0; c < chains; c++) f.zero().set(acc[m][c]);

    job(f, J.groups);
    f.set(gi);
    f.repeat(gi, () => {
      // records (one chunk a group): the scales follow the chunk; otherwise they have their own stream
      if (records) recordScales(f, w, chunkBytes(bits), s4);
      else nextGroupScales(f, s, s4);
      job(f, J.inner);
      f.set(ci);
      f.repeat(ci, () => {
        emitIndexVectors(f, bits, w, masks, (j) => {
          f.get(iv).get(iv).shuffle(TRANSPOSE4).set(iv); // byte 4r+t -> 4t+r
          for (let p = 0; p < 4; p++) f.get(planes[p]).get(iv).simd(sw).set(pl[p]);
          for (const half of [0, 1]) {
            const z8 = half ? ZIP8_HI : ZIP8_LO;
            f.get(pl[0]).get(pl[1]).shuffle(z8).set(l01);
            f.get(pl[2]).get(pl[3]).shuffle(z8).set(l23);
            for (const sub of [0, 1]) {
              const t = 2 * half + sub; // k = 4j + t, lanes = rows
              f.get(l01).get(l23).shuffle(sub ? ZIP16_HI : ZIP16_LO).get(s4).simd(S.f32x4_mul).set(wt); // fl(T * s), as dequantize()
              for (let m = 0; m < mt; m++) {
                fmaInto(f, v, acc[m][(j * 4 + t) % chains], () => f.get(wt), () => f.get(x).simdMem(S.v128_load32_splat, 2, m * 16));
              }
              bump(f, x, 4);
            }
          }
          if (mt > 1) bump(f, x, 16 * mt - 16);
        }, iv);
      });
      if (records) bump(f, w, 8);
    });
    for (let m = 0; m < mt; m++) if (chains === 2) f.get(acc[m][0]).get(acc[m][1]).simd(S.f32x4_add).set(acc[m][0]);
    storeTile(f, mt, rq, m0, acc.slice(0, mt).map((a) => a[0]));
  });
  return f;
}
const TRANSPOSE4 = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];


// ---------------------------------------------------------------------------------------------
// Dense f32

/**
 * y[m, quad] = sum_k W[quad][k][0..3] * x[m, k]: one f32x4 (4 rows) per k, splat activations. At
 * small tiles each row of M keeps 4/mt interleaved accumulators so the f32 add (or FMA) latency
 * chain does not bound a GEMV; they are summed at the end.
 */
function denseKernel(v: KernelVariant): FuncBuilder {
  const f = new FuncBuilder('dense_f32', [I32, I32]);
  const w = f.local(I32);
  const x = f.local(I32);
  const ki = f.local(I32);
  const wk = f.locals(V128, 4);
  const acc = range(MT.dense).map(() => f.locals(V128, 4)); // [m][chain]
  tiledLoops(f, MT.dense, (mt, rq, m0) => {
    const chains = Math.min(4, Math.max(1, Math.floor(8 / mt)));
    job(f, J.w);
    f.get(rq);
    job(f, J.quadBytes);
    f.op(Op.i32_mul, Op.i32_add).set(w);
    job(f, J.x);
    f.get(m0);
    job(f, J.kp);
    f.op(Op.i32_mul).i32(4).op(Op.i32_mul, Op.i32_add).set(x);
    for (let m = 0; m < mt; m++) for (let c = 0; c < chains; c++) f.zero().set(acc[m][c]);
    job(f, J.inner); // padded K / 4
    f.set(ki);
    f.repeat(ki, () => {
      for (let t = 0; t < 4; t++) f.get(w).v128Load(16 * t).set(wk[t]);
      for (let t = 0; t < 4; t++) {
        for (let m = 0; m < mt; m++) {
          fmaInto(f, v, acc[m][t % chains], () => f.get(wk[t]), () => f.get(x).simdMem(S.v128_load32_splat, 2, m * 16));
        }
        bump(f, x, 4); // few distinct offsets (see emitIndexVectors)
      }
      bump(f, w, 64);
      if (mt > 1) bump(f, x, 16 * mt - 16);
    });
    for (let m = 0; m < mt; m++) {
      if (chains === 4) {
        f.get(acc[m][0]).get(acc[m][1]).simd(S.f32x4_add).get(acc[m][2]).get(acc[m][3]).simd(S.f32x4_add).simd(S.f32x4_add).set(acc[m][0]);
      } else if (chains === 2) {
        f.get(acc[m][0]).get(acc[m][1]).simd(S.f32x4_add).set(acc[m][0]);
      }
    }
    storeTile(f, mt, rq, m0, acc.slice(0, mt).map((a) => a[0]));
  });
  return f;
}

// ---------------------------------------------------------------------------------------------
// Generic LUT (any bits, any group size): scalar, exact f32

/** y[m, n] = sum_k fl(T[q[n,k]] * s[n, k/g]) * x[m, k], sequential f32 sum; x is plain [M][K]. */
function genericKernel(): FuncBuilder {
  const f = new FuncBuilder('lut_generic', [I32, I32]);
  const row = f.local(I32);
  const m = f.local(I32);
  const wp = f.local(I32);
  const xp = f.local(I32);
  const sp = f.local(I32);
  const tb = f.local(I32);
  const gi = f.local(I32);
  const len = f.local(I32);
  const sv = f.local(F32);
  const acc = f.local(F32);
  job(f, J.table);
  f.set(tb);
  f.forLoop(row, () => f.get(0), () => f.get(1), 1, () => {
    f.forLoop(m, () => f.i32(0), () => job(f, J.m), 1, () => {
      job(f, J.w);
      f.get(row);
      job(f, J.k);
      f.op(Op.i32_mul, Op.i32_add).set(wp);
      job(f, J.s);
      f.get(row);
      job(f, J.groups);
      f.op(Op.i32_mul).i32(4).op(Op.i32_mul, Op.i32_add).set(sp);
      job(f, J.x);
      f.get(m);
      job(f, J.k);
      f.op(Op.i32_mul).i32(4).op(Op.i32_mul, Op.i32_add).set(xp);
      f.f32(0).set(acc);
      f.forLoop(gi, () => f.i32(0), () => job(f, J.groups), 1, () => {
        f.get(sp).f32Load(0).set(sv);
        bump(f, sp, 4);
        // len = min(g, K - gi*g)
        job(f, J.k);
        f.get(gi);
        job(f, J.groupSize);
        f.op(Op.i32_mul, Op.i32_sub).set(len);
        job(f, J.groupSize);
        f.get(len).op(Op.i32_lt_s).if(() => {
          job(f, J.groupSize);
          f.set(len);
        });
        f.repeat(len, () => {
          f.get(acc);
          f.get(tb).get(wp).mem(Op.i32_load8_u, 0, 0).i32(2).op(Op.i32_shl, Op.i32_add).f32Load(0);
          f.get(sv).op(Op.f32_mul);
          f.get(xp).f32Load(0).op(Op.f32_mul, Op.f32_add).set(acc);
          bump(f, wp, 1);
          bump(f, xp, 4);
        });
      });
      job(f, J.y);
      f.get(m);
      job(f, J.yStride);
      f.op(Op.i32_mul, Op.i32_add).get(row).i32(4).op(Op.i32_mul, Op.i32_add).get(acc).mem(Op.f32_store, 2, 0);
    });
  });
  return f;
}

// ---------------------------------------------------------------------------------------------
// Activation preparation (called directly by the calling thread before a job)

/**
 * act_quant{8,16}(src, M, Kp, A, MT, dst, params, qmax, tscale, offset): per row of the padded f32
 * activations src [M][Kp] and block of A columns: d = amax/qmax, q = nearest(x * (qmax/amax)) (ties to
 * even), written as tiles [Kp/4][t][4] of int8 or int16 (layout.ts), and per (block, row) the pair
 * (d * tscale as f32, offset * sum(q) as i32) at params [tile: [blocks][t][2]].
 * Same rule as layout.ts quantizeActivations (the JS specification of this function). Relaxed
 * modules truncate with relaxed_trunc (one cvttps2dq on x64 instead of trunc_sat's fix-up sequence):
 * the values are already rounded and within +-qmax, so only a NaN or infinite input, which makes d
 * and so every output of the matmul non-finite anyway, can give another q.
 * Tiles of one row (every decode step) store 16 values per narrow and store; with the integer amax,
 * a 2048-wide row takes 0.49 us instead of 2.06 (Node 26, x64): a 1B-shape token quantizes 231,424
 * values, 0.06 ms instead of 0.23.
 */
function actQuantKernel(wide: boolean, relaxed: boolean): FuncBuilder {
  const f = new FuncBuilder(wide ? 'act_quant16' : 'act_quant8', [I32, I32, I32, I32, I32, I32, I32, F32, F32, I32]);
  const [src, M, kp, A, mtMax, dst, prm, qmax, ts, off] = range(10);
  const i = f.local(I32);
  const m0 = f.local(I32);
  const t = f.local(I32);
  const b = f.local(I32);
  const nb = f.local(I32);
  const c = f.local(I32);
  const sp = f.local(I32);
  const dp = f.local(I32);
  const step = f.local(I32);
  const p = f.local(I32);
  const amax = f.local(F32);
  const inv = f.local(F32);
  const vmax = f.locals(V128, 2);
  const acc = f.local(V128);
  const v = f.locals(V128, 4);
  const invv = f.local(V128);
  const absMask = f.local(V128);
  const eb = wide ? 2 : 1;
  const trunc = relaxed ? S.i32x4_relaxed_trunc_f32x4_s : S.i32x4_trunc_sat_f32x4_s;
  f.v128Const(Array.from({ length: 16 }, (_, j) => (j % 4 === 3 ? 0x7f : 0xff))).set(absMask);
  /** Pushes q = trunc(nearest(x * inv)) for the 4 values at sp + offset, and adds them to acc. */
  const quant4 = (offset: number, out: number) => {
    f.get(sp).v128Load(offset).get(invv).simd(S.f32x4_mul).simd(S.f32x4_nearest).simd(trunc).set(out);
    f.get(acc).get(out).simd(S.i32x4_add).set(acc);
  };
  f.get(kp).get(A).op(Op.i32_div_u).set(nb);
  f.forLoop(i, () => f.i32(0), () => f.get(M), 1, () => {
    f.get(i).get(i).get(mtMax).op(Op.i32_rem_u, Op.i32_sub).set(m0);
    // t = min(MT, M - m0)
    f.get(M).get(m0).op(Op.i32_sub).set(t);
    f.get(t).get(mtMax).op(Op.i32_gt_s).if(() => f.get(mtMax).set(t));
    f.get(src).get(i).get(kp).op(Op.i32_mul).i32(4).op(Op.i32_mul, Op.i32_add).set(sp);
    f.get(t).i32(4 * eb).op(Op.i32_mul).set(step);
    f.forLoop(b, () => f.i32(0), () => f.get(nb), 1, () => {
      // amax over the block (A is a multiple of 32) as integers: |x|'s bits order like |x| itself, NaN's
      // above infinity's, so a NaN still wins as with f32x4.max, in one instruction instead of V8's
      // NaN- and sign-fixing f32x4.max sequence
      for (const m of vmax) f.zero().set(m);
      f.get(sp).set(p);
      f.forLoop(c, () => f.i32(0), () => f.get(A), 8, () => {
        for (let h = 0; h < 2; h++) f.get(vmax[h]).get(p).v128Load(16 * h).get(absMask).simd(S.v128_and).simd(S.i32x4_max_s).set(vmax[h]);
        bump(f, p, 32);
      });
      f.get(vmax[0]).get(vmax[1]).simd(S.i32x4_max_s).set(vmax[0]);
      f.get(vmax[0]).get(vmax[0]).get(vmax[0]).shuffle([8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7]).simd(S.i32x4_max_s).set(vmax[0]);
      f.get(vmax[0]).get(vmax[0]).get(vmax[0]).shuffle([4, 5, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15]).simd(S.i32x4_max_s);
      f.lane(S.i32x4_extract_lane, 0).op(Op.f32_reinterpret_i32).set(amax);
      f.f32(0).set(inv);
      f.get(amax).f32(0).op(Op.f32_gt).if(() => f.get(qmax).get(amax).op(Op.f32_div).set(inv));
      f.get(inv).simd(S.f32x4_splat).set(invv);
      // first 4-group of this (row, block) in the tile: element m0*Kp + ((b*A/4)*t + (i-m0))*4 = m0*Kp + b*A*t + 4(i-m0)
      f.get(dst);
      f.get(m0).get(kp).op(Op.i32_mul);
      f.get(b).get(A).op(Op.i32_mul).get(t).op(Op.i32_mul);
      f.get(i).get(m0).op(Op.i32_sub).i32(4).op(Op.i32_mul).op(Op.i32_add, Op.i32_add).i32(eb).op(Op.i32_mul, Op.i32_add).set(dp);
      f.zero().set(acc);
      f.get(t).i32(1).op(Op.i32_eq).if(
        () => {
          // a tile of one row (every decode step) is contiguous: 16 values narrowed and stored at once
          f.forLoop(c, () => f.i32(0), () => f.get(A), 16, () => {
            for (let j = 0; j < 4; j++) quant4(16 * j, v[j]);
            f.get(v[0]).get(v[1]).simd(S.i16x8_narrow_i32x4_s).set(v[0]);
            f.get(v[2]).get(v[3]).simd(S.i16x8_narrow_i32x4_s).set(v[2]);
            if (wide) {
              f.get(dp).get(v[0]).v128Store(0);
              f.get(dp).get(v[2]).v128Store(16);
            } else {
              f.get(dp).get(v[0]).get(v[2]).simd(S.i8x16_narrow_i16x8_s).v128Store(0);
            }
            bump(f, sp, 64);
            bump(f, dp, 16 * eb);
          });
        },
        () => {
          f.forLoop(c, () => f.i32(0), () => f.get(A), 4, () => {
            quant4(0, v[0]);
            f.get(dp).get(v[0]).get(v[0]).simd(S.i16x8_narrow_i32x4_s);
            if (wide) f.simdMemLane(S.v128_store64_lane, 0, 0, 0);
            else f.tee(v[0]).get(v[0]).simd(S.i8x16_narrow_i16x8_s).simdMemLane(S.v128_store32_lane, 0, 0, 0);
            bump(f, sp, 16);
            f.get(dp).get(step).op(Op.i32_add).set(dp);
          });
        },
      );
      // params[(m0*nb + b*t + (i-m0)) * 8] = (d * tscale, offset * sum)
      f.get(prm).get(m0).get(nb).op(Op.i32_mul).get(b).get(t).op(Op.i32_mul, Op.i32_add).get(i).get(m0).op(Op.i32_sub, Op.i32_add).i32(8).op(Op.i32_mul, Op.i32_add).set(p);
      f.get(p).get(amax).get(qmax).op(Op.f32_div).get(ts).op(Op.f32_mul).mem(Op.f32_store, 2, 0);
      f.get(p).get(off);
      f.get(acc).lane(S.i32x4_extract_lane, 0).get(acc).lane(S.i32x4_extract_lane, 1).op(Op.i32_add);
      f.get(acc).lane(S.i32x4_extract_lane, 2).get(acc).lane(S.i32x4_extract_lane, 3).op(Op.i32_add, Op.i32_add);
      f.op(Op.i32_mul).mem(Op.i32_store, 2, 4);
    });
  });
  return f;
}

/** act_tile_f32(src, M, Kp, MT, dst): the padded f32 rows src [M][Kp] as tiles [Kp/4][t][4] (layout.ts tileF32). */
function actTileKernel(): FuncBuilder {
  const f = new FuncBuilder('act_tile_f32', [I32, I32, I32, I32, I32]);
  const [src, M, kp, mtMax, dst] = range(5);
  const i = f.local(I32);
  const m0 = f.local(I32);
  const t = f.local(I32);
  const j = f.local(I32);
  const sp = f.local(I32);
  const dp = f.local(I32);
  const step = f.local(I32);
  f.forLoop(i, () => f.i32(0), () => f.get(M), 1, () => {
    f.get(i).get(i).get(mtMax).op(Op.i32_rem_u, Op.i32_sub).set(m0);
    f.get(M).get(m0).op(Op.i32_sub).set(t);
    f.get(t).get(mtMax).op(Op.i32_gt_s).if(() => f.get(mtMax).set(t));
    f.get(src).get(i).get(kp).op(Op.i32_mul).i32(4).op(Op.i32_mul, Op.i32_add).set(sp);
    f.get(dst).get(m0).get(kp).op(Op.i32_mul).get(i).get(m0).op(Op.i32_sub).i32(4).op(Op.i32_mul, Op.i32_add).i32(4).op(Op.i32_mul, Op.i32_add).set(dp);
    f.get(t).i32(16).op(Op.i32_mul).set(step);
    f.forLoop(j, () => f.i32(0), () => f.get(kp), 4, () => {
      f.get(dp).get(sp).v128Load(0).v128Store(0);
      bump(f, sp, 16);
      f.get(dp).get(step).op(Op.i32_add).set(dp);
    });
  });
  return f;
}

// ---------------------------------------------------------------------------------------------
// The module

/** Emits the kernel module for `v`; validate with WebAssembly.validate before use. */
export function buildKernelModule(v: KernelVariant, shared = true): Uint8Array<ArrayBuffer> {
  const mb = new ModuleBuilder(memoryImport(shared));
  const kernels: [KernelId, FuncBuilder][] = [
    [FN.exact2, lutExactKernel(v, 2)],
    [FN.exact3, lutExactKernel(v, 3)],
    [FN.exact4, lutExactKernel(v, 4)],
    [FN.int2, lutIntKernel(v, 2, 'lut_int2')],
    [FN.int3, lutIntKernel(v, 3, 'lut_int3')],
    [FN.int4, lutIntKernel(v, 4, 'lut_int4')],
    [FN.dense, denseKernel(v)],
    [FN.generic, genericKernel()],
  ];
  if (v.relaxed) {
    const simd: KernelVariant = { relaxed: false };
    kernels.push([FN.wide2, lutIntKernel(simd, 2, 'lut_wide2')], [FN.wide3, lutIntKernel(simd, 3, 'lut_wide3')], [FN.wide4, lutIntKernel(simd, 4, 'lut_wide4')]);
  }
  for (const b of [2, 3, 4] as const) {
    kernels.push([intKernelId('int', b, true), lutIntKernel(v, b, `lut_int${b}_flat`, { flat: true })]);
    if (!v.relaxed) continue;
    kernels.push([intKernelId('wide', b, true), lutIntKernel({ relaxed: false }, b, `lut_wide${b}_flat`, { flat: true })]);
    for (const flat of [false, true]) kernels.push([intKernelId('affine', b, flat), lutIntKernel(v, b, `lut_affine${b}${flat ? '_flat' : ''}`, { flat, affine: true })]);
  }
  if (v.f16) {
    for (const b of [2, 3, 4] as const) {
      kernels.push([FN[`exact${b}h`], lutExactKernel(v, b, true)]);
      kernels.push([intKernelId('int', b, true, true), lutIntKernel(v, b, `lut_int${b}_records`, { records: true })]);
      if (!v.relaxed) continue;
      kernels.push([intKernelId('wide', b, true, true), lutIntKernel({ relaxed: false }, b, `lut_wide${b}_records`, { records: true })]);
      kernels.push([intKernelId('affine', b, true, true), lutIntKernel(v, b, `lut_affine${b}_records`, { records: true, affine: true })]);
    }
  }
  kernels.sort((a, b) => a[0] - b[0]);
  const index = kernels.map(([, k]) => mb.add(k));

  // work(tid): take runs of `grab` units from the top of the counter at LEFT_ADDR until it is used up
  // (left <= 0), run the job's kernel on each, then count them at FINISHED_ADDR. Taking work rather
  // than a fixed share per thread keeps a job moving when the OS deschedules one thread (a busy
  // machine, SMT siblings): the others take its share. Which thread computes a row never changes
  // its value, so results do not depend on the thread count or timing.
  const work = new FuncBuilder('work', [I32]);
  const hi = work.local(I32);
  const lo = work.local(I32);
  work.block(() =>
    work.loop(() => {
      work.i32(LEFT_ADDR);
      job(work, J.grab);
      work.atomic(A.i32_atomic_rmw_sub, 2, 0).tee(hi);
      work.i32(0).op(Op.i32_le_s).brIf(1); // nothing left: done
      // lo = max(0, hi - grab)
      work.get(hi);
      job(work, J.grab);
      work.op(Op.i32_sub).tee(lo).i32(0).op(Op.i32_lt_s);
      work.if(() => work.i32(0).set(lo));
      for (let i = 0; i < index.length; i++) {
        job(work, J.fn);
        work.i32(kernels[i][0]).op(Op.i32_eq).if(() => work.get(lo).get(hi).call(index[i]));
      }
      work.i32(FINISHED_ADDR).get(hi).get(lo).op(Op.i32_sub).atomic(A.i32_atomic_rmw_add, 2, 0).op(Op.drop);
      work.br(0);
    }),
  );
  mb.add(work);
  mb.add(actQuantKernel(false, v.relaxed));
  mb.add(actQuantKernel(true, v.relaxed));
  mb.add(actTileKernel());
  if (v.relaxed) mb.add(probeDotFunction(v));
  return mb.encode();
}
