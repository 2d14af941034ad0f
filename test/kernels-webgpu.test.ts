// The webgpu backend against the reference. Cases: bits 2, 3, 4 x g = 32, 64, 128, 256 and ragged x
// M from 1 to 64 x f32 and f16; identity inputs (exact); split-K; binding shards; the workgroup-memory
// reduction; dense kernels; device tensors; bad inputs; a lost device; process exit; native-f16 WGSL.
// Tolerances:
//   f32: relative Frobenius error <= 1e-5, and every element within K * u * sum_k |w x| (u = 2^-24),
//        the worst-case bound of any f32 summation order (Higham, Accuracy and Stability, eq. 3.5);
//        the weights themselves are dequantize(layer, 'f32') exactly, so this is all the error there is.
//   f16: FLUTE's test (tests/kernel.py): relative Frobenius error < 2e-3 measured both ways.
//   identity (x = I): the output equals dequantize(layer, precision) bit for bit.
// Without an adapter each test is skipped with the reason; with CI set, a missing adapter fails.
// On SwiftShader (CI) 'f16' runs emulated (exact f16 rounding in f32 arithmetic): native shader-f16
// code is only compiled (on Dawn's null backend), not executed.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { FluteError } from '../src/errors.js';
import { roundToF16 } from '../src/format/half.js';
import { dequantize, groupsPerRow, type DenseLinear, type QuantizedLinear } from '../src/quant/linear.js';
import { packIndices, unpackIndices } from '../src/quant/packing.js';
import { buildTable } from '../src/quant/tables.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import {
  buildLutTable,
  buildUnitScales,
  createWebGpuBackend,
  generateWgsl,
  lutGeometry,
  packLutIndices,
  specKey,
  webgpuAvailable,
  type GpuKernelBackend,
  type GpuMatmulOptions,
  type KernelSpec,
} from '../src/kernels/webgpu/index.js';
import { planShards } from '../src/kernels/webgpu/layout.js';
import { acquireAdapter } from '../src/kernels/webgpu/gpu.js';
import { identity, randInt, relErr, rng } from './helpers.js';

const U = 2 ** -24;
const isCode = (code: string) => (e: unknown) => e instanceof FluteError && e.code === code;

// ---------------------------------------------------------------------------------------------
// Backends (or the reason there are none)

const avail = await webgpuAvailable();
const SKIP: string | undefined = avail.ok ? undefined : `no WebGPU adapter: ${avail.reason}`;
if (!avail.ok && process.env.CI) {
  test('webgpu: a WebGPU adapter is available (required when CI is set)', () => assert.fail(SKIP));
}

interface Backends {
  f32: GpuKernelBackend; // subgroup reduction where the adapter has it
  f16: GpuKernelBackend; // native shader-f16 where available, else emulated
  small: GpuKernelBackend; // workgroup-memory reduction, 64 invocations, 8 KiB bindings (forces shards)
}
const be: Backends | null = avail.ok
  ? {
      f32: await createWebGpuBackend({ precision: 'f32' }),
      f16: await createWebGpuBackend({ precision: 'f16' }),
      small: await createWebGpuBackend({ precision: 'f32', subgroups: false, gemvWorkgroupSize: 64, maxBindingBytes: 8192 }),
    }
  : null;
after(() => {
  if (be) for (const b of Object.values(be)) b.dispose();
});
const ref = createRefBackend();

/** A test that needs the GPU: skipped with the reason when there is none. */
function gpuTest(name: string, fn: (b: Backends) => Promise<void>): void {
  test(name, { skip: SKIP }, () => fn(be!));
}

if (be) console.log(`# webgpu adapter: ${be.f32.info().variant}\n# f16 backend: ${be.f16.info().variant}`);

// ---------------------------------------------------------------------------------------------
// Layers and checks

