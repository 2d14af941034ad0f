// What `flute doctor` reports about WebGPU: the adapter (name, how it was reached, limits, features,
// WGSL language features) and a self-check of the webgpu backend against the reference. Printing is
// the CLI's job; formatWebGpuDoctor() gives it ready-made lines.

import type { SelfCheckCase } from '../selfcheck.js';
import { adapterName } from './gpu.js';
import { createWebGpuBackend, webgpuAvailable, type WebGpuBackendOptions } from './index.js';
import { selfCheckWebGpu } from './selfcheck.js';
import type { AdapterSummary } from './types.js';

export interface WebGpuDoctorReport {
  readonly available: boolean;
  readonly reason?: string; // why there is no adapter, or why the backend failed to start
  readonly adapterName?: string;
  readonly adapter?: AdapterSummary; // limits, features, WGSL language features
  readonly variant?: string; // the backend's info().variant
  readonly ok: boolean; // available and every check passed
  readonly checks: readonly SelfCheckCase[];
}

/** Probes the adapter, then runs the self-check in f32 and f16 (f16 emulated where shader-f16 is missing). */
export async function webgpuDoctorReport(opts: WebGpuBackendOptions = {}): Promise<WebGpuDoctorReport> {
  const probe = await webgpuAvailable(opts.adapterOptions);
  if (!probe.ok) return { available: false, reason: probe.reason, ok: false, checks: [] };
  let backend;
  try {
    backend = await createWebGpuBackend(opts);
  } catch (e) {
    return { available: false, reason: (e as Error).message, adapter: probe.adapter, adapterName: adapterName(probe.adapter!), ok: false, checks: [] };
  }
  try {
    const checks = await selfCheckWebGpu(backend);
    return {
      available: true,
      adapterName: adapterName(backend.adapter()),
      adapter: backend.adapter(),
      variant: backend.info().variant,
      ok: checks.every((c) => c.ok),
      checks,
    };
  } finally {
    backend.dispose();
  }
}

/** Human-readable lines of a report, in the style of the other backends' doctor output. */
export function formatWebGpuDoctor(r: WebGpuDoctorReport): string[] {
  if (!r.available) return [`backend webgpu: unavailable (${r.reason})`];
  const a = r.adapter!;
  const lines = [
    `backend webgpu: ${r.variant}: ${r.ok ? 'agrees with the reference' : 'DISAGREES with the reference'}`,
    `  adapter: ${r.adapterName}${a.isFallbackAdapter ? ' (fallback/CPU adapter)' : ''}, via ${a.via}`,
    `  features: ${a.features.join(', ') || 'none'}`,
    `  WGSL language features: ${a.wgslLanguageFeatures.join(', ') || 'unknown'}`,
    `  limits: ${Object.entries(a.limits).map(([k, v]) => `${k} ${v}`).join(', ')}`,
  ];
  if (a.subgroupMinSize !== undefined) lines.push(`  subgroup sizes: ${a.subgroupMinSize}..${a.subgroupMaxSize}`);
  for (const c of r.checks) lines.push(`  ${c.ok ? 'ok  ' : 'FAIL'} ${c.id} rel. error ${Number.isNaN(c.relErr) ? 'n/a' : c.relErr.toExponential(2)}`);
  return lines;
}
