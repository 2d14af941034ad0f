// Finding a WebGPU adapter: navigator.gpu in browsers; in Node the `webgpu` package (Dawn), imported
// lazily so browser bundles never pull it, on a real GPU or else on a CPU implementation (SwiftShader
// from Chromium's Vulkan ICD, then Mesa llvmpipe through OpenGL ES compatibility mode).
/// <reference types="@webgpu/types" />

import { FluteError } from '../../errors.js';
import type { AdapterSummary } from './types.js';

// ---------------------------------------------------------------------------------------------
// Spec constants (GPUBufferUsage, GPUMapMode): fixed by the WebGPU spec, defined here so Node code
// need not install Dawn's globals on globalThis.

export const BUF = {
  MAP_READ: 0x1,
  MAP_WRITE: 0x2,
  COPY_SRC: 0x4,
  COPY_DST: 0x8,
  UNIFORM: 0x40,
  STORAGE: 0x80,
  QUERY_RESOLVE: 0x200,
} as const;
export const MAP_READ = 0x1;

export interface AdapterRequest {
  readonly powerPreference?: GPUPowerPreference;
  /** Node only: Dawn flags for `create()`, e.g. ['backend=vulkan']; when given, no fallbacks are tried. */
  readonly dawnFlags?: readonly string[];
  /** Node only: 'compatibility' for GLES-class devices. */
  readonly featureLevel?: 'core' | 'compatibility';
}

/** An adapter and the GPU object that made it (Node: Dawn's instance); drop both to let Node exit. */
export interface AcquiredAdapter {
  gpu: GPU | null;
  adapter: GPUAdapter;
  via: string;
}

// ---------------------------------------------------------------------------------------------
// Node: locating a CPU Vulkan driver

const isNode = typeof process !== 'undefined' && !!process.versions?.node;

/** The SwiftShader ICD this module put in VK_ICD_FILENAMES (so later probes can say what they use). */
let icdSetHere: string | null = null;

/** Folders where Chromium builds keep SwiftShader's Vulkan ICD (Debian/Ubuntu/Fedora/Arch/snap/Chrome). */
const SWIFTSHADER_DIRS = [
  '/usr/lib/chromium',
  '/usr/lib/chromium-browser',
  '/usr/lib64/chromium',
  '/usr/lib64/chromium-browser',
  '/usr/lib/x86_64-linux-gnu/chromium',
  '/usr/lib/aarch64-linux-gnu/chromium',
  '/opt/google/chrome',
  '/opt/chromium',
  '/snap/chromium/current/usr/lib/chromium-browser',
];

type NodeFs = typeof import('node:fs');

/** The SwiftShader ICD json, from $FLUTE_SWIFTSHADER_ICD, $CHROME_PATH's folder or the usual folders. */
export function findSwiftShaderIcd(fs: NodeFs, env: NodeJS.ProcessEnv = process.env): string | null {
  const dirs = [...SWIFTSHADER_DIRS];
  if (env.CHROME_PATH) dirs.unshift(env.CHROME_PATH.replace(/\/[^/]*$/, ''));
  if (env.FLUTE_SWIFTSHADER_ICD && fs.existsSync(env.FLUTE_SWIFTSHADER_ICD)) return env.FLUTE_SWIFTSHADER_ICD;
  for (const d of dirs) {
    const f = `${d}/vk_swiftshader_icd.json`;
    if (fs.existsSync(f)) return f;
  }
  return null;
}

const RTLD_NOW = 0x2;
const RTLD_GLOBAL = 0x100;
const RTLD_NODELETE = 0x1000; // glibc; not in os.constants.dlopen, but process.dlopen passes it through

/**
 * Makes `libvulkan.so.1` resolvable for Dawn. Debian's chromium ships its own Vulkan loader beside
 * SwiftShader but not on the library path, and LD_LIBRARY_PATH cannot change after start-up; loading
 * it once with RTLD_NODELETE keeps it resident, and Dawn's later dlopen("libvulkan.so.1") then finds it
 * by soname. A system loader (Debian's libvulkan1) makes this unnecessary. Returns what was done.
 */
function ensureVulkanLoader(fallbackDir: string | null): string {
  if (process.platform !== 'linux') return 'system';
  const tryOpen = (file: string): boolean => {
    try {
      process.dlopen({ exports: {} } as NodeJS.Module, file, RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE);
      return true;
    } catch (e) {
      // The library loaded but is not a Node addon: that is the expected outcome.
      return /self-register|napi_register|Module did not/i.test(String((e as Error).message));
    }
  };
  if (tryOpen('libvulkan.so.1')) return 'system libvulkan.so.1';
  if (fallbackDir && tryOpen(`${fallbackDir}/libvulkan.so.1`)) return `${fallbackDir}/libvulkan.so.1`;
  return 'none';
}

