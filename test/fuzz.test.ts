// The mutation fuzzer, bounded for CI: a fixed number of seeded cases per reader, each run in the fuzz
// worker with a deadline, must end in success or a FluteError: no other exception, no allocation beyond
// the budget, no hang, no crash. `npm run fuzz -- --minutes N` runs the same cases for longer.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AllocationTooLarge, installAllocationGuard, setAllocationBudget } from '../src/fuzz/alloc-guard.js';
import { ggufFields } from '../src/fuzz/fields.js';
import { makeCase, type CaseResult } from '../src/fuzz/harness.js';
import { createRng, caseSeed } from '../src/fuzz/rng.js';
import { runFuzz } from '../src/fuzz/runner.js';
import { ggufSeeds, safetensorsSeeds } from '../src/fuzz/seeds.js';
import { READERS, type ReaderName } from '../src/fuzz/targets.js';

const CASES = Number(process.env.FUZZ_CASES ?? 300);

test(`fuzz: ${CASES} mutated files per reader end in success or a FluteError`, { timeout: 600_000 }, async () => {
  const report = await runFuzz({ readers: READERS, runSeed: 20260101, casesPerReader: CASES });
  for (const r of report.readers) {
    console.log(`  ${r.reader}: ${r.cases} cases, ${r.outcomes.ok} read, ${r.outcomes.typed} refused (${Object.entries(r.codes).map(([c, n]) => `${c} ${n}`).join(', ')})`);
    for (const f of r.failures) console.log(`  FAILED ${f.reader} case ${f.index} (${f.outcome} ${f.code}): ${f.message}\n    ${f.mutation}\n    replay: npm run fuzz -- --replay ${f.reader}:${f.seed}`);
  }
  assert.equal(report.failures, 0, 'every case ends in success or a FluteError');
  for (const r of report.readers) {
    assert.equal(r.cases, CASES, `${r.reader}: all cases ran`);
    // A fuzzer whose mutations never get past the reader's checks, or never trip them, tests nothing.
    assert.ok(r.outcomes.typed > CASES / 10, `${r.reader}: mutations are refused (${r.outcomes.typed} of ${r.cases})`);
    assert.ok(r.outcomes.typed < r.cases, `${r.reader}: some mutations leave a readable file`);
  }
});

// Cases the fuzzer found (each a hang or an untyped exception before its fix), replayed by seed. The
// seeds reproduce these mutations only with the mutators as they are; see FUZZING.md for each one.
const FOUND: readonly [ReaderName, number, RegExp][] = [
  ['llama2c', 2473935220, /n_layers 8388613.*needs \d+ bytes/], // n_layers lie: 9M tensor slots built before the size check
  ['llama2c', 3542649926, /n_layers 1056547/],
  ['tokenizer-json', 1193287394, /token id 2147483648/], // vocab id 2^31: the library walks 2^31 slots
  ['tokenizer-json', 3317917902, /failed in encode/], // post_processor.single not a list: TypeError at encode
  ['tokenizer-json', 3109181855, /failed in encode/],
  ['checkpoint', 4168664889, /"config" must be a JSON object/], // config null: TypeError
  ['checkpoint', 803149383, /quantization of .* expected an object/], // layer meta null: TypeError
  ['flute', 2225549504, /num_hidden_layers is 1048583/], // 1M layers: 9M specs walked before any check
  ['gguf', 1832800265, /llama\.block_count is 8388613/], // the same through a GGUF block count (long run)
  ['tokenizer-json', 4292345357, /model\.vocab as a list/], // vocab := [2^31, 2^31]: ids by position (long run)
];

test('fuzz: the crashes found so far stay fixed (typed error, fast)', { timeout: 120_000 }, async () => {
  for (const reader of new Set(FOUND.map(([r]) => r))) {
    const cases = FOUND.filter(([r]) => r === reader);
    const results: CaseResult[] = [];
    const report = await runFuzz({ readers: [reader], runSeed: 0, replaySeeds: cases.map(([, s]) => s), onResult: (r) => results.push(r) });
    assert.equal(report.failures, 0, `${reader}: ${JSON.stringify(report.readers[0].failures)}`);
    for (const [i, [, seed, re]] of cases.entries()) {
      const r = results[i];
      assert.equal(r.seed, seed);
      assert.equal(r.outcome, 'typed', `${reader}:${seed} ${r.mutation}: ${r.code} ${r.message}`);
      assert.match(r.message ?? '', re, `${reader}:${seed} ${r.mutation}`);
      assert.ok(r.ms < 2000, `${reader}:${seed} took ${r.ms.toFixed(0)} ms`);
    }
  }
});

test('fuzz: a case replays from its seed alone, byte for byte', async () => {
  const seeds = await safetensorsSeeds();
  for (let i = 0; i < 20; i++) {
    const s = caseSeed(5, 'safetensors', i);
    const a = makeCase(seeds, s);
    const b = makeCase(seeds, s);
    assert.equal(a.mutation, b.mutation);
    assert.deepEqual([...a.files.values()], [...b.files.values()]);
  }
  assert.notEqual(caseSeed(5, 'safetensors', 0), caseSeed(5, 'safetensors', 1));
  assert.notEqual(caseSeed(5, 'safetensors', 0), caseSeed(5, 'gguf', 0));
});

test('fuzz: GGUF field walker finds the counts, dims, type ids and offsets the reader trusts', async () => {
  const [[seed]] = await ggufSeeds();
  const { fields, headerEnd } = ggufFields(seed.bytes);
  const dv = new DataView(seed.bytes.buffer, seed.bytes.byteOffset);
  const tensorCount = fields.find((f) => f.what === 'tensor count');
  assert.equal(tensorCount?.offset, 8);
  const n = Number(dv.getBigUint64(8, true));
  assert.equal(fields.filter((f) => /^tensor \d+ offset$/.test(f.what)).length, n);
  assert.equal(fields.filter((f) => /^tensor \d+ ggml type$/.test(f.what)).length, n);
  // The first tensor's stored offset is 0 and the header ends where the aligned data starts.
  const first = fields.find((f) => f.what === 'tensor 0 offset');
  assert.equal(dv.getBigUint64(first?.offset ?? -1, true), 0n);
  assert.ok(headerEnd > 24 && headerEnd <= seed.bytes.length && Math.ceil(headerEnd / 32) * 32 < seed.bytes.length);
});

test('fuzz: the allocation guard refuses one allocation over budget and allows the rest', () => {
  installAllocationGuard();
  try {
    setAllocationBudget(4096);
    assert.throws(() => new Uint8Array(4097), AllocationTooLarge);
    assert.throws(() => new Float32Array(1025), AllocationTooLarge);
    assert.throws(() => new ArrayBuffer(1 << 20), AllocationTooLarge);
    assert.throws(() => Float64Array.from({ length: 600 }), AllocationTooLarge);
    const ok = new Float32Array(1024);
    assert.ok(ok instanceof Float32Array && ok.length === 1024);
    assert.ok(new Uint8Array(new ArrayBuffer(8), 2, 4) instanceof Uint8Array);
  } finally {
    setAllocationBudget(Infinity);
  }
  assert.equal(new Uint8Array(1 << 20).length, 1 << 20);
  // The RNG is what makes cases reproducible: the same seed gives the same draws.
  const a = createRng(3);
  const b = createRng(3);
  assert.deepEqual([a.next(), a.int(0, 9), a.next()], [b.next(), b.int(0, 9), b.next()]);
});
