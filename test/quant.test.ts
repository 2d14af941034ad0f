// Tables, canonical packing, RTN and the reference kernel: the format's specification tests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FluteError } from '../src/errors.js';
import { f16BitsToF32, f32ToF16Bits, roundToF16, f32ToBf16Bits, bf16ArrayToF32 } from '../src/format/half.js';
import { buildTable, nfTable, normalQuantile, NF4_VALUES, TABLE_KINDS, type TableKind } from '../src/quant/tables.js';
import { packIndices, unpackIndices, packedRowBytes, indexAt } from '../src/quant/packing.js';
import { quantizeRtn } from '../src/quant/rtn.js';
import { dequantize, groupsPerRow, validateQuantizedLinear, type QuantizedLinear } from '../src/quant/linear.js';
import { createRefBackend } from '../src/kernels/ref/index.js';
import { identity, matmulF64, randInt, randn, relErr, rng } from './helpers.js';

const isCode = (code: string) => (e: unknown) => e instanceof FluteError && e.code === code;

test('f16: exhaustive round trip of all 65536 bit patterns, RNE ties and overflow', () => {
  for (let h = 0; h < 65536; h++) {
    const v = f16BitsToF32(h);
    if (Number.isNaN(v)) assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(v))));
    else assert.equal(f32ToF16Bits(v), h, `bits ${h.toString(16)}`);
  }
  // 1 + 2^-11 is halfway between 1 and the next f16 (1 + 2^-10): ties go to even (1).
  assert.equal(roundToF16(1 + 2 ** -11), 1);
  assert.equal(roundToF16(1 + 3 * 2 ** -11), 1 + 2 ** -9);
  assert.equal(roundToF16(65520), Infinity); // halfway to the next binade rounds up to Inf
  assert.equal(roundToF16(65519), 65504);
  assert.equal(roundToF16(2 ** -25), 0); // half the smallest subnormal ties to even (0)
  assert.equal(roundToF16(1.5 * 2 ** -25), 2 ** -24);
  assert.equal(bf16ArrayToF32(Uint16Array.of(f32ToBf16Bits(1 + 2 ** -8)))[0], 1); // tie to even
});

test('NF tables: FLUTE formula matches the published values and the QLoRA NF4 constants', () => {
  const nf2 = [-1, 0, 0.3379151, 1];
  const nf3 = [-1, -0.478629, -0.2171417, 0, 0.1609301, 0.3379151, 0.5626168, 1];
  nfTable(2).forEach((v, i) => assert.ok(Math.abs(v - nf2[i]) < 1e-6, `NF2[${i}] = ${v}`));
  nfTable(3).forEach((v, i) => assert.ok(Math.abs(v - nf3[i]) < 1e-6, `NF3[${i}] = ${v}`));
  // FLUTE's formula at b = 4 (nfTable returns the QLoRA constants there, so compute it here) reproduces
  // those constants to ~1e-6 (flute.md 3.1); 2e-6 allows for the constants' own f32 rounding.
  const delta = 0.5 * (1 / 32 + 1 / 30);
  const lin = (a: number, b: number, n: number) => Array.from({ length: n }, (_, i) => a + ((b - a) * i) / (n - 1));
  const raw = [...lin(1 - delta, 0.5, 8).map((p) => -normalQuantile(p)), ...lin(0.5, 1 - delta, 9).slice(1).map(normalQuantile)];
  const max = Math.max(...raw.map(Math.abs));
  raw.forEach((v, i) => assert.ok(Math.abs(v / max - NF4_VALUES[i]) < 2e-6, `NF4[${i}]: formula ${v / max} vs ${NF4_VALUES[i]}`));
  assert.deepEqual(Array.from(buildTable('nf', 4)), NF4_VALUES.map((v) => Math.fround(v) + 0));
  for (let b = 1; b <= 8; b++) {
    const t = buildTable('nf', b);
    assert.equal(t.length, 2 ** b);
    for (let i = 1; i < t.length; i++) assert.ok(t[i] > t[i - 1], `NF${b} ascending at ${i}`);
    assert.equal(t[0], -1);
    assert.equal(t[t.length - 1], 1);
  }
});

