// LLaMA-family hyperparameters, whatever file they came from. The optional fields are the Hugging Face
// variants (LLaMA 3.1+ RoPE scaling, Qwen2's q/k/v bias); absent, the model is plain LLaMA / llama2.c.

export type RopeLayout =
  | 'interleaved' // llama2.c / Meta: rotate pairs (2i, 2i+1) of each head
  | 'half'; // Hugging Face: rotate pairs (i, i + headDim/2)

/**
 * RoPE frequency scaling (Hugging Face `rope_scaling`). Pair i's inverse frequency is
 * f_i = theta^(-2i/headDim) before scaling; see ropeInvFreq in llama.ts for the formulas.
 */
export type RopeScaling =
  | {
      // LLaMA 3.1 / 3.2 (transformers `_compute_llama3_parameters`): long wavelengths divided by
      // `factor`, short ones kept, a smooth blend between the two wavelength thresholds.
      readonly type: 'llama3';
      readonly factor: number; // e.g. 8 (3.1) or 32 (3.2)
      readonly lowFreqFactor: number; // e.g. 1
      readonly highFreqFactor: number; // e.g. 4
      readonly originalMaxPositions: number; // original_max_position_embeddings, e.g. 8192
    }
  | {
      // Position interpolation: every frequency divided by `factor`.
      readonly type: 'linear';
      readonly factor: number;
    };

export interface LlamaConfig {
  readonly dim: number; // model width
  readonly hiddenDim: number; // SwiGLU inner width
  readonly nLayers: number;
  readonly nHeads: number; // query heads
  readonly nKvHeads: number; // key/value heads (grouped-query attention when < nHeads)
  readonly headDim: number; // dim / nHeads for LLaMA (Hugging Face configs may set head_dim apart)
  readonly vocabSize: number;
  readonly seqLen: number; // maximum context length
  readonly normEps: number; // RMSNorm epsilon
  readonly ropeTheta: number;
  readonly ropeLayout: RopeLayout;
  readonly tiedEmbeddings: boolean; // output layer shares the token embedding
  /** RoPE frequency scaling; absent = none (llama2.c, LLaMA 2/3, Mistral, Qwen2). */
  readonly ropeScaling?: RopeScaling;
  /** The q/k/v projections add a bias (Qwen2: self_attn.{q,k,v}_proj.bias); absent = false. */
  readonly qkvBias?: boolean;
  /** The architecture this config came from ("LlamaForCausalLM", ...), for display; absent for llama2.c. */
  readonly architecture?: string;
}
