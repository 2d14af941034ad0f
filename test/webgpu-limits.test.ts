// WebGPU buffer limits: the backend must split what it binds and allocates to fit the device's
// maxStorageBufferBindingSize and maxBufferSize. Dawn never grants limits below the defaults, so the
// test hands the backend a device whose reported limits are tiny (4 KiB bindings, 16 KiB buffers) and
// checks every buffer and binding it creates against them, and the results against the reference.
// Without an adapter the tests are skipped with the reason; with CI set, a missing adapter fails.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { FluteError } from '../src/errors.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import { createWebGpuBackend, webgpuAvailable, type GpuKernelBackend } from '../src/kernels/webgpu/index.js';
import { acquireAdapter } from '../src/kernels/webgpu/gpu.js';
import { quantizeRtn } from '../src/quant/rtn.js';
import { relErr, rng } from './helpers.js';

const BINDING = 4096;
const BUFFER = 16384;
const STORAGE_USAGE = 0x80; // GPUBufferUsage.STORAGE (the constant is not a Node global)

const avail = await webgpuAvailable();
const SKIP = avail.ok ? undefined : `no WebGPU adapter: ${avail.reason}`;
if (SKIP && process.env.CI) test('webgpu limits: a WebGPU adapter is available (required when CI is set)', () => assert.fail(SKIP));

interface Watch {
  maxBuffer: number;
  maxBinding: number;
  violations: string[];
}

/** A device that reports the small limits and records every buffer size and binding size used. */
function limitedDevice(real: GPUDevice, watch: Watch): GPUDevice {
  const limits = new Proxy(real.limits, {
    get: (l, p) => (p === 'maxStorageBufferBindingSize' ? BINDING : p === 'maxBufferSize' ? BUFFER : Reflect.get(l, p, l)),
  });
  return new Proxy(real, {
    get(target, p) {
      if (p === 'limits') return limits;
      if (p === 'createBuffer') {
        return (d: GPUBufferDescriptor) => {
          watch.maxBuffer = Math.max(watch.maxBuffer, d.size);
          if (d.size > BUFFER) watch.violations.push(`createBuffer(${d.size}) > maxBufferSize ${BUFFER} (${d.label ?? ''})`);
          return target.createBuffer(d);
        };
      }
      if (p === 'createBindGroup') {
        return (d: GPUBindGroupDescriptor) => {
          for (const e of d.entries as GPUBindGroupEntry[]) {
            const r = e.resource as GPUBufferBinding;
            if (!r || typeof r !== 'object' || !('buffer' in r)) continue;
            const size = r.size ?? r.buffer.size - (r.offset ?? 0);
            // Uniform bindings have their own (64 KiB) limit; ours are 256-byte parameter slots.
            if (r.buffer.usage & STORAGE_USAGE) {
              watch.maxBinding = Math.max(watch.maxBinding, size);
              if (size > BINDING) watch.violations.push(`binding ${e.binding} of ${size} bytes > maxStorageBufferBindingSize ${BINDING}`);
            }
          }
          return target.createBindGroup(d);
        };
      }
      const v = Reflect.get(target, p, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

let backend: GpuKernelBackend | undefined;
let realDevice: GPUDevice | undefined;
let gpu: unknown; // Dawn's instance: kept alive for as long as its device is used
const watch: Watch = { maxBuffer: 0, maxBinding: 0, violations: [] };
if (!SKIP) {
  const got = await acquireAdapter();
  gpu = got.gpu;
  realDevice = await got.adapter.requestDevice();
  backend = await createWebGpuBackend({ precision: 'f32', device: limitedDevice(realDevice, watch) });
}
after(async () => {
  backend?.dispose();
  if (realDevice) {
    realDevice.destroy();
    await realDevice.lost;
  }
  gpu = undefined;
});

test('webgpu limits: layers and activations larger than a binding are split, and still match the reference', { skip: SKIP }, async () => {
  const b = backend as GpuKernelBackend;
  const ref = createRefBackend();
  const r = rng(11);
  for (const [bits, g, n, k, m] of [[4, 64, 200, 256, 1], [3, 128, 150, 384, 3], [2, 32, 300, 128, 8], [4, 48, 97, 200, 12]]) {
    const w = Float32Array.from({ length: n * k }, () => r() * 2 - 1);
    const layer = quantizeRtn(w, n, k, { bits, groupSize: g, tableKind: 'nf' }).layer;
    const x = Float32Array.from({ length: m * k }, () => r() * 2 - 1);
    const p = await b.prepare(layer);
    try {
      const plan = b.plan(p, m);
      assert.ok(plan.shards > 1, `bits=${bits} n=${n} k=${k}: ${plan.shards} shards for a layer larger than one 4 KiB binding`);
      const got = await b.matmul(p, x, m);
      const want = ref.matmul(ref.prepare(layer), x, m);
      assert.ok(relErr(got, want) <= 1e-5, `bits=${bits} g=${g} n=${n} k=${k} m=${m}: rel err ${relErr(got, want)}`);
    } finally {
      b.release(p);
    }
  }
  console.log(`  largest buffer ${watch.maxBuffer} B (limit ${BUFFER}), largest storage binding ${watch.maxBinding} B (limit ${BINDING})`);
  assert.deepEqual(watch.violations, []);
  assert.ok(watch.maxBinding > 0 && watch.maxBinding <= BINDING, `largest storage binding ${watch.maxBinding}`);
  assert.ok(watch.maxBuffer <= BUFFER);
});

test('webgpu limits: an input beyond maxBufferSize is refused with E_SHAPE, and a row beyond a binding is unsupported', { skip: SKIP }, async () => {
  const b = backend as GpuKernelBackend;
  const r = rng(12);
  const [n, k] = [64, 256];
  const layer = quantizeRtn(Float32Array.from({ length: n * k }, () => r() * 2 - 1), n, k, { bits: 4, groupSize: 64, tableKind: 'nf' }).layer;
  const p = await b.prepare(layer);
  try {
    const m = 40; // 40 x 256 f32 = 40 KiB of activations, over the 16 KiB maxBufferSize
    await assert.rejects(b.matmul(p, new Float32Array(m * k), m), (e: unknown) => e instanceof FluteError && e.code === 'E_SHAPE' && /maxBufferSize/.test(e.message));
  } finally {
    b.release(p);
  }
  // One row of K = 16384 at 4 bits is 8 KiB of codes: no split of rows can bind it in 4 KiB.
  const wide = quantizeRtn(Float32Array.from({ length: 2 * 16384 }, () => r() * 2 - 1), 2, 16384, { bits: 4, groupSize: 64, tableKind: 'nf' }).layer;
  assert.match(b.unsupported(wide) ?? '', /binding limit/);
  assert.deepEqual(watch.violations, []);
});