function randomLayer(r: () => number, bits: number, n: number, k: number, g: number, table: 'nf' | 'random' | 'arange' = 'random', unitScales = false): QuantizedLinear {
  const G = groupsPerRow(k, g);
  const idx = Uint8Array.from({ length: n * k }, () => Math.floor(r() * 2 ** bits)); // every index, incl. the largest
  const t =
    table === 'nf' ? buildTable('nf', bits) : table === 'arange' ? Float32Array.from({ length: 2 ** bits }, (_, i) => i) : Float32Array.from({ length: 2 ** bits }, () => Math.fround((r() - 0.4) * 3));
  // scales of both signs (the format allows negative ones), f16-exact like checkpoints
  const scales = Float32Array.from({ length: n * G }, () => (unitScales ? 1 : roundToF16((r() < 0.25 ? -1 : 1) * (0.02 + r()))));
  return { kind: 'quantized', n, k, bits, groupSize: g, tableKind: table === 'nf' ? 'nf' : 'custom', table: t, scaleDtype: 'f16', scales, packed: packIndices(idx, n, k, bits) };
}

function randomX(r: () => number, len: number): Float32Array {
  return Float32Array.from({ length: len }, () => Math.fround(r() * 2 - 1));
}

/** Per element: |got - want| <= K u sum|w x| (+ a tiny absolute term for exact zeros). */
function checkF32(id: string, got: Float32Array, x: Float32Array, w: Float32Array, m: number, n: number, k: number): void {
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      let a = 0;
      for (let c = 0; c < k; c++) {
        const p = w[j * k + c] * x[i * k + c];
        s += p;
        a += Math.abs(p);
      }
      const err = Math.abs(got[i * n + j] - s);
      const bound = (k + 2) * U * a + 1e-30;
      if (!(err <= bound)) assert.fail(`${id}: y[${i}, ${j}] = ${got[i * n + j]}, reference ${s}, error ${err} over the bound ${bound}`);
    }
  }
}

function frob(a: ArrayLike<number>, b: ArrayLike<number>): number {
  return Math.max(relErr(a, b), relErr(b, a));
}

/** `id` is completed with the path taken and a closing parenthesis. */
async function checkCase(b: GpuKernelBackend, id: string, layer: QuantizedLinear, x: Float32Array, m: number, opts: GpuMatmulOptions = {}): Promise<void> {
  const prec = opts.computeType ?? b.precision;
  const p = await b.prepare(layer);
  try {
    const got = await b.matmul(p, x, m, undefined, opts);
    id = `${id},${b.plan(p, m, opts).path})`;
    const want = ref.matmul(ref.prepare(layer), x, m, undefined, { computeType: prec });
    const e = frob(got, want);
    if (prec === 'f32') {
      assert.ok(e <= 1e-5, `${id}: relative error ${e.toExponential(2)} > 1e-5`);
      checkF32(id, got, x, dequantize(layer, 'f32'), m, layer.n, layer.k);
    } else {
      assert.ok(e < 2e-3, `${id}: relative error ${e.toExponential(2)} >= 2e-3 (FLUTE's f16 bound)`);
    }
  } finally {
    b.release(p);
  }
}

/** y = I W^T must return dequantize(layer, precision) transposed, bit for bit. */
async function checkIdentity(b: GpuKernelBackend, id: string, layer: QuantizedLinear | DenseLinear, opts: GpuMatmulOptions = {}): Promise<void> {
  const prec = opts.computeType ?? b.precision;
  const { n, k } = layer;
  const p = await b.prepare(layer);
  try {
    const y = await b.matmul(p, identity(k), k, undefined, opts);
    const w = layer.kind === 'dense' ? layer.weight : dequantize(layer, prec);
    const yb = new Uint32Array(y.buffer);
    const wb = new Uint32Array(w.buffer);
    let bad = 0;
    let first = '';
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < n; j++) {
        if (yb[i * n + j] !== wb[j * k + i]) {
          if (!bad) first = `y[${i}, ${j}] = ${y[i * n + j]}, W[${j}, ${i}] = ${w[j * k + i]}`;
          bad++;
        }
      }
    }
    assert.equal(bad, 0, `${id}: ${bad} of ${n * k} outputs differ from dequantize(); first: ${first}`);
  } finally {
    b.release(p);
  }
}

