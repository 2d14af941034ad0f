// Loads a model file into a runnable LlamaModel on a kernel backend, with its tokenizer. The file is
// read tensor by tensor; quantized layers go to the backend as they are, dense ones as f32. The tokenizer
// is the model's Hugging Face one when it has one (tokenizer.json), else llama2.c's.

import { createBackend, type BackendName } from '../kernels/registry.js';
import type { KernelBackend } from '../kernels/types.js';
import type { ComputeType } from '../quant/linear.js';
import { HfTokenizer } from '../tokenizer/hf.js';
import { Llama2cTokenizer } from '../tokenizer/llama2c.js';
import type { Tokenizer } from '../tokenizer/types.js';
import { LlamaModel } from './llama.js';
import { openModelFile, type OpenedModel } from './open.js';
import { loadLlamaWeights } from './weights.js';

export interface LoadModelOptions {
  /** A backend instance, or a name to create one (default 'auto'). */
  readonly backend?: KernelBackend | BackendName | 'auto';
  readonly threads?: number;
  /** A llama2.c tokenizer file, when the model does not carry or sit beside one. */
  readonly tokenizer?: string;
  readonly maxBatch?: number;
  /** Context length (KV cache positions); default min(config.seqLen, maxContext). */
  readonly seqLen?: number;
  /** Cap on the default context when seqLen is not given (default DEFAULT_MAX_CONTEXT). */
  readonly maxContext?: number;
  readonly computeType?: ComputeType;
}

export interface LoadedModel {
  readonly model: LlamaModel;
  readonly tokenizer: Tokenizer;
  readonly backend: KernelBackend;
  readonly file: string;
  readonly format: OpenedModel['format'];
  /** True when this call created the backend, so dispose() frees it too. */
  dispose(): void;
}

/**
 * The default cap on the context: LLaMA 3.1's 131072 positions would take a KV cache of 8.6 GB even for the
 * 1B model (16 layers x 131072 x 512 x 2 x f32), allocated up front. Pass seqLen for more.
 */
export const DEFAULT_MAX_CONTEXT = 4096;

export async function loadModel(path: string, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  const src = await openModelFile(path, { tokenizer: opts.tokenizer });
  try {
    // An explicit --tokenizer (llama2.c) wins; otherwise the model's own Hugging Face tokenizer when present.
    const tokenizer: Tokenizer = src.readHfTokenizer && !opts.tokenizer
      ? new HfTokenizer(await src.readHfTokenizer(), src.config.vocabSize)
      : await (async () => {
        const tok = await src.readTokenizer();
        return Llama2cTokenizer.fromBytes(tok.bytes, src.config.vocabSize, tok.file);
      })();
    const weights = await loadLlamaWeights(src.tensors, src.config, (name) =>
      src.quantized.has(name) ? src.readQuantized(name) : undefined,
    );
    const owned = typeof opts.backend !== 'object';
    const backend = typeof opts.backend === 'object' ? opts.backend : await createBackend(opts.backend ?? 'auto', { threads: opts.threads });
    const seqLen = opts.seqLen ?? Math.min(src.config.seqLen, opts.maxContext ?? DEFAULT_MAX_CONTEXT);
    const model = new LlamaModel(src.config, weights, backend, { maxBatch: opts.maxBatch, seqLen, computeType: opts.computeType });
    return {
      model, tokenizer, backend, file: path, format: src.format,
      dispose() {
        model.dispose();
        if (owned) backend.dispose();
      },
    };
  } finally {
    await src.close();
  }
}
