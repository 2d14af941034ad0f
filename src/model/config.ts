// LLaMA-family hyperparameters, whatever file they came from.

export type RopeLayout =
  | 'interleaved' // llama2.c / Meta: rotate pairs (2i, 2i+1) of each head
  | 'half'; // Hugging Face: rotate pairs (i, i + headDim/2)

export interface LlamaConfig {
  readonly dim: number; // model width
  readonly hiddenDim: number; // SwiGLU inner width
  readonly nLayers: number;
  readonly nHeads: number; // query heads
  readonly nKvHeads: number; // key/value heads (grouped-query attention when < nHeads)
  readonly headDim: number; // dim / nHeads for LLaMA
  readonly vocabSize: number;
  readonly seqLen: number; // maximum context length
  readonly normEps: number; // RMSNorm epsilon
  readonly ropeTheta: number;
  readonly ropeLayout: RopeLayout;
  readonly tiedEmbeddings: boolean; // output layer shares the token embedding
}
