// flute chat, non-interactively: piped stdin on the bundled model (plain transcript) and on a tiny random
// LLaMA 3 folder (the real chat template, cache reuse across turns), and Ctrl-C (SIGINT) stopping a reply
// without leaving, then twice at the prompt leaving. Plus the session itself: template, stops, context.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { packageRoot } from '../src/cli/paths.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import { ChatSession, createReplyStats } from '../src/model/chat.js';
import type { LlamaConfig } from '../src/model/config.js';
import { loadModel } from '../src/model/load.js';
import { HfTokenizer } from '../src/tokenizer/hf.js';
import { hfConfigJson, LLAMA3_TOKENIZER_DIR, randomTensors, writeHfFolder } from './hf-fixtures.js';

// From the sources (tsx) the CLI runs through tsx's loader; compiled, through bin/flute.js.
const fromSources = fileURLToPath(import.meta.url).endsWith('.ts');
const cliArgs = (args: string[]) => fromSources
  ? ['--import', 'tsx', '--input-type=module', '-e', "import('./src/cli/main.ts').then(async (m) => { process.exitCode = await m.main(process.argv.slice(1)); })", ...args]
  : [join(packageRoot(), 'bin', 'flute.js'), ...args];

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Spawns `flute chat`; `drive` gets the child and a `waitFor(stream, pattern)` to script the conversation
 * (write lines, send SIGINT, end stdin). Resolves when the process exits.
 */
function chat(args: string[], drive: (io: { write(s: string): void; end(): void; interrupt(): void; waitFor(where: 'stdout' | 'stderr', re: RegExp): Promise<void> }) => Promise<void>): Promise<Run> {
  const child = spawn(process.execPath, cliArgs(['chat', ...args]), { cwd: packageRoot(), stdio: ['pipe', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  const waiters: { where: 'stdout' | 'stderr'; re: RegExp; resolve: () => void }[] = [];
  const check = () => {
    for (const w of [...waiters]) if (w.re.test(out[w.where])) { waiters.splice(waiters.indexOf(w), 1); w.resolve(); }
  };
  child.stdout.on('data', (d: Buffer) => { out.stdout += d.toString(); check(); });
  child.stderr.on('data', (d: Buffer) => { out.stderr += d.toString(); check(); });
  const done = new Promise<Run>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, ...out })));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const io = {
    write: (s: string) => { child.stdin.write(s); },
    end: () => { child.stdin.end(); },
    interrupt: () => { child.kill('SIGINT'); },
    waitFor: (where: 'stdout' | 'stderr', re: RegExp) => new Promise<void>((resolve, reject) => {
      waiters.push({ where, re, resolve });
      check();
      void done.then((r) => reject(new Error(`exited (${r.code}) before ${where} matched ${re}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`)));
    }),
  };
  return drive(io).then(() => done).finally(() => clearTimeout(timer));
}

const TINY: LlamaConfig = {
  dim: 64, hiddenDim: 96, nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 16, vocabSize: 128256, seqLen: 4096,
  normEps: 1e-5, ropeTheta: 500000, ropeLayout: 'half', tiedEmbeddings: true,
};
let dir = '';
let l3Dir = '';
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'flute-chat-'));
  l3Dir = join(dir, 'llama3-tiny');
  await writeHfFolder(l3Dir, {
    config: hfConfigJson(TINY), tensors: randomTensors(TINY, 3),
    files: Object.fromEntries(['tokenizer.json', 'tokenizer_config.json'].map((f) => [f, readFileSync(join(LLAMA3_TOKENIZER_DIR, f), 'utf8')])),
  });
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('piped chat on the bundled model: plain transcript (said so), one JSON line per reply, exits at end of input', async () => {
  const r = await chat(['--temperature', '0', '--max-tokens', '24', '--json', '--backend', 'ref'], async (io) => {
    io.write('Tell me a story about a cat.\nWhat happened next?\n');
    io.end();
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /no chat template; using a plain "User: \/ Assistant:" transcript/);
  const replies = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { user: string; reply: string; tokens: number; reusedTokens: number; stopReason: string });
  assert.equal(replies.length, 2);
  assert.equal(replies[0].user, 'Tell me a story about a cat.');
  assert.ok(replies.every((x) => x.reply.trim().length > 0 && x.tokens > 0), JSON.stringify(replies));
  assert.ok(replies[1].reusedTokens > 10, 'the second turn reuses the first turn\'s cache');
});

