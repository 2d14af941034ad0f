// The typed messages between the page and the engine worker (engine.ts speaks them on the page side,
// worker.ts on the other). Every request carries an id; every reply names the request it answers.

import type { Capabilities } from './capabilities.js';

/** The table kinds the page offers for quantizing a dense model in the tab. */
export const QUANT_TABLES = ['nf', 'int', 'fp4'] as const;
export type QuantTable = (typeof QUANT_TABLES)[number];

export interface QuantizeChoice {
  readonly table: QuantTable;
  readonly bits: number; // 2..4 (fp4: 4)
  readonly groupSize: number;
}

/** Where the model comes from: a file the page ships, or files the user picked or dropped. */
export type ModelChoice =
  | { readonly kind: 'bundled'; readonly url: string; readonly tokenizerUrl?: string }
  | { readonly kind: 'files'; readonly model: File; readonly tokenizer?: File };

/** Which backend to run on; 'auto' = WebGPU, else WebAssembly with threads, else single-threaded. */
export type BackendChoice = 'auto' | 'webgpu' | 'wasm';

export interface ModelInfo {
  readonly name: string;
  readonly format: string;
  readonly backend: string; // 'webgpu' | 'wasm-threads' | 'wasm'
  readonly backendLabel: string; // what the page shows, e.g. "WebAssembly SIMD, 4 threads"
  readonly backendReason: string; // the library's reason for its choice
  readonly threads: number; // wasm threads (0 on WebGPU)
  readonly fileBytes: number; // the model file as loaded (a quantized checkpoint when quantized in the tab)
  readonly weightBytes: number | null; // weights as the wasm backend holds them (null: not counted)
  readonly params: number;
  readonly quantized: string | null; // e.g. "nf4, g=32, 4.59 bits/weight" or null for dense
}

export interface GenerateRequest {
  readonly prompt: string;
  readonly maxTokens: number;
  readonly temperature: number;
  readonly seed: number;
}

export interface GenerateStats {
  readonly promptTokens: number;
  readonly generatedTokens: number;
  readonly prefillMs: number;
  readonly decodeMs: number;
  readonly stopReason: string | null;
}

export type Request =
  | { readonly type: 'capabilities'; readonly id: number }
  | { readonly type: 'load'; readonly id: number; readonly model: ModelChoice; readonly quantize?: QuantizeChoice; readonly backend: BackendChoice }
  | { readonly type: 'generate'; readonly id: number; readonly request: GenerateRequest }
  | { readonly type: 'abort'; readonly id: number; readonly target: number }
  | { readonly type: 'checkpoint'; readonly id: number };

export type ProgressPhase = 'download' | 'quantize' | 'prepare';

export type Reply =
  | { readonly type: 'capabilities'; readonly id: number; readonly capabilities: Capabilities }
  | { readonly type: 'progress'; readonly id: number; readonly phase: ProgressPhase; readonly done: number; readonly total: number; readonly label: string }
  | { readonly type: 'loaded'; readonly id: number; readonly info: ModelInfo }
  | { readonly type: 'text'; readonly id: number; readonly text: string; readonly tokens: number }
  | { readonly type: 'done'; readonly id: number; readonly stats: GenerateStats }
  | { readonly type: 'checkpoint'; readonly id: number; readonly bytes: Uint8Array | null }
  | { readonly type: 'error'; readonly id: number; readonly code: string; readonly message: string };