// ---------------------------------------------------------------------------------------------
// Layout (pure TypeScript; runs without a GPU)

test('webgpu layout: repacked planes decode to the canonical indices for bits 1..8', () => {
  const r = rng(11);
  for (let bits = 1; bits <= 8; bits++) {
    const n = 5;
    const k = 77;
    const layer = randomLayer(r, bits, n, k, 32);
    const geo = lutGeometry(layer);
    const { main, hi } = packLutIndices(layer, geo);
    const want = unpackIndices(layer.packed, n, k, bits);
    const cb = geo.format === 'b2' || geo.format === 'p3' ? 2 : geo.format === 'b4' ? 4 : 8;
    for (let row = 0; row < n; row++) {
      for (let c = 0; c < geo.kp; c++) {
        const per = 32 / cb;
        let q = (main[row * geo.words + Math.floor(c / per)] >>> ((c % per) * cb)) & ((1 << cb) - 1);
        if (hi) q |= ((hi[row * geo.hiWords + (c >>> 5)] >>> (c & 31)) & 1) << 2;
        assert.equal(q, c < k ? want[row * k + c] : 0, `bits=${bits} row ${row} col ${c}`);
      }
    }
  }
});

test('webgpu layout: pair tables hold (T[even], T[odd]) in the order the shaders index them', () => {
  const t4 = Float32Array.from({ length: 16 }, (_, i) => i + 0.5);
  const p4 = buildLutTable({ bits: 4, table: t4 }, 'f32');
  assert.deepEqual([p4[2 * 0x3a], p4[2 * 0x3a + 1]], [t4[0xa], t4[0x3]]); // byte 0x3a: even k = 0xa, odd k = 0x3
  const t3 = Float32Array.from({ length: 8 }, (_, i) => i * 10);
  const p3 = buildLutTable({ bits: 3, table: t3 }, 'f32');
  // codes 6 (lo 2, hi 1) and 3 (lo 3, hi 0): index = lo_e | lo_o << 2 | hi_e << 4 | hi_o << 5
  const pi = 2 | (3 << 2) | (1 << 4);
  assert.deepEqual([p3[2 * pi], p3[2 * pi + 1]], [60, 30]);
  const t16 = Float32Array.from({ length: 4 }, () => 0.1);
  assert.equal(buildLutTable({ bits: 2, table: t16 }, 'f16')[0], roundToF16(0.1), 'f16 tables are rounded like dequantize()');
});

test('webgpu layout: unit scales, padding and shard plans', () => {
  const r = rng(3);
  const layer = randomLayer(r, 4, 3, 100, 48); // ragged: g = 48 (unit 16), last group of 4
  const geo = lutGeometry(layer);
  assert.deepEqual([geo.kp, geo.unit, geo.units, geo.words], [128, 16, 8, 16]);
  const s = buildUnitScales(layer, geo, 'f32');
  const G = groupsPerRow(100, 48);
  for (let j = 0; j < geo.units; j++) assert.equal(s[geo.units + j], j * 16 < 100 ? layer.scales[G + Math.floor((j * 16) / 48)] : 0);
  assert.equal(lutGeometry({ bits: 3, n: 1, k: 4096, groupSize: 128 }).unit, 128);
  assert.deepEqual(planShards(300, 1000, 64000, 65535), [[0, 64], [64, 128], [128, 192], [192, 256], [256, 300]]);
  assert.deepEqual(planShards(10, 1000, 64000, 65535), [[0, 10]]);
  assert.throws(() => planShards(10, 1000, 500, 65535), isCode('E_SHAPE'));
});

test('webgpu programs: cache keys are the specialization, WGSL is generated per spec', () => {
  const a: KernelSpec = { op: 'gemm', w: { kind: 'lut', format: 'b4', unit: 128 }, arith: 'f32', tm: 32, tn: 64, dup: 4 };
  const b: KernelSpec = { dup: 4, tn: 64, tm: 32, arith: 'f32', w: { unit: 128, format: 'b4', kind: 'lut' }, op: 'gemm' };
  assert.equal(specKey(a), specKey(b));
  assert.notEqual(specKey(a), specKey({ ...a, dup: 2 }));
  const code = generateWgsl({ op: 'gemv', w: { kind: 'lut', format: 'p3', unit: 64 }, arith: 'f16', rows: 4, mb: 1, wg: 128, dup: 2, reduce: 'subgroup', maxSubgroups: 32 });
  assert.match(code, /^enable f16;\nenable subgroups;/);
  assert.match(code, /var<workgroup> lut: array<lut_t, 128>/); // 64 pairs x 2 copies
});

