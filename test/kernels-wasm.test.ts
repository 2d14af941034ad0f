// The wasm backend against the reference: exact f32 path (1e-5 relative and a per-element summation
// bound), integer-activation path (a per-element bound derived from the codebook and activation
// quantization steps), generic and dense kernels, identity round trips, threads (work sharing, the
// barrier's timeout), each V8 compiler tier alone, guards, bad inputs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { FluteError } from '../src/errors.js';
import { dequantize, dequantizeRow, groupsPerRow, type DenseLinear, type Linear, type QuantizedLinear } from '../src/quant/linear.js';
import { packIndices } from '../src/quant/packing.js';
import { buildTable } from '../src/quant/tables.js';
import { quantizeRtn } from '../src/quant/rtn.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import { createBackend, createModelBackend } from '../src/kernels/registry.js';
import type { KernelBackend } from '../src/kernels/types.js';
import { loadModel } from '../src/model/load.js';
import { bundledModelPath } from '../src/cli/paths.js';
import { INT_PATH_MAX_REL_ERROR, affineOffset, createWasmBackend, newerNodeHint, packForWasm, wasmCapabilities, type WasmKernelBackend, type WasmMatmulOptions } from '../src/kernels/wasm/index.js';
import { buildKernelModule, type KernelVariant } from '../src/kernels/wasm/codegen.js';
import { FuncBuilder, I32, ModuleBuilder, Op } from '../src/kernels/wasm/encoder.js';
import { ThreadPool } from '../src/kernels/wasm/threads.js';
import { buildCodebook, quantizeActivations, roundUp, tileF32, type ActGeometry } from '../src/kernels/wasm/layout.js';
import { identity, randInt, randn, relErr, rng } from './helpers.js';
import { roundToF16 } from '../src/format/half.js';

const U = 2 ** -24; // f32 unit roundoff
const isCode = (code: string) => (e: unknown) => e instanceof FluteError && e.code === code;

// ---------------------------------------------------------------------------------------------
// Backends: one per (variant, threads); relaxed where the runtime has it, SIMD128 always. Where the
// relaxed kernels take 8-bit codes, one more relaxed backend without them keeps the wide kernels (what
// 8-bit tables ran before, and still run where the relaxed dot is not exact for 8-bit codes) covered.

const caps = await wasmCapabilities();
const backends: { label: string; be: WasmKernelBackend }[] = [];
for (const threads of [1, 2]) {
  backends.push({ label: `simd128,threads=${threads}`, be: await createWasmBackend({ threads, relaxed: false }) });
  if (caps.relaxed) {
    const be = await createWasmBackend({ threads });
    if (be.relaxed) backends.push({ label: `relaxed,threads=${threads}`, be });
    else be.dispose();
    if (threads === 1 && be.relaxed8) {
      const wide = await createWasmBackend({ threads, relaxed8: false });
      assert.ok(wide.relaxed && !wide.relaxed8, `relaxed8: false: ${wide.info().variant}`);
      backends.push({ label: `relaxedwide,threads=${threads}`, be: wide });
    }
  }
}
const ref = createRefBackend();
after(() => backends.forEach(({ be }) => be.dispose()));

test('wasm: variants report what runs; relaxed SIMD is used where available', () => {
  for (const { label, be } of backends) {
    const v = be.info().variant;
    assert.match(v, /thread/, label);
    assert.equal(v.startsWith('SIMD128 + relaxed'), be.relaxed, `${label}: ${v}`);
    assert.equal(v.includes('8-bit codes'), be.relaxed8, `${label}: ${v}`);
    assert.ok(!be.relaxed8 || be.relaxed, `${label}: 8-bit codes only on the relaxed kernels`);
    // V8 on x64 runs the relaxed dot as pmaddubsw (or vpdpbusd), which reads the codes as unsigned bytes:
    // the probe must find that, or IQ4_NL loses its fast path there
    if (be.relaxed && !label.startsWith('relaxedwide') && process.arch === 'x64' && 'v8' in process.versions) assert.ok(be.relaxed8, `${label}: 8-bit codes on x64 V8: ${v}`);
  }
  assert.ok(backends.some((b) => b.be.threads === 2), 'a 2-thread backend started');
  if (caps.relaxed) assert.ok(backends.some((b) => b.be.relaxed), 'relaxed SIMD passed its self-check in at least one form');
});

// ---------------------------------------------------------------------------------------------
// Layers

function randomLayer(r: () => number, bits: number, n: number, k: number, g: number, tableKind: 'nf' | 'int' | 'random'): QuantizedLinear {
  const G = groupsPerRow(k, g);
  const idx = Uint8Array.from({ length: n * k }, () => Math.floor(r() * 2 ** bits));
  const table =
    tableKind === 'random' ? Float32Array.from({ length: 2 ** bits }, () => Math.fround((r() - 0.3) * 3)) : buildTable(tableKind, bits);
  // f16-like scales of both signs (the format allows negative scales)
  const scales = Float32Array.from({ length: n * G }, () => Math.fround((r() < 0.2 ? -1 : 1) * (0.01 + r())));
  return { kind: 'quantized', n, k, bits, groupSize: g, tableKind: tableKind === 'random' ? 'custom' : tableKind, table, scaleDtype: 'f32', scales, packed: packIndices(idx, n, k, bits) };
}

function gLabel(k: number, g: number): string {
  return k % g !== 0 || g % 32 !== 0 ? `ragged${g}` : String(g);
}

// ---------------------------------------------------------------------------------------------
// Bounds (derived here from the step sizes, independently of the backend's own self-check)

/** Reference y (f64 sum over the reference's f32 weights) and sum |W x| per element. */
function reference(w: Float32Array, x: Float32Array, m: number, n: number, k: number): { y: Float64Array; mag: Float64Array } {
  const y = new Float64Array(m * n);
  const mag = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
    let s = 0;
    let a = 0;
    for (let c = 0; c < k; c++) {
      const p = w[j * k + c] * x[i * k + c];
      s += p;
      a += Math.abs(p);
    }
    y[i * n + j] = s;
    mag[i * n + j] = a;
  }
  return { y, mag };
}

/**
 * Exact f32 paths (lut exact, generic, dense): each output is a sequential f32 sum of its K products
 * (Kp with zero padding; split in 2-4 interleaved chains at small M, added at the end), FMA or
 * mul+add, so |err| <= gamma_{Kp+2} sum|W x| (Higham, Lemma 3.1/Eq. 3.5) with the reference's own
 * weights W = fl(T s); plus the reference's rounding of its f64 sum to f32 (u |y|).
 */
function exactBound(layer: Linear, mag: number, y: number): number {
  const kp = layer.kind === 'quantized' && layer.bits <= 4 && layer.groupSize >= 16 ? groupsPerRow(layer.k, layer.groupSize) * roundUp(layer.groupSize, 32) : layer.k;
  const terms = kp + 2;
  const gamma = (terms * U) / (1 - terms * U);
  return gamma * mag + U * Math.abs(y) + 1e-30;
}

/** Activation range and code range of each integer path (index.ts ACT_QMAX, layout.ts *_CODE_RANGE), restated. */
const INT_PATHS = {
  relaxed7: { Q: 127, lo: -64, hi: 63 },
  relaxed8: { Q: 64, lo: -128, hi: 127 },
  simd: { Q: 32767, lo: -127, hi: 127 },
} as const;
type IntPath = keyof typeof INT_PATHS;

/**
 * Integer-activation path. With T_j ~= t c_j (codebook, |T_j - t c_j| <= eT = t0/2) and x ~= d q
 * per activation block (|x - d q| <= delta = amax (1/(2Q) + 4u), amax over the block, bounded here by
 * the amax of the enclosing group), the kernel computes sum_k s_k t c_k d q_k exactly in integers
 * per block (8-bit codes on the relaxed dot: exact because |q| <= 64 keeps every i16 pair sum within
 * 2 * 64 * 255 = 32640) and folds each block with f32 ops, so
 *   |err| <= sum_k |s_k| (eT |x_k| + (|T_k| + eT) delta_k)                  table + activation steps
 *          + (B + 6) u sum_k |s_k| (|T_k| + eT) (|x_k| + delta_k)           f32 folds over B blocks
 *          + u sum|W x| + u |y|                                             the reference's roundings
 * Codes in [lo, hi]: t0 = max(max T/hi, min T/lo) (nudged up by 2^-20 relative in the codebook
 * builder); relaxed7: Q = 127, [-64, 63]; relaxed8: Q = 64, [-128, 127]; simd: Q = 32767, [-127, 127].
 */
