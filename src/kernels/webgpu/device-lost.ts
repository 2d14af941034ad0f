// The typed error for a lost GPU device (driver reset, GPU removed, tab backgrounded, destroy()): an
// E_BACKEND FluteError that callers can tell apart from other GPU failures and recover from by moving
// to another backend (see FallbackModel in src/model/llama-gpu.ts).

import { FluteError } from '../../errors.js';

export class GpuDeviceLostError extends FluteError {
  /** GPUDeviceLostInfo.reason: 'destroyed' (destroy() was called) or 'unknown'. */
  readonly reason: string;
  constructor(reason: string, detail: string) {
    super('E_BACKEND', `webgpu: the device was lost (${reason}: ${detail || 'no message'}); create a new backend`);
    this.name = 'GpuDeviceLostError';
    this.reason = reason;
  }
}

/** True for a lost device, whichever layer reported it. */
export function isDeviceLost(e: unknown): e is GpuDeviceLostError {
  return e instanceof GpuDeviceLostError;
}