// ---------------------------------------------------------------------------------------------
// The matrix: bits x group size x M x precision

const GROUPS: { label: string; g: number }[] = [
  { label: '32', g: 32 },
  { label: '64', g: 64 },
  { label: '128', g: 128 },
  { label: '256', g: 256 },
  { label: 'ragged48', g: 48 },
];
const M_BY_PRECISION = { f32: [1, 3, 20, 64], f16: [1, 2, 9, 64] } as const;

for (const bits of [2, 3, 4]) {
  gpuTest(`webgpu: bits=${bits} across g = 32, 64, 128, 256, ragged, M = 1..64, f32 and f16`, async (b) => {
    const r = rng(100 + bits);
    for (const { label, g } of GROUPS) {
      // K ragged against g in every other case (a short last group), N odd-sized
      const k = g * randInt(r, 1, 2) + (g === 48 || r() < 0.5 ? randInt(r, 1, g - 1) : 0);
      const n = randInt(r, 17, 90);
      const layer = randomLayer(r, bits, n, k, g, r() < 0.5 ? 'nf' : 'random');
      for (const prec of ['f32', 'f16'] as const) {
        for (const m of M_BY_PRECISION[prec]) {
          const x = randomX(r, m * k);
          const bk = prec === 'f32' ? b.f32 : b.f16;
          await checkCase(bk, `lutMatmul(b=${bits},g=${label},m=${m},n=${n},k=${k},${prec}`, layer, x, m);
        }
      }
    }
  });
}

gpuTest('webgpu: every M from 1 to 64 (GEMV batch widths 1/2/4, GEMM tiles 16/32/64)', async (b) => {
  const r = rng(7);
  const layer = randomLayer(r, 4, 37, 96, 32);
  for (const bk of [b.f32, b.f16]) {
    const p = await bk.prepare(layer);
    const paths = new Set<string>();
    for (let m = 1; m <= 64; m++) {
      const x = randomX(r, m * layer.k);
      const got = await bk.matmul(p, x, m);
      const want = ref.matmul(ref.prepare(layer), x, m, undefined, { computeType: bk.precision });
      const e = frob(got, want);
      assert.ok(e < (bk.precision === 'f32' ? 1e-5 : 2e-3), `lutMatmul(b=4,g=32,m=${m},n=37,k=96,${bk.precision}): ${e}`);
      paths.add(bk.plan(p, m).path);
    }
    assert.deepEqual([...paths].sort(), ['gemm', 'gemv']);
    bk.release(p);
  }
});

// ---------------------------------------------------------------------------------------------
// Identity: x = I returns the dequantized weights exactly

gpuTest('webgpu: x = I returns dequantize(layer) bit for bit (bits 1..5, 8; GEMV and GEMM; f32 and f16)', async (b) => {
  const r = rng(21);
  for (const bits of [1, 2, 3, 4, 5, 8]) {
    const g = [32, 48, 64, 7][bits % 4];
    const k = randInt(r, 40, 140);
    const layer = randomLayer(r, bits, randInt(r, 9, 40), k, g);
    for (const bk of [b.f32, b.f16]) {
      for (const path of ['gemv', 'gemm'] as const) {
        await checkIdentity(bk, `identity(b=${bits},g=${g},k=${k},${bk.precision},${path})`, layer, { path });
      }
    }
  }
});

