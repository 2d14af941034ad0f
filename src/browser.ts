// The library's browser entry point: the same API as index.ts (Node) minus what takes a file path or a
// folder, plus models loaded from bytes, a File/Blob or a URL. Nothing reachable from here imports Node
// at load time (test/browser-demo.test.ts bundles it for the browser and checks); Node-only paths
// import node:* lazily.

import { FluteError } from './errors.js';
import { fetchBytes } from './format/source.js';
import { loadModelFromBytes, loadModelFromUrl, type LoadModelBytesOptions, type LoadModelUrlOptions, type LoadedModel } from './model/load.js';

export { FluteError, type ErrorCode } from './errors.js';
export type { LlamaConfig, RopeLayout, RopeScaling } from './model/config.js';
export {
  fetchModelFiles, loadModelFromBytes, loadModelFromUrl, loadOpenedModel,
  type LoadModelOptions, type LoadModelBytesOptions, type LoadModelUrlOptions, type LoadedModel,
} from './model/load.js';
export { openModelSource, type OpenedModel, type OpenModelSourceOptions, type TokenizerLoader } from './model/open.js';
export { memorySource, fetchBytes, baseName, type ByteSource, type FetchBytesOptions } from './format/source.js';
export { LlamaModel } from './model/llama.js';
export { generate, createGenerationStats, type GenerateOptions, type GenerationStats } from './model/generate.js';
export { sample, createRng, type SamplerOptions } from './model/sampler.js';
export { perplexity } from './eval/perplexity.js';
export type { Tokenizer } from './tokenizer/types.js';
export { Llama2cTokenizer } from './tokenizer/llama2c.js';
export { HfTokenizer, type ChatMessage } from './tokenizer/hf.js';
export { ChatSession, createReplyStats, type ChatSessionOptions, type ReplyStats } from './model/chat.js';
export { llamaConfigFromHf, HF_ARCHITECTURES } from './format/hf.js';
export { quantizeRtn, type QuantizeOptions, type QuantizeError } from './quant/rtn.js';
export { quantizeModelToBytes, DECODER_LINEAR, type QuantizeModelOptions, type QuantizeModelReport } from './quant/quantize-model.js';
export { buildTable, nfTable, TABLE_KINDS, type TableKind } from './quant/tables.js';
export { dequantize, bitsPerWeight, type QuantizedLinear, type DenseLinear, type Linear, type ComputeType } from './quant/linear.js';
export { packIndices, unpackIndices, packedRowBytes } from './quant/packing.js';
export { createBackend, type BackendName, type BackendOptions, type WasmOnlyOptions } from './kernels/registry.js';
export type { KernelBackend, PreparedLinear } from './kernels/types.js';
export { createRefBackend } from './kernels/ref/index.js';
export { wasmCapabilities, type WasmCapabilities } from './kernels/wasm/index.js';
export type { WasmActivations, WasmBackendOptions } from './kernels/wasm/options.js';
export { openSafetensors, serializeSafetensors } from './format/safetensors.js';
export { openCheckpoint } from './format/checkpoint.js';
export { openLlama2c } from './format/llama2c.js';
export { openGguf, serializeGguf, type GgufFile, type GgufValue, type GgufWriteSpec } from './format/gguf.js';
export { openGgufModel, GGUF_WRITE_TYPES, type GgufWriteType } from './format/gguf-llama.js';
export { blocksToLinear, linearToBlocks, quantizeToLutBlocks, GGML_TYPES } from './format/ggml-types.js';
export { packFlute, unpackFlute, fluteTables2, fluteShapeProblem } from './format/flute-pack.js';

/** What a browser can hand over as a model: its bytes, a picked or dropped File (a Blob), or a URL to fetch. */
export type ModelInput = Uint8Array | ArrayBuffer | Blob | URL | string;

export interface BrowserLoadOptions extends Omit<LoadModelUrlOptions, 'tokenizerUrl'> {
  /** A llama2.c tokenizer (required with llama2.c checkpoints, which carry none): bytes, a File or a URL. */
  readonly tokenizer?: ModelInput;
  /** For messages and LoadedModel.file; defaults to the URL or the File's name. */
  readonly name?: string;
}

/**
 * loadModel for browsers: bytes, a File/Blob or a URL (resolved against the page), the container told by
 * its first bytes (GGUF, a flute-engine checkpoint, a llama2.c checkpoint). Downloads report progress.
 */
export async function loadModel(model: ModelInput, opts: BrowserLoadOptions = {}): Promise<LoadedModel> {
  const { tokenizer, name, onProgress, signal, ...rest } = opts;
  if ((typeof model === 'string' || model instanceof URL) && (tokenizer === undefined || typeof tokenizer === 'string' || tokenizer instanceof URL)) {
    return loadModelFromUrl(String(model), { ...rest, tokenizerUrl: tokenizer === undefined ? undefined : String(tokenizer), onProgress, signal });
  }
  const [bytes, tok] = await Promise.all([inputBytes(model, signal), tokenizer === undefined ? undefined : inputBytes(tokenizer, signal)]);
  const bytesOpts: LoadModelBytesOptions = { ...rest, name: name ?? inputName(model), tokenizer: tok };
  return loadModelFromBytes(bytes, bytesOpts);
}

/** The bytes of any ModelInput (a URL is downloaded whole). */
export async function inputBytes(input: ModelInput, signal?: AbortSignal): Promise<Uint8Array> {
  if (input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (typeof input === 'string' || input instanceof URL) {
    return fetchBytes(String(input), { signal });
  }
  if (typeof Blob !== 'undefined' && input instanceof Blob) return new Uint8Array(await input.arrayBuffer());
  throw new FluteError('E_OPTION', `model: expected bytes, a File/Blob or a URL, got ${Object.prototype.toString.call(input)}`);
}

function inputName(input: ModelInput): string {
  if (typeof input === 'string' || input instanceof URL) return String(input);
  const file = input as { name?: unknown };
  return typeof file.name === 'string' ? file.name : '<memory>';
}
