// The split-K second pass: y[m, n] = sum over s of partial[s][m, n], in a fixed order (s ascending) so
// results are deterministic. WGSL gives no forward-progress guarantee between workgroups, so FLUTE's
// Stream-K fix-up (the last block spins on a flag, then reduces) becomes this separate dispatch.

import { PARAMS } from './common.js';

export const REDUCE_WG = 256;

/** Reuses the Params block: n = N (all shards), m, ys, cpr = number of splits, pad = workgroups along x. */
export function reduceWgsl(): string {
  return [
    '// split-K reduction',
    PARAMS,
    '@group(0) @binding(1) var<storage, read> part: array<f32>; // [splits][m, ys] partial outputs',
    '@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [m, ys]',
    '',
    `@compute @workgroup_size(${REDUCE_WG})`,
    'fn main(@builtin(global_invocation_id) gid: vec3<u32>) {',
    `  let i = gid.y * (P.pad * ${REDUCE_WG}u) + gid.x;`,
    '  if (i >= P.m * P.n) { return; }',
    '  let mm = i / P.n;',
    '  let nn = i % P.n;',
    '  var s = 0.0;',
    '  for (var t = 0u; t < P.cpr; t = t + 1u) { s = s + part[t * P.split_stride + mm * P.ys + nn]; }',
    '  y[mm * P.ys + nn] = s;',
    '}',
    '',
  ].join('\n');
}
