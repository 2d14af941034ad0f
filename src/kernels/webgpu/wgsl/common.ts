// WGSL pieces shared by every kernel: the precision prelude (types and the weight/activation rounding
// rules of each arithmetic), the exact f32 -> f16 round-to-nearest-even used by emulated f16, and the
// uniform parameter block. Kernels are assembled from these strings by gemv.ts, gemm.ts and reduce.ts.

/**
 * f32: f32 tables, scales and arithmetic. f16: shader-f16, table pairs vec2<f16> multiplied by the
 * scale in f16 (FLUTE's __hmul2), accumulation in f32. f16emu: the same f16 results computed in f32
 * with an exact software rounding, for adapters without shader-f16 (f16 storage of the table in
 * workgroup memory, pack2x16float/unpack2x16float).
 */
export type Arith = 'f32' | 'f16' | 'f16emu';

/**
 * Round to nearest even at f16 precision, as f32 (dequantize()'s roundToF16). WGSL leaves the rounding
 * of quantizeToF16 and of f32 -> f16 conversions to the implementation (SwiftShader truncates and
 * flushes subnormals), so the emulated path rounds with integer operations. Values beyond the f16
 * range become +-Inf like an f16 overflow; NaN stays NaN.
 */
const RNE16 = /* wgsl */ `
fn rne16(v: f32) -> f32 {
  // branch-free (select): shader compilers, SwiftShader's in particular, handle it far faster when
  // it is inlined at every weight
  let b = bitcast<u32>(v);
  let sgn = b & 0x80000000u;
  let mag = b & 0x7fffffffu;
  let e = mag >> 23u;
  // f16 normal range (e >= 113): drop 13 mantissa bits, round half to even; a carry moves into the
  // exponent, and reaching 2^16 means f16 overflow (Inf)
  let rn = (mag + 0xfffu + ((mag >> 13u) & 1u)) & 0xffffe000u;
  let normal = select(rn, 0x7f800000u, rn >= 0x47800000u);
  // f16 subnormal range: keep multiples of 2^-24, i.e. drop 126 - e bits of the 24-bit significand
  // (25 or more bits: below half the smallest subnormal, rounds to 0)
  let drop = clamp(126u - min(e, 126u), 14u, 25u);
  let sig = (mag & 0x7fffffu) | 0x800000u;
  let q = sig >> drop;
  let rem = sig & ((1u << drop) - 1u);
  let half = 1u << (drop - 1u);
  let up = (rem > half) | ((rem == half) & ((q & 1u) == 1u));
  let sub = bitcast<u32>(f32(q + select(0u, 1u, up)) * 5.9604644775390625e-8);
  return bitcast<f32>(sgn | select(select(sub, normal, e >= 113u), mag, e == 255u));
}
fn rne16x2(v: vec2<f32>) -> vec2<f32> { return vec2<f32>(rne16(v.x), rne16(v.y)); }
fn rne16x4(v: vec4<f32>) -> vec4<f32> { return vec4<f32>(rne16(v.x), rne16(v.y), rne16(v.z), rne16(v.w)); }
`;

/**
 * Types and helpers every kernel uses, per arithmetic:
 *   lut_t       one workgroup-memory entry of the pair table
 *   tab_t       one entry of a single (b8) table
 *   sc_t        a scale as the multiply sees it
 *   wt_t        a dequantized weight / activation in a GEMM workgroup tile
 *   to_lut(v)   pair (vec2<f32>, already rounded on the CPU) -> lut_t
 *   pmul(e, s)  pair x scale pair -> two weights as vec2<f32>, rounded as dequantize() defines
 *   smul(e, s)  single entry x scale -> weight f32
 *   xr4(v)      activations as the arithmetic sees them (f16-rounded for f16)
 */