function intBounds(layer: QuantizedLinear, x: Float32Array, m: number, path: IntPath): Float64Array {
  const { n, k, groupSize: g, table } = layer;
  const { Q, lo, hi } = INT_PATHS[path];
  let tmax = 0;
  let tmin = 0;
  for (const v of table) {
    tmax = Math.max(tmax, v);
    tmin = Math.min(tmin, v);
  }
  const t0 = Math.max(tmax / hi, tmin / lo) * (1 + 2 ** -19);
  const eT = t0 / 2;
  const G = groupsPerRow(k, g);
  const B = (G * roundUp(g, 32)) / 32;
  const idx = new Uint8Array(n * k);
  const w = dequantize(layer);
  // indices back from the canonical stream
  for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) {
    const bit = c * layer.bits;
    const rowBytes = Math.ceil((k * layer.bits) / 8);
    const word = layer.packed[r * rowBytes + (bit >> 3)] | ((bit & 7) + layer.bits > 8 ? layer.packed[r * rowBytes + (bit >> 3) + 1] << 8 : 0);
    idx[r * k + c] = (word >> (bit & 7)) & ((1 << layer.bits) - 1);
  }
  const delta = new Float64Array(m * G);
  for (let i = 0; i < m; i++) for (let gi = 0; gi < G; gi++) {
    let amax = 0;
    for (let c = gi * g; c < Math.min(k, (gi + 1) * g); c++) amax = Math.max(amax, Math.abs(x[i * k + c]));
    delta[i * G + gi] = amax * (1 / (2 * Q) + 4 * U);
  }
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
    let steps = 0;
    let folds = 0;
    let y = 0;
    let mag = 0;
    for (let c = 0; c < k; c++) {
      const s = Math.abs(layer.scales[j * G + Math.floor(c / g)]);
      const t = Math.abs(table[idx[j * k + c]]);
      const xv = Math.abs(x[i * k + c]);
      const d = delta[i * G + Math.floor(c / g)];
      steps += s * (eT * xv + (t + eT) * d);
      folds += s * (t + eT) * (xv + d);
      y += w[j * k + c] * x[i * k + c];
      mag += Math.abs(w[j * k + c] * x[i * k + c]);
    }
    out[i * n + j] = steps + (B + 6) * U * folds + U * mag + U * Math.abs(y) + 1e-30;
  }
  return out;
}

/** The path an int8 matmul of `layer` takes on `be` (the backend's own report). */
function pathOf(be: WasmKernelBackend, layer: Linear): { path: IntPath | 'exact'; bound: number } {
  const p = be.prepare(layer);
  try {
    return be.intPath(p);
  } finally {
    be.release(p);
  }
}

/** Runs a matmul with guard regions around the output and checks they (and x) stay untouched. */
function guardedMatmul(be: KernelBackend, layer: Linear, x: Float32Array, m: number, opts: WasmMatmulOptions, id: string): Float32Array {
  const n = layer.n;
  const guard = 37;
  const buf = new Float32Array(m * n + 2 * guard).fill(-12345.5);
  const out = buf.subarray(guard, guard + m * n);
  const xCopy = Float32Array.from(x);
  const p = be.prepare(layer);
  try {
    const y = be.matmul(p, x, m, out, opts);
    assert.equal(y, out, `${id}: returns the given output`);
  } finally {
    be.release(p);
  }
  for (let i = 0; i < guard; i++) {
    assert.equal(buf[i], -12345.5, `${id}: guard before the output overwritten at ${i}`);
    assert.equal(buf[guard + m * n + i], -12345.5, `${id}: guard after the output overwritten at ${i}`);
  }
  assert.deepEqual(x, xCopy, `${id}: x modified`);
  return Float32Array.from(out);
}

// ---------------------------------------------------------------------------------------------
// Sweeps

interface Case {
  bits: number;
  g: number;
  n: number;
  k: number;
  m: number;
  table: 'nf' | 'int' | 'random';
}

/** The sweep: every bit width, g = 32..256 and ragged/padded groups, odd N and K, M = 1..64. */
function cases(seed: number): Case[] {
  const r = rng(seed);
  const ms = [1, 3, 17, 53, 64, 2, 4, 5, 8, 33];
  const out: Case[] = [];
  const shapes: [number, number][] = [
    [32, 128], // g = 32
    [64, 256], // g = 64
    [128, 256], // g = 128
    [256, 512], // g = 256
    [64, 200], // ragged last group (200 = 3*64 + 8)
    [37, 111], // g not a multiple of 32 (padded groups) and ragged
    [20, 33], // g < 32 (padded), K odd
    [256, 17], // K < g
    [8, 40], // g < 16: generic path for every b
    [128, 1], // K = 1
  ];
  let i = 0;
  for (let bits = 1; bits <= 8; bits++) {
    for (const [g, k] of shapes) {
      const n = [1, 3, 17, 33, 129, 4, 96][randInt(r, 0, 6)];
      const m = ms[i++ % ms.length];
      out.push({ bits, g, n, k, m, table: (['nf', 'int', 'random'] as const)[i % 3] });
    }
  }
  return out;
}

/** e.g. wasm(path=int8,variant=relaxed,bits=3,g=ragged37,m=17,n=96,k=111,table=nf,threads=2) */
const caseId = (path: string, label: string, c: Case) =>
  `wasm(path=${path},variant=${label.split(',')[0]},bits=${c.bits},g=${gLabel(c.k, c.g)},m=${c.m},n=${c.n},k=${c.k},table=${c.table},threads=${label.split('=')[1]})`;

test('wasm exact f32 path matches the reference: 1e-5 relative and the per-element summation bound', () => {
  const r = rng(7);
  for (const c of cases(1)) {
    const layer = randomLayer(r, c.bits, c.n, c.k, c.g, c.table);
    const x = randn(r, c.m * c.k);
    const w = dequantize(layer);
    const { y, mag } = reference(w, x, c.m, c.n, c.k);
    const yRef = ref.matmul(ref.prepare(layer), x, c.m);
    let first: Float32Array | null = null;
    for (const { label, be } of backends) {
      const id = caseId('f32', label, c);
      const got = guardedMatmul(be, layer, x, c.m, { activations: 'f32' }, id);
      assert.ok(relErr(got, yRef) <= 1e-5, `${id}: relative error ${relErr(got, yRef)} > 1e-5`);
      for (let e = 0; e < got.length; e++) {
        const tol = exactBound(layer, mag[e], y[e]);
        if (!(Math.abs(got[e] - y[e]) <= tol)) assert.fail(`${id}: y[${Math.floor(e / c.n)},${e % c.n}] = ${got[e]}, reference ${y[e]}, bound ${tol}`);
      }
      // rows are independent: the thread count never changes a result; FMA vs mul+add may
      if (first && !be.relaxed) assert.deepEqual(got, first, `${id}: differs from the 1-thread SIMD128 result`);
      if (!first) first = got;
    }
  }
});

