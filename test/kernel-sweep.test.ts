// A bounded slice of the kernel sweep (src/kernels/sweep.ts; `npm run sweep` runs thousands): random
// bits, table kinds, group sizes (ragged, g > K), N, K, M, threads 1 and 2, int8 and f32 activations,
// and WebGPU f32/f16 where an adapter exists, each against the reference at the tolerance the backend
// states. Without an adapter the WebGPU part is skipped with the reason; with CI set it fails.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { configId, randomConfig, runSweep, type SweepReport } from '../src/kernels/sweep.js';
import { webgpuAvailable } from '../src/kernels/webgpu/index.js';
import { mulberry32 } from '../src/rng.js';

const WASM_CASES = Number(process.env.SWEEP_WASM_CASES ?? 200);
const GPU_CASES = Number(process.env.SWEEP_GPU_CASES ?? 30);

function show(rep: SweepReport): void {
  for (const v of rep.variants) {
    console.log(`  ${v.variant}: ${v.cases} cases, worst ${v.worst?.relErr.toExponential(2)} (tolerance ${v.tolerance}) at ${v.worst?.id}`);
    for (const [path, p] of Object.entries(v.paths)) {
      console.log(`    path ${path}: ${p.cases} cases, worst ${p.worst?.relErr.toExponential(2)} at ${p.worst?.id}${p.worstOverBound ? `, worst / its stated bound ${p.worstOverBound.ratio.toFixed(2)}` : ''}`);
    }
    for (const f of v.failures.slice(0, 10)) console.log(`    over: ${f.id} ${f.relErr.toExponential(2)}${f.error ? ` ${f.error}` : ''}`);
  }
}

const wasm = await runSweep({ cases: { wasm: WASM_CASES }, seed: 2026 });

test(`kernel sweep: wasm with f32 activations matches the reference within 1e-5 on ${WASM_CASES} random configurations`, () => {
  show(wasm);
  const exact = wasm.variants.filter((v) => v.variant.includes('act=f32'));
  assert.equal(exact.length, 2, 'threads 1 and 2');
  for (const v of exact) {
    assert.equal(v.cases, WASM_CASES, `${v.variant}: every configuration ran`);
    assert.deepEqual(v.failures.map((f) => `${f.id} ${f.relErr}`), [], `${v.variant} within ${v.tolerance}`);
  }
});

test('kernel sweep: wasm threads give the same answers as one thread', () => {
  const worst = (name: string) => wasm.variants.find((v) => v.variant === name)?.worst;
  // Rows are split between threads, never a row's sum: the worst case is the same case with the same error.
  for (const name of ['wasm(threads=1,act=int8)', 'wasm(threads=1,act=f32)']) assert.ok(worst(name), `${name} ran`);
  assert.deepEqual(worst('wasm(threads=2,act=int8)'), worst('wasm(threads=1,act=int8)'));
  assert.deepEqual(worst('wasm(threads=2,act=f32)'), worst('wasm(threads=1,act=f32)'));
});

// The stated tolerance is the bound index.ts derives (intPathTolerance); tables whose 7-bit codebook is
// too coarse relative to their small entries (iq4nl, custom tables) take the 8-bit or the exact path.
test('kernel sweep: wasm with int8 activations stays within its stated tolerance', async () => {
  const { createWasmBackend } = await import('../src/kernels/wasm/index.js');
  const probe = await createWasmBackend({ threads: 1 });
  const want = ['exact', 'relaxed7', ...(probe.relaxed8 ? ['relaxed8'] : [])].filter((p) => probe.relaxed || p === 'exact');
  probe.dispose();
  for (const v of wasm.variants.filter((x) => x.variant.includes('act=int8'))) {
    assert.equal(v.cases, WASM_CASES);
    assert.deepEqual(v.failures.map((f) => `${f.id} ${f.relErr.toExponential(2)}`), [], `${v.variant} within ${v.tolerance}`);
    // each path the runtime has is reached (the SIMD128 kernels on a relaxed module only by a few custom tables)
    for (const p of want) assert.ok((v.paths[p]?.cases ?? 0) > 0, `${v.variant}: no case took the ${p} path (${JSON.stringify(Object.keys(v.paths))})`);
    assert.equal(Object.values(v.paths).reduce((a, p) => a + p.cases, 0), v.cases, `${v.variant}: every case reports its path`);
  }
});

test('kernel sweep: configurations cover ragged groups, g > K, every bit width and M, N, K from 1', () => {
  const rand = mulberry32(7);
  const cfgs = Array.from({ length: 2000 }, () => randomConfig(rand));
  assert.ok(cfgs.some((c) => c.k % c.groupSize !== 0 && c.groupSize < c.k), 'ragged last group');
  assert.ok(cfgs.some((c) => c.groupSize > c.k), 'g > K');
  for (let b = 1; b <= 8; b++) assert.ok(cfgs.some((c) => c.bits === b), `bits ${b}`);
  for (const key of ['m', 'n', 'k'] as const) assert.ok(cfgs.some((c) => c[key] === 1), `${key} = 1`);
  assert.match(configId(cfgs[0]), /^lut\(kind=[a-z0-9]+,g=\d+,scales=f(16|32),m=\d+,n=\d+,k=\d+\)$/);
});

const gpu = await webgpuAvailable();
const SKIP = gpu.ok ? undefined : `no WebGPU adapter: ${gpu.reason}`;
if (SKIP && process.env.CI) test('kernel sweep: a WebGPU adapter is available (required when CI is set)', () => assert.fail(SKIP));

test(`kernel sweep: webgpu f32 and f16 match the reference on ${GPU_CASES} random configurations`, { skip: SKIP }, async () => {
  const rep = await runSweep({ cases: { webgpu: GPU_CASES }, seed: 2026 });
  show(rep);
  assert.equal(rep.variants.length, 2);
  for (const v of rep.variants) {
    assert.equal(v.cases + v.skipped, GPU_CASES, `${v.variant}: every configuration ran or was declined`);
    assert.ok(v.cases > GPU_CASES / 2, `${v.variant}: most configurations ran`);
    assert.deepEqual(v.failures.map((f) => `${f.id} ${f.relErr} ${f.error ?? ''}`), [], `${v.variant} within ${v.tolerance}`);
  }
});
