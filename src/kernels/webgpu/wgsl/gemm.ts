// The tiled GEMM program (M > gemvMaxM, prefill): a workgroup computes a TM x TN output tile. Per K
// step of 32 it stages the activations [32, TM] and the dequantized weights [32, TN] in workgroup
// memory (each weight decoded once, through the duplicated pair table, and reused by TM rows), then
// every invocation accumulates a 4 x 4 block in f32. Split-K: workgroup z takes a slice of the steps.

import { PARAMS, enables, lutDecl, lutFill, lutAt, precisionPrelude } from './common.js';
import { ScaleRun, pairIndex, pairValue, singleIndex } from './decode.js';
import { GEMM_TK, type GemmSpec } from './spec.js';

function bindings(spec: GemmSpec): string {
  const w = spec.w;
  const lines = [
    '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>; // [m, xs] activations, zero-padded',
    '@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [splits][m, ys] outputs (or split-K partials)',
  ];
  if (w.kind === 'dense') {
    lines.push(`@group(0) @binding(3) var<storage, read> wd: array<vec4<${w.storage === 'f32' ? 'f32' : 'u32'}>>; // [n, wrow] dense rows`);
    return lines.join('\n');
  }
  lines.push('@group(0) @binding(3) var<storage, read> wq: array<u32>; // [n, wrow] code words');
  lines.push('@group(0) @binding(4) var<storage, read> scales: array<f32>; // [n, srow]');
  if (w.format === 'p3') lines.push('@group(0) @binding(6) var<storage, read> wh: array<u32>; // [n, hrow] 3-bit high plane');
  const pairs = w.format !== 'b8';
  lines.push(lutDecl(pairs ? (w.format === 'b2' ? 16 : w.format === 'p3' ? 64 : 256) : 256, spec.dup, pairs));
  return lines.join('\n');
}

/** Decodes the 16 weights k0 + 16*hh .. +15 of row rr into v_0..v_15 (f32). */
function decodeItem(spec: GemmSpec): string[] {
  const w = spec.w;
  const out: string[] = [];
  const v = (e: number) => `v_${e}`;
  if (w.kind === 'dense') {
    if (w.storage === 'f32') {
      for (let t = 0; t < 4; t++) {
        out.push(`let d_${t} = wd[rr * P.wrow + ks * 8u + hh * 4u + ${t}u];`);
        for (let j = 0; j < 4; j++) out.push(`let ${v(4 * t + j)} = d_${t}.${'xyzw'[j]};`);
      }
    } else {
      for (let t = 0; t < 2; t++) {
        out.push(`let d_${t} = wd[rr * P.wrow + ks * 4u + hh * 2u + ${t}u];`);
        for (let j = 0; j < 4; j++) out.push(`let h_${t}_${j} = unpack2x16float(d_${t}.${'xyzw'[j]});`);
        for (let j = 0; j < 4; j++) out.push(`let ${v(8 * t + 2 * j)} = h_${t}_${j}.x;`, `let ${v(8 * t + 2 * j + 1)} = h_${t}_${j}.y;`);
      }
    }
    return out;
  }
  const u = w.unit;
  // index of the item's first unit in `scales` (items start at multiples of 16 and unit | 16 or 16 | unit)
  const base = u >= 16 ? `rr * P.srow + (ks * ${GEMM_TK}u + hh * 16u) / ${u}u` : `rr * P.srow + ks * ${GEMM_TK / u}u + hh * ${16 / u}u`;
  const s = new ScaleRun(u, 16, 's', base);
  if (w.format === 'b8') {
    for (let t = 0; t < 4; t++) {
      out.push(`let q_${t} = wq[rr * P.wrow + ks * 8u + hh * 4u + ${t}u];`);
      for (let b = 0; b < 4; b++) {
        const o = 4 * t + b;
        out.push(...s.need(o, 1), `let ${v(o)} = smul(${lutAt(singleIndex(`q_${t}`, b), spec.dup)}, ${s.one(o)});`);
      }
    }
    return out;
  }
  if (w.format === 'b4') out.push('let q_0 = wq[rr * P.wrow + ks * 4u + hh * 2u];', 'let q_1 = wq[rr * P.wrow + ks * 4u + hh * 2u + 1u];');
  else out.push('let q_0 = wq[rr * P.wrow + ks * 2u + hh];');
  if (w.format === 'p3') out.push('let hw = wh[rr * P.hrow + ks] >> (hh * 16u);');
  for (let p = 0; p < 8; p++) {
    const o = 2 * p;
    let idx: string;
    if (w.format === 'b4') idx = pairIndex('b4', `q_${p >> 2}`, 0, p & 3);
    else if (w.format === 'b2') idx = pairIndex('b2', 'q_0', 0, p);
    else idx = pairIndex('p3', 'q_0', 0, p, 'hw', 0);
    out.push(...s.need(o), `let pr_${p} = ${pairValue(idx, spec.dup, s.pair(o))};`);
    out.push(`let ${v(o)} = pr_${p}.x;`, `let ${v(o + 1)} = pr_${p}.y;`);
  }
  return out;
}

export function gemmWorkgroupSize(spec: Pick<GemmSpec, 'tm' | 'tn'>): number {
  return (spec.tm / 4) * (spec.tn / 4);
}

