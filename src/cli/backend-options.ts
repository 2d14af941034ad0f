// The --backend and --threads options, shared by every command that runs a model.

import { BACKEND_NAMES, type BackendName } from '../kernels/registry.js';
import { isPosInt, num, oneOf, type OptionSpec, type Parsed } from './args.js';

export const BACKEND_OPTIONS: OptionSpec = {
  backend: { type: 'string' },
  threads: { type: 'string' },
  tokenizer: { type: 'string' },
};

export const BACKEND_HELP = `  --backend B          auto | ${BACKEND_NAMES.join(' | ')} (default auto: WebAssembly when available)
  --threads N          worker threads for the wasm backend (default: the cores available)
  --tokenizer FILE     llama2.c tokenizer, when the model neither carries nor sits beside one`;

export function backendChoice(p: Parsed): { backend: BackendName | 'auto'; threads: number | undefined } {
  const backend = oneOf(p, 'backend', ['auto', ...BACKEND_NAMES] as const, 'auto');
  const threads = p.values.threads === undefined ? undefined : num(p, 'threads', 1, isPosInt, 'a positive integer');
  return { backend, threads };
}
