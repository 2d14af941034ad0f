// Output safety of `flute quantize` under SIGKILL: killed at seeded random moments, a run leaves either
// no output or the previous one byte for byte (or, killed after its rename, its own complete output),
// never a partial file. What a kill can leave is the run's
// own temp file, `.<name>.<pid>.<random>.tmp` beside the target (nothing can clean up after SIGKILL); the
// next write to the same target removes such files once their process is gone (format/atomic.ts).

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { repoFile } from './hf-fixtures.js';
import { rng } from './helpers.js';

const FLUTE = repoFile('bin/flute.js');
const MODEL = repoFile('models/stories260K/stories260K.bin');
const KILLS = Number(process.env.KILL_RUNS ?? 15);
const TEMP = (name: string) => new RegExp(`^\\.${name.replaceAll('.', '\\.')}\\.\\d+\\.[a-z0-9]+\\.tmp$`);

function quantizeArgs(out: string, bits: number): string[] {
  return [FLUTE, 'quantize', MODEL, '--bits', String(bits), '--group-size', '32', '--out', out];
}

/** Runs quantize to the end; returns its wall time in ms. */
function runToEnd(out: string, bits: number): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, quantizeArgs(out, bits), { encoding: 'utf8' });
  assert.equal(r.status, 0, `quantize failed: ${r.stderr}`);
  return performance.now() - t0;
}

/** Starts quantize and SIGKILLs it after `delayMs`; resolves once it is gone, with whether the kill came first. */
function runAndKill(out: string, bits: number, delayMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, quantizeArgs(out, bits), { stdio: 'ignore' });
    let killed = false;
    const timer = setTimeout(() => {
      killed = child.kill('SIGKILL');
    }, delayMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(killed && signal === 'SIGKILL');
    });
  });
}

/** Kills quantize KILLS times; `previous` is the output before the first run, `complete` what a finished run writes. */
async function killLoop(dir: string, name: string, bits: number, previous: Buffer | undefined, complete: Buffer, spanMs: number, seed: number) {
  const out = join(dir, name);
  const r = rng(seed);
  let killedMidway = 0;
  let midWrite = 0; // kills that left a temp file: the run was writing
  const seen = new Set<string>();
  for (let i = 0; i < KILLS; i++) {
    const delay = Math.floor(r() * spanMs);
    const killed = await runAndKill(out, bits, delay);
    const files = readdirSync(dir).filter((f) => f !== name);
    for (const f of files) assert.match(f, TEMP(name), `kill ${i} at ${delay} ms left an unexpected file ${f}`);
    if (killed && files.some((f) => !seen.has(f))) midWrite++;
    for (const f of files) seen.add(f);
    if (!killed) {
      // It finished before the kill: the complete new file, which is now the previous output.
      assert.ok(readFileSync(out).equals(complete), `run ${i} finished: its output must be complete`);
      assert.deepEqual(files, [], 'a finished run removes the stale temp files before it');
      previous = complete;
      continue;
    }
    killedMidway++;
    // A kill that lands after the rename, while the process is exiting, finds the run complete: the new
    // output whole is as good as the old one. Anything else must be exactly what was there before.
    const now = existsSync(out) ? readFileSync(out) : undefined;
    if (now !== undefined && now.equals(complete)) {
      previous = complete;
    } else if (previous === undefined) {
      assert.ok(now === undefined, `kill ${i} at ${delay} ms: no output may exist before the run completes`);
    } else {
      assert.ok(now !== undefined && now.equals(previous), `kill ${i} at ${delay} ms: the previous output must be untouched`);
    }
  }
  return { killedMidway, midWrite };
}

test(`quantize killed ${KILLS} times at random moments leaves no output or the previous one, never a partial file`, { timeout: 300_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'flute-kill-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));

  // The reference outputs, and how long a run takes (kills land anywhere in 0..1.2x of it).
  const ref4 = join(dir, 'ref4.safetensors');
  const ref3 = join(dir, 'ref3.safetensors');
  const span = 1.2 * Math.max(runToEnd(ref4, 4), runToEnd(ref3, 3));
  const want4 = readFileSync(ref4);
  const want3 = readFileSync(ref3);
  const work = mkdtempSync(join(dir, 'work-'));

  // 1. No previous output.
  const k1 = await killLoop(work, 'out.safetensors', 4, undefined, want4, span, 1);
  // Whatever the kills left, a complete run gives the reference bytes and removes every stale temp file.
  runToEnd(join(work, 'out.safetensors'), 4);
  assert.ok(readFileSync(join(work, 'out.safetensors')).equals(want4), 'a complete run after the kills writes the full output');
  assert.deepEqual(readdirSync(work), ['out.safetensors'], 'stale temp files are cleaned by the next run');

  // 2. A previous output (4-bit) being replaced by a 3-bit one.
  runToEnd(join(work, 'out.safetensors'), 4);
  const k2 = await killLoop(work, 'out.safetensors', 3, want4, want3, span, 2);
  runToEnd(join(work, 'out.safetensors'), 3);
  assert.ok(readFileSync(join(work, 'out.safetensors')).equals(want3));
  assert.deepEqual(readdirSync(work), ['out.safetensors']);
  console.log(`  killed mid-run ${k1.killedMidway} + ${k2.killedMidway} of ${2 * KILLS} times, ${k1.midWrite} + ${k2.midWrite} of them while writing (span ${span.toFixed(0)} ms)`);
  // Most kills must land while the run is still going, and some while it writes, or the test proves nothing.
  assert.ok(k1.killedMidway + k2.killedMidway >= KILLS, `kills that interrupted a run: ${k1.killedMidway + k2.killedMidway}`);
  assert.ok(k1.midWrite + k2.midWrite >= 1, 'some kills land while the output is being written');
});

test('a stale temp file of a live process is kept; one of a dead process is removed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'flute-stale-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  const deadPid = Number(dead.stdout);
  const stale = `.out.bin.${deadPid}.abc123.tmp`;
  const live = `.out.bin.${process.ppid}.def456.tmp`; // our parent runs for as long as this test
  const other = `.other.bin.${deadPid}.abc123.tmp`; // another target's: not ours to touch
  for (const f of [stale, live, other]) writeFileSync(join(dir, f), 'partial');
  const { writeFileAtomic } = await import('../src/format/atomic.js');
  await writeFileAtomic(join(dir, 'out.bin'), [Uint8Array.of(1)]);
  assert.deepEqual(readdirSync(dir).sort(), [live, other, 'out.bin'].sort());
});
