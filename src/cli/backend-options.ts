// The --backend and --threads options, shared by every command that runs a model, and what such a
// command says on stderr about them: which backend it took and why, the weights' upload to the GPU,
// and a device-lost fallback.

import type { LoadedModel, LoadModelOptions } from '../model/load.js';
import { MODEL_BACKEND_NAMES, type ModelBackendName } from '../kernels/registry.js';
import { isPosInt, num, oneOf, type OptionSpec, type Parsed } from './args.js';
import { parseMemorySize } from '../model/memory-budget.js';
import { progressBar } from './progress.js';

export const BACKEND_OPTIONS: OptionSpec = {
  backend: { type: 'string' },
  threads: { type: 'string' },
  tokenizer: { type: 'string' },
  'max-memory': { type: 'string' },
};

export const BACKEND_HELP = `  --backend B          auto | ${MODEL_BACKEND_NAMES.join(' | ')} (default auto: WebGPU on a real GPU, else WebAssembly;
                       webgpu also runs on CPU emulations such as SwiftShader, which auto skips as slower)
  --threads N          worker threads for the wasm backend (default: the cores available)
  --tokenizer FILE     llama2.c tokenizer, when the model neither carries nor sits beside one
  --max-memory SIZE    refuse, before loading, a model needing more than SIZE (512M, 8G...; default
                       the machine's memory)`;

export function backendChoice(p: Parsed): { backend: ModelBackendName | 'auto'; threads: number | undefined; maxMemoryBytes: number | undefined } {
  const backend = oneOf(p, 'backend', ['auto', ...MODEL_BACKEND_NAMES] as const, 'auto');
  const threads = p.values.threads === undefined ? undefined : num(p, 'threads', 1, isPosInt, 'a positive integer');
  const maxMemory = p.values['max-memory'];
  const maxMemoryBytes = typeof maxMemory === 'string' ? parseMemorySize(maxMemory) : undefined;
  return { backend, threads, maxMemoryBytes };
}

/** loadModel options for the terminal: an upload progress bar and a printed fallback warning. */
export function terminalLoadOptions(quiet: boolean): Pick<LoadModelOptions, 'onUploadProgress' | 'onFallback'> {
  const bar = progressBar('upload to GPU', { enabled: !quiet });
  return {
    onUploadProgress: (done, total, tensor) => {
      bar.update(done, total, tensor);
      if (done === total) bar.done();
    },
    onFallback: (message) => process.stderr.write(`\nflute: warning: ${message}\n`),
  };
}

/** One stderr line: the backend a command took and why. */
export function reportBackend(command: string, loaded: Pick<LoadedModel, 'backend' | 'backendReason'>): void {
  process.stderr.write(`flute ${command}: backend ${loaded.backend.name} (${loaded.backendReason})\n`);
}