gpuTest("webgpu: FLUTE's unpack (table = arange, unit scales, x = I) returns the indices", async (b) => {
  const r = rng(5);
  for (const bits of [3, 4]) {
    const layer = randomLayer(r, bits, 33, 70, 64, 'arange', true);
    const p = await b.f32.prepare(layer);
    const y = await b.f32.matmul(p, identity(70), 70);
    const idx = unpackIndices(layer.packed, 33, 70, bits);
    for (let c = 0; c < 70; c++) for (let row = 0; row < 33; row++) assert.equal(y[c * 33 + row], idx[row * 70 + c]);
    b.f32.release(p);
  }
});

// ---------------------------------------------------------------------------------------------
// Split-K, shards, the workgroup reduction

gpuTest('webgpu: split-K (forced and automatic) agrees with the reference and keeps x = I exact', async (b) => {
  const r = rng(31);
  const layer = randomLayer(r, 3, 40, 700, 64);
  for (const [m, path] of [[1, 'gemv'], [2, 'gemv'], [12, 'gemm'], [40, 'gemm']] as const) {
    const x = randomX(r, m * layer.k);
    for (const splitK of [2, 3, 7]) {
      await checkCase(b.f32, `lutMatmul(b=3,g=64,m=${m},n=40,k=700,split=${splitK}`, layer, x, m, { path, splitK });
    }
  }
  await checkIdentity(b.f32, 'identity(b=3,split=5,gemm)', layer, { splitK: 5 });
  await checkIdentity(b.f16, 'identity(b=3,split=4,gemv)', randomLayer(r, 3, 20, 300, 64), { splitK: 4, path: 'gemv' });
  // a small output with a long K: the planner splits on its own
  const tall = randomLayer(r, 4, 64, 1024, 128);
  const p = await b.f32.prepare(tall);
  const plan = b.f32.plan(p, 16);
  assert.ok(plan.path === 'gemm' && plan.splitK > 1, `expected automatic split-K for 64x1024 at M=16, got ${JSON.stringify(plan)}`);
  b.f32.release(p);
  await checkCase(b.f32, 'lutMatmul(b=4,g=128,m=16,n=64,k=1024,auto-split', tall, randomX(r, 16 * 1024), 16);
});

gpuTest('webgpu: bindings split into row shards and M chunks; workgroup-memory reduction', async (b) => {
  const r = rng(41);
  assert.match(b.small.info().variant, /workgroup-memory reduction/);
  const layer = randomLayer(r, 4, 150, 300, 64); // 8 KiB bindings: 3 row shards, x/y in chunks of M
  const p = await b.small.prepare(layer);
  assert.ok(b.small.plan(p, 1).shards > 1, 'the layer is split into shards');
  b.small.release(p);
  for (const m of [1, 4, 19]) await checkCase(b.small, `lutMatmul(b=4,g=64,m=${m},n=150,k=300,shards`, layer, randomX(r, m * 300), m);
  await checkCase(b.small, 'lutMatmul(b=2,g=32,m=1,n=150,k=300,shards,split=3', randomLayer(r, 2, 150, 300, 32), randomX(r, 300), 1, { splitK: 3 });
  await checkIdentity(b.small, 'identity(b=3,shards)', randomLayer(r, 3, 130, 64, 32));
  // a row that cannot fit one binding is reported, not attempted
  const wide = randomLayer(r, 4, 2, 20000, 128);
  assert.match(b.small.unsupported(wide) ?? '', /binding limit/);
  await assert.rejects(b.small.prepare(wide), isCode('E_SHAPE'));
});

gpuTest('webgpu: table duplication 1..8 gives identical results; measured choice', async (b) => {
  const r = rng(51);
  const layer = randomLayer(r, 4, 33, 256, 128);
  const x = randomX(r, 3 * 256);
  const p = await b.f32.prepare(layer);
  const ys = [];
  for (const duplication of [1, 2, 4, 8]) {
    ys.push(await b.f32.matmul(p, x, 3, undefined, { duplication }));
    assert.equal(b.f32.plan(p, 3, { duplication }).duplication, duplication);
  }
  for (const y of ys.slice(1)) assert.deepEqual(y, ys[0], 'the copy an invocation reads cannot change the sum');
  b.f32.release(p);
  const measured = await createWebGpuBackend({ precision: 'f32', duplication: 'measure' });
  try {
    await checkCase(measured, 'lutMatmul(b=4,measured c', layer, x, 3);
    const chosen = (measured as unknown as { duplicationChoices(): Record<string, number> }).duplicationChoices();
    assert.ok([1, 2, 4, 8].includes(chosen['b4/f32']), JSON.stringify(chosen));
  } finally {
    measured.dispose();
  }
});

