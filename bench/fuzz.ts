// `npm run fuzz -- [--minutes N | --cases N] [--reader R[,R...]] [--seed S] [--json] [--replay R:SEED]`:
// the mutation fuzzer over every reader (src/fuzz), round-robin until the time or the case count is
// reached. Prints cases, outcomes and error codes per reader and each failure with the seed that
// replays it; exits 1 when any case failed (a non-FluteError, an allocation over budget, a hang, a crash).

import { FAILURES, type CaseResult } from '../src/fuzz/harness.js';
import { runFuzz, type FuzzReport } from '../src/fuzz/runner.js';
import { isReaderName, READERS, type ReaderName } from '../src/fuzz/targets.js';

const USAGE = `usage: npm run fuzz -- [--minutes N | --cases N] [--reader R[,R...]] [--seed S] [--json] [--replay READER:SEED]
  readers: ${READERS.join(', ')}
  example: npm run fuzz -- --minutes 10 --reader gguf,safetensors --seed 7`;

interface Args {
  minutes?: number;
  cases?: number;
  readers: ReaderName[];
  seed: number;
  json: boolean;
  replay?: { reader: ReaderName; seed: number };
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { readers: [...READERS], seed: 1, json: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
      return v;
    };
    const num = (what: string, v: string) => {
      const n = Number(v);
      if (!Number.isFinite(n) || n <= 0) throw new Error(`${what}: expected a positive number, got ${JSON.stringify(v)}`);
      return n;
    };
    if (flag === '--minutes') a.minutes = num('--minutes', value());
    else if (flag === '--cases') a.cases = Math.floor(num('--cases', value()));
    else if (flag === '--seed') a.seed = Number(value()) >>> 0;
    else if (flag === '--json') a.json = true;
    else if (flag === '--reader') {
      const names = value().split(',');
      for (const n of names) if (!isReaderName(n)) throw new Error(`--reader: unknown reader ${JSON.stringify(n)}; known: ${READERS.join(', ')}`);
      a.readers = names as ReaderName[];
    } else if (flag === '--replay') {
      const [reader, seed] = value().split(':');
      if (!isReaderName(reader) || !/^(0x[0-9a-f]+|\d+)$/i.test(seed ?? '')) throw new Error(`--replay: expected READER:SEED, e.g. gguf:12345`);
      a.replay = { reader, seed: Number(seed) >>> 0 };
    } else if (flag === '--help' || flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${flag}\n${USAGE}`);
  }
  if (a.minutes === undefined && a.cases === undefined && !a.replay) a.cases = 300;
  return a;
}

function formatFailure(f: CaseResult): string {
  return `  ${f.reader} case ${f.index}: ${f.outcome} ${f.code ?? ''}: ${f.message ?? ''}\n    mutation: ${f.mutation}\n    replay: npm run fuzz -- --replay ${f.reader}:${f.seed}${f.stack ? `\n    ${f.stack.split('\n').slice(0, 6).join('\n    ')}` : ''}`;
}

function printReport(rep: FuzzReport): void {
  const rows = rep.readers.map((r) => [
    r.reader, String(r.cases), String(r.outcomes.ok), String(r.outcomes.typed), String(FAILURES.reduce((a, o) => a + r.outcomes[o], 0)),
    r.cases ? (r.ms / r.cases).toFixed(1) : '-', r.slowestMs.toFixed(0), (r.largestAlloc / 2 ** 20).toFixed(1),
    Object.entries(r.codes).sort((x, y) => y[1] - x[1]).map(([c, n]) => `${c} ${n}`).join(', '),
  ]);
  const head = ['reader', 'cases', 'ok', 'typed', 'failed', 'ms/case', 'slowest ms', 'max alloc MiB', 'codes'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  console.log(`\n${rep.readers.reduce((a, r) => a + r.cases, 0)} cases in ${(rep.elapsedMs / 1000).toFixed(1)} s (seed ${rep.runSeed}); ${rep.failures} failures`);
  for (const r of rep.readers) for (const f of r.failures) console.log(formatFailure(f));
}

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error((e as Error).message);
    return 2;
  }
  let seen = 0;
  // Ctrl-C (or SIGTERM) ends the run after the current batch and still prints the report.
  const stop = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => stop.abort());
  const report = await runFuzz({
    signal: stop.signal,
    readers: args.replay ? [args.replay.reader] : args.readers,
    runSeed: args.seed,
    casesPerReader: args.cases,
    minutes: args.minutes,
    replaySeeds: args.replay ? [args.replay.seed] : undefined,
    onResult: (r) => {
      if (args.replay) console.error(`${r.outcome} ${r.code ?? ''} ${r.message ?? ''}\n  mutation: ${r.mutation}${r.stack ? `\n${r.stack}` : ''}`);
      else if (!args.json && ++seen % 1000 === 0) console.error(`... ${seen} cases`);
    },
  });
  if (args.json) console.log(JSON.stringify(report, null, 2));
  else printReport(report);
  return report.failures > 0 ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (e) => { console.error(e); process.exitCode = 2; });
