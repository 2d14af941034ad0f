// WGSL for the non-matmul steps of a LLaMA forward pass: RMSNorm, bias add, RoPE (both layouts, from
// precomputed cos/sin tables), the KV-cache write, causal grouped-query attention, SwiGLU and the
// residual add. All f32. The model's dimensions are compile-time constants (one program set per model
// shape); the chunk's row count m and first position pos0 come from the `Step` uniform, written before
// each submit, so recorded bind groups stay valid from token to token.
// Activation tensors are [rows, stride] f32 with stride = cols rounded up to 64 and zero padding, the
// layout the matmul kernels read and write (see types.ts GpuTensor).

/** The dimensions every op program is specialized for. Strides are in f32 elements. */
export interface OpsShape {
  readonly dim: number;
  readonly dimStride: number;
  readonly qStride: number;
  readonly kvDim: number; // nKvHeads * headDim
  readonly kvStride: number;
  readonly hiddenStride: number;
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly headDim: number;
  readonly seqLen: number; // KV cache positions
  readonly normEps: number;
  readonly ropeLayout: 'interleaved' | 'half';
}

export type OpName = 'rmsnorm' | 'rmsnormLast' | 'addBias' | 'ropeQ' | 'ropeStoreKv' | 'attention' | 'swiglu' | 'add';

/** Invocations per workgroup: rows reductions (RMSNorm, attention) and elementwise kernels. */
export const OPS_WG = 64;
export const ELEMWISE_WG = 256;

/** m: rows in this chunk; pos0: position of row 0. */
const STEP = /* wgsl */ `
struct Step { m: u32, pos0: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> S: Step;
`;

/** A WGSL f32 literal that parses back to exactly Math.fround(v). */
function f32(v: number): string {
  const s = Math.fround(v).toPrecision(9);
  return /[.e]/.test(s) ? s : `${s}.0`;
}

/** Tree sum (or max) of red[0..OPS_WG) into red[0]; every invocation must call it. */
function reduceTree(op: 'sum' | 'max'): string {
  const combine = op === 'sum' ? 'red[tid] + red[tid + s]' : 'max(red[tid], red[tid + s])';
  return /* wgsl */ `
  for (var s = ${OPS_WG / 2}u; s > 0u; s = s >> 1u) {
    if (tid < s) { red[tid] = ${combine}; }
    workgroupBarrier();
  }`;
}

/** out[r] = w * x[src] / sqrt(mean(x[src]^2) + eps), one workgroup per row; last: src = m - 1, r = 0. */
function rmsnormWgsl(sh: OpsShape, last: boolean): string {
  return /* wgsl */ `// RMSNorm${last ? ' of the last row only' : ''}
${STEP}
@group(0) @binding(1) var<storage, read> x: array<f32>; // [m, ${sh.dimStride}]
@group(0) @binding(2) var<storage, read> w: array<f32>; // [${sh.dim}]
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // [m, ${sh.dimStride}]
var<workgroup> red: array<f32, ${OPS_WG}>;

@compute @workgroup_size(${OPS_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wid.x;
  if (r >= S.m) { return; } // workgroup-uniform
  let src = (${last ? 'S.m - 1u' : 'r'}) * ${sh.dimStride}u;
  var ss = 0.0;
  for (var j = tid; j < ${sh.dim}u; j = j + ${OPS_WG}u) { let v = x[src + j]; ss = ss + v * v; }
  red[tid] = ss;
  workgroupBarrier();${reduceTree('sum')}
  let inv = 1.0 / sqrt(red[0] / ${f32(sh.dim)} + ${f32(sh.normEps)});
  for (var j = tid; j < ${sh.dim}u; j = j + ${OPS_WG}u) { y[r * ${sh.dimStride}u + j] = w[j] * (inv * x[src + j]); }
}
`;
}

/** x[i, j] += b[j] over cols, for a tensor of the given stride (cols and stride are uniforms here). */
function addBiasWgsl(): string {
  return /* wgsl */ `// bias add
${STEP}
struct Dims { cols: u32, stride: u32, pad0: u32, pad1: u32 }
@group(0) @binding(1) var<uniform> D: Dims;
@group(0) @binding(2) var<storage, read_write> x: array<f32>; // [m, stride]
@group(0) @binding(3) var<storage, read> b: array<f32>; // [cols]

@compute @workgroup_size(${OPS_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= D.cols || gid.y >= S.m) { return; }
  let at = gid.y * D.stride + gid.x;
  x[at] = x[at] + b[gid.x];
}
`;
}