// ---------------------------------------------------------------------------------------------
// Dense baseline kernels

gpuTest('webgpu: dense GEMV and GEMM (f32 exact, f16 within 2e-3)', async (b) => {
  const r = rng(61);
  const n = 45;
  const k = 150;
  const w: DenseLinear = { kind: 'dense', n, k, weight: randomX(r, n * k) };
  for (const m of [1, 3, 24]) {
    const x = randomX(r, m * k);
    const want = ref.matmul(ref.prepare(w), x, m);
    for (const bk of [b.f32, b.f16, b.small]) {
      const p = await bk.prepare(w);
      const got = await bk.matmul(p, x, m);
      const e = frob(got, want);
      assert.ok(e < (bk.precision === 'f32' ? 1e-5 : 2e-3), `denseMatmul(m=${m},n=${n},k=${k},${bk.precision}): ${e}`);
      if (bk.precision === 'f32') checkF32(`dense m=${m}`, got, x, w.weight, m, n, k);
      bk.release(p);
    }
  }
  await checkIdentity(b.f32, 'identity(dense,gemm)', w);
  await checkIdentity(b.f32, 'identity(dense,gemv)', w, { path: 'gemv' });
});

// ---------------------------------------------------------------------------------------------
// Device tensors, outputs, bad inputs

gpuTest('webgpu: activations stay on the device between layers; padding stays zero; guards intact', async (b) => {
  const r = rng(71);
  const l1 = randomLayer(r, 4, 70, 50, 32);
  const l2 = randomLayer(r, 3, 20, 70, 64);
  const m = 3;
  const x = randomX(r, m * 50);
  const p1 = await b.f32.prepare(l1);
  const p2 = await b.f32.prepare(l2);
  const h = b.f32.matmulToTensor(p1, x, m);
  assert.deepEqual([h.rows, h.cols, h.stride], [3, 70, 128]);
  const padded = await b.f32.download({ ...h, cols: h.stride });
  for (let i = 0; i < m; i++) for (let c = 70; c < 128; c++) assert.equal(padded[i * 128 + c], 0, 'padding columns are zero');
  const y = await b.f32.matmul(p2, h, m);
  const want = ref.matmul(ref.prepare(l2), ref.matmul(ref.prepare(l1), x, m), m);
  assert.ok(relErr(y, want) < 1e-5, `chained: ${relErr(y, want)}`);
  // guards: an output larger than M*N keeps its tail
  const out = new Float32Array(m * 20 + 8).fill(-7);
  await b.f32.matmul(p2, h, m, out);
  assert.ok(out.subarray(m * 20).every((v) => v === -7), 'values past M*N are untouched');
  b.f32.releaseTensor(h);
  b.f32.release(p1);
  b.f32.release(p2);
});

gpuTest('webgpu: bad inputs are E_SHAPE, foreign or released layers E_BACKEND', async (b) => {
  const r = rng(81);
  const layer = randomLayer(r, 4, 8, 40, 32);
  const p = await b.f32.prepare(layer);
  await assert.rejects(b.f32.matmul(p, new Float32Array(39), 1), isCode('E_SHAPE'));
  await assert.rejects(b.f32.matmul(p, new Float32Array(0), 0), isCode('E_SHAPE'));
  await assert.rejects(b.f32.matmul(p, new Float32Array(40), 1, new Float32Array(7)), isCode('E_SHAPE'));
  await assert.rejects(b.f16.matmul(p, new Float32Array(40), 1), isCode('E_BACKEND'), 'a layer only works on its own backend (device)');
  await assert.rejects(b.f32.matmul(ref.prepare(layer) as never, new Float32Array(40), 1), isCode('E_BACKEND'));
  const t = b.f16.upload(new Float32Array(40), 1, 40);
  assert.throws(() => b.f32.matmulToTensor(p, t, 1), isCode('E_BACKEND'));
  b.f16.releaseTensor(t);
  b.f32.release(p);
  await assert.rejects(b.f32.matmul(p, new Float32Array(40), 1), isCode('E_BACKEND'));
  assert.equal(b.f32.unsupported(layer), null);
  assert.equal(b.f32.unsupported(randomLayer(r, 1, 2, 10, 3)), null, 'every width 1..8 and any g is supported');
});