function hasSystemVulkanIcd(fs: NodeFs): boolean {
  for (const d of ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d']) {
    try {
      if (fs.readdirSync(d).some((f) => f.endsWith('.json'))) return true;
    } catch {
      // folder absent
    }
  }
  return false;
}

interface DawnModule {
  create(flags: string[]): GPU;
}

async function importDawn(): Promise<DawnModule> {
  // A variable specifier keeps bundlers from resolving the Node-only package into browser builds.
  const spec = 'webgpu';
  try {
    return (await import(/* @vite-ignore */ spec)) as DawnModule;
  } catch (e) {
    throw new FluteError('E_BACKEND', `webgpu: the Node package "webgpu" (Dawn) is not installed (npm install webgpu): ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Dawn toggles for every Node instance. disable_workgroup_init: Dawn zero-fills workgroup memory at the
 * start of every workgroup, which our kernels never rely on (each writes every word before reading
 * it); SwiftShader takes ~3.5 s to compile that fill for a 16 KiB array, and GPUs pay it per
 * workgroup. timestamp_quantization off: full-resolution timestamp queries for the benchmarks.
 */
const DAWN_TOGGLES: Record<'enable' | 'disable', string[]> = {
  enable: ['disable_workgroup_init'],
  disable: ['timestamp_quantization'],
};

/** Adds DAWN_TOGGLES to `flags`, merging with any enable/disable-dawn-features flag already there. */
export function withDawnToggles(flags: readonly string[]): string[] {
  const out = [...flags];
  for (const kind of ['enable', 'disable'] as const) {
    const prefix = `${kind}-dawn-features=`;
    const i = out.findIndex((f) => f.startsWith(prefix));
    if (i < 0) out.push(prefix + DAWN_TOGGLES[kind].join(','));
    else out[i] = [out[i], ...DAWN_TOGGLES[kind].filter((t) => !out[i].includes(t))].join(',');
  }
  return out;
}

async function tryDawn(dawn: DawnModule, flags: string[], featureLevel: 'core' | 'compatibility', pp?: GPUPowerPreference): Promise<{ gpu: GPU; adapter: GPUAdapter } | string> {
  let gpu: GPU | null = null;
  try {
    gpu = dawn.create(withDawnToggles(flags));
    const adapter = await gpu.requestAdapter({ powerPreference: pp, featureLevel } as GPURequestAdapterOptions);
    if (!adapter) return `create(${JSON.stringify(flags)}): no adapter`;
    return { gpu, adapter };
  } catch (e) {
    return `create(${JSON.stringify(flags)}): ${(e as Error).message}`;
  }
}

async function acquireNode(req: AdapterRequest): Promise<AcquiredAdapter> {
  const fsSpec = 'node:fs'; // a variable: browser bundles must not try to resolve Node built-ins
  const fs = (await import(/* @vite-ignore */ fsSpec)) as NodeFs;
  const dawn = await importDawn();
  const tried: string[] = [];
  if (req.dawnFlags) {
    const r = await tryDawn(dawn, [...req.dawnFlags], req.featureLevel ?? 'core', req.powerPreference);
    if (typeof r !== 'string') return { ...r, via: `dawn ${req.dawnFlags.join(' ')}` };
    throw new FluteError('E_BACKEND', `webgpu: no adapter with the requested Dawn flags: ${r}`);
  }
  const icd = findSwiftShaderIcd(fs);
  const icdDir = icd ? icd.replace(/\/[^/]*$/, '') : null;
  const loader = ensureVulkanLoader(icdDir);

  // 1. A real (or user-chosen) Vulkan driver: only when one is installed or VK_ICD_FILENAMES is set,
  //    so machines without one do not print Dawn's loader warnings.
  if (process.env.VK_ICD_FILENAMES || process.env.VK_DRIVER_FILES || hasSystemVulkanIcd(fs)) {
    const r = await tryDawn(dawn, [], 'core', req.powerPreference);
    const icdEnv = process.env.VK_ICD_FILENAMES;
    const what = icdEnv && icdEnv === icdSetHere ? `vulkan, SwiftShader ICD ${icdEnv}` : `dawn default backend${icdEnv ? ` (VK_ICD_FILENAMES=${icdEnv})` : ''}`;
    if (typeof r !== 'string') return { ...r, via: what };
    tried.push(`default backend: ${r}`);
  } else tried.push('default backend: skipped (no Vulkan ICD installed and VK_ICD_FILENAMES unset)');

  // 2. SwiftShader (CPU Vulkan) from a Chromium install. The Vulkan loader reads VK_ICD_FILENAMES
  //    when Dawn creates its instance, so setting it here (before create) is enough.
  if (icd && loader !== 'none' && !process.env.VK_ICD_FILENAMES) {
    process.env.VK_ICD_FILENAMES = icd;
    icdSetHere = icd;
    const r = await tryDawn(dawn, ['backend=vulkan'], 'core', req.powerPreference);
    if (typeof r !== 'string') return { ...r, via: `vulkan, SwiftShader ICD ${icd} (loader: ${loader})` };
    delete process.env.VK_ICD_FILENAMES;
    icdSetHere = null;
    tried.push(`SwiftShader ${icd}: ${r}`);
  } else tried.push(icd ? `SwiftShader ${icd}: no Vulkan loader (install libvulkan1)` : 'SwiftShader: no vk_swiftshader_icd.json found (apt-get install chromium)');

  // 3. Mesa llvmpipe through OpenGL ES in compatibility mode (no subgroups, no f16, slower start).
  if (!process.env.EGL_PLATFORM) process.env.EGL_PLATFORM = 'surfaceless';
  const r = await tryDawn(dawn, ['backend=opengles'], 'compatibility', req.powerPreference);
  if (typeof r !== 'string') return { ...r, via: 'opengles compatibility mode (EGL surfaceless)' };
  tried.push(`OpenGL ES: ${r}`);
  throw new FluteError('E_BACKEND', `webgpu: no adapter found in Node. Tried: ${tried.join('; ')}`);
}

/** Requests an adapter in the browser (navigator.gpu) or in Node (Dawn, with CPU fallbacks). */
export async function acquireAdapter(req: AdapterRequest = {}): Promise<AcquiredAdapter> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu && !req.dawnFlags) {
    const adapter = await nav.gpu.requestAdapter({ powerPreference: req.powerPreference });
    if (!adapter) throw new FluteError('E_BACKEND', 'webgpu: navigator.gpu.requestAdapter() returned null (WebGPU disabled or no usable GPU)');
    return { gpu: null, adapter, via: 'navigator.gpu' };
  }
  if (!isNode) throw new FluteError('E_BACKEND', 'webgpu: this runtime has no navigator.gpu');
  return acquireNode(req);
}

// ---------------------------------------------------------------------------------------------
// Describing an adapter

const LIMIT_NAMES = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'minStorageBufferOffsetAlignment',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
  'maxUniformBufferBindingSize',
] as const;

export function summarizeAdapter(adapter: GPUAdapter, via: string, gpu: GPU | null): AdapterSummary {
  const info = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number; isFallbackAdapter?: boolean };
  const limits: Record<string, number> = {};
  for (const n of LIMIT_NAMES) limits[n] = Number((adapter.limits as unknown as Record<string, number>)[n]);
  const lang = gpu?.wgslLanguageFeatures ?? (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu?.wgslLanguageFeatures;
  return {
    vendor: info.vendor ?? '',
    architecture: info.architecture ?? '',
    device: info.device ?? '',
    description: info.description ?? '',
    via,
    isFallbackAdapter: !!(info.isFallbackAdapter ?? (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter),
    features: [...adapter.features].map(String).sort(),
    wgslLanguageFeatures: lang ? [...lang].map(String).sort() : [],
    limits,
    subgroupMinSize: info.subgroupMinSize,
    subgroupMaxSize: info.subgroupMaxSize,
  };
}

/** "google swiftshader (SwiftShader driver 5.0.0)"-style one-line name. */
export function adapterName(a: AdapterSummary): string {
  const main = [a.vendor, a.architecture, a.device].filter(Boolean).join(' ') || 'unknown adapter';
  return a.description ? `${main} (${a.description})` : main;
}

/**
 * True when the adapter runs on the CPU: the browser's fallback adapter, SwiftShader, Mesa's
 * llvmpipe / lavapipe / softpipe, WARP. In Node, the OpenGL ES compatibility-mode adapter is counted
 * too: acquireNode only reaches it as the last resort after Vulkan, where it is Mesa llvmpipe.
 */
export function isSoftwareAdapter(a: AdapterSummary): boolean {
  if (a.isFallbackAdapter) return true;
  const text = [a.vendor, a.architecture, a.device, a.description, a.via].join(' ');
  return /swiftshader|llvmpipe|lavapipe|softpipe|software|microsoft basic render|\bwarp\b/i.test(text) || a.via.startsWith('opengles compatibility');
}