/**
 * The element pair (a, b) that RoPE pair p of head h rotates: interleaved (llama2.c / Meta) pairs
 * (2p, 2p + 1), half (Hugging Face) pairs (p, p + headDim/2).
 */
function ropePair(sh: OpsShape): string {
  const half = sh.headDim / 2;
  return sh.ropeLayout === 'interleaved'
    ? `fn pair_a(h: u32, p: u32) -> u32 { return h * ${sh.headDim}u + 2u * p; }\nconst PARTNER = 1u;`
    : `fn pair_a(h: u32, p: u32) -> u32 { return h * ${sh.headDim}u + p; }\nconst PARTNER = ${half}u;`;
}

/** Rotates q in place: x' = x cos - y sin, y' = x sin + y cos at position pos0 + row. */
function ropeQWgsl(sh: OpsShape): string {
  const half = sh.headDim / 2;
  return /* wgsl */ `// RoPE on q (${sh.ropeLayout} layout)
${STEP}
@group(0) @binding(1) var<storage, read_write> q: array<f32>; // [m, ${sh.qStride}]
@group(0) @binding(2) var<storage, read> rcos: array<f32>; // [seqLen, ${half}]
@group(0) @binding(3) var<storage, read> rsin: array<f32>; // [seqLen, ${half}]
${ropePair(sh)}

@compute @workgroup_size(${OPS_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y;
  if (gid.x >= ${sh.nHeads * half}u || i >= S.m) { return; }
  let h = gid.x / ${half}u;
  let p = gid.x % ${half}u;
  let t = (S.pos0 + i) * ${half}u + p;
  let fc = rcos[t];
  let fs = rsin[t];
  let a = i * ${sh.qStride}u + pair_a(h, p);
  let x0 = q[a];
  let x1 = q[a + PARTNER];
  q[a] = x0 * fc - x1 * fs;
  q[a + PARTNER] = x0 * fs + x1 * fc;
}
`;
}

/** Rotates k and writes it, and v as is, into the layer's caches at position pos0 + row. */
function ropeStoreKvWgsl(sh: OpsShape): string {
  const half = sh.headDim / 2;
  return /* wgsl */ `// RoPE on k (${sh.ropeLayout} layout), then k and v into the KV cache
${STEP}
@group(0) @binding(1) var<storage, read> k: array<f32>; // [m, ${sh.kvStride}]
@group(0) @binding(2) var<storage, read> v: array<f32>; // [m, ${sh.kvStride}]
@group(0) @binding(3) var<storage, read> rcos: array<f32>; // [seqLen, ${half}]
@group(0) @binding(4) var<storage, read> rsin: array<f32>; // [seqLen, ${half}]
@group(0) @binding(5) var<storage, read_write> kc: array<f32>; // [seqLen, ${sh.kvDim}]
@group(0) @binding(6) var<storage, read_write> vc: array<f32>; // [seqLen, ${sh.kvDim}]
${ropePair(sh)}

@compute @workgroup_size(${OPS_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y;
  if (gid.x >= ${sh.nKvHeads * half}u || i >= S.m) { return; }
  let h = gid.x / ${half}u;
  let p = gid.x % ${half}u;
  let pos = S.pos0 + i;
  let t = pos * ${half}u + p;
  let fc = rcos[t];
  let fs = rsin[t];
  let e = pair_a(h, p);
  let a = i * ${sh.kvStride}u + e;
  let x0 = k[a];
  let x1 = k[a + PARTNER];
  let c = pos * ${sh.kvDim}u + e;
  kc[c] = x0 * fc - x1 * fs;
  kc[c + PARTNER] = x0 * fs + x1 * fc;
  vc[c] = v[a];
  vc[c + PARTNER] = v[a + PARTNER];
}
`;
}

/**
 * Causal grouped-query attention, one workgroup per (query head h, row i): scores over positions
 * 0..pos0+i into a global scratch row, softmax, then the weighted sum of values. Query head h reads
 * key/value head h / (nHeads / nKvHeads).
 * TODO: decode runs only nHeads workgroups; a split over positions (flash-decoding) would fill a big GPU.
 */
