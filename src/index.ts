// The library's public API: load and run models, quantize, and call kernels directly.

export { FluteError, type ErrorCode } from './errors.js';
export type { LlamaConfig, RopeLayout, RopeScaling } from './model/config.js';
export { loadModel, type LoadModelOptions, type LoadedModel } from './model/load.js';
export { openModelFile, type OpenedModel } from './model/open.js';
export { LlamaModel } from './model/llama.js';
export { generate, createGenerationStats, type GenerateOptions, type GenerationStats } from './model/generate.js';
export { sample, createRng, type SamplerOptions } from './model/sampler.js';
export { perplexity } from './eval/perplexity.js';
export type { Tokenizer } from './tokenizer/types.js';
export { Llama2cTokenizer } from './tokenizer/llama2c.js';
export { HfTokenizer, type ChatMessage } from './tokenizer/hf.js';
export { ChatSession, createReplyStats, type ChatSessionOptions, type ReplyStats } from './model/chat.js';
export { openHfModel, openHfSafetensors, llamaConfigFromHf, HF_ARCHITECTURES } from './format/hf.js';
export { quantizeRtn, type QuantizeOptions, type QuantizeError } from './quant/rtn.js';
export { quantizeModel, type QuantizeModelOptions, type QuantizeModelReport } from './quant/quantize-model.js';
export { buildTable, nfTable, TABLE_KINDS, type TableKind } from './quant/tables.js';
export { dequantize, bitsPerWeight, type QuantizedLinear, type DenseLinear, type Linear, type ComputeType } from './quant/linear.js';
export { packIndices, unpackIndices, packedRowBytes } from './quant/packing.js';
export { createBackend, type BackendName } from './kernels/registry.js';
export type { KernelBackend, PreparedLinear } from './kernels/types.js';
export { createRefBackend } from './kernels/ref/index.js';
export { openSafetensors, writeSafetensors } from './format/safetensors.js';
export { openCheckpoint } from './format/checkpoint.js';
export { openLlama2c } from './format/llama2c.js';
