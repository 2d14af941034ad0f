// The `flute` command line: a thin layer over the library API. Each command lives in
// cli/commands/; this file dispatches and turns errors into a message and an exit code.

import { FluteError } from '../errors.js';

type Command = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  quantize: { summary: 'quantize a model to a LUT checkpoint (RTN with NF, int, fp4 or your table)', load: async () => (await import('./commands/quantize.js')).quantizeCommand },
  run: { summary: 'generate text, streamed, then tokens/s', load: async () => (await import('./commands/run.js')).runCommand },
  chat: { summary: 'interactive chat with the model\'s chat template, streamed; Ctrl-C stops a reply', load: async () => (await import('./commands/chat.js')).chatCommand },
  eval: { summary: 'perplexity over a text file in fixed windows', load: async () => (await import('./commands/eval.js')).evalCommand },
  inspect: { summary: 'format, tensors, shapes, dtypes, bits, group sizes and sizes of a file', load: async () => (await import('./commands/inspect.js')).inspectCommand },
  doctor: { summary: 'runtime capabilities and kernel backends, each checked against the reference', load: async () => (await import('./commands/doctor.js')).doctorCommand },
  bench: { summary: 'kernel and end-to-end benchmarks (flute bench kernels|e2e --help)', load: async () => (await import('./bench.js')).benchCommand },
  demo: { summary: 'the bundled demo: quantize stories260K, compare perplexity, tell a story', load: async () => (await import('./commands/demo.js')).demoCommand },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'flute: lookup-table quantized LLMs in JavaScript',
    '',
    'Usage: flute <command> [model] [options]     (every model argument defaults to the bundled stories260K)',
    '',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'Examples:',
    '  flute run --prompt "Once upon a time" --max-tokens 100',
    '  flute quantize --bits 4 --group-size 32 --table nf --out stories-nf4.safetensors',
    '  flute eval stories-nf4.safetensors --window 256',
    '',
    'Every command takes --help, --json (machine-readable output) and --verbose (stack traces).',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return name ? 0 : 1;
  }
  if (name === '--version') {
    const { readFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { packageRoot } = await import('./paths.js');
    console.log(JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')).version);
    return 0;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`flute: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  const verbose = rest.includes('--verbose');
  try {
    return await (await cmd.load())(rest);
  } catch (e) {
    if (e instanceof FluteError) {
      console.error(`flute ${name}: error ${e.code}: ${e.message}`);
      if (verbose && e.stack) console.error(e.stack);
      return e.code === 'E_OPTION' ? 2 : 1;
    }
    console.error(`flute ${name}: unexpected error: ${verbose ? (e as Error)?.stack ?? e : (e as Error)?.message ?? e}`);
    if (!verbose) console.error('(run again with --verbose for the stack trace)');
    return 1;
  }
}
