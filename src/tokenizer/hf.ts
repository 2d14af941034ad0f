// Hugging Face tokenizers (tokenizer.json + tokenizer_config.json, through @huggingface/tokenizers) behind
// our Tokenizer interface, with byte-exact streaming decode for byte-level BPE (LLaMA 3, Qwen2) and
// SentencePiece byte fallback (LLaMA 2, Mistral), and the model's chat template (through @huggingface/jinja)
// with its stop tokens. Reading the files is src/format/hf.ts's job; this module only parses texts.

import { Template } from '@huggingface/jinja';
import { Tokenizer as HfLibTokenizer } from '@huggingface/tokenizers';
import { FluteError } from '../errors.js';
import type { HfTokenizerFiles } from '../format/hf.js';
import { decodeTokens, pieceStreamDecoder } from './stream.js';
import type { EncodeOptions, Tokenizer, TokenStreamDecoder } from './types.js';

export interface ChatMessage {
  readonly role: 'system' | 'user' | 'assistant';
  readonly content: string;
}

export interface ChatTemplateOptions {
  /** End with the assistant header, so the model's continuation is its reply (HF add_generation_prompt). */
  readonly addGenerationPrompt: boolean;
}

/** How one token's text turns into bytes, read from tokenizer.json's decoder. */
type PieceMode =
  | 'byte-level' // GPT-2 byte-to-unicode alphabet: every character of a piece stands for one byte
  | 'sentencepiece' // "▁" is a space, <0xAB> is one raw byte (ByteFallback)
  | 'generic'; // anything else: the library decodes each token on its own

/** Turn markers that end a reply when the chat template uses them (LLaMA 3, Qwen2/ChatML, Phi, Gemma). */
const END_OF_TURN = ['<|eot_id|>', '<|eom_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>'];

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FluteError('E_FORMAT', `${file}: does not parse as JSON (${(e as Error).message})`, { cause: e });
  }
}

/** tokenizer_config.json names tokens as a string or as an AddedToken object {content: ...}. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

/** GPT-2's bytes_to_unicode, inverted: the character that stands for each byte -> the byte. */
function byteLevelAlphabet(): Map<string, number> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  return new Map(bs.map((b, i) => [String.fromCodePoint(cs[i]), b]));
}

/** Every decoder type in tokenizer.json's `decoder` (through Sequence), with their configs. */
function decoderParts(d: unknown): Json[] {
  if (!isObject(d)) return [];
  if (d.type === 'Sequence' && Array.isArray(d.decoders)) return d.decoders.flatMap(decoderParts);
  return [d];
}

/**
 * The library's tokenizer with every method's exception turned into E_FORMAT naming the file: a damaged
 * tokenizer.json can load and fail only when used (a post-processor entry of the wrong type, say).
 */
function guardLibrary<T extends object>(lib: T, file: string): T {
  return new Proxy(lib, {
    get(target, p) {
      const v: unknown = Reflect.get(target, p, target);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        try {
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        } catch (e) {
          if (e instanceof FluteError) throw e;
          throw new FluteError('E_FORMAT', `${file}: @huggingface/tokenizers failed in ${String(p)}: ${(e as Error).message}`, { cause: e });
        }
      };
    },
  });
}

/**
 * Refuses token ids far beyond the number of tokens before the library sees them: it indexes arrays by
 * id, so one id of 2^31 in a damaged file makes it walk two billion slots. Ids may leave gaps, and may
 * reach the model's embedding rows, but no further than that plus the number of tokens.
 */