function attentionWgsl(sh: OpsShape): string {
  const group = sh.nHeads / sh.nKvHeads;
  return /* wgsl */ `// causal GQA attention over the KV cache
${STEP}
@group(0) @binding(1) var<storage, read> q: array<f32>; // [m, ${sh.qStride}] (rotated)
@group(0) @binding(2) var<storage, read> kc: array<f32>; // [seqLen, ${sh.kvDim}]
@group(0) @binding(3) var<storage, read> vc: array<f32>; // [seqLen, ${sh.kvDim}]
@group(0) @binding(4) var<storage, read_write> sc: array<f32>; // [maxBatch, ${sh.nHeads}, ${sh.seqLen}] scores scratch
@group(0) @binding(5) var<storage, read_write> att: array<f32>; // [m, ${sh.qStride}]
var<workgroup> qh: array<f32, ${sh.headDim}>;
var<workgroup> red: array<f32, ${OPS_WG}>;

@compute @workgroup_size(${OPS_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let h = wid.x;
  let i = wid.y;
  let last = S.pos0 + i; // causal mask: positions 0..last
  let kvo = (h / ${group}u) * ${sh.headDim}u;
  let qo = i * ${sh.qStride}u + h * ${sh.headDim}u;
  let so = (i * ${sh.nHeads}u + h) * ${sh.seqLen}u;
  for (var d = tid; d < ${sh.headDim}u; d = d + ${OPS_WG}u) { qh[d] = q[qo + d]; }
  workgroupBarrier();

  // scores s_t = q . k_t / sqrt(headDim), and their max
  var mx = -3.4028234e38; // -FLT_MAX (WGSL has no infinity literal)
  for (var t = tid; t <= last; t = t + ${OPS_WG}u) {
    let ko = t * ${sh.kvDim}u + kvo;
    var dot = 0.0;
    for (var d = 0u; d < ${sh.headDim}u; d = d + 1u) { dot = dot + qh[d] * kc[ko + d]; }
    let s = dot * ${f32(1 / Math.sqrt(sh.headDim))};
    sc[so + t] = s;
    mx = max(mx, s);
  }
  red[tid] = mx;
  workgroupBarrier();${reduceTree('max')}
  mx = red[0];
  workgroupBarrier(); // everyone has read red[0] before it is reused

  // softmax numerators e_t = exp(s_t - max), and their sum
  var sum = 0.0;
  for (var t = tid; t <= last; t = t + ${OPS_WG}u) {
    let e = exp(sc[so + t] - mx);
    sc[so + t] = e;
    sum = sum + e;
  }
  red[tid] = sum;
  storageBarrier(); // e_t written by every invocation, read by all below
  workgroupBarrier();${reduceTree('sum')}
  let inv = 1.0 / red[0];

  // out_d = sum_t e_t v_t[d] / sum
  for (var d = tid; d < ${sh.headDim}u; d = d + ${OPS_WG}u) {
    var acc = 0.0;
    for (var t = 0u; t <= last; t = t + 1u) { acc = acc + sc[so + t] * vc[t * ${sh.kvDim}u + kvo + d]; }
    att[qo + d] = acc * inv;
  }
}
`;
}

/** h = silu(g) * u elementwise over [m, hiddenStride] (padding: silu(0) * 0 = 0). */
function swigluWgsl(sh: OpsShape): string {
  return /* wgsl */ `// SwiGLU
${STEP}
@group(0) @binding(1) var<storage, read_write> g: array<f32>; // [m, ${sh.hiddenStride}] gate in, result out
@group(0) @binding(2) var<storage, read> u: array<f32>; // [m, ${sh.hiddenStride}] up

@compute @workgroup_size(${ELEMWISE_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  if (j >= S.m * ${sh.hiddenStride}u) { return; }
  let a = g[j];
  g[j] = (a / (1.0 + exp(-a))) * u[j];
}
`;
}

/** x += y elementwise over [m, dimStride] (the residual connection). */
function addWgsl(sh: OpsShape): string {
  return /* wgsl */ `// residual add
${STEP}
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // [m, ${sh.dimStride}]
@group(0) @binding(2) var<storage, read> y: array<f32>; // [m, ${sh.dimStride}]

@compute @workgroup_size(${ELEMWISE_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  if (j >= S.m * ${sh.dimStride}u) { return; }
  x[j] = x[j] + y[j];
}
`;
}

/** The WGSL of one op for a model shape. */
export function opWgsl(op: OpName, sh: OpsShape): string {
  switch (op) {
    case 'rmsnorm':
      return rmsnormWgsl(sh, false);
    case 'rmsnormLast':
      return rmsnormWgsl(sh, true);
    case 'addBias':
      return addBiasWgsl();
    case 'ropeQ':
      return ropeQWgsl(sh);
    case 'ropeStoreKv':
      return ropeStoreKvWgsl(sh);
    case 'attention':
      return attentionWgsl(sh);
    case 'swiglu':
      return swigluWgsl(sh);
    case 'add':
      return addWgsl(sh);
  }
}
