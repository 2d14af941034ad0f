// Runs every compiled test file under dist/test with Node's test runner. Node 20 does not expand
// globs in --test arguments, so the files are listed here. Extra arguments pass through.
//
// The wasm backend's records kernels (f16 scales in the weight stream) exist only where the engine has
// the fp16 proposal's f32x4.promote_low_f16x8: V8 13 (Node 24) on, behind a flag the backend sets. On an
// older Node the wasm kernel tests then run a second time under Node 24's official binary from npm
// (node-<platform>-<arch>@24, installed once into the benchmarks' cache, ~/.cache/flute-engine), so that
// every run, CI's included, covers those kernels. Without the registry that second run is reported and
// skipped, except under CI=true, where it fails the run.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

function walk(dir) {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.test.js') ? [p] : [];
  });
}
const files = walk('dist/test').sort();
if (files.length === 0) {
  console.error('run-tests: no compiled tests under dist/test (run `npm run build` first)');
  process.exit(1);
}
const extra = process.argv.slice(2);
// A test that hangs (a GPU driver that never answers, say) fails after 10 minutes instead of holding CI.
const run = (node, list) => spawnSync(node, ['--test', '--test-concurrency=1', '--test-timeout=600000', ...extra, ...list], { stdio: 'inherit' }).status ?? 1;
let status = run(process.execPath, files);

const v8Major = Number(process.versions.v8.split('.')[0]);
const wasmTests = files.filter((f) => /kernels-wasm\.test\.js$/.test(f));
if (v8Major < 13 && wasmTests.length > 0) {
  const { defaultCacheDir, resolveFluteRuntime } = await import('../dist/bench/vs-llama-cpp.js');
  let node = null;
  try {
    node = resolveFluteRuntime({ kind: 'major', major: 24 }, defaultCacheDir(), (line) => console.error(`run-tests: ${line}`));
  } catch (e) {
    const why = `run-tests: the wasm records kernels need Node 24+ (V8 ${process.versions.v8} has no fp16), which could not be installed: ${e.message}`;
    if (process.env.CI === 'true') {
      console.error(why);
      process.exit(1);
    }
    console.error(`${why}; their tests were skipped`);
  }
  if (node) {
    console.error(`run-tests: the wasm kernel tests again under Node ${node.label} (the records kernels need V8 13+)`);
    status ||= run(node.execPath, wasmTests);
  }
}
process.exit(status);
