// flute run: stream a continuation of a prompt to stdout, then report tokens/s on stderr.

import { createGenerationStats, generate } from '../../model/generate.js';
import { loadModel } from '../../model/load.js';
import { atMostOnePositional, isNonNegInt, isPosInt, num, parse, str } from '../args.js';
import { BACKEND_HELP, BACKEND_OPTIONS, backendChoice, reportBackend, terminalLoadOptions } from '../backend-options.js';
import { bundledModelPath } from '../paths.js';

const DEFAULTS = {
  prompt: 'Once upon a time',
  maxTokens: 256,
  temperature: 0.8, // a little below 1: fewer derailed stories from small models
  topP: 0.9, // nucleus sampling as llama2.c's default
  topK: 0, // off
};

const HELP = `Usage: flute run [model] [options]

Generates a continuation of the prompt and streams it to stdout; tokens/s go to stderr.

Options:
  --prompt TEXT        (default ${JSON.stringify(DEFAULTS.prompt)})
  --max-tokens N       tokens to generate at most (default ${DEFAULTS.maxTokens})
  --temperature T      0 = greedy (default ${DEFAULTS.temperature})
  --top-p P            nucleus sampling, 0 < P <= 1 (default ${DEFAULTS.topP})
  --top-k K            keep the K most likely tokens, 0 = off (default ${DEFAULTS.topK})
  --seed S             sampler seed (default: random, printed with --json)
${BACKEND_HELP}
  --json               print {text, tokens, tokensPerSecond, ...} at the end instead of streaming

Example: flute run stories-nf4.safetensors --prompt "Lily saw a cat" --temperature 0 --max-tokens 64`;

export async function runCommand(argv: string[]): Promise<number> {
  const p = parse('run', argv, {
    ...BACKEND_OPTIONS, prompt: { type: 'string' }, 'max-tokens': { type: 'string' }, temperature: { type: 'string' },
    'top-p': { type: 'string' }, 'top-k': { type: 'string' }, seed: { type: 'string' },
  });
  if (p.values.help) return console.log(HELP), 0;
  const modelPath = atMostOnePositional('run', p) ?? bundledModelPath();
  const prompt = str(p, 'prompt') ?? DEFAULTS.prompt;
  const maxTokens = num(p, 'max-tokens', DEFAULTS.maxTokens, isNonNegInt, 'an integer >= 0');
  const temperature = num(p, 'temperature', DEFAULTS.temperature, (v) => v >= 0, 'a number >= 0');
  const topP = num(p, 'top-p', DEFAULTS.topP, (v) => v > 0 && v <= 1, 'a number with 0 < P <= 1');
  const topK = num(p, 'top-k', DEFAULTS.topK, isNonNegInt, 'an integer >= 0');
  const seed = num(p, 'seed', Math.floor(Math.random() * 2 ** 31), (v) => isPosInt(v + 1), 'an integer >= 0');
  const json = Boolean(p.values.json);
  const { backend, threads, maxMemoryBytes } = backendChoice(p);

  const loaded = await loadModel(modelPath, { backend, threads, maxMemoryBytes, tokenizer: str(p, 'tokenizer'), ...terminalLoadOptions(json) });
  reportBackend('run', loaded);
  const ac = new AbortController();
  const onSigint = () => ac.abort();
  process.once('SIGINT', onSigint);
  const stats = createGenerationStats();
  let text = '';
  try {
    if (!json) process.stdout.write(prompt);
    for await (const piece of generate(loaded.model, loaded.tokenizer, prompt, { maxTokens, temperature, topP, topK, seed, signal: ac.signal, stats })) {
      text += piece;
      if (!json) process.stdout.write(piece);
    }
  } catch (e) {
    if (!ac.signal.aborted) throw e;
  } finally {
    process.off('SIGINT', onSigint);
    loaded.dispose();
  }
  // Decode speed excludes the prompt's prefill, as llama2.c reports it (timer after the first token).
  const tokensPerSecond = stats.decodeMs > 0 ? (stats.generatedTokens / stats.decodeMs) * 1000 : 0;
  const prefillTokensPerSecond = stats.prefillMs > 0 ? (stats.promptTokens / stats.prefillMs) * 1000 : 0;
  const info = loaded.backend.info();
  if (json) {
    console.log(JSON.stringify({
      model: modelPath, backend: info.name, variant: info.variant, prompt, text, seed, temperature, topP, topK,
      promptTokens: stats.promptTokens, tokens: stats.generatedTokens, stopReason: stats.stopReason ?? 'aborted',
      tokensPerSecond, prefillTokensPerSecond,
    }, null, 2));
  } else {
    process.stdout.write('\n');
    console.error(`\n${stats.generatedTokens} tokens, ${tokensPerSecond.toFixed(1)} tokens/s (prefill ${stats.promptTokens} tokens at ${prefillTokensPerSecond.toFixed(1)} tokens/s) on ${info.name}: ${info.variant.split(';')[0]}${ac.signal.aborted ? ' [stopped]' : ''}`);
  }
  return 0;
}
