// The non-matmul kernels of an on-GPU LLaMA forward pass (wgsl/ops.ts), compiled once per model shape:
// bind groups are made by the caller over its own buffers and replayed; dispatch() records one op into
// a compute pass with the workgroup counts its WGSL expects. The order of ops is the model's business
// (src/model/llama-gpu.ts).
/// <reference types="@webgpu/types" />

import { FluteError } from '../../errors.js';
import { BUF } from './gpu.js';
import { ELEMWISE_WG, OPS_WG, opWgsl, type OpName, type OpsShape } from './wgsl/ops.js';

export type { OpName, OpsShape } from './wgsl/ops.js';

const OP_NAMES: readonly OpName[] = ['rmsnorm', 'rmsnormLast', 'addBias', 'ropeQ', 'ropeStoreKv', 'attention', 'swiglu', 'add'];

export class LlamaOps {
  /** The Step uniform {m, pos0}: binding 0 of every op, rewritten before each submit. */
  readonly step: GPUBuffer;
  private readonly pipelines: Record<OpName, GPUComputePipeline>;
  private readonly modules: GPUShaderModule[] = [];
  private readonly stepData = new Uint32Array(4); // [m, pos0, 0, 0]

  constructor(private readonly device: GPUDevice, readonly shape: OpsShape) {
    const perDim = device.limits.maxComputeWorkgroupsPerDimension;
    if (shape.nHeads > perDim) throw new FluteError('E_SHAPE', `webgpu ops: ${shape.nHeads} heads exceed maxComputeWorkgroupsPerDimension ${perDim}`);
    this.step = device.createBuffer({ size: 16, usage: BUF.UNIFORM | BUF.COPY_DST, label: 'step' });
    const entries = OP_NAMES.map((op): [OpName, GPUComputePipeline] => {
      const module = device.createShaderModule({ code: opWgsl(op, shape), label: op });
      this.modules.push(module);
      return [op, device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: op })];
    });
    this.pipelines = Object.fromEntries(entries) as Record<OpName, GPUComputePipeline>;
  }

  /** A bind group for `op`: binding 0 is the step uniform, then `buffers` as bindings 1, 2, ... */
  bind(op: OpName, buffers: readonly GPUBuffer[]): GPUBindGroup {
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: this.step } }];
    buffers.forEach((buffer, i) => entries.push({ binding: i + 1, resource: { buffer } }));
    return this.device.createBindGroup({ layout: this.pipelines[op].getBindGroupLayout(0), entries, label: op });
  }

  /** A uniform {cols, stride} for addBias over a tensor of that width. */
  biasDims(cols: number, stride: number): GPUBuffer {
    const b = this.device.createBuffer({ size: 16, usage: BUF.UNIFORM, mappedAtCreation: true, label: 'bias dims' });
    new Uint32Array(b.getMappedRange()).set([cols, stride, 0, 0]);
    b.unmap();
    return b;
  }

  /** Writes {m, pos0} for the next submit (queue order: before the submit that reads it). */
  setStep(m: number, pos0: number): void {
    this.stepData[0] = m;
    this.stepData[1] = pos0;
    this.device.queue.writeBuffer(this.step, 0, this.stepData);
  }

  /** Records `op` over m rows; `cols` is the bias width for addBias. */
  dispatch(pass: GPUComputePassEncoder, op: OpName, group: GPUBindGroup, m: number, cols = 0): void {
    const sh = this.shape;
    const half = sh.headDim / 2;
    const up = (a: number, b: number) => Math.ceil(a / b);
    pass.setPipeline(this.pipelines[op]);
    pass.setBindGroup(0, group);
    switch (op) {
      case 'rmsnorm': return pass.dispatchWorkgroups(m, 1);
      case 'rmsnormLast': return pass.dispatchWorkgroups(1, 1);
      case 'addBias': return pass.dispatchWorkgroups(up(cols, OPS_WG), m);
      case 'ropeQ': return pass.dispatchWorkgroups(up(sh.nHeads * half, OPS_WG), m);
      case 'ropeStoreKv': return pass.dispatchWorkgroups(up(sh.nKvHeads * half, OPS_WG), m);
      case 'attention': return pass.dispatchWorkgroups(sh.nHeads, m);
      case 'swiglu': return pass.dispatchWorkgroups(up(m * sh.hiddenStride, ELEMWISE_WG), 1);
      case 'add': return pass.dispatchWorkgroups(up(m * sh.dimStride, ELEMWISE_WG), 1);
    }
  }

  /** Compiler errors of the op programs, for error reports. */
  async errors(): Promise<string[]> {
    const out: string[] = [];
    for (const m of this.modules) {
      for (const msg of (await m.getCompilationInfo()).messages) if (msg.type === 'error') out.push(`${m.label}: line ${msg.lineNum}: ${msg.message}`);
    }
    return out;
  }

  dispose(): void {
    this.step.destroy();
  }
}

/** Largest row count whose elementwise dispatch fits one dimension of workgroups. */
export function maxOpsRows(sh: OpsShape, perDim: number): number {
  return Math.floor((perDim * ELEMWISE_WG) / Math.max(sh.hiddenStride, sh.dimStride));
}
