// The program cache: one compiled compute pipeline per kernel specialization (bits/format, scale unit
// from the group size, tile shape, arithmetic, table duplication, reduction), keyed by specKey(). The
// split-K factor is a uniform, not a specialization: one pipeline serves every factor.
/// <reference types="@webgpu/types" />

import { gemmWgsl } from './wgsl/gemm.js';
import { gemvWgsl } from './wgsl/gemv.js';
import { reduceWgsl } from './wgsl/reduce.js';
import { specKey, type KernelSpec } from './wgsl/spec.js';

/** The WGSL source of a specialization. */
export function generateWgsl(spec: KernelSpec): string {
  switch (spec.op) {
    case 'gemv':
      return gemvWgsl(spec);
    case 'gemm':
      return gemmWgsl(spec);
    case 'reduce':
      return reduceWgsl();
  }
}

export interface Program {
  readonly key: string;
  readonly pipeline: GPUComputePipeline;
  readonly module: GPUShaderModule;
  readonly code: string;
}

export class ProgramCache {
  private readonly programs = new Map<string, Program>();
  constructor(private readonly device: GPUDevice) {}

  /** The pipeline for `spec`, compiled on first use (synchronously: matmulToTensor must not await). */
  get(spec: KernelSpec): Program {
    const key = specKey(spec);
    let p = this.programs.get(key);
    if (!p) {
      const code = generateWgsl(spec);
      const module = this.device.createShaderModule({ code, label: key });
      const pipeline = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: key });
      p = { key, pipeline, module, code };
      this.programs.set(key, p);
    }
    return p;
  }

  /** Compiler messages of every cached program that reported errors (for error reports). */
  async errors(): Promise<string[]> {
    const out: string[] = [];
    for (const p of this.programs.values()) {
      const info = await p.module.getCompilationInfo();
      for (const m of info.messages) if (m.type === 'error') out.push(`${p.key}: line ${m.lineNum}: ${m.message}`);
    }
    return out;
  }

  get size(): number {
    return this.programs.size;
  }

  keys(): string[] {
    return [...this.programs.keys()];
  }

  clear(): void {
    this.programs.clear();
  }
}