gpuTest('webgpu: encodeMatmul replays into the caller\'s passes, split-K through the caller\'s scratch', async (b) => {
  const r = rng(31);
  const layer = randomLayer(r, 3, 40, 768, 64);
  const p = await b.f32.prepare(layer);
  const dev = b.f32.gpuDevice();
  for (const m of [1, 6]) {
    const opts: GpuMatmulOptions = { splitK: 3 };
    const plan = b.f32.plan(p, m, opts);
    assert.equal(plan.splitK, 3);
    assert.ok(plan.scratchBytes > 0, 'split-K needs scratch');
    const scratch = dev.createBuffer({ size: plan.scratchBytes, usage: 0x80 /* STORAGE */ });
    const xv = randomX(r, m * 768);
    const x = b.f32.upload(xv, m, 768);
    const y = b.f32.createTensor(m, 40);
    const enc = b.f32.encodeMatmul(p, x, m, y, { ...opts, scratch });
    const want = await b.f32.matmul(p, xv, m, undefined, opts); // the same split: the same summation order
    for (let rep = 0; rep < 2; rep++) {
      const ce = dev.createCommandEncoder();
      const pass = ce.beginComputePass();
      enc.record(pass);
      pass.end();
      dev.queue.submit([ce.finish()]);
      assert.deepEqual(await b.f32.download(y), want, `encodeMatmul(m=${m}) replay ${rep} = matmul`);
    }
    enc.release();
    assert.throws(() => enc.record(dev.createCommandEncoder().beginComputePass()), isCode('E_BACKEND'));
    assert.throws(() => b.f32.encodeMatmul(p, x, m, b.f32.createTensor(m, 41), opts), isCode('E_SHAPE'));
    for (const t of [x, y]) b.f32.releaseTensor(t);
    scratch.destroy();
  }
  b.f32.release(p);
});

gpuTest('webgpu: a lost device becomes E_BACKEND', async () => {
  // Held to the end: if Dawn's instance (acquired.gpu) is collected while its device lives, Dawn stops
  // delivering events (device.lost never settles) or aborts the process.
  const acquired = await acquireAdapter();
  const device = await acquired.adapter.requestDevice();
  const bk = await createWebGpuBackend({ device, precision: 'f32' });
  try {
    const p = await bk.prepare(randomLayer(rng(9), 4, 8, 64, 32));
    assert.equal((await bk.matmul(p, new Float32Array(64).fill(1), 1)).length, 8);
    device.destroy();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('device.lost did not settle within 20 s')), 20_000)));
    await Promise.race([device.lost, deadline]).finally(() => clearTimeout(timer));
    await assert.rejects(bk.matmul(p, new Float32Array(64), 1), (e: unknown) => isCode('E_BACKEND')(e) && /lost/.test((e as Error).message));
    assert.throws(() => bk.upload(new Float32Array(4), 1, 4), isCode('E_BACKEND'));
  } finally {
    bk.dispose();
    acquired.gpu = null;
  }
});

// ---------------------------------------------------------------------------------------------
// Timing, process exit, native f16 WGSL

gpuTest('webgpu: time() measures with timestamp queries where the adapter has them', async (b) => {
  const layer = randomLayer(rng(91), 4, 256, 512, 128);
  const p = await b.f32.prepare(layer);
  const t = await b.f32.time(p, 1, { reps: 3, samples: 3 });
  assert.ok(t.ms > 0 && Number.isFinite(t.ms), `ms = ${t.ms}`);
  assert.equal(t.timer, b.f32.adapter().features.includes('timestamp-query') ? 'timestamp-query' : 'wall-clock');
  assert.equal(t.plan.path, 'gemv');
  b.f32.release(p);
});