function checkTokenIds(json: Json, file: string, modelVocabSize: number): void {
  const model = json.model as Json;
  // A list is Unigram's [piece, score] pairs (ids are the positions); anything else in a list would be
  // read by the library as ids keyed by position.
  if (Array.isArray(model.vocab) && !model.vocab.every((e) => Array.isArray(e) && typeof e[0] === 'string' && typeof e[1] === 'number')) {
    throw new FluteError('E_FORMAT', `${file}: model.vocab as a list must hold [piece, score] pairs (Unigram)`);
  }
  const vocab = isObject(model.vocab) ? Object.values(model.vocab) : [];
  const added = (json.added_tokens as unknown[]).map((t) => (isObject(t) ? t.id : undefined));
  const count = vocab.length + added.length;
  const limit = Math.max(modelVocabSize, count) + count;
  for (const id of [...vocab, ...added]) {
    if (id !== undefined && !(Number.isSafeInteger(id) && (id as number) >= 0 && (id as number) < limit)) {
      throw new FluteError('E_FORMAT', `${file}: token id ${JSON.stringify(id)} is not an integer in 0..${limit - 1} (${count} tokens)`);
    }
  }
}

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  /** Begin-of-sequence id, or -1 when the tokenizer has none (Qwen2). */
  readonly bosId: number;
  /** End-of-sequence id (tokenizer_config eos_token, else generation_config), or -1 when none. */
  readonly eosId: number;
  /** Ids that end a chat reply: EOS, generation_config's eos_token_id(s), the template's end-of-turn marker. */
  readonly stopIds: ReadonlySet<number>;
  /** The chat template (Jinja), when the model has one. */
  readonly chatTemplate: string | undefined;
  /** Whether encode({bos: true}) prepends BOS (see the constructor). */
  readonly addsBos: boolean;
  private readonly tok: HfLibTokenizer;
  private readonly config: Json;
  private readonly mode: PieceMode;
  private readonly stripLeadingSpace: boolean; // SentencePiece: the first piece's dummy-prefix space goes
  private readonly replacement: string; // the character SentencePiece uses for a space ("▁")
  private readonly pieces: string[]; // [vocabSize] raw piece per id ('' where the id is unused)
  private readonly special: Uint8Array; // [vocabSize] 1 for special added tokens: they decode to nothing
  private readonly added: Uint8Array; // [vocabSize] 1 for added tokens: their content is literal text
  private readonly bytes: (Uint8Array | undefined)[] = []; // [vocabSize] per-id bytes, made on first use
  private readonly byteOf = byteLevelAlphabet();
  private readonly utf8 = new TextEncoder();
  private template: Template | undefined;

  /**
   * Parses the files' texts. A tokenizer.json that does not parse, or that the library rejects, is
   * E_FORMAT naming it. `modelVocabSize` widens the id range to the model's (embedding rows beyond the
   * tokenizer's vocabulary, as Qwen2 pads them, decode to nothing).
   */
  constructor(files: HfTokenizerFiles, modelVocabSize = 0) {
    const json = parseJson(files.tokenizerJson, files.name);
    const configName = files.name.replace(/tokenizer\.json$/, 'tokenizer_config.json');
    const config = files.tokenizerConfigJson === undefined ? {} : parseJson(files.tokenizerConfigJson, configName);
    if (!isObject(json) || !isObject(json.model)) throw new FluteError('E_FORMAT', `${files.name}: not a Hugging Face tokenizer.json (no "model" object)`);
    if (!isObject(config)) throw new FluteError('E_FORMAT', `${configName}: expected a JSON object`);
    if (!Array.isArray(json.added_tokens)) json.added_tokens = [];
    checkTokenIds(json, files.name, modelVocabSize);
    try {
      this.tok = guardLibrary(new HfLibTokenizer(json, config), files.name);
    } catch (e) {
      throw new FluteError('E_FORMAT', `${files.name}: @huggingface/tokenizers cannot load it: ${(e as Error).message}`, { cause: e });
    }
    this.config = config;

    // Ids: the model's vocabulary plus added tokens; the largest id sets the range.
    const vocab = this.tok.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) if (id > maxId) maxId = id;
    this.vocabSize = Math.max(maxId + 1, modelVocabSize);
    this.pieces = new Array<string>(this.vocabSize).fill('');
    for (const [piece, id] of vocab) this.pieces[id] = piece;
    this.special = new Uint8Array(this.vocabSize);
    this.added = new Uint8Array(this.vocabSize);
    for (const [id, t] of this.tok.get_added_tokens_decoder()) {
      this.added[id] = 1;
      if (t.special) this.special[id] = 1;
    }

    // Decoding mode from the decoder pipeline (byte-level wins; then ByteFallback / Metaspace).
    const parts = decoderParts(json.decoder);
    const types = parts.map((p) => p.type);
    const metaspace = parts.find((p) => p.type === 'Metaspace');
    const replace = parts.find((p) => p.type === 'Replace' && isObject(p.pattern) && typeof p.pattern.String === 'string');
    this.mode = types.includes('ByteLevel') ? 'byte-level'
      : types.includes('ByteFallback') || json.model.byte_fallback === true || metaspace || replace ? 'sentencepiece'
      : 'generic';
    this.replacement = typeof metaspace?.replacement === 'string' ? metaspace.replacement
      : replace && isObject(replace.pattern) && typeof replace.pattern.String === 'string' ? replace.pattern.String : '\u2581';
    this.stripLeadingSpace = parts.some((p) => (p.type === 'Strip' && Number(p.start) > 0)
      || (p.type === 'Metaspace' && (p.prepend_scheme === undefined ? p.add_prefix_space !== false : p.prepend_scheme !== 'never')));

    // BOS / EOS by name from tokenizer_config, else what the post-processor adds, else generation_config.
    const generation = files.generationConfigJson === undefined ? {} : parseJson(files.generationConfigJson, files.name.replace(/tokenizer\.json$/, 'generation_config.json'));
    const genJson = isObject(generation) ? generation : {};
    const idOf = (v: unknown) => {
      const s = tokenContent(v);
      return s === undefined ? undefined : this.tok.token_to_id(s);
    };
    const withSpecial = this.tok.encode('a').ids;
    const plain = this.tok.encode('a', { add_special_tokens: false }).ids;
    const prefix = withSpecial.length > plain.length && withSpecial[withSpecial.length - 1] === plain[plain.length - 1] ? withSpecial.slice(0, withSpecial.length - plain.length) : [];
    const genIds = (v: unknown): number[] => (Array.isArray(v) ? v : [v]).filter((x): x is number => Number.isInteger(x));
    this.bosId = idOf(config.bos_token) ?? prefix[0] ?? genIds(genJson.bos_token_id)[0] ?? -1;
    this.eosId = idOf(config.eos_token) ?? genIds(genJson.eos_token_id)[0] ?? -1;
    // BOS: tokenizer_config's add_bos_token when given; else when the post-processor adds it; else when
    // the config names a BOS token at all. The last rule covers the first LLaMA 3 releases, whose
    // tokenizer.json forgot the BOS template (the model needs it; llama.cpp adds it too). Qwen2 has none.
    const addBos = config.add_bos_token;
    this.addsBos = this.bosId >= 0 && (typeof addBos === 'boolean' ? addBos : prefix.length > 0 || tokenContent(config.bos_token) !== undefined);

    // Chat template: tokenizer_config's (a string, or a list of named ones: "default"), else chat_template.jinja.
    const t = config.chat_template;
    this.chatTemplate = typeof t === 'string' ? t
      : Array.isArray(t) ? (t.find((x) => isObject(x) && x.name === 'default') as Json | undefined)?.template as string | undefined
      : files.chatTemplate;
    const stops = new Set<number>();
    if (this.eosId >= 0) stops.add(this.eosId);
    for (const id of genIds(genJson.eos_token_id)) stops.add(id);
    for (const marker of END_OF_TURN) {
      const id = this.tok.token_to_id(marker);
      if (id !== undefined && this.chatTemplate?.includes(marker)) stops.add(id);
    }
    this.stopIds = stops;
  }

  // ---------------------------------------------------------------- encode

  encode(text: string, opts: EncodeOptions): number[] {
    // Special tokens written in the text (<|eot_id|>...) become their ids, as in transformers; BOS/EOS
    // come only from opts, since a chat template writes its own BOS into the text.
    const ids = text.length > 0 ? this.tok.encode(text, { add_special_tokens: false }).ids : [];
    if (opts.bos && this.addsBos) ids.unshift(this.bosId);
    if (opts.eos && this.eosId >= 0) ids.push(this.eosId);
    return ids;
  }

  // ---------------------------------------------------------------- decode

  decodePiece(prevToken: number, token: number): Uint8Array | string {
    this.checkToken(token);
    const b = (this.bytes[token] ??= this.pieceBytes(token));
    // SentencePiece's dummy prefix: the first piece of a text (after BOS) loses its leading space.
    if (this.stripLeadingSpace && (prevToken < 0 || prevToken === this.bosId) && b[0] === 0x20) return b.subarray(1);
    return b;
  }

  /** The bytes one token stands for; special tokens stand for nothing (as skip_special_tokens). */
  private pieceBytes(id: number): Uint8Array {
    const piece = this.pieces[id];
    if (this.special[id] || piece === '') return new Uint8Array(0);
    if (this.added[id]) return this.utf8.encode(piece); // added tokens are literal text in every mode
    if (this.mode === 'byte-level') {
      const out: number[] = [];
      for (const ch of piece) {
        const b = this.byteOf.get(ch);
        if (b !== undefined) out.push(b);
        else out.push(...this.utf8.encode(ch)); // not in the alphabet: cannot happen in a well-formed vocab
      }
      return Uint8Array.from(out);
    }
    if (this.mode === 'sentencepiece') {
      const m = BYTE_PIECE.exec(piece);
      if (m) return Uint8Array.of(parseInt(m[1], 16));
      return this.utf8.encode(piece.split(this.replacement).join(' '));
    }
    return this.utf8.encode(this.tok.decode([id], { skip_special_tokens: true, clean_up_tokenization_spaces: false }));
  }

  createDecoder(): TokenStreamDecoder {
    return pieceStreamDecoder((prev, token) => this.decodePiece(prev, token));
  }

  /** The text of a token sequence; special tokens (BOS, EOS, turn markers) contribute nothing. */
  decode(tokens: ArrayLike<number>): string {
    return decodeTokens(this.createDecoder(), tokens);
  }

  /** The raw vocabulary piece of an id ("Ġthe", "▁the", "<|eot_id|>"). */
  piece(token: number): string {
    this.checkToken(token);
    return this.pieces[token];
  }

  /** The id of a piece or special token, or undefined. */
  tokenId(piece: string): number | undefined {
    return this.tok.token_to_id(piece);
  }

  private checkToken(token: number): void {
    if (!Number.isInteger(token) || token < 0 || token >= this.vocabSize) {
      throw new FluteError('E_OPTION', `token id: expected an integer in 0..${this.vocabSize - 1}, got ${token}`);
    }
  }

  // ---------------------------------------------------------------- chat template

  /**
   * The conversation as the model's chat template writes it (transformers' apply_chat_template with
   * tokenize=False). The text includes the template's own BOS, so encode it with {bos: false}.
   * E_NOT_FOUND when the model has no template; a template error (e.g. roles that do not alternate)
   * is E_OPTION with the template's message.
   */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions): string {
    if (this.chatTemplate === undefined) throw new FluteError('E_NOT_FOUND', 'tokenizer: the model has no chat template (tokenizer_config.json chat_template or chat_template.jinja)');
    try {
      this.template ??= new Template(this.chatTemplate);
    } catch (e) {
      throw new FluteError('E_FORMAT', `chat template: does not parse: ${(e as Error).message}`, { cause: e });
    }
    const special: Record<string, string> = {};
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
      const v = tokenContent(this.config[key]);
      if (v !== undefined) special[key] = v;
    }
    try {
      return this.template.render({ ...special, messages: messages.map((m) => ({ role: m.role, content: m.content })), add_generation_prompt: opts.addGenerationPrompt });
    } catch (e) {
      throw new FluteError('E_OPTION', `chat template: ${(e as Error).message}`, { cause: e });
    }
  }
}
