// The GEMV program (M small, decoding): a workgroup owns R output rows and MB activation rows; every
// invocation walks K in 16-byte chunks (one aligned vec4<u32> of codes per row: 32 to 64 weights),
// decodes two weights per table lookup, and keeps R x MB f32 sums, reduced across the workgroup with
// subgroupAdd or a workgroup-memory tree. Split-K: workgroup z takes one slice of the chunks and
// writes a partial output that reduce.ts sums.

import { CHUNK_WEIGHTS } from '../layout.js';
import { PARAMS, enables, lutDecl, lutFill, lutAt, precisionPrelude } from './common.js';
import { pairIndex, pairValue, singleIndex } from './decode.js';
import type { GemvSpec } from './spec.js';

/** Weights per chunk (and per K step) of a GEMV over this weight kind. */
export function gemvChunkWeights(spec: Pick<GemvSpec, 'w'>): number {
  return spec.w.kind === 'lut' ? CHUNK_WEIGHTS[spec.w.format] : 32;
}

function bindings(spec: GemvSpec): string {
  const w = spec.w;
  const lines = [
    '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>; // [m, xs] activations, zero-padded',
    '@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [splits][m, ys] outputs (or split-K partials)',
  ];
  if (w.kind === 'dense') {
    lines.push(`@group(0) @binding(3) var<storage, read> wd: array<vec4<${w.storage === 'f32' ? 'f32' : 'u32'}>>; // [n, wrow] dense rows${w.storage === 'f16' ? ' (f16 bits, 2 per u32)' : ''}`);
    return lines.join('\n');
  }
  lines.push('@group(0) @binding(3) var<storage, read> wq: array<vec4<u32>>; // [n, wrow] code words, 16 bytes per chunk');
  lines.push('@group(0) @binding(4) var<storage, read> scales: array<f32>; // [n, srow] one per unit of K');
  if (w.format === 'p3') lines.push('@group(0) @binding(6) var<storage, read> wh: array<vec2<u32>>; // [n, hrow] 3-bit high plane, 8 bytes per chunk');
  const pairs = w.format !== 'b8';
  lines.push(lutDecl(pairs ? (w.format === 'b2' ? 16 : w.format === 'p3' ? 64 : 256) : 256, spec.dup, pairs));
  return lines.join('\n');
}

/**
 * Scales for row r: one per chunk when the unit covers the chunk, else one per piece (unit >= 8) or
 * per pair/weight (units of 1, 2, 4: group sizes that are not multiples of 8).
 */
function scaleCode(unit: number, cw: number, r: number): { chunk: string[]; piece: string[]; pair: (o: number) => string; one: (o: number) => string } {
  if (unit >= cw) {
    return { chunk: [`let s_${r} = sc(scales[sr_${r} + (c * ${cw}u) / ${unit}u]);`], piece: [], pair: () => `vec2<sc_t>(s_${r})`, one: () => `s_${r}` };
  }
  const base = `sr_${r} + c * ${cw / unit}u`;
  if (unit % 8 === 0) {
    return { chunk: [], piece: [`let s_${r} = sc(scales[${base} + (i * 8u) / ${unit}u]);`], pair: () => `vec2<sc_t>(s_${r})`, one: () => `s_${r}` };
  }
  const at = (o: number) => `sc(scales[${base} + (i * 8u + ${o}u) / ${unit}u])`;
  return { chunk: [], piece: [], pair: (o) => (unit >= 2 ? `vec2<sc_t>(${at(o)})` : `vec2<sc_t>(${at(o)}, ${at(o + 1)})`), one: (o) => at(o) };
}