test('wasm integer-activation path stays within the derived quantization bound (b = 1..4, fast kernels)', (t) => {
  const r = rng(11);
  const tightestBy = new Map<IntPath | 'exact', number>(); // max |err| / bound over all elements, per path
  for (const c of cases(2)) {
    if (c.bits > 4 || c.g < 16) continue; // those layers take the exact generic kernel
    const layer = randomLayer(r, c.bits, c.n, c.k, c.g, c.table);
    const x = randn(r, c.m * c.k);
    const { y, mag } = reference(dequantize(layer), x, c.m, c.n, c.k);
    const bounds = new Map<IntPath, Float64Array>();
    const firsts = new Map<string, Float32Array>();
    for (const { label, be } of backends) {
      const { path } = pathOf(be, layer);
      const id = `${caseId('int8', label, c)}[${path}]`;
      const got = guardedMatmul(be, layer, x, c.m, { activations: 'int8' }, id);
      const bound = path === 'exact' ? Float64Array.from(y, (v, e) => exactBound(layer, mag[e], v)) : (bounds.get(path) ?? bounds.set(path, intBounds(layer, x, c.m, path)).get(path)!);
      for (let e = 0; e < got.length; e++) {
        const err = Math.abs(got[e] - y[e]);
        if (!(err <= bound[e])) assert.fail(`${id}: y[${Math.floor(e / c.n)},${e % c.n}] = ${got[e]}, reference ${y[e]}, bound ${bound[e]}`);
        const t = tightestBy.get(path) ?? 0;
        tightestBy.set(path, Math.max(t, err / bound[e]));
      }
      // the same path on the same module kind gives the same bits, whatever the thread count
      const key = `${be.relaxed}:${path}`;
      const first = firsts.get(key);
      if (first) assert.deepEqual(got, first, `${id}: the thread count or the backend's other paths changed the result`);
      else firsts.set(key, got);
    }
  }
  // a bound that is never approached would hide nothing; errors do reach a fair part of it on every
  // integer path the cases reach (relaxed7 and relaxed8 only where the runtime has them)
  t.diagnostic(`share of the bound used, by path: ${[...tightestBy].map(([p, v]) => `${p} ${v.toExponential(2)}`).join(', ')}`);
  const want: IntPath[] = ['simd', ...(backends.some((b) => b.be.relaxed) ? ['relaxed7' as const] : []), ...(backends.some((b) => b.be.relaxed8) ? ['relaxed8' as const] : [])];
  for (const p of want) assert.ok((tightestBy.get(p) ?? 0) > 0.01, `${p}: errors used at most ${tightestBy.get(p)} of the bound`);
});

test('wasm int8 path on realistic layers (RTN NF4/NF3/NF2, g=128): relative error well under the weight error', (t) => {
  const r = rng(5);
  const n = 64;
  const k = 1024;
  const wt = randn(r, n * k, 0.02);
  const m = 4;
  const x = randn(r, m * k);
  for (const bits of [2, 3, 4]) {
    const { layer, error } = quantizeRtn(wt, n, k, { bits, groupSize: 128, tableKind: 'nf' });
    const { y, mag } = reference(dequantize(layer), x, m, n, k);
    for (const { label, be } of backends) {
      const id = `wasm(path=int8,${label.split(',')[0]},bits=${bits},g=128,m=${m},n=${n},k=${k},table=nf)`;
      const { path, bound: stated } = pathOf(be, layer);
      assert.notEqual(path, 'exact', `${id}: NF tables take an integer path`);
      if (path === 'exact') continue;
      const got = guardedMatmul(be, layer, x, m, {}, id);
      const rel = relErr(got, y);
      // within the path's stated bound (rho + alpha(Q)(1 + rho): NF4 on 8-bit codes 3.8%, on 7-bit 5.6%)
      assert.ok(rel < stated, `${id} [${path}]: relative error ${rel} > stated ${stated}`);
      assert.ok(rel < error.relRmse / 4, `${id}: kernel error ${rel} not well below the quantization error ${error.relRmse}`);
      const bound = intBounds(layer, x, m, path);
      for (let e = 0; e < got.length; e++) assert.ok(Math.abs(got[e] - y[e]) <= bound[e], `${id}: element ${e} beyond the bound`);
      // The worst-case bound adds K error terms linearly while y grows like sqrt(K), so relative to |y|
      // it is loose by ~sqrt(K). It is informative against sum|W x| (what bounds |y| itself): there
      // it is about eT/mean|T| + 1/(2Q): under 10% for every NF table here (NF2: 0 and 0.34 are entries).
      let worst = 0;
      for (let e = 0; e < got.length; e++) worst = Math.max(worst, bound[e] / mag[e]);
      assert.ok(worst < 0.1, `${id}: bound is ${worst} of sum|W x|`);
      const boundRel = relErr(bound, new Float64Array(bound.length)) / relErr(y, new Float64Array(y.length));
      t.diagnostic(`${id} [${path}]: relative error ${rel.toExponential(2)} (stated ${stated.toExponential(2)}), bound/|y| ${boundRel.toExponential(2)}, weight quantization error ${error.relRmse.toExponential(2)}`);
    }
  }
});

test('wasm identity input returns dequantize() bit for bit (exact path, all bits, lut/generic kernels, threads)', () => {
  const r = rng(3);
  for (let bits = 1; bits <= 8; bits++) {
    for (const [g, k] of [[64, 64], [32, 45], [16, 24], [8, 21]] as const) {
      const n = randInt(r, 1, 13);
      const layer = randomLayer(r, bits, n, k, g, (['nf', 'random', 'int'] as const)[bits % 3]);
      const want = dequantize(layer); // [N, K]
      for (const { label, be } of backends) {
        const id = `wasm(path=f32,identity,bits=${bits},g=${g},n=${n},k=${k},${label})`;
        const got = guardedMatmul(be, layer, identity(k), k, { activations: 'f32' }, id); // [K, N]
        for (let c = 0; c < k; c++) for (let j = 0; j < n; j++) {
          if (!Object.is(got[c * n + j], want[j * k + c])) assert.fail(`${id}: W[${j},${c}] = ${got[c * n + j]}, dequantize() ${want[j * k + c]}`);
        }
      }
    }
  }
});

test('wasm layout round trip through the kernel: table[i] = i, unit scales, identity input gives the indices back', () => {
  const r = rng(9);
  for (let bits = 1; bits <= 8; bits++) {
    const n = 6;
    const k = 70;
    const g = bits % 2 ? 32 : 64;
    const idx = Uint8Array.from({ length: n * k }, () => Math.floor(r() * 2 ** bits));
    const layer: QuantizedLinear = {
      kind: 'quantized', n, k, bits, groupSize: g, tableKind: 'custom',
      table: Float32Array.from({ length: 2 ** bits }, (_, i) => i),
      scaleDtype: 'f32', scales: new Float32Array(n * groupsPerRow(k, g)).fill(1), packed: packIndices(idx, n, k, bits),
    };
    const lay = packForWasm(layer);
    assert.equal(lay.kind, bits <= 4 ? 'lut' : 'generic', `bits=${bits}`);
    for (const { label, be } of backends) {
      const got = guardedMatmul(be, layer, identity(k), k, { activations: 'f32' }, `roundtrip(bits=${bits},${label})`);
      for (let c = 0; c < k; c++) for (let j = 0; j < n; j++) assert.equal(got[c * n + j], idx[j * k + c], `roundtrip(bits=${bits},${label}): index (${j},${c})`);
    }
  }
});

test('wasm dense kernel matches the reference (f32 summation bound), M = 1..64, odd shapes', () => {
  const r = rng(13);
  for (const [n, k, m] of [[1, 1, 1], [3, 17, 3], [33, 129, 17], [17, 33, 53], [96, 200, 64], [5, 7, 2]] as const) {
    const layer: DenseLinear = { kind: 'dense', n, k, weight: randn(r, n * k) };
    const x = randn(r, m * k);
    const { y, mag } = reference(layer.weight, x, m, n, k);
    for (const { label, be } of backends) {
      const id = `wasm(path=dense,m=${m},n=${n},k=${k},${label})`;
      const got = guardedMatmul(be, layer, x, m, {}, id);
      for (let e = 0; e < got.length; e++) assert.ok(Math.abs(got[e] - y[e]) <= exactBound(layer, mag[e], y[e]), `${id}: element ${e}: ${got[e]} vs ${y[e]}`);
      assert.ok(relErr(got, y) <= 1e-5, `${id}: relative error`);
    }
  }
});

