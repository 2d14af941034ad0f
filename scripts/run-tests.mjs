// Runs every compiled test file under dist/test with Node's test runner. Node 20 does not expand
// globs in --test arguments, so the files are listed here. Extra arguments pass through.
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
// A test that hangs (a GPU driver that never answers, say) fails after 10 minutes instead of holding CI.
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=600000', ...process.argv.slice(2), ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