/** Decodes piece i (8 weights; i is a loop variable) of the chunk for row r into vec4s w0_r, w1_r. */
function piece(spec: GemvSpec, r: number): string[] {
  const w = spec.w;
  const out: string[] = [];
  if (w.kind === 'dense') {
    if (w.storage === 'f32') {
      out.push(`let w0_${r} = wd[wr_${r} + c * 8u + 2u * i];`, `let w1_${r} = wd[wr_${r} + c * 8u + 2u * i + 1u];`);
    } else {
      out.push(`let u_${r} = wd[wr_${r} + c * 4u + i];`);
      out.push(`let w0_${r} = vec4<f32>(unpack2x16float(u_${r}.x), unpack2x16float(u_${r}.y));`);
      out.push(`let w1_${r} = vec4<f32>(unpack2x16float(u_${r}.z), unpack2x16float(u_${r}.w));`);
    }
    return out;
  }
  const s = scaleCode(w.unit, CHUNK_WEIGHTS[w.format], r);
  out.push(...s.piece);
  if (w.format === 'b8') {
    // one lookup per weight: words 2i and 2i+1 of the chunk
    out.push(`let wa_${r} = q_${r}[2u * i];`, `let wb_${r} = q_${r}[2u * i + 1u];`);
    const vals: string[] = [];
    for (let t = 0; t < 2; t++) {
      for (let b = 0; b < 4; b++) vals.push(`smul(${lutAt(singleIndex(t ? `wb_${r}` : `wa_${r}`, b), spec.dup)}, ${s.one(4 * t + b)})`);
    }
    out.push(`let w0_${r} = vec4<f32>(${vals.slice(0, 4).join(', ')});`, `let w1_${r} = vec4<f32>(${vals.slice(4).join(', ')});`);
    return out;
  }
  // shift the piece's bits to the bottom once; each pair is then a constant shift and a mask
  if (w.format === 'b4') out.push(`let wd_${r} = q_${r}[i];`);
  else out.push(`let wd_${r} = q_${r}[i >> 1u] >> (16u * (i & 1u));`);
  if (w.format === 'p3') out.push(`let hd_${r} = h_${r}[i >> 2u] >> (8u * (i & 3u));`);
  const pv: string[] = [];
  for (let p = 0; p < 4; p++) {
    const idx = w.format === 'p3' ? pairIndex('p3', `wd_${r}`, 0, p, `hd_${r}`, 0) : pairIndex(w.format, `wd_${r}`, 0, p);
    pv.push(pairValue(idx, spec.dup, s.pair(2 * p)));
  }
  out.push(`let w0_${r} = vec4<f32>(${pv[0]}, ${pv[1]});`, `let w1_${r} = vec4<f32>(${pv[2]}, ${pv[3]});`);
  return out;
}

function reduction(spec: GemvSpec): string[] {
  const { rows: R, mb: MB, wg } = spec;
  const nv = R * MB;
  const names = Array.from({ length: nv }, (_, v) => `a_${Math.floor(v / MB)}_${v % MB}`);
  const write = [
    `    let r = tid / ${MB}u;`,
    `    let mb = tid % ${MB}u;`,
    '    if (row0 + r < P.n && mrow0 + mb < P.m) {',
    '      y[wid.z * P.split_stride + (mrow0 + mb) * P.ys + P.row0 + row0 + r] = total;',
    '    }',
  ];
  if (spec.reduce === 'subgroup') {
    // Each subgroup sums its members (whatever their layout), lane 0 stores the subgroup's sums in the
    // slot of its subgroup_id, and the first nv invocations add the slots in a fixed order.
    return [
      ...names.map((n, v) => `  let t_${v} = subgroupAdd(${n});`),
      '  if (sg_lane == 0u) {',
      ...names.map((_, v) => `    red[sg_id * ${nv}u + ${v}u] = t_${v};`),
      '  }',
      '  workgroupBarrier();',
      `  if (tid < ${nv}u) {`,
      '    var total = 0.0;',
      `    for (var i = 0u; i < n_sg; i = i + 1u) { total = total + red[i * ${nv}u + tid]; }`,
      ...write,
      '  }',
    ];
  }
  return [
    ...names.map((n, v) => `  red[${v * wg}u + tid] = ${n};`),
    '  workgroupBarrier();',
    `  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {`,
    '    if (tid < s) {',
    ...names.map((_, v) => `      red[${v * wg}u + tid] = red[${v * wg}u + tid] + red[${v * wg}u + tid + s];`),
    '    }',
    '    workgroupBarrier();',
    '  }',
    `  if (tid < ${nv}u) {`,
    `    let total = red[tid * ${wg}u];`,
    ...write,
    '  }',
  ];
}

/** Workgroup-memory bytes of a GEMV program (table copies + reduction slots). */
export function gemvWorkgroupBytes(spec: GemvSpec): number {
  const nv = spec.rows * spec.mb;
  const red = (spec.reduce === 'subgroup' ? spec.maxSubgroups * nv : spec.wg * nv) * 4;
  if (spec.w.kind === 'dense') return red;
  const pairs = spec.w.format !== 'b8';
  const entries = pairs ? (spec.w.format === 'b2' ? 16 : spec.w.format === 'p3' ? 64 : 256) : 256;
  const entryBytes = pairs ? (spec.arith === 'f32' ? 8 : 4) : spec.arith === 'f16' ? 2 : 4;
  return red + entries * spec.dup * entryBytes;
}