export function precisionPrelude(arith: Arith): string {
  if (arith === 'f32') {
    return /* wgsl */ `
alias lut_t = vec2<f32>;
alias tab_t = f32;
alias sc_t = f32;
alias wt_t = f32;
fn to_lut(v: vec2<f32>) -> lut_t { return v; }
fn to_tab(v: f32) -> tab_t { return v; }
fn sc(s: f32) -> sc_t { return s; }
fn pmul(e: lut_t, s: vec2<sc_t>) -> vec2<f32> { return e * s; }
fn smul(e: tab_t, s: sc_t) -> f32 { return e * s; }
fn xr4(v: vec4<f32>) -> vec4<f32> { return v; }
fn to_wt(v: f32) -> wt_t { return v; }
fn from_wt(v: wt_t) -> f32 { return v; }
`;
  }
  if (arith === 'f16') {
    // Table values and scales were rounded to f16 on the CPU, so these conversions are exact.
    return /* wgsl */ `
alias lut_t = vec2<f16>;
alias tab_t = f16;
alias sc_t = f16;
alias wt_t = f16;
fn to_lut(v: vec2<f32>) -> lut_t { return vec2<f16>(v); }
fn to_tab(v: f32) -> tab_t { return f16(v); }
fn sc(s: f32) -> sc_t { return f16(s); }
fn pmul(e: lut_t, s: vec2<sc_t>) -> vec2<f32> { return vec2<f32>(e * s); }
fn smul(e: tab_t, s: sc_t) -> f32 { return f32(e * s); }
fn xr4(v: vec4<f32>) -> vec4<f32> { return vec4<f32>(vec4<f16>(v)); }
fn to_wt(v: f32) -> wt_t { return f16(v); }
fn from_wt(v: wt_t) -> f32 { return f32(v); }
`;
  }
  // f16emu: the f16 x f16 product is exact in f32 (22 significant bits); rne16 then rounds it once,
  // which is exactly an f16 multiply with round-to-nearest-even.
  return /* wgsl */ `
alias lut_t = u32;
alias tab_t = f32;
alias sc_t = f32;
alias wt_t = f32;
fn to_lut(v: vec2<f32>) -> lut_t { return pack2x16float(v); }
fn to_tab(v: f32) -> tab_t { return v; }
fn sc(s: f32) -> sc_t { return s; }
fn pmul(e: lut_t, s: vec2<sc_t>) -> vec2<f32> { return rne16x2(unpack2x16float(e) * s); }
fn smul(e: tab_t, s: sc_t) -> f32 { return rne16(e * s); }
fn xr4(v: vec4<f32>) -> vec4<f32> { return rne16x4(v); }
fn to_wt(v: f32) -> wt_t { return v; }
fn from_wt(v: wt_t) -> f32 { return v; }
${RNE16}`;
}

/** `enable` directives: must open the module. */
export function enables(arith: Arith, subgroups: boolean): string {
  return [arith === 'f16' ? 'enable f16;' : '', subgroups ? 'enable subgroups;' : ''].filter(Boolean).join('\n');
}

/** The uniform block of the matmul kernels (one 256-byte slot per dispatch). */
export const PARAMS = /* wgsl */ `
struct Params {
  n: u32,           // rows of this shard (output columns)
  m: u32,           // activation rows in this dispatch
  row0: u32,        // global output column of the shard's first row
  xs: u32,          // x row stride, in vec4<f32>
  ys: u32,          // y row stride, in f32
  cpr: u32,         // K steps per row (GEMV: 16-byte chunks; GEMM: 32-wide K tiles)
  cps: u32,         // K steps per split
  split_stride: u32,// f32 elements between split-K partial outputs
  wrow: u32,        // main-plane row stride (GEMV: vec4 units; GEMM: u32 units; dense f32 GEMM: vec4)
  srow: u32,        // stored scales per row
  hrow: u32,        // p3 high-plane row stride (GEMV: vec2 units; GEMM: u32 units)
  pad: u32,
}
@group(0) @binding(0) var<uniform> P: Params;
`;

/** Workgroup copy of the pair (or single) table, duplicated `dup` times (FLUTE's Vectorized_D). */
export function lutDecl(entries: number, dup: number, pairs: boolean): string {
  const t = pairs ? 'lut_t' : 'tab_t';
  const src = pairs ? 'vec2<f32>' : 'f32';
  return /* wgsl */ `
@group(0) @binding(5) var<storage, read> tbl: array<${src}>; // [${entries}] pairs (or singles), rounded for the arithmetic
var<workgroup> lut: array<${t}, ${entries * dup}>; // entry i, copy d at i * ${dup} + d
`;
}

/** Fills the duplicated table (all invocations) and waits for it. */
export function lutFill(entries: number, dup: number, wg: number, pairs: boolean): string {
  const conv = pairs ? 'to_lut' : 'to_tab';
  const idx = dup === 1 ? 'i' : `i / ${dup}u`;
  return /* wgsl */ `
  for (var i = tid; i < ${entries * dup}u; i = i + ${wg}u) { lut[i] = ${conv}(tbl[${idx}]); }
  workgroupBarrier();`;
}

/** WGSL expression for the duplicated-table slot of entry `e` (copy chosen by the invocation). */
export function lutAt(e: string, dup: number): string {
  return dup === 1 ? `lut[${e}]` : `lut[(${e}) * ${dup}u + cp]`;
}