gpuTest('webgpu: a Node process that used the backend exits after dispose()', async () => {
  const mod = new URL('../src/kernels/webgpu/index.js', import.meta.url).href;
  const code = `
    const { createWebGpuBackend } = await import(${JSON.stringify(mod)});
    const b = await createWebGpuBackend({ precision: 'f32' });
    const p = await b.prepare({ kind: 'dense', n: 4, k: 8, weight: new Float32Array(32).fill(1) });
    const y = await b.matmul(p, new Float32Array(8).fill(1), 1);
    b.release(p);
    b.dispose();
    console.log('sum', y.reduce((a, v) => a + v, 0));`;
  const args = [...process.execArgv.filter((a) => !a.startsWith('--test')), '--input-type=module', '-e', code];
  const t0 = performance.now();
  const res = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 60_000 });
  assert.equal(res.signal, null, `the process did not exit by itself within 60 s (killed by ${res.signal}); stderr: ${res.stderr}`);
  assert.equal(res.status, 0, res.stderr);
  assert.match(res.stdout, /sum 32/);
  assert.ok(performance.now() - t0 < 60_000);
});

test('webgpu on Mesa llvmpipe through OpenGL ES compatibility mode (no subgroups, no timestamps)', { skip: process.platform === 'linux' ? undefined : 'Linux only (Mesa EGL)' }, async (t) => {
  process.env.EGL_PLATFORM ??= 'surfaceless';
  let bk: GpuKernelBackend;
  try {
    bk = await createWebGpuBackend({ adapterOptions: { dawnFlags: ['backend=opengles'], featureLevel: 'compatibility' } });
  } catch (e) {
    if (process.env.CI) throw e;
    return t.skip(`no OpenGL ES adapter (apt-get install libegl1 libgles2 libegl-mesa0): ${(e as Error).message}`);
  }
  try {
    assert.match(bk.info().variant, /workgroup-memory reduction/);
    const { selfCheckWebGpu } = await import('../src/kernels/webgpu/selfcheck.js');
    const bad = (await selfCheckWebGpu(bk)).filter((c) => !c.ok);
    assert.equal(bad.length, 0, bad.map((c) => `${c.id}: ${c.relErr}`).join('; '));
  } finally {
    bk.dispose();
  }
});

test('webgpu: native shader-f16 kernels compile (Dawn null backend: WGSL validated, nothing executed)', async (t) => {
  let bk: GpuKernelBackend;
  try {
    bk = await createWebGpuBackend({ precision: 'f16', adapterOptions: { dawnFlags: ['backend=null'] } });
  } catch (e) {
    if (process.env.CI) throw e;
    return t.skip(`Dawn's null backend is unavailable: ${(e as Error).message}`);
  }
  try {
    if (!bk.adapter().features.includes('shader-f16')) return t.skip('the null adapter does not advertise shader-f16');
    assert.match(bk.info().variant, /shader-f16/);
    // Prepare and encode real layers: every pipeline the f16 path uses is created and validated.
    const r = rng(99);
    for (const bits of [2, 3, 4, 6]) {
      for (const g of [32, 128, 48]) {
        const p = await bk.prepare(randomLayer(r, bits, 20, 130, g));
        for (const m of [1, 2, 4, 17, 64]) bk.releaseTensor(bk.matmulToTensor(p, new Float32Array(m * 130), m));
        bk.release(p);
      }
    }
    const p = await bk.prepare({ kind: 'dense', n: 20, k: 130, weight: new Float32Array(2600) });
    for (const m of [1, 30]) bk.releaseTensor(bk.matmulToTensor(p, new Float32Array(m * 130), m, { splitK: 2 }));
    // matmul() pops a validation error scope: a shader or pipeline error would reject here
    await bk.matmul(p, new Float32Array(130), 1, undefined, { splitK: 3 });
    bk.release(p);
  } finally {
    bk.dispose();
  }
});