test('wasm codebooks: integer tables are exact, others within t0/2', () => {
  for (let bits = 1; bits <= 4; bits++) {
    const cb = buildCodebook(Float32Array.from({ length: 16 }, (_, i) => (i < 2 ** bits ? i - 2 ** (bits - 1) : 0)), -64, 63);
    assert.equal(cb.maxError, 0, `int${bits}`);
    assert.equal(cb.scale, 1);
  }
  const nf4 = buildTable('nf', 4);
  for (const [lo, hi] of [[-64, 63], [-127, 127]] as const) {
    const cb = buildCodebook(nf4, lo, hi);
    const t0 = Math.max(1 / hi, -1 / lo) * (1 + 2 ** -19);
    assert.ok(cb.maxError <= t0 / 2, `nf4 [${lo},${hi}]: ${cb.maxError} > ${t0 / 2}`);
    nf4.forEach((v, j) => assert.ok(Math.abs(v - cb.scale * cb.codes[j]) <= cb.maxError + 1e-12));
  }
});

test('wasm codebooks: relError is the largest entry error relative to the entry; NF below the int-path limits, IQ4_NL only in 8 bits', () => {
  for (const [kind, bits] of [['nf', 2], ['nf', 3], ['nf', 4], ['iq4nl', 4], ['fp4', 4]] as const) {
    const table = new Float32Array(16);
    table.set(buildTable(kind, bits));
    const floor = Math.max(...table.map(Math.abs)) * 2 ** -24;
    for (const [lo, hi] of [[-64, 63], [-127, 127]] as const) {
      const cb = buildCodebook(table, lo, hi);
      let rel = 0;
      table.forEach((v, j) => (rel = Math.max(rel, Math.abs(v - cb.scale * cb.codes[j]) / Math.max(Math.abs(v), floor))));
      assert.ok(Math.abs(cb.relError - rel) <= 1e-12, `${kind}${bits} [${lo},${hi}]: relError ${cb.relError} vs ${rel}`);
      if (kind === 'nf') assert.ok(cb.relError <= INT_PATH_MAX_REL_ERROR, `${kind}${bits} [${lo},${hi}] ${cb.relError}`);
    }
    if (kind === 'iq4nl') {
      assert.ok(buildCodebook(table, -64, 63).relError > 0.5, 'iq4nl: entry 1 next to a range of 240 in 7 bits');
      assert.ok(buildCodebook(table, -127, 127).relError < 1e-5, 'iq4nl: exact (to the f32 scale) in 8 bits');
    }
  }
});

test('wasm int8 path: tables too coarse for a variant\'s codebook take a finer path (iq4nl, custom table with an entry near 0)', () => {
  const r = rng(91);
  const n = 24;
  const k = 256;
  const m = 5;
  // 2% outliers x8: absmax groups put nearly every weight on the entries near zero, where a codebook's
  // absolute error is largest relative to the entry (the case the sweep found).
  const w = Float32Array.from({ length: n * k }, () => (r() * 2 - 1) * (r() < 0.02 ? 8 : 1));
  const x = Float32Array.from({ length: m * k }, () => r() * 2 - 1);
  const custom = Float32Array.from([0.9, -0.7, 0.003, -0.4, 0.5, -1, 0.2, 0.65]);
  for (const [label, opts] of [
    ['iq4nl4', { bits: 4, groupSize: 128, tableKind: 'iq4nl' as const }],
    ['custom3', { bits: 3, groupSize: 64, tableKind: 'custom' as const, tableValues: custom }],
  ] as const) {
    const layer = quantizeRtn(w, n, k, { ...opts, scaleDtype: 'f32' }).layer;
    const want = ref.matmul(ref.prepare(layer), x, m);
    for (const { label: bl, be } of backends) {
      const p = be.prepare(layer);
      const got = be.matmul(p, x, m, undefined, { activations: 'int8' });
      const { path, bound } = be.intPath(p);
      be.release(p);
      const e = relErr(got, want);
      const tol = be.info().relTolerance ?? 0;
      assert.ok(e <= tol, `${label} on ${bl}: ${e} > ${tol}`);
      // iq4nl runs its exact 8-bit codebook: on the relaxed kernels with activations in [-64, 64] where
      // the relaxed dot allows 8-bit codes (stated bound alpha(64) = 1.8%), else with int16 activations;
      // the custom table's 0.003 entry is too coarse in 8 bits too, so it runs the exact path.
      const wantPath = label === 'custom3' ? 'exact' : be.relaxed8 ? 'relaxed8' : 'simd';
      assert.equal(path, wantPath, `${label} on ${bl}`);
      assert.ok(e <= Math.max(bound, 1e-5), `${label} on ${bl} [${path}]: ${e} > stated ${bound}`);
      if (path !== 'relaxed8') assert.ok(e < (label === 'iq4nl4' ? 1e-4 : 1e-5), `${label} on ${bl}: ${e}`);
    }
  }
});

test('wasm emitted modules validate (every variant, shared and unshared memory)', () => {
  for (const shared of [true, false]) {
    assert.ok(WebAssembly.validate(buildKernelModule({ relaxed: false }, shared)), `simd128 shared=${shared}`);
    if (caps.relaxed) {
      for (const dot of ['fused', 'split'] as const) assert.ok(WebAssembly.validate(buildKernelModule({ relaxed: true, dot }, shared)), `relaxed ${dot} shared=${shared}`);
    }
  }
});

test('wasm bad inputs: wrong x length, M, output size, foreign or released layers, options', async () => {
  const { be } = backends[0];
  const layer = randomLayer(rng(1), 4, 8, 64, 32, 'nf');
  const p = be.prepare(layer);
  assert.throws(() => be.matmul(p, new Float32Array(63), 1), isCode('E_SHAPE'));
  assert.throws(() => be.matmul(p, new Float32Array(64 * 2 + 1), 2), isCode('E_SHAPE'));
  assert.throws(() => be.matmul(p, new Float32Array(64), 0), isCode('E_SHAPE'));
  assert.throws(() => be.matmul(p, new Float32Array(128), 2, new Float32Array(15)), isCode('E_SHAPE'));
  assert.throws(() => be.matmul(p, new Float32Array(64), 1, undefined, { computeType: 'f16' }), isCode('E_OPTION'));
  assert.throws(() => be.matmul(p, new Float32Array(64), 1, undefined, { activations: 'i4' as never }), isCode('E_OPTION'));
  assert.throws(() => be.matmul(ref.prepare(layer), new Float32Array(64), 1), isCode('E_BACKEND'));
  assert.throws(() => be.intPath(ref.prepare(layer)), isCode('E_BACKEND'));
  be.release(p);
  assert.throws(() => be.matmul(p, new Float32Array(64), 1), isCode('E_BACKEND'));
  assert.throws(() => be.intPath(p), isCode('E_BACKEND'));
  await assert.rejects(createWasmBackend({ threads: 0 }), isCode('E_OPTION'));
  await assert.rejects(createWasmBackend({ threads: 1.5 }), isCode('E_OPTION'));
  await assert.rejects(createWasmBackend({ activations: 'f16' as never }), isCode('E_OPTION'));
  await assert.rejects(createWasmBackend({ activationBlock: 48 }), isCode('E_OPTION'));
  await assert.rejects(createWasmBackend({ relaxed8: 'yes' as never }), isCode('E_OPTION'));
});