test('chat with the LLaMA 3 template on a HF folder: streamed text, then Ctrl-C stops a reply and Ctrl-C twice exits', async () => {
  const r = await chat([l3Dir, '--system', 'Be brief.', '--max-tokens', '3000', '--temperature', '1', '--seed', '5', '--backend', 'ref'], async (io) => {
    await io.waitFor('stdout', /> $/);
    io.write('Hello there\n');
    await io.waitFor('stdout', /> Hello there\n?[\s\S]{20,}|> [\s\S]{20,}/); // some of the reply has streamed
    io.interrupt(); // stops the reply, back at the prompt
    await io.waitFor('stderr', /stopped\]/);
    await io.waitFor('stdout', /\n> $/);
    io.interrupt(); // at an empty prompt: arms
    await io.waitFor('stderr', /Ctrl-C again or Ctrl-D to exit/);
    io.interrupt(); // and exits
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.signal, null);
  assert.doesNotMatch(r.stderr, /no chat template/);
  assert.match(r.stderr, /tokens, [\d.]+ tokens\/s, stopped\]/);
});

test('ChatSession: template rendering, reuse of the cache, stop tokens, and a message too long for the context', async () => {
  const loaded = await loadModel(l3Dir, { backend: createRefBackend(), seqLen: 96 });
  const tok = loaded.tokenizer as HfTokenizer;
  const session = new ChatSession(loaded.model, tok, { temperature: 0, topK: 0, topP: 1, seed: 1, system: 'Be brief.' });
  assert.ok(session.templated);
  const s1 = createReplyStats();
  for await (const _ of session.reply('Hi', { maxTokens: 5 }, s1)) void _;
  const expectIds = tok.encode(tok.applyChatTemplate([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }], { addGenerationPrompt: true }), { bos: false, eos: false });
  assert.equal(s1.promptTokens, expectIds.length);
  assert.equal(s1.reusedTokens, 0);
  assert.ok(s1.stopReason === 'maxTokens' || s1.stopReason === 'stop');
  assert.equal(session.messages.length, 2);
  const s2 = createReplyStats();
  for await (const _ of session.reply('More', { maxTokens: 5 }, s2)) void _;
  assert.ok(s2.reusedTokens >= expectIds.length, `reused ${s2.reusedTokens}`);

  // A stop token ends the reply: make greedy's first choice a stop token by asking for it as EOS.
  const first = loaded.model.forward(expectIds, 0);
  let best = 0;
  for (let i = 1; i < first.length; i++) if (first[i] > first[best]) best = i;
  const stopping = new ChatSession(loaded.model, Object.create(tok, { stopIds: { value: new Set([best]) } }) as HfTokenizer, { temperature: 0, topK: 0, topP: 1, seed: 1, system: 'Be brief.' });
  const s3 = createReplyStats();
  let text = '';
  for await (const piece of stopping.reply('Hi', { maxTokens: 5 }, s3)) text += piece;
  assert.equal(s3.stopReason, 'stop');
  assert.equal(s3.generatedTokens, 0);
  assert.equal(text, '');

  // A template that refuses the system role (Mistral's alternation check): the system text joins the first user message.
  const mistralTemplate = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";
  const config = { ...JSON.parse(readFileSync(join(LLAMA3_TOKENIZER_DIR, 'tokenizer_config.json'), 'utf8')), chat_template: mistralTemplate };
  const mistralTok = new HfTokenizer({ name: 'mistral-like/tokenizer.json', tokenizerJson: readFileSync(join(LLAMA3_TOKENIZER_DIR, 'tokenizer.json'), 'utf8'), tokenizerConfigJson: JSON.stringify(config) });
  const alt = new ChatSession(loaded.model, mistralTok, { temperature: 0, topK: 0, topP: 1, seed: 1, system: 'Be brief.' });
  assert.throws(() => mistralTok.applyChatTemplate([{ role: 'system', content: 'x' }, { role: 'user', content: 'Hi' }], { addGenerationPrompt: true }), /E_OPTION|alternate/);
  assert.equal(mistralTok.decode(alt.render([{ role: 'user', content: 'Hi' }])), '[INST] Be brief.\n\nHi [/INST]');

  // Longer than the context: old turns are dropped first; one message alone too long is E_OPTION.
  const s4 = createReplyStats();
  for await (const _ of session.reply('word '.repeat(60), { maxTokens: 2 }, s4)) void _;
  assert.ok(s4.droppedMessages >= 2, `dropped ${s4.droppedMessages}`);
  await assert.rejects(async () => { for await (const _ of session.reply('word '.repeat(200), { maxTokens: 2 })) void _; }, /E_OPTION|context/);
  loaded.dispose();
});