/** Workgroup-memory bytes of a GEMM program (tiles + table copies). */
export function gemmWorkgroupBytes(spec: GemmSpec): number {
  const wt = spec.arith === 'f16' ? 2 : 4;
  let bytes = GEMM_TK * (spec.tm + spec.tn) * wt;
  if (spec.w.kind === 'lut') {
    const pairs = spec.w.format !== 'b8';
    const entries = pairs ? (spec.w.format === 'b2' ? 16 : spec.w.format === 'p3' ? 64 : 256) : 256;
    bytes += entries * spec.dup * (pairs ? (spec.arith === 'f32' ? 8 : 4) : spec.arith === 'f16' ? 2 : 4);
  }
  // workgroup arrays are rounded up to 16 bytes each by some compilers
  return bytes + 48;
}

export function gemmWgsl(spec: GemmSpec): string {
  const { tm: TM, tn: TN, dup } = spec;
  const wg = gemmWorkgroupSize(spec);
  const lut = spec.w.kind === 'lut';
  const body: string[] = [];
  if (lut && dup > 1) body.push(`  let cp = tid % ${dup}u;`);
  if (lut && spec.w.kind === 'lut') body.push(lutFill(spec.w.format === 'b2' ? 16 : spec.w.format === 'p3' ? 64 : 256, dup, wg, spec.w.format !== 'b8'));
  body.push(
    `  let tx = tid % ${TN / 4}u; // this invocation's 4 output columns: n0 + tx * 4 ..`,
    `  let ty = tid / ${TN / 4}u; // and 4 activation rows: m0 + ty * 4 ..`,
    `  let n0 = wid.x * ${TN}u;`,
    `  let m0 = wid.y * ${TM}u;`,
    '  var acc_0 = vec4<f32>(0.0);',
    '  var acc_1 = vec4<f32>(0.0);',
    '  var acc_2 = vec4<f32>(0.0);',
    '  var acc_3 = vec4<f32>(0.0);',
    '  let s0 = wid.z * P.cps;',
    '  let s1 = min(s0 + P.cps, P.cpr);',
    '  for (var ks = s0; ks < s1; ks = ks + 1u) {',
    `    // activations [32, ${TM}], k-major; rows past M are zero`,
    `    for (var it = tid; it < ${TM * 8}u; it = it + ${wg}u) {`,
    '      let mi = it / 8u;',
    '      let kq = it % 8u;',
    '      var xv = vec4<f32>(0.0);',
    '      if (m0 + mi < P.m) { xv = xr4(x[(m0 + mi) * P.xs + ks * 8u + kq]); }',
    ...[0, 1, 2, 3].map((j) => `      Xs[(kq * 4u + ${j}u) * ${TM}u + mi] = to_wt(xv.${'xyzw'[j]});`),
    '    }',
    `    // weights [32, ${TN}], k-major: 16 per item, two items per row`,
    `    for (var it = tid; it < ${TN * 2}u; it = it + ${wg}u) {`,
    '      let ni = it >> 1u;',
    '      let hh = it & 1u;',
    '      let rr = min(n0 + ni, P.n - 1u);',
    ...decodeItem(spec).map((l) => '      ' + l),
    ...Array.from({ length: 16 }, (_, e) => `      Ws[(hh * 16u + ${e}u) * ${TN}u + ni] = to_wt(v_${e});`),
    '    }',
    '    workgroupBarrier();',
    `    for (var kk = 0u; kk < ${GEMM_TK}u; kk = kk + 1u) {`,
    `      let wb = kk * ${TN}u + tx * 4u;`,
    `      let xb = kk * ${TM}u + ty * 4u;`,
    '      let b = vec4<f32>(from_wt(Ws[wb]), from_wt(Ws[wb + 1u]), from_wt(Ws[wb + 2u]), from_wt(Ws[wb + 3u]));',
    '      let a = vec4<f32>(from_wt(Xs[xb]), from_wt(Xs[xb + 1u]), from_wt(Xs[xb + 2u]), from_wt(Xs[xb + 3u]));',
    '      acc_0 = acc_0 + a.x * b;',
    '      acc_1 = acc_1 + a.y * b;',
    '      acc_2 = acc_2 + a.z * b;',
    '      acc_3 = acc_3 + a.w * b;',
    '    }',
    '    workgroupBarrier();',
    '  }',
  );
  const accs = ['acc_0', 'acc_1', 'acc_2', 'acc_3'];
  for (let i = 0; i < 4; i++) {
    body.push(`  if (m0 + ty * 4u + ${i}u < P.m) {`, `    let yo = wid.z * P.split_stride + (m0 + ty * 4u + ${i}u) * P.ys + P.row0;`);
    for (let j = 0; j < 4; j++) body.push(`    if (n0 + tx * 4u + ${j}u < P.n) { y[yo + n0 + tx * 4u + ${j}u] = ${accs[i]}.${'xyzw'[j]}; }`);
    body.push('  }');
  }
  return [
    enables(spec.arith, false),
    `// GEMM ${JSON.stringify(spec)}`,
    precisionPrelude(spec.arith),
    PARAMS,
    bindings(spec),
    `var<workgroup> Ws: array<wt_t, ${GEMM_TK * TN}>; // [32, ${TN}] dequantized weights, k-major`,
    `var<workgroup> Xs: array<wt_t, ${GEMM_TK * TM}>; // [32, ${TM}] activations, k-major`,
    '',
    `@compute @workgroup_size(${wg})`,
    'fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {',
    ...body,
    '}',
    '',
  ].join('\n');
}