test('createBackend and loadModel pass the wasm options through; misplaced, unknown or invalid ones are refused, never dropped', async () => {
  const plain = await createBackend('wasm', { threads: 1, wasm: { relaxed: false } });
  assert.ok(!plain.info().variant.includes('relaxed'), plain.info().variant);
  plain.dispose();
  if (caps.relaxed) {
    for (const dot of ['split', 'fused'] as const) {
      const be = await createBackend('wasm', { threads: 1, wasm: { relaxedDot: dot } });
      // the forced form runs, or this engine failed it (V8 11 with the fused form) and the variant says so
      const v = be.info().variant;
      assert.ok(v.startsWith(`SIMD128 + relaxed SIMD (${dot} dot`) || v.includes(`relaxed SIMD with ${dot} dot failed its self-check`), v);
      be.dispose();
    }
  }
  const misplaced = /unknown option "relaxedDot".*wasm: \{ relaxedDot/;
  await assert.rejects(createBackend('wasm', { relaxedDot: 'split' } as never), (e: unknown) => isCode('E_OPTION')(e) && misplaced.test((e as Error).message));
  await assert.rejects(createBackend('auto', { relaxedDot: 'split' } as never), isCode('E_OPTION'));
  // a misspelt key is named, with no hint about where wasm options go
  await assert.rejects(createBackend('wasm', { thread: 1 } as never), (e: unknown) => isCode('E_OPTION')(e) && /"thread"/.test((e as Error).message) && !/wasm: \{/.test((e as Error).message));
  await assert.rejects(createModelBackend('wasm', { relaxedDot: 'split' } as never), isCode('E_OPTION'));
  await assert.rejects(createBackend('wasm', { wasm: { threads: 2 } as never }), (e: unknown) => isCode('E_OPTION')(e) && /top level/.test((e as Error).message));
  await assert.rejects(createWasmBackend({ relaxDot: 'split' } as never), (e: unknown) => isCode('E_OPTION')(e) && /"relaxDot"/.test((e as Error).message));
  // auto falls back to the reference backend only where wasm cannot run, not on the caller's bad option
  await assert.rejects(createBackend('auto', { wasm: { activations: 'f16' as never } }), isCode('E_OPTION'));
  const loaded = await loadModel(bundledModelPath(), { backend: 'wasm', threads: 1, wasm: { relaxed: false } });
  assert.ok(!loaded.backend.info().variant.includes('relaxed'), loaded.backend.info().variant);
  loaded.dispose();
});

test('wasm memory: layers too big for the cap are refused up front; release reuses space; growth keeps old layers valid', async () => {
  const small = await createWasmBackend({ threads: 1, maxMemoryMiB: 16, initialMemoryMiB: 1 });
  try {
    const big: DenseLinear = { kind: 'dense', n: 1100, k: 4000, weight: new Float32Array(1100 * 4000) }; // 17.6 MB
    assert.match(small.unsupported(big) ?? '', /MiB/);
    assert.throws(() => small.prepare(big), isCode('E_BACKEND'));
    const r = rng(2);
    const a = randomLayer(r, 3, 40, 300, 64, 'nf');
    const x = randn(r, 2 * 300);
    const pa = small.prepare(a);
    const before = small.matmul(pa, x, 2);
    // fill and free repeatedly: space is reused, so this never exceeds the 16 MiB cap
    for (let i = 0; i < 20; i++) {
      const pb = small.prepare({ kind: 'dense', n: 500, k: 2000, weight: new Float32Array(500 * 2000) }); // 4 MB
      small.release(pb);
    }
    assert.deepEqual(small.matmul(pa, x, 2), before, 'layer still valid after growth and reuse');
  } finally {
    small.dispose();
  }
  assert.throws(() => small.prepare(randomLayer(rng(1), 4, 4, 32, 32, 'nf')), isCode('E_BACKEND'));
});

test('readRow: every row of a prepared layer as dequantizeRow gives it, bit for bit (lut 1-4 bits, generic, dense; ragged groups, partial row quads)', () => {
  const r = rng(41);
  const layers: Linear[] = [];
  for (const [bits, n, k, g] of [[4, 9, 96, 32], [3, 6, 200, 64], [2, 5, 111, 37], [1, 7, 64, 32], [4, 3, 33, 20], [5, 6, 70, 32], [8, 4, 40, 16], [4, 5, 48, 8]] as const) {
    layers.push(randomLayer(r, bits, n, k, g, (['nf', 'random', 'int'] as const)[bits % 3]));
  }
  layers.push({ kind: 'dense', n: 7, k: 13, weight: randn(r, 7 * 13) });
  for (const be of [...backends.map((b) => b.be), ref]) {
    for (const layer of layers) {
      const p = be.prepare(layer);
      const id = `${be.name}: ${layer.kind === 'dense' ? 'dense' : `b=${layer.bits},g=${layer.groupSize}`} [${layer.n}, ${layer.k}]`;
      const got = new Float32Array(layer.k + 3);
      const want = new Float32Array(layer.k);
      for (let row = 0; row < layer.n; row++) {
        if (layer.kind === 'dense') want.set(layer.weight.subarray(row * layer.k, (row + 1) * layer.k));
        else dequantizeRow(layer, row, want);
        be.readRow!(p, row, got, 3); // at an offset: the values land at [3, 3 + K)
        assert.deepEqual(got.subarray(3), want, `${id}: row ${row}`);
      }
      assert.throws(() => be.readRow!(p, layer.n, got), isCode('E_SHAPE'), `${id}: a row past the end`);
      be.release(p);
      if (be.name === 'wasm') assert.throws(() => be.readRow!(p, 0, got), isCode('E_BACKEND'), `${id}: a released layer`);
    }
  }
});

test('wasm threads: larger GEMV/GEMM results do not depend on the thread count', () => {
  const r = rng(21);
  const layer = randomLayer(r, 4, 300, 512, 128, 'nf');
  const one = backends.filter((b) => !b.be.relaxed);
  for (const m of [1, 7]) {
    const x = randn(r, m * 512);
    for (const act of ['int8', 'f32'] as const) {
      const ys = one.map(({ be }) => guardedMatmul(be, layer, x, m, { activations: act }, `wasm(threads,m=${m},${act})`));
      assert.deepEqual(ys[0], ys[1], `wasm(path=${act},bits=4,g=128,m=${m},n=300,k=512): 1 vs 2 threads`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Specialised integer kernels (codegen lutIntKernel's flat and affine): the same integer sums and the same
// f32 folds as the general kernels, so the same bits.

/** A layer from explicit indices [n][k], table and scales [n][G]. */
function layerOf(idx: Uint8Array, n: number, k: number, bits: number, g: number, table: Float32Array, scales: Float32Array): QuantizedLinear {
  return { kind: 'quantized', n, k, bits, groupSize: g, tableKind: 'custom', table, scaleDtype: 'f32', scales, packed: packIndices(idx, n, k, bits) };
}

test('wasm int8 path: the flat kernels (g <= 32) give the general kernels\' results bit for bit', async () => {
  const r = rng(37);
  // A g = 32 layer whose scales come in equal pairs computes what the g = 64 layer with those scales
  // computes with 32-wide activation blocks, which that layer runs on the general kernel (2 blocks a group).
  const general: WasmKernelBackend[] = [await createWasmBackend({ threads: 1, relaxed: false, activationBlock: 32 })];
  if (caps.relaxed) {
    general.push(await createWasmBackend({ threads: 1, activationBlock: 32 }));
    if (general[1].relaxed8) general.push(await createWasmBackend({ threads: 1, activationBlock: 32, relaxed8: false }));
  }
  try {
    const n = 13;
    const k = 192;
    const seen = new Set<string>();
    for (const { label, be } of backends.filter((b) => b.be.threads === 1)) {
      const gen = general.find((b) => b.relaxed === be.relaxed && b.relaxed8 === be.relaxed8);
      assert.ok(gen, `${label}: a backend with 32-wide activation blocks`);
      for (const bits of [1, 2, 3, 4]) {
        const tables: [string, Float32Array][] = [['nf', buildTable('nf', bits)], ['int', buildTable('int', bits)]];
        if (bits === 4) tables.push(['iq4nl', buildTable('iq4nl', 4)]);
        for (const [tname, table] of tables) {
          const idx = Uint8Array.from({ length: n * k }, () => Math.floor(r() * 2 ** bits));
          const s64 = Float32Array.from({ length: n * (k / 64) }, () => Math.fround((r() < 0.2 ? -1 : 1) * (0.01 + r())));
          const s32 = Float32Array.from({ length: n * (k / 32) }, (_, i) => s64[Math.floor(i / 2)]);
          const flat = be.prepare(layerOf(idx, n, k, bits, 32, table, s32));
          const gen64 = gen.prepare(layerOf(idx, n, k, bits, 64, table, s64));
          const path = be.intPath(flat).path;
          assert.equal(gen.intPath(gen64).path, path, `${label} b=${bits} ${tname}`);
          seen.add(`${label} ${path}`);
          for (let m = 1; m <= 5; m++) {
            const x = randn(r, m * k);
            const a = be.matmul(flat, x, m, undefined, { activations: 'int8' });
            const b = gen.matmul(gen64, x, m, undefined, { activations: 'int8' });
            assert.deepEqual(a, b, `${label} b=${bits} ${tname} [${path}] m=${m}: flat (g=32) vs general (g=64, blocks of 32)`);
            assert.ok(a.some((v) => v !== 0), `${label} b=${bits} ${tname} m=${m}: a nonzero output`);
          }
          be.release(flat);
          gen.release(gen64);
        }
      }
    }
    // the SIMD128 kernels everywhere; where relaxed SIMD runs, its 7-bit and (x64 V8) 8-bit paths and its wide kernels
    assert.ok(seen.has('simd128,threads=1 simd'), [...seen].join(', '));
    if (backends.some((b) => b.label === 'relaxed,threads=1')) assert.ok(seen.has('relaxed,threads=1 relaxed7'), [...seen].join(', '));
    if (backends.some((b) => b.be.relaxed8)) assert.ok(seen.has('relaxed,threads=1 relaxed8') && seen.has('relaxedwide,threads=1 simd'), [...seen].join(', '));
  } finally {
    general.forEach((b) => b.dispose());
  }
});

test('wasm records layout (f16 scales in the weight stream): the records kernels give the f32 layout\'s results bit for bit, every path, and readRow its rows', async (t) => {
  if (!caps.f16) {
    t.skip(`this runtime has no f32x4.promote_low_f16x8 (the fp16 proposal: Node 24+), so the records kernels are not built here; npm test runs this file under Node 24 too`);
    return;
  }
  const r = rng(43);
  // scales that are f16 values: both signs, normal and subnormal f16, a zero group
  const f16Scales = (len: number) => Float32Array.from({ length: len }, (_, i) => (i === 3 ? 0 : roundToF16((r() < 0.3 ? -1 : 1) * (r() < 0.1 ? 3e-6 * r() : 0.01 + r()))));
  const pairs: { label: string; opts: Parameters<typeof createWasmBackend>[0] }[] = [{ label: 'simd128', opts: { relaxed: false } }];
  if (caps.relaxed) pairs.push({ label: 'relaxed', opts: {} }, { label: 'relaxedwide', opts: { relaxed8: false } });
  const seen = new Set<string>();
  for (const { label, opts } of pairs) {
    for (const threads of [1, 2]) {
      if (threads === 2 && label !== 'relaxed' && label !== 'simd128') continue;
      const rec = await createWasmBackend({ ...opts, threads });
      const f32 = await createWasmBackend({ ...opts, threads, f16Scales: false });
      try {
        assert.match(rec.info().variant, /f16 scales/, `${label}: ${rec.info().variant}`);
        assert.doesNotMatch(f32.info().variant, /f16 scales/, `${label}: ${f32.info().variant}`);
        for (const bits of [1, 2, 3, 4]) {
          const tables: [string, Float32Array][] = [['nf', buildTable('nf', bits)], ['int', buildTable('int', bits)]];
          if (bits === 4) tables.push(['iq4nl', buildTable('iq4nl', 4)]);
          for (const [tname, table] of tables) {
            for (const [n, k, g] of [[13, 192, 32], [6, 70, 16], [5, 100, 24]] as const) {
              const idx = Uint8Array.from({ length: n * k }, () => Math.floor(r() * 2 ** bits));
              const layer = layerOf(idx, n, k, bits, g, table, f16Scales(n * groupsPerRow(k, g)));
              const pr = rec.prepare(layer);
              const pf = f32.prepare(layer);
              const id = `${label},threads=${threads} b=${bits} ${tname} [${n}, ${k}] g=${g}`;
              assert.ok(pr.bytes < pf.bytes, `${id}: records (${pr.bytes} B) smaller than f32 scales (${pf.bytes} B)`);
              for (const act of ['int8', 'f32'] as const) {
                const path = act === 'f32' ? 'exact' : rec.intPath(pr).path;
                seen.add(`${label} ${path}`);
                for (const m of [1, 2, 3, 4, 5, 9]) {
                  const x = randn(r, m * k);
                  const a = rec.matmul(pr, x, m, undefined, { activations: act });
                  const b = f32.matmul(pf, x, m, undefined, { activations: act });
                  assert.deepEqual(a, b, `${id} ${act} [${path}] m=${m}: records vs f32 scales`);
                  assert.ok(a.some((v) => v !== 0), `${id} ${act} m=${m}: a nonzero output`);
                }
              }
              const got = new Float32Array(k);
              const want = new Float32Array(k);
              for (let row = 0; row < n; row++) {
                dequantizeRow(layer, row, want);
                rec.readRow!(pr, row, got);
                assert.deepEqual(got, want, `${id}: readRow ${row}`);
              }
              rec.release(pr);
              f32.release(pf);
            }
          }
        }
        // scales that are not all f16 values, and groups of more than one chunk, keep the f32 layout
        const idx = Uint8Array.from({ length: 8 * 64 }, () => Math.floor(r() * 16));
        for (const [g, scales] of [[32, Float32Array.from({ length: 16 }, () => Math.fround(0.1 + r()))], [64, f16Scales(8)]] as const) {
          const layer = layerOf(idx, 8, 64, 4, g, buildTable('nf', 4), scales);
          const pr = rec.prepare(layer);
          const pf = f32.prepare(layer);
          assert.equal(pr.bytes, pf.bytes, `${label} g=${g}: the f32 layout`);
          const x = randn(r, 64);
          assert.deepEqual(rec.matmul(pr, x, 1), f32.matmul(pf, x, 1), `${label} g=${g}: f32 layout results`);
          rec.release(pr);
          f32.release(pf);
        }
      } finally {
        rec.dispose();
        f32.dispose();
      }
    }
  }
  // every family's records kernels: exact and the SIMD128 int kernels everywhere; relaxed7, affine
  // (int tables), relaxed8 and the wide kernels where relaxed SIMD runs
  assert.ok(seen.has('simd128 exact') && seen.has('simd128 simd'), [...seen].join(', '));
  if (caps.relaxed) assert.ok(seen.has('relaxed relaxed7') && seen.has('relaxedwide simd'), [...seen].join(', '));
  if (backends.some((b) => b.be.relaxed8)) assert.ok(seen.has('relaxed relaxed8'), [...seen].join(', '));
});

test('wasm int8 path: the affine kernels (int tables) give the lookup kernels\' results bit for bit', () => {
  const r = rng(38);
  const n = 11;
  const k = 256;
  for (const bits of [1, 2, 3, 4]) {
    // the int table as stored (codes = index + c0: the affine kernels) and reversed, with the indices
    // mapped so that every weight is the same (codes no longer index + c0: the lookup kernels)
    const table = buildTable('int', bits);
    const top = 2 ** bits - 1;
    const reversed = Float32Array.from(table, (_, j) => table[top - j]);
    const codes = (t: Float32Array) => buildCodebook(t, -64, 63).codes;
    assert.equal(affineOffset(codes(table), bits), 2 ** (bits - 1), `b=${bits}: int table codes are index - 2^(b-1)`);
    assert.equal(affineOffset(codes(reversed), bits), undefined, `b=${bits}: reversed table`);
    for (const g of [32, 64, 128]) {
      const idx = Uint8Array.from({ length: n * k }, () => Math.floor(r() * 2 ** bits));
      const scales = Float32Array.from({ length: n * (k / g) }, () => Math.fround(0.01 + r()));
      const a = layerOf(idx, n, k, bits, g, table, scales);
      const b = layerOf(idx.map((q) => top - q), n, k, bits, g, reversed, scales);
      assert.deepEqual(dequantize(a), dequantize(b), `b=${bits} g=${g}: the same weights`);
      for (const { label, be } of backends.filter((x) => x.be.relaxed && x.be.threads === 1)) {
        const pa = be.prepare(a);
        const pb = be.prepare(b);
        assert.equal(be.intPath(pa).path, 'relaxed7', `${label} b=${bits}`);
        assert.equal(be.intPath(pb).path, 'relaxed7', `${label} b=${bits}`);
        for (let m = 1; m <= 5; m++) {
          const x = randn(r, m * k);
          const ya = be.matmul(pa, x, m, undefined, { activations: 'int8' });
          const yb = be.matmul(pb, x, m, undefined, { activations: 'int8' });
          assert.deepEqual(ya, yb, `${label} b=${bits} g=${g} m=${m}: affine vs lookup kernels`);
        }
        be.release(pa);
        be.release(pb);
      }
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Compiler tiers: V8 runs Liftoff code first and TurboFan code after tier-up, but the self-check only
// sees the first. Each tier alone, in a child process: every relaxed dot form the backend accepts
// there agrees with the reference (and the split form, the Node 20 default, is accepted in both).

const TIER_CHILD = `
const { createWasmBackend } = await import(process.argv[1]);
const { dequantize } = await import(process.argv[2]);
const dot = process.argv[3];
const be = await createWasmBackend({ threads: 1, relaxed: true, relaxedDot: dot });
let seed = 7;
const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
let worst = 0;
const paths = [];
const IQ4NL = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
const INT4 = Array.from({ length: 16 }, (_, i) => i - 8);
for (const [bits, n, k, g, m, values] of [[4, 64, 512, 32, 1], [4, 40, 256, 64, 5], [2, 36, 192, 64, 5], [3, 20, 160, 32, 1], [4, 64, 512, 32, 1, IQ4NL], [4, 36, 256, 64, 5, IQ4NL], [4, 64, 512, 32, 1, INT4]]) {
  const table = Float32Array.from({ length: 1 << bits }, (_, i) => Math.fround(values ? values[i] : i - (1 << (bits - 1)) + 0.3 * Math.sin(i)));
  const G = Math.ceil(k / g);
  const packed = Uint8Array.from({ length: n * Math.ceil((k * bits) / 8) }, () => Math.floor(rand() * 256));
  const scales = Float32Array.from({ length: n * G }, () => Math.fround(0.5 + rand()));
  const layer = { kind: 'quantized', n, k, bits, groupSize: g, tableKind: 'custom', table, scaleDtype: 'f32', scales, packed };
  const w = dequantize(layer);
  const p = be.prepare(layer);
  paths.push(be.intPath(p).path);
  for (let rep = 0; rep < 40; rep++) { // enough calls for tier-up where it is allowed
    const x = Float32Array.from({ length: m * k }, () => rand() * 2 - 1);
    const y = be.matmul(p, x, m);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
      let ref = 0, mag = 0;
      for (let c = 0; c < k; c++) { ref += w[j * k + c] * x[i * k + c]; mag += Math.abs(w[j * k + c] * x[i * k + c]); }
      worst = Math.max(worst, Math.abs(y[i * n + j] - ref) / mag);
    }
  }
  be.release(p);
}
console.log(JSON.stringify({ variant: be.info().variant, relaxed8: be.relaxed8, paths, worst }));
be.dispose();
`;

test('wasm relaxed dot order: fused first only where V8 maps it onto VPDPBUSD (x64: V8 >= 13 and AVX-VNNI), split first otherwise', async (t) => {
  if (!caps.relaxed) {
    assert.ok(process.env.CI !== 'true', 'CI must run a runtime with relaxed SIMD');
    t.skip('no relaxed SIMD in this runtime');
    return;
  }
  // Measured (BENCHMARKS.md, "Which Node"): the fused form without VPDPBUSD (Node 22) is 20% slower
  // than the split form; with it (Node 24, 26), 18% faster. On V8 11 it fails the self-check.
  const { readFileSync } = await import('node:fs');
  let vnni = false;
  try {
    vnni = /^flags\s*:.*\bavx_vnni\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    vnni = false;
  }
  const v8Major = Number(process.versions.v8.split('.')[0]);
  const expected = process.arch !== 'x64' || (v8Major >= 13 && vnni) ? 'fused' : 'split';
  const be = await createWasmBackend({ threads: 1 });
  try {
    assert.match(be.info().variant, new RegExp(`relaxed SIMD \\(${expected} dot`), `V8 ${v8Major}, avx_vnni ${vnni}: ${be.info().variant}`);
  } finally {
    be.dispose();
  }
});

test('wasm relaxed dot forms under each V8 tier alone (--liftoff-only, --no-liftoff): accepted forms agree with the reference', { timeout: 120_000 }, async (t) => {
  if (!caps.relaxed) {
    assert.ok(process.env.CI !== 'true', 'CI must run a runtime with relaxed SIMD');
    t.skip('no relaxed SIMD in this runtime');
    return;
  }
  const { spawnSync } = await import('node:child_process');
  const relaxed8Here = backends.some((b) => b.be.relaxed8);
  const index = new URL('../src/kernels/wasm/index.js', import.meta.url).href;
  const linear = new URL('../src/quant/linear.js', import.meta.url).href;
  for (const tier of ['--liftoff-only', '--no-liftoff']) {
    for (const dot of ['fused', 'split'] as const) {
      const id = `wasm(tier=${tier},dot=${dot})`;
      const r = spawnSync(process.execPath, [...process.execArgv, tier, '--input-type=module', '-e', TIER_CHILD, index, linear, dot], { encoding: 'utf8', timeout: 60_000 });
      assert.equal(r.status, 0, `${id}: child failed: ${r.stderr}`);
      const { variant, relaxed8, paths, worst } = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { variant: string; relaxed8: boolean; paths: string[]; worst: number };
      const accepted = variant.startsWith(`SIMD128 + relaxed SIMD (${dot} dot`);
      if (dot === 'split') assert.ok(accepted, `${id}: the split form passes its self-check in every tier: ${variant}`);
      // the codebooks and int8 (or [-64, 64]) activations: the self-check's own 5% of sum|W x|, never more
      if (accepted) {
        assert.ok(worst < 0.05, `${id}: worst |y - ref| / sum|W x| = ${worst}`);
        // the probe of the relaxed dot reads the same in every tier (the spec fixes one behaviour per
        // environment), and IQ4_NL (layers 5 and 6) takes the 8-bit codes wherever it does
        assert.equal(relaxed8, relaxed8Here, `${id}: 8-bit codes probe agrees with the default tiering`);
        assert.deepEqual(paths.slice(4, 6), relaxed8 ? ['relaxed8', 'relaxed8'] : ['simd', 'simd'], `${id}: IQ4_NL paths ${paths}`);
        assert.equal(paths[6], 'relaxed7', `${id}: int4 on 7-bit codes`);
      } else assert.match(variant, new RegExp(`relaxed SIMD with ${dot} dot failed its self-check`), `${id}: a rejected form says so`);
      t.diagnostic(`${id}: ${accepted ? `runs (paths ${paths.join(' ')}), worst error ${worst.toExponential(2)} of sum|W x|` : 'rejected by the self-check'}`);
    }
  }
});

/** A 2-thread pool whose worker's `work(tid)` never returns (tid >= 1 loops forever). */
async function stuckPool(timeoutMs: number): Promise<{ pool: ThreadPool; calls: number[] }> {
  const f = new FuncBuilder('work', [I32]);
  f.get(0).op(Op.i32_eqz).brIf(0); // tid 0 (the caller) returns at once, taking and counting nothing
  f.loop(() => f.br(0)); // every worker spins forever: the job never finishes
  const mb = new ModuleBuilder({ module: 'env', name: 'memory', initialPages: 1, maximumPages: 1, shared: true });
  mb.add(f);
  const module = await WebAssembly.compile(mb.encode());
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true } as WebAssembly.MemoryDescriptor);
  const calls: number[] = [];
  const inst = await WebAssembly.instantiate(module, { env: { memory } });
  const work = inst.exports.work as (tid: number) => void;
  const pool = await ThreadPool.create(2, module, memory, (tid) => (calls.push(tid), work(tid)), { timeoutMs });
  return { pool, calls };
}

test('wasm threads: a worker that never finishes its job gives E_BACKEND within the timeout, and the pool stays stopped', { timeout: 20_000 }, async () => {
  const { pool, calls } = await stuckPool(300);
  try {
    const t0 = performance.now();
    assert.throws(() => pool.run(4), (e: unknown) => isCode('E_BACKEND')(e) && /4 of 4 row quads of a job were not finished within 300 ms/.test((e as Error).message));
    const waited = performance.now() - t0;
    assert.ok(waited >= 290 && waited < 5000, `waited ${waited.toFixed(0)} ms for a 300 ms timeout`);
    assert.deepEqual(calls, [0], 'the caller ran its share once');
    assert.throws(() => pool.run(4), (e: unknown) => isCode('E_BACKEND')(e) && /stopped/.test((e as Error).message), 'later jobs are refused');
    assert.deepEqual(calls, [0], 'a refused job runs nothing');
  } finally {
    pool.dispose();
  }
});

test('wasm threads: the barrier timeout option is validated; shared and caller-only jobs alternate correctly', async () => {
  await assert.rejects(createWasmBackend({ threads: 2, barrierTimeoutMs: 0 }), isCode('E_OPTION'));
  await assert.rejects(createWasmBackend({ threads: 2, barrierTimeoutMs: -5 }), isCode('E_OPTION'));
  const be = await createWasmBackend({ threads: 2, relaxed: false, barrierTimeoutMs: 5000 });
  try {
    // a job big enough to wake the worker, then one small enough for the caller alone: a worker that
    // wakes late for the first may take a run of the second, which must still be waited for
    const big = randomLayer(rng(5), 4, 256, 512, 128, 'nf');
    const small = randomLayer(rng(7), 4, 8, 64, 32, 'nf');
    const xb = randn(rng(6), 3 * 512);
    const xs = randn(rng(8), 64);
    const one = backends[0].be;
    const wantBig = guardedMatmul(one, big, xb, 3, { activations: 'f32' }, 'wasm(threads=1,big)');
    const wantSmall = guardedMatmul(one, small, xs, 1, { activations: 'f32' }, 'wasm(threads=1,small)');
    const pb = be.prepare(big);
    const ps = be.prepare(small);
    try {
      for (let i = 0; i < 200; i++) {
        assert.deepEqual(be.matmul(pb, xb, 3, undefined, { activations: 'f32' }), wantBig, `wasm(threads=2,big,round ${i})`);
        assert.deepEqual(be.matmul(ps, xs, 1, undefined, { activations: 'f32' }), wantSmall, `wasm(threads=2,small,round ${i})`);
      }
    } finally {
      be.release(pb);
      be.release(ps);
    }
  } finally {
    be.dispose();
  }
});

test('wasm activation preparation (act_quant8/16, act_tile_f32) matches its JS specification in layout.ts, in the SIMD128 and relaxed modules', async () => {
  // the relaxed module's act_quant truncates with relaxed_trunc: the same integers for finite input
  if (!caps.relaxed) console.log('# relaxed SIMD unavailable here: act_quant checked in the SIMD128 module only');
  for (const v of caps.relaxed ? [{ relaxed: false }, { relaxed: true, dot: 'fused' } as const] : [{ relaxed: false }]) await checkActivationPreparation(v);
});

async function checkActivationPreparation(v: KernelVariant): Promise<void> {
  const memory = new WebAssembly.Memory({ initial: 64, maximum: 64 });
  const inst = await WebAssembly.instantiate(await WebAssembly.compile(buildKernelModule(v, false)), { env: { memory } });
  const ex = inst.exports as unknown as {
    act_quant8(...a: number[]): void;
    act_quant16(...a: number[]): void;
    act_tile_f32(...a: number[]): void;
  };
  const r = rng(31);
  const cases = [[1, 256, 128, 128, 4], [7, 200, 64, 32, 4], [5, 111, 37, 64, 2], [3, 33, 20, 32, 1], [9, 512, 256, 128, 4], [1, 192, 32, 32, 1], [2, 96, 32, 32, 4]] as const;
  for (const [ci, [m, k, g, block, tile]] of cases.entries()) {
    const gp = roundUp(g, 32);
    const a: ActGeometry = { m, k, groupSize: g, paddedGroup: gp, groups: groupsPerRow(k, g), tile };
    const kp = a.groups * gp;
    const x = randn(r, m * k);
    for (let i = 0; i < x.length; i += 7) x[i] = Math.round(x[i] * 4) / 4; // exact halves: ties to even
    if (ci >= 5 && !v.relaxed) {
      // non-finite input (the SIMD128 module only: relaxed_trunc may turn NaN into any integer): a block
      // with a NaN gets d = NaN and q = 0, one with an infinity d = inf and q = 0, and -0 counts as 0
      x[3] = NaN;
      x[40] = Infinity;
      x[75] = -Infinity;
      if (m > 1) x[k + 5] = NaN;
      for (let i = 128; i < 160; i++) x[i] = -0;
    }
    const rows = new Float32Array(m * kp);
    tileF32({ ...a, tile: 1 }, x, rows); // padded rows = tiles of one row
    const src = 1024;
    new Float32Array(memory.buffer, src, m * kp).set(rows);
    const id = `act(${v.relaxed ? 'relaxed' : 'simd128'}, m=${m},k=${k},g=${g},block=${block},tile=${tile})`;
    const wantF = new Float32Array(m * kp);
    tileF32(a, x, wantF);
    ex.act_tile_f32(src, m, kp, tile, 1 << 20);
    assert.deepEqual(new Float32Array(memory.buffer, 1 << 20, m * kp), wantF, `${id}: f32 tiles`);
    // the three integer paths' (Q, offset): int16 x 8-bit codes, int8 x 7-bit codes + 64, [-64, 64] x 8-bit codes + 128
    for (const [wide, qmax, offset] of [[true, 32767, 0], [false, 127, 64], [false, 64, 128]] as const) {
      const nb = kp / block;
      const wantQ = wide ? new Int16Array(m * kp) : new Int8Array(m * kp);
      const wantP = new Int32Array(nb * m * 2);
      quantizeActivations(a, x, block, qmax, Math.fround(0.37), offset, wantQ, wantP);
      (wide ? ex.act_quant16 : ex.act_quant8)(src, m, kp, block, tile, 1 << 20, 2 << 20, qmax, 0.37, offset);
      const gotQ = wide ? new Int16Array(memory.buffer, 1 << 20, m * kp) : new Int8Array(memory.buffer, 1 << 20, m * kp);
      assert.deepEqual(gotQ, wantQ, `${id}: int${wide ? 16 : 8} tiles, Q = ${qmax}`);
      // d's NaN payload and sign are not specified (x86 makes its own): any NaN matches any NaN
      const gotP = new Int32Array(memory.buffer, 2 << 20, nb * m * 2).slice();
      const gotD = new Float32Array(gotP.buffer);
      const wantD = new Float32Array(wantP.buffer);
      for (let j = 0; j < gotP.length; j += 2) if (Number.isNaN(gotD[j]) && Number.isNaN(wantD[j])) gotP[j] = wantP[j];
      assert.deepEqual(gotP, wantP, `${id}: block params, Q = ${qmax}`);
    }
  }
}

test('wasm: the newer-Node hint appears only for the split dot on an x64 CPU with AVX-VNNI under V8 before 13', () => {
  assert.match(newerNodeHint('split', 11, 'x64', true) ?? '', /Node 24\+ \(V8 13\+\).*AVX-VNNI/);
  assert.ok(newerNodeHint('split', 12, 'x64', true), 'V8 12 (Node 22)');
  assert.equal(newerNodeHint('fused', 11, 'x64', true), null, 'already fused');
  assert.equal(newerNodeHint('split', 13, 'x64', true), null, 'V8 13 would have chosen fused: split was forced');
  assert.equal(newerNodeHint('split', 11, 'arm64', true), null, 'not x64');
  assert.equal(newerNodeHint('split', 11, 'x64', false), null, 'no AVX-VNNI: V8 13 would emit the same five instructions');
});
