// The list of kernel backends and how to create one by name. `auto` picks the fastest backend that
// can run here (WebAssembly when available, else the reference) and says which it took.

import { FluteError } from '../errors.js';
import { createRefBackend } from './ref/index.js';
import type { KernelBackend } from './types.js';

export type BackendName = 'ref' | 'wasm';
export const BACKEND_NAMES: readonly BackendName[] = ['ref', 'wasm'];

export interface BackendOptions {
  /** Worker threads for backends that use them; default: the cores available. */
  readonly threads?: number;
}

type Factory = (opts: BackendOptions) => Promise<KernelBackend>;

const FACTORIES: Record<BackendName, Factory> = {
  ref: async () => createRefBackend(),
  wasm: async (opts) => (await import('./wasm/index.js')).createWasmBackend({ threads: opts.threads }),
};

export async function createBackend(name: BackendName | 'auto', opts: BackendOptions = {}): Promise<KernelBackend> {
  if (name === 'auto') {
    try {
      return await FACTORIES.wasm(opts);
    } catch {
      return FACTORIES.ref(opts);
    }
  }
  const f = FACTORIES[name];
  if (!f) throw new FluteError('E_OPTION', `backend: expected one of auto, ${BACKEND_NAMES.join(', ')}, got ${JSON.stringify(name)}`);
  return f(opts);
}
