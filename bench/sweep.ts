// `npm run sweep -- [--cases N] [--backend wasm|webgpu] [--seed S] [--json]`: the kernel sweep
// (src/kernels/sweep.ts) over every backend present. Prints the worst relative error per backend
// variant against its stated tolerance and each failing configuration; exits 1 when any fails.

import { runSweep, SWEEP_BACKENDS, type SweepBackendName } from '../src/kernels/sweep.js';

const USAGE = `usage: npm run sweep -- [--cases N] [--backend wasm|webgpu] [--seed S] [--json]
  --cases N   random configurations per backend (default 2000 for wasm, 200 for webgpu)
  example: npm run sweep -- --cases 5000 --backend wasm`;

function parse(argv: readonly string[]): { cases?: number; backends: SweepBackendName[]; seed: number; json: boolean } {
  const a = { cases: undefined as number | undefined, backends: [...SWEEP_BACKENDS], seed: 1, json: false };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i];
    const v = () => {
      const s = argv[++i];
      if (s === undefined) throw new Error(`${f} needs a value\n${USAGE}`);
      return s;
    };
    if (f === '--cases') {
      const n = Number(v());
      if (!Number.isInteger(n) || n < 1) throw new Error(`--cases: expected a positive integer`);
      a.cases = n;
    } else if (f === '--backend') {
      const names = v().split(',');
      for (const n of names) if (!(SWEEP_BACKENDS as readonly string[]).includes(n)) throw new Error(`--backend: expected ${SWEEP_BACKENDS.join(' or ')}, got ${JSON.stringify(n)}`);
      a.backends = names as SweepBackendName[];
    } else if (f === '--seed') a.seed = Number(v()) >>> 0;
    else if (f === '--json') a.json = true;
    else if (f === '--help' || f === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${f}\n${USAGE}`);
  }
  return a;
}

async function main(): Promise<number> {
  let args: ReturnType<typeof parse>;
  try {
    args = parse(process.argv.slice(2));
  } catch (e) {
    console.error((e as Error).message);
    return 2;
  }
  const defaults: Record<SweepBackendName, number> = { wasm: 2000, webgpu: 200 };
  const cases = Object.fromEntries(args.backends.map((b) => [b, args.cases ?? defaults[b]]));
  const report = await runSweep({ cases, seed: args.seed });
  if (args.json) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    for (const [b, why] of Object.entries(report.absent)) console.log(`${b}: absent (${why})`);
    console.log(`${'variant'.padEnd(26)} ${'cases'.padStart(6)} ${'skipped'.padStart(7)}  ${'worst rel err'.padStart(13)}  ${'tolerance'.padStart(9)}  worst configuration`);
    for (const v of report.variants) {
      console.log(`${v.variant.padEnd(26)} ${String(v.cases).padStart(6)} ${String(v.skipped).padStart(7)}  ${(v.worst?.relErr ?? NaN).toExponential(2).padStart(13)}  ${v.tolerance.toExponential(0).padStart(9)}  ${v.worst?.id ?? '-'}`);
      for (const [path, p] of Object.entries(v.paths)) {
        const over = p.worstOverBound ? `; worst / its stated bound ${p.worstOverBound.ratio.toFixed(2)} at ${p.worstOverBound.id}` : '';
        console.log(`  path ${path.padEnd(19)} ${String(p.cases).padStart(6)} ${''.padStart(7)}  ${(p.worst?.relErr ?? NaN).toExponential(2).padStart(13)}  ${''.padStart(9)}  ${p.worst?.id ?? '-'}${over}`);
      }
    }
    console.log(`\n${report.configs} configurations in ${(report.elapsedMs / 1000).toFixed(1)} s (seed ${report.seed}); ${report.failures} failures`);
    for (const v of report.variants) for (const f of v.failures.slice(0, 20)) console.log(`  FAIL ${f.variant} ${f.id}: rel err ${f.relErr.toExponential(2)} > ${f.tolerance}${f.error ? ` (${f.error})` : ''}`);
  }
  return report.failures > 0 ? 1 : 0;
}

main().then((c) => { process.exitCode = c; }, (e) => { console.error(e); process.exitCode = 2; });