export function gemvWgsl(spec: GemvSpec): string {
  const { rows: R, mb: MB, wg, dup } = spec;
  const w = spec.w;
  const cw = gemvChunkWeights(spec);
  const nv = R * MB;
  const lut = w.kind === 'lut';
  const sg = spec.reduce === 'subgroup';
  const builtins = ['@builtin(workgroup_id) wid: vec3<u32>', '@builtin(local_invocation_index) tid: u32'];
  if (sg) builtins.push('@builtin(subgroup_invocation_id) sg_lane: u32', '@builtin(subgroup_id) sg_id: u32', '@builtin(num_subgroups) n_sg: u32');
  const body: string[] = [];
  if (lut && dup > 1) body.push(`  let cp = tid % ${dup}u; // this invocation's copy of the table`);
  if (lut) body.push(lutFill(w.format === 'b2' ? 16 : w.format === 'p3' ? 64 : 256, dup, wg, w.format !== 'b8'));
  body.push(`  let row0 = wid.x * ${R}u;`, `  let mrow0 = wid.y * ${MB}u;`);
  for (let r = 0; r < R; r++) {
    // rows past the shard's end are clamped for loading and skipped when writing
    body.push(`  let rr_${r} = min(row0 + ${r}u, P.n - 1u);`, `  let wr_${r} = rr_${r} * P.wrow;`);
    if (lut) body.push(`  let sr_${r} = rr_${r} * P.srow;`);
    if (lut && w.format === 'p3') body.push(`  let hr_${r} = rr_${r} * P.hrow;`);
  }
  for (let b = 0; b < MB; b++) body.push(`  let xo_${b} = min(mrow0 + ${b}u, P.m - 1u) * P.xs;`);
  for (let r = 0; r < R; r++) for (let b = 0; b < MB; b++) body.push(`  var a_${r}_${b} = 0.0;`);
  body.push('  let c0 = wid.z * P.cps;', '  let c1 = min(c0 + P.cps, P.cpr);');
  body.push(`  for (var c = c0 + tid; c < c1; c = c + ${wg}u) {`);
  const inner: string[] = [];
  for (let r = 0; r < R; r++) {
    if (lut) {
      inner.push(`let q_${r} = wq[wr_${r} + c];`);
      if (w.format === 'p3') inner.push(`let h_${r} = wh[hr_${r} + c];`);
      inner.push(...scaleCode(w.unit, cw, r).chunk);
    }
  }
  // pieces of 8 weights: a loop rather than unrolled code keeps shaders small (compilers unroll it)
  inner.push(`for (var i = 0u; i < ${cw / 8}u; i = i + 1u) {`);
  for (let b = 0; b < MB; b++) {
    inner.push(`  let xa_${b} = xr4(x[xo_${b} + c * ${cw / 4}u + 2u * i]);`, `  let xb_${b} = xr4(x[xo_${b} + c * ${cw / 4}u + 2u * i + 1u]);`);
  }
  for (let r = 0; r < R; r++) {
    inner.push(...piece(spec, r).map((l) => '  ' + l));
    for (let b = 0; b < MB; b++) inner.push(`  a_${r}_${b} = a_${r}_${b} + dot(w0_${r}, xa_${b}) + dot(w1_${r}, xb_${b});`);
  }
  inner.push('}');
  body.push(...inner.map((l) => '    ' + l), '  }');
  body.push(...reduction(spec));
  const redDecl = sg
    ? `var<workgroup> red: array<f32, ${spec.maxSubgroups * nv}>; // [subgroups, ${nv}] per-subgroup sums`
    : `var<workgroup> red: array<f32, ${wg * nv}>; // [${nv}, ${wg}] tree reduction`;
  return [
    enables(spec.arith, sg),
    `// GEMV ${JSON.stringify(spec)}`,
    precisionPrelude(spec.arith),
    PARAMS,
    bindings(spec),
    redDecl,
    '',
    `@compute @workgroup_size(${wg})`,
    `fn main(${builtins.join(', ')}) {`,
    ...body,
    '}',
    '',
  ].join('\n');
}
