// flute doctor: what this runtime can do, which kernel backends are available, and whether each one
// agrees with the reference on small cases.

import { availableParallelism, totalmem } from 'node:os';
import { BACKEND_NAMES, createBackend } from '../../kernels/registry.js';
import { selfCheck } from '../../kernels/selfcheck.js';
import { parse } from '../args.js';
import { BACKEND_OPTIONS, backendChoice } from '../backend-options.js';

const HELP = `Usage: flute doctor [--threads N] [--json]

Prints the runtime (Node, cores, memory, WebAssembly features), every kernel backend with its variant
(WebGPU: the adapter, its limits and features), and a check of each against the reference backend on
small random layers.`;

function wasmFeature(bytes: number[]): boolean {
  try {
    return WebAssembly.validate(new Uint8Array(bytes));
  } catch {
    return false;
  }
}

// Minimal modules: a function returning a v128 constant (SIMD128), and a shared memory (threads).
const SIMD_MODULE = [0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1, 20, 0, 253, 12, ...new Array(16).fill(0), 11];
const THREADS_MODULE = [0, 97, 115, 109, 1, 0, 0, 0, 5, 4, 1, 3, 1, 1];

export async function doctorCommand(argv: string[]): Promise<number> {
  const p = parse('doctor', argv, BACKEND_OPTIONS);
  if (p.values.help) return console.log(HELP), 0;
  const { threads } = backendChoice(p);
  const runtime = {
    node: process.version,
    v8: process.versions.v8,
    platform: `${process.platform}-${process.arch}`,
    cores: availableParallelism(),
    memoryBytes: totalmem(),
    wasmSimd: wasmFeature(SIMD_MODULE),
    wasmThreads: wasmFeature(THREADS_MODULE) && typeof SharedArrayBuffer === 'function',
  };
  const backends = [];
  let allOk = true;
  for (const name of BACKEND_NAMES) {
    try {
      const b = await createBackend(name, { threads });
      const checks = selfCheck(b, b.info().relTolerance ?? 1e-5);
      const ok = checks.every((c) => c.ok);
      allOk &&= ok;
      backends.push({ name, available: true, variant: b.info().variant, tolerance: b.info().relTolerance ?? 1e-5, ok, checks });
      b.dispose();
    } catch (e) {
      backends.push({ name, available: false, reason: (e as Error).message });
    }
  }
  // WebGPU is asynchronous, so it has its own report: adapter, limits, features and its self-check.
  const { webgpuDoctorReport, formatWebGpuDoctor } = await import('../../kernels/webgpu/doctor.js');
  const gpu = await webgpuDoctorReport();
  if (gpu.available) allOk &&= gpu.ok;
  if (p.values.json) {
    console.log(JSON.stringify({ runtime, backends, webgpu: gpu }, null, 2));
    return allOk ? 0 : 1;
  }
  console.log(`runtime: Node ${runtime.node} (V8 ${runtime.v8}) on ${runtime.platform}, ${runtime.cores} cores, ${(runtime.memoryBytes / 2 ** 30).toFixed(1)} GiB`);
  console.log(`WebAssembly: SIMD128 ${runtime.wasmSimd ? 'yes' : 'no'}, threads ${runtime.wasmThreads ? 'yes' : 'no'}`);
  for (const b of backends) {
    if (!b.available) {
      console.log(`backend ${b.name}: unavailable (${b.reason})`);
      continue;
    }
    console.log(`backend ${b.name}: ${b.variant}: ${b.ok ? 'agrees with the reference' : 'DISAGREES with the reference'} (tolerance ${b.tolerance})`);
    for (const c of b.checks ?? []) console.log(`  ${c.ok ? 'ok  ' : 'FAIL'} ${c.id} rel. error ${c.relErr.toExponential(2)}`);
  }
  for (const line of formatWebGpuDoctor(gpu)) console.log(line);
  return allOk ? 0 : 1;
}
