// flute chat: an interactive chat on the terminal (or piped stdin) with the model's chat template,
// streaming each reply. Ctrl-C stops a reply and returns to the prompt; Ctrl-C twice at an empty prompt,
// or Ctrl-D (end of input), exits. The conversation logic is src/model/chat.ts.

import { createInterface } from 'node:readline';
import { basename } from 'node:path';
import { ChatSession, createReplyStats } from '../../model/chat.js';
import { loadModel } from '../../model/load.js';
import { FluteError } from '../../errors.js';
import { atMostOnePositional, isNonNegInt, isPosInt, num, parse, str } from '../args.js';
import { BACKEND_HELP, BACKEND_OPTIONS, backendChoice, terminalLoadOptions } from '../backend-options.js';
import { bundledModelPath } from '../paths.js';

const DEFAULTS = {
  maxTokens: 512, // per reply
  temperature: 0.7, // chat models are usually sampled a little cooler than stories
  topP: 0.9,
  topK: 0, // off
  context: 4096, // KV cache positions at most (the model's own limit if smaller)
};

const HELP = `Usage: flute chat [model] [options]

Chats with a model through its chat template (tokenizer_config.json), streaming each reply. Models
without a template (llama2.c, the bundled stories260K) get a plain "User: / Assistant:" transcript.
The KV cache is kept across turns; old turns are dropped when the conversation outgrows the context.

Keys: Enter sends a line. Ctrl-C stops the current reply and returns to the prompt; Ctrl-C twice at an
empty prompt, or Ctrl-D, exits. Piped input is read line by line; the chat ends at its end.

Options:
  --system TEXT        system message
  --max-tokens N       tokens per reply at most (default ${DEFAULTS.maxTokens})
  --temperature T      0 = greedy (default ${DEFAULTS.temperature})
  --top-p P            nucleus sampling, 0 < P <= 1 (default ${DEFAULTS.topP})
  --top-k K            keep the K most likely tokens, 0 = off (default ${DEFAULTS.topK})
  --seed S             sampler seed (default: random)
  --context N          context length in tokens (default: the model's, at most ${DEFAULTS.context})
${BACKEND_HELP}
  --json               one JSON line per reply ({reply, tokens, tokensPerSecond, ...}) instead of streaming

Example: flute chat Llama-3.2-1B-Instruct/ --system "Answer in one sentence." --temperature 0.6`;

export async function chatCommand(argv: string[]): Promise<number> {
  const p = parse('chat', argv, {
    ...BACKEND_OPTIONS, system: { type: 'string' }, 'max-tokens': { type: 'string' }, temperature: { type: 'string' },
    'top-p': { type: 'string' }, 'top-k': { type: 'string' }, seed: { type: 'string' }, context: { type: 'string' },
  });
  if (p.values.help) return console.log(HELP), 0;
  const modelPath = atMostOnePositional('chat', p) ?? bundledModelPath();
  const maxTokens = num(p, 'max-tokens', DEFAULTS.maxTokens, isPosInt, 'a positive integer');
  const temperature = num(p, 'temperature', DEFAULTS.temperature, (v) => v >= 0, 'a number >= 0');
  const topP = num(p, 'top-p', DEFAULTS.topP, (v) => v > 0 && v <= 1, 'a number with 0 < P <= 1');
  const topK = num(p, 'top-k', DEFAULTS.topK, isNonNegInt, 'an integer >= 0');
  const seed = num(p, 'seed', Math.floor(Math.random() * 2 ** 31), (v) => isPosInt(v + 1), 'an integer >= 0');
  const context = num(p, 'context', DEFAULTS.context, (v) => Number.isInteger(v) && v >= 2, 'an integer >= 2');
  const json = Boolean(p.values.json);
  const { backend, threads, maxMemoryBytes } = backendChoice(p);

  const loaded = await loadModel(modelPath, { backend, threads, maxMemoryBytes, tokenizer: str(p, 'tokenizer'), maxContext: context, ...terminalLoadOptions(json) });
  const seqLen = loaded.model.seqLen;
  const session = new ChatSession(loaded.model, loaded.tokenizer, { temperature, topP, topK, seed, system: str(p, 'system') });
  const info = loaded.backend.info();
  const say = (line: string) => process.stderr.write(line + '\n');
  say(`flute chat: ${basename(modelPath)} on ${info.name} (${info.variant}), context ${seqLen} tokens, seed ${seed}`);
  say(`flute chat: backend ${info.name}: ${loaded.backendReason}`);
  if (!session.templated) say('flute chat: this model has no chat template; using a plain "User: / Assistant:" transcript');
  say('Ctrl-C stops a reply; Ctrl-C twice at an empty prompt, or Ctrl-D, exits.');

  const tty = Boolean(process.stdin.isTTY);
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: tty });
  rl.setPrompt(json ? '' : '> ');
  let current: AbortController | null = null; // the reply being generated
  let armed = false; // a Ctrl-C at an empty prompt was seen: the next one exits
  const onInterrupt = () => {
    if (current) return current.abort(); // stop the reply; the loop below returns to the prompt
    const typed = (rl as unknown as { line?: string }).line ?? '';
    if (typed.length > 0) {
      armed = false;
      rl.write(null, { ctrl: true, name: 'u' }); // clear what was typed
      return;
    }
    if (armed) return rl.close();
    armed = true;
    process.stdout.write('\n');
    say('(Ctrl-C again or Ctrl-D to exit)');
    rl.prompt();
  };
  rl.on('SIGINT', onInterrupt); // a terminal: readline turns the Ctrl-C key into this event
  process.on('SIGINT', onInterrupt); // piped input: the signal itself

  try {
    rl.prompt();
    for await (const raw of rl) {
      armed = false;
      const line = raw.trim();
      if (line === '') { rl.prompt(); continue; }
      const ac = new AbortController();
      current = ac;
      const stats = createReplyStats();
      let reply = '';
      try {
        for await (const piece of session.reply(line, { maxTokens, signal: ac.signal }, stats)) {
          reply += piece;
          if (!json) process.stdout.write(piece);
        }
      } catch (e) {
        // A message too long for the context is reported, and the chat goes on.
        if (!(e instanceof FluteError) || e.code !== 'E_OPTION') throw e;
        say(`flute chat: ${e.message}`);
      } finally {
        current = null;
      }
      const tokensPerSecond = stats.decodeMs > 0 ? (stats.generatedTokens / stats.decodeMs) * 1000 : 0;
      if (json) {
        process.stdout.write(JSON.stringify({
          user: line, reply, tokens: stats.generatedTokens, stopReason: stats.stopReason, promptTokens: stats.promptTokens,
          reusedTokens: stats.reusedTokens, droppedMessages: stats.droppedMessages, tokensPerSecond, backend: loaded.backend.name,
        }) + '\n');
      } else {
        process.stdout.write('\n');
        say(`[${stats.generatedTokens} tokens, ${tokensPerSecond.toFixed(1)} tokens/s${stats.stopReason === 'aborted' ? ', stopped' : ''}${stats.droppedMessages ? `, ${stats.droppedMessages} old messages dropped` : ''}]`);
      }
      rl.prompt();
    }
  } finally {
    process.off('SIGINT', onInterrupt);
    rl.close();
    loaded.dispose();
  }
  if (!json) process.stdout.write('\n');
  return 0;
}