test('int and fp4 tables', () => {
  assert.deepEqual(Array.from(buildTable('int', 4)), [-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(Array.from(buildTable('int', 1)), [-1, 0]);
  const fp4 = Array.from(buildTable('fp4', 4));
  assert.deepEqual(fp4.slice(0, 8), [0, 0.5, 1, 1.5, 2, 3, 4, 6]);
  assert.deepEqual(fp4.slice(8), [0, -0.5, -1, -1.5, -2, -3, -4, -6]);
  assert.ok(fp4.every((v) => !Object.is(v, -0)), '-0 folded to +0');
  assert.throws(() => buildTable('fp4', 3), isCode('E_OPTION'));
});

test('table validation: wrong length, non-finite values, bits out of range', () => {
  assert.throws(() => buildTable('custom', 2, [1, 2, 3]), (e: unknown) => isCode('E_SHAPE')(e) && /needs 4 values, got 3/.test((e as Error).message));
  assert.throws(() => buildTable('custom', 1, [0, NaN]), isCode('E_NONFINITE'));
  assert.throws(() => buildTable('nf', 0), (e: unknown) => isCode('E_OPTION')(e) && /bits/.test((e as Error).message));
  assert.throws(() => buildTable('nf', 9), isCode('E_OPTION'));
  assert.throws(() => buildTable('int', 2.5), isCode('E_OPTION'));
  assert.deepEqual(Array.from(buildTable('custom', 1, [-0.5, 2])), [-0.5, 2]);
});

test('canonical packing: hand-computed bytes and round trips for b = 1..8', () => {
  // Row [1, 2, 7] at 3 bits: bits 0-2 = 001, 3-5 = 010, 6-8 = 111 -> byte0 = 0b11_010_001 = 0xD1, byte1 = 0b1.
  assert.deepEqual(Array.from(packIndices(Uint8Array.of(1, 2, 7), 1, 3, 3)), [0xd1, 0x01]);
  assert.equal(packedRowBytes(3, 3), 2);
  assert.equal(packedRowBytes(172, 4), 86);
  assert.equal(packedRowBytes(5, 5), 4);
  const r = rng(1);
  for (let bits = 1; bits <= 8; bits++) {
    for (const [n, k] of [[1, 1], [3, 7], [5, 33], [2, 129]]) {
      const idx = Uint8Array.from({ length: n * k }, () => Math.floor(r() * 2 ** bits));
      const packed = packIndices(idx, n, k, bits);
      assert.equal(packed.length, n * packedRowBytes(k, bits));
      assert.deepEqual(unpackIndices(packed, n, k, bits), idx, `bits=${bits} ${n}x${k}`);
      const rb = packedRowBytes(k, bits);
      for (let t = 0; t < 10; t++) {
        const row = Math.floor(r() * n), col = Math.floor(r() * k);
        assert.equal(indexAt(packed, rb, bits, row, col), idx[row * k + col]);
      }
    }
  }
  assert.throws(() => packIndices(Uint8Array.of(4), 1, 1, 2), isCode('E_OPTION'));
});

const KINDS: TableKind[] = (Object.keys(TABLE_KINDS) as TableKind[]).filter((k) => k !== 'custom');

test('RTN over the registry: every weight maps to its nearest table entry, ragged groups included', () => {
  const r = rng(7);
  for (const kind of KINDS) {
    for (let bits = 1; bits <= 8; bits++) {
      if (TABLE_KINDS[kind].unsupportedBits(bits)) continue;
      for (const g of [1, 7, 32, 64, 200]) {
        const n = randInt(r, 1, 9), k = randInt(r, 1, 150); // K not a multiple of g, or smaller than g
        const w = randn(r, n * k, 0.05);
        const id = `rtn(kind=${kind},bits=${bits},g=${g},n=${n},k=${k})`;
        const { layer, error } = quantizeRtn(w, n, k, { bits, groupSize: g, tableKind: kind }, id);
        validateQuantizedLinear(layer, id);
        const G = groupsPerRow(k, g);
        assert.equal(layer.scales.length, n * G, id);
        const idx = unpackIndices(layer.packed, n, k, bits);
        for (let i = 0; i < n * k; i++) {
          const s = layer.scales[Math.floor(i / k) * G + Math.floor((i % k) / g)];
          const best = Math.min(...Array.from(layer.table, (t) => Math.abs(t * s - w[i])));
          // Nearest in x = w/s space is nearest in w space since |s| scales distances uniformly.
          assert.ok(Math.abs(layer.table[idx[i]] * s - w[i]) <= best * (1 + 1e-6) + 1e-12, `${id}: element ${i}`);
        }
        // The reported statistics describe exactly what dequantize() gives back.
        const dq = dequantize(layer);
        const mse = dq.reduce((a, v, i) => a + (v - w[i]) ** 2, 0) / (n * k);
        assert.ok(Math.abs(error.mse - mse) <= 1e-9 * Math.max(mse, 1e-12), `${id}: mse ${error.mse} vs ${mse}`);
      }
    }
  }
});

test('RTN: scale rule puts the group extreme on the table extreme', () => {
  const w = Float32Array.of(0.5, -2, 1, 0.25);
  const nf = quantizeRtn(w, 1, 4, { bits: 4, groupSize: 4, tableKind: 'nf', scaleDtype: 'f32' }).layer;
  assert.equal(nf.scales[0], 2); // absmax / 1, positive, as FLUTE
  assert.equal(dequantize(nf)[1], -2);
  const int = quantizeRtn(w, 1, 4, { bits: 4, groupSize: 4, tableKind: 'int', scaleDtype: 'f32' }).layer;
  assert.equal(int.scales[0], 0.25); // -2 / -8: the extreme lands exactly on -8
  assert.deepEqual(Array.from(dequantize(int)), [0.5, -2, 1, 0.25]);
  const wPos = Float32Array.of(2, -1);
  const intPos = quantizeRtn(wPos, 1, 2, { bits: 4, groupSize: 2, tableKind: 'int', scaleDtype: 'f32' }).layer;
  assert.equal(intPos.scales[0], -0.25); // 2 / -8: a negative scale keeps +2 exact
  assert.deepEqual(Array.from(dequantize(intPos)), [2, -1]);
  const zero = quantizeRtn(new Float32Array(4), 1, 4, { bits: 3, groupSize: 2, tableKind: 'nf' }).layer;
  assert.deepEqual(Array.from(dequantize(zero)), [0, 0, 0, 0]);
  // f16 scales are exactly representable in f16.
  const r = rng(3);
  const q = quantizeRtn(randn(r, 64 * 64, 0.02), 64, 64, { bits: 4, groupSize: 32, tableKind: 'nf' }).layer;
  assert.ok(q.scales.every((s) => roundToF16(s) === s));
});

test('RTN error shrinks with more bits and smaller groups (NF on Gaussian weights)', () => {
  const r = rng(11);
  const w = randn(r, 64 * 256, 0.02);
  const err = (bits: number, g: number) => quantizeRtn(w, 64, 256, { bits, groupSize: g, tableKind: 'nf' }).error.relRmse;
  assert.ok(err(2, 64) > err(3, 64) && err(3, 64) > err(4, 64) && err(4, 64) > err(8, 64));
  assert.ok(err(4, 256) > err(4, 32));
  // NF4 with g=64 on Gaussian weights: ~10% relative RMS error (QLoRA-class); 20% would mean a bug.
  assert.ok(err(4, 64) < 0.2, `nf4 g64 relRmse ${err(4, 64)}`);
});

test('RTN bad input: NaN/Inf weights, group size 0, wrong length, scale beyond f16', () => {
  const w = Float32Array.of(1, NaN, 3, 4);
  assert.throws(() => quantizeRtn(w, 2, 2, { bits: 4, groupSize: 2, tableKind: 'nf' }, 'blk.0.wq'),
    (e: unknown) => isCode('E_NONFINITE')(e) && /blk\.0\.wq: weight at row 0, column 1 is NaN/.test((e as Error).message));
  assert.throws(() => quantizeRtn(Float32Array.of(Infinity), 1, 1, { bits: 4, groupSize: 1, tableKind: 'nf' }), isCode('E_NONFINITE'));
  assert.throws(() => quantizeRtn(new Float32Array(4), 2, 2, { bits: 4, groupSize: 0, tableKind: 'nf' }), (e: unknown) => isCode('E_OPTION')(e) && /group size/.test((e as Error).message));
  assert.throws(() => quantizeRtn(new Float32Array(3), 2, 2, { bits: 4, groupSize: 2, tableKind: 'nf' }), isCode('E_SHAPE'));
  assert.throws(() => quantizeRtn(Float32Array.of(1e6), 1, 1, { bits: 4, groupSize: 1, tableKind: 'nf' }), isCode('E_OPTION'));
  assert.equal(quantizeRtn(Float32Array.of(1e6), 1, 1, { bits: 4, groupSize: 1, tableKind: 'nf', scaleDtype: 'f32' }).layer.scales[0], 1e6);
});

function randomLayer(r: () => number, n: number, k: number, bits: number, g: number, kind: TableKind = 'nf'): QuantizedLinear {
  return quantizeRtn(randn(r, n * k, 0.1), n, k, { bits, groupSize: g, tableKind: kind }).layer;
}

test('reference kernel: x = I returns the dequantized weights bit for bit (f32 and f16 compute)', () => {
  const ref = createRefBackend();
  const r = rng(5);
  for (const [bits, g, n, k] of [[4, 32, 9, 70], [3, 64, 5, 64], [2, 5, 3, 17], [8, 128, 4, 33], [1, 3, 6, 10]]) {
    const layer = randomLayer(r, n, k, bits, g, bits === 4 ? 'int' : 'nf');
    const p = ref.prepare(layer);
    for (const ct of ['f32', 'f16'] as const) {
      const y = ref.matmul(p, identity(k), k, undefined, { computeType: ct }); // [K, N] = W^T
      const w = dequantize(layer, ct);
      for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) {
        assert.ok(Object.is(y[j * n + i], w[i * k + j]), `bits=${bits} g=${g} ${ct} (${i},${j}): ${y[j * n + i]} vs ${w[i * k + j]}`);
      }
    }
  }
});

test('dequantize with f16 compute rounds table x scale to f16, as FLUTE does', () => {
  const layer: QuantizedLinear = validateQuantizedLinear({
    kind: 'quantized', n: 1, k: 2, bits: 1, groupSize: 2, tableKind: 'custom',
    table: Float32Array.of(0.1, 0.3), scaleDtype: 'f32', scales: Float32Array.of(1.7), packed: Uint8Array.of(0b10),
  });
  const [a, b] = dequantize(layer, 'f16');
  assert.equal(a, roundToF16(roundToF16(0.1) * roundToF16(1.7)));
  assert.equal(b, roundToF16(roundToF16(0.3) * roundToF16(1.7)));
  assert.notEqual(a, Math.fround(Math.fround(0.1) * Math.fround(1.7)));
});

test('reference kernel: matches an independent f64 matmul over random shapes and M', () => {
  const ref = createRefBackend();
  const r = rng(9);
  for (let c = 0; c < 20; c++) {
    const n = randInt(r, 1, 40), k = randInt(r, 1, 300), m = randInt(r, 1, 9), bits = randInt(r, 1, 8);
    const g = [16, 32, 64, 128, randInt(r, 1, 300)][c % 5];
    const layer = randomLayer(r, n, k, bits, g);
    const x = randn(r, m * k);
    const y = ref.matmul(ref.prepare(layer), x, m);
    const want = matmulF64(x, dequantize(layer), m, n, k);
    // Both sum in f64 over the same f32 products; only the final f32 rounding (2^-24 relative) differs.
    assert.ok(relErr(y, want) < 1e-6, `case ${c}: m=${m} n=${n} k=${k} bits=${bits} g=${g}`);
  }
});

test('reference kernel: input of the wrong width is a typed error', () => {
  const ref = createRefBackend();
  const p = ref.prepare(randomLayer(rng(2), 4, 10, 4, 5));
  assert.throws(() => ref.matmul(p, new Float32Array(9), 1), (e: unknown) => isCode('E_SHAPE')(e) && /\[1, 10\]/.test((e as Error).message));
  assert.throws(() => ref.matmul(p, new Float32Array(10), 0), isCode('E_SHAPE'));
});
