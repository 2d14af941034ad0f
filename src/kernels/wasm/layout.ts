// The wasm backend's restructured layouts (FLUTE's offline restructuring on a CPU): packForWasm turns a
// canonical Linear into the byte streams the kernels read, once at prepare time; padRows lays x out per
// matmul, and tileF32 / quantizeActivations specify (in plain JS, tested against them) what codegen's
// act_tile_f32 / act_quant* do in wasm. Pure functions over typed arrays; index.ts copies into memory.
//
// Quantized weights, b <= 4 ("lut" layout). Rows are taken four at a time (a row quad); K is cut into
// groups, each padded to gp = ceil(g/32)*32 so a 32-wide chunk never straddles two scales, and each
// group into 32-k chunks. Per (row quad, chunk) the 128 indices form 8 index vectors IV_j (j = 0..7),
// each 16 bytes: byte 4r+t = index of row r at k = 32c + 4j + t. That order serves all three kernels:
// the relaxed int8 dot takes 4 consecutive bytes per i32 lane (lane r = row r), the SIMD128 i16 dot
// takes rows {0,1} and {2,3} from the low and high halves, and the exact f32 path transposes it with
// one shuffle so its byte-plane gather yields one f32x4 per k (lanes = rows). Bits of the 8 vectors are
// packed per chunk as
//   b=4: 4 x v128, byte i of v128 v = IV_2v[i] | IV_2v+1[i] << 4                      (64 B)
//   b=3: 2 x v128 low 2-bit plane (as b=2) + 1 x v128 high-bit plane, bit j = bit 2 of IV_j (48 B)
//   b=2: 2 x v128, byte i of v128 v = sum_s IV_4v+s[i] << 2s                          (32 B)
//   b=1: stored as b=2 (table padded with zeros), so it takes the 2-bit kernels.
// Scales are [rowQuad][group][4] f32 (one v128 per quad and group); the table travels as four byte
// planes (exact path, `pshufb`-style f32 gather) and as 16-byte integer codebooks (int8 paths).
// Records (packF16Records), where the host converts f16 in one instruction and every scale of a layer
// with one chunk a group is an f16 value (GGUF Q4_0 / IQ4_NL): per (row quad, group) the chunk, then
// the quad's 4 scales as f16 (8 B), in one stream.

import { FluteError } from '../../errors.js';
import { dequantValue, groupsPerRow, type DenseLinear, type Linear, type QuantizedLinear } from '../../quant/linear.js';
import { f16BitsToF32, f32ToF16Bits } from '../../format/half.js';
import { packedRowBytes, unpackIndices } from '../../quant/packing.js';

export const QUAD = 4; // rows per quad (one per f32x4 / i32x4 lane)
export const CHUNK = 32; // k per chunk: the unit a kernel's unrolled body consumes
/** Smallest group size the lut layout takes; smaller groups would pad more than 2x and go generic. */
export const MIN_LUT_GROUP = 16;

/** Bytes one (row quad, chunk) takes in the lut layout, by layout bits. */
export function chunkBytes(layoutBits: 2 | 3 | 4): number {
  return layoutBits === 4 ? 64 : layoutBits === 3 ? 48 : 32;
}

export function roundUp(v: number, m: number): number {
  return Math.ceil(v / m) * m;
}

// ---------------------------------------------------------------------------------------------
// Integer codebooks

/**
 * A table approximated as scale * code, codes in [lo, hi]; maxError = max_j |T_j - scale*code_j|;
 * relError = max_j |T_j - scale*code_j| / max(|T_j|, 2^-24 max|T|) (a zero entry takes code 0, exact;
 * one below f32 resolution of the table, such as NF's 2.4e-16 middle entry, counts as zero). relError, not maxError, is what bounds the matmul's relative error whatever weights use the
 * table (index.ts intPathFor): an absolute error of half a code step is small next to the entries at the
 * ends of the table but not next to those near zero, where an absmax-scaled group with an outlier puts
 * nearly all of its weights.
 */
export interface Codebook {
  readonly codes: Int8Array; // [16] (entries past 2^b are 0)
  readonly scale: number;
  readonly maxError: number;
  readonly relError: number;
}

/**
 * The integer codebook with the smallest relative entry error (then the smallest worst-case entry
 * error) among scales that fit [lo, hi] and keep the entry error <= t0/2: the plain absmax scale
 * t0 = max(max T / hi, min T / lo) (nudged up by 2^-20 relative) and every |T_j|/i that is at least t0
 * (each makes T_j exact; an integer-valued table such as 'int' gets scale 1 and no error).
 * The error is <= t0/2 whatever the table: the bound the tests use.
 */
export function buildCodebook(table: Float32Array, lo: number, hi: number): Codebook {
  let tmax = 0;
  let tmin = 0;
  for (const v of table) {
    tmax = Math.max(tmax, v);
    tmin = Math.min(tmin, v);
  }
  // Nudged up before rounding to f32 so that no code needs clamping: then the error is <= t0/2.
  const t0 = Math.fround(Math.max(tmax / hi, tmin / lo) * (1 + 2 ** -20));
  const floor = Math.max(tmax, -tmin) * 2 ** -24;
  const errorsOf = (t: number): [number, number] => {
    let e = 0;
    let rel = 0;
    for (const v of table) {
      const c = Math.min(hi, Math.max(lo, Math.round(v / t)));
      const ej = Math.abs(v - t * c);
      e = Math.max(e, ej);
      if (ej > 0) rel = Math.max(rel, ej / Math.max(Math.abs(v), floor));
    }
    return [e, rel];
  };
  let scale = t0;
  let [maxError, relError] = errorsOf(t0);
  const limit = Math.max(maxError, t0 / 2);
  for (const v of table) {
    if (v === 0) continue;
    for (let i = 1; i <= Math.max(hi, -lo); i++) {
      const t = Math.fround(Math.abs(v) / i); // the kernels multiply by the f32 scale: measure with it
      if (t < t0) break;
      const [e, rel] = errorsOf(t);
      if (e <= limit && (rel < relError || (rel === relError && e < maxError))) {
        scale = t;
        maxError = e;
        relError = rel;
      }
    }
  }
  const codes = new Int8Array(16);
  table.forEach((v, j) => (codes[j] = Math.min(hi, Math.max(lo, Math.round(v / scale)))));
  return { codes, scale, maxError, relError };
}

/** Relaxed-dot codebook: codes in [-64, 63] stored as unsigned 7-bit code + 64 (kernels.md 2.6). */
export const RELAXED_CODE_RANGE = [-64, 63] as const;
/**
 * Relaxed-dot 8-bit codebook: codes in [-128, 127] stored as code + 128 in [0, 255], for engines whose
 * relaxed dot reads its second operand as unsigned 8-bit (x64's pmaddubsw / vpdpbusd; index.ts probes
 * it), with activations in [-64, 64] so that no i16 pair sum saturates: 2 * 64 * 255 = 32640 <= 32767.
 */
export const RELAXED8_CODE_RANGE = [-128, 127] as const;
/** SIMD128 (i16 dot) codebook: signed codes in [-127, 127]. */
export const SIMD_CODE_RANGE = [-127, 127] as const;
/** Bytes of a lut layer's table block: f32 byte planes [64], then the 7-bit, SIMD128 and 8-bit relaxed codebooks [16] each. */
export const LUT_TABLE_BYTES = 64 + 3 * 16;

// ---------------------------------------------------------------------------------------------
// Restructured layers

export interface LutLayout {
  readonly kind: 'lut';
  readonly n: number;
  readonly k: number;
  readonly nq: number; // ceil(N/4) row quads
  readonly bits: number; // the layer's bits (1..4)
  readonly layoutBits: 2 | 3 | 4;
  readonly groupSize: number; // g
  readonly paddedGroup: number; // gp = ceil(g/32)*32
  readonly groups: number; // G = ceil(K/g)
  readonly quadBytes: number; // index bytes per row quad = G * gp/32 * chunkBytes
  readonly indices: Uint8Array; // [nq][G][gp/32][chunkBytes]
  readonly scales: Float32Array; // [nq][G][4]
  readonly table: Float32Array; // [16] the f32 table, zero-padded (readLutRow)
  readonly planes: Uint8Array; // [4][16] byte p of the f32 table entry e at p*16+e
  readonly relaxedCodebook: Codebook; // codes in [-64, 63]
  readonly simdCodebook: Codebook; // codes in [-127, 127]
  readonly relaxed8Codebook: Codebook; // codes in [-128, 127]
}

export interface GenericLayout {
  readonly kind: 'generic';
  readonly n: number;
  readonly k: number;
  readonly groupSize: number;
  readonly groups: number;
  readonly indices: Uint8Array; // [N][K] one index per byte
  readonly scales: Float32Array; // [N][G]
  readonly table: Float32Array; // [256] zero-padded
}

export interface DenseLayout {
  readonly kind: 'dense';
  readonly n: number;
  readonly k: number;
  readonly nq: number;
  readonly paddedK: number; // ceil(K/4)*4
  readonly weight: Float32Array; // [nq][paddedK][4]: lane r = row 4q+r
}

export type WasmLayout = LutLayout | GenericLayout | DenseLayout;

/** Which layout a layer takes: lut for b <= 4 with g >= 16, generic for the rest. */
export function layoutKind(layer: Linear): WasmLayout['kind'] {
  if (layer.kind === 'dense') return 'dense';
  return layer.bits <= 4 && layer.groupSize >= MIN_LUT_GROUP ? 'lut' : 'generic';
}

/** Bytes the restructured layer will take in wasm memory (for fit checks before packing). */
export function layoutBytes(layer: Linear): number {
  const kind = layoutKind(layer);
  if (layer.kind === 'dense') return Math.ceil(layer.n / QUAD) * roundUp(layer.k, 4) * QUAD * 4;
  const G = groupsPerRow(layer.k, layer.groupSize);
  const nq = Math.ceil(layer.n / QUAD);
  if (kind === 'generic') return layer.n * layer.k + layer.n * G * 4 + 1024;
  const lb = layer.bits === 1 ? 2 : (layer.bits as 2 | 3 | 4);
  const gp = roundUp(layer.groupSize, CHUNK);
  return nq * G * (gp / CHUNK) * chunkBytes(lb) + nq * G * 16 + LUT_TABLE_BYTES;
}

/** Restructures a canonical layer into this backend's layout (pure; see the header for the format). */
export function packForWasm(layer: Linear): WasmLayout {
  if (layer.kind === 'dense') return packDense(layer);
  return layoutKind(layer) === 'lut' ? packLut(layer) : packGeneric(layer);
}

function packDense(layer: DenseLinear): DenseLayout {
  const { n, k } = layer;
  if (layer.weight.length !== n * k) {
    throw new FluteError('E_SHAPE', `wasm prepare: dense weight must be [${n}, ${k}] = ${n * k} values, got ${layer.weight.length}`);
  }
  const nq = Math.ceil(n / QUAD);
  const kp = roundUp(k, 4);
  const weight = new Float32Array(nq * kp * QUAD);
  for (let row = 0; row < n; row++) {
    const q = row >> 2;
    const r = row & 3;
    const src = row * k;
    const dst = q * kp * QUAD + r;
    for (let c = 0; c < k; c++) weight[dst + c * QUAD] = layer.weight[src + c];
  }
  return { kind: 'dense', n, k, nq, paddedK: kp, weight };
}

function paddedTable(layer: QuantizedLinear, size: number): Float32Array {
  const t = new Float32Array(size);
  t.set(layer.table);
  return t;
}

function packGeneric(layer: QuantizedLinear): GenericLayout {
  const { n, k } = layer;
  const groups = groupsPerRow(k, layer.groupSize);
  return {
    kind: 'generic',
    n,
    k,
    groupSize: layer.groupSize,
    groups,
    indices: unpackIndices(layer.packed, n, k, layer.bits),
    scales: Float32Array.from(layer.scales),
    table: paddedTable(layer, 256),
  };
}

function packLut(layer: QuantizedLinear): LutLayout {
  const { n, k, bits, groupSize: g } = layer;
  const layoutBits: 2 | 3 | 4 = bits <= 2 ? 2 : (bits as 3 | 4);
  const G = groupsPerRow(k, g);
  const gp = roundUp(g, CHUNK);
  const cpg = gp / CHUNK;
  const cb = chunkBytes(layoutBits);
  const nq = Math.ceil(n / QUAD);
  const quadBytes = G * cpg * cb;
  const indices = new Uint8Array(nq * quadBytes);
  const scales = new Float32Array(nq * G * QUAD);
  const rowBytes = packedRowBytes(k, bits);
  const iv = new Uint8Array(8 * 16); // the 8 index vectors of one chunk

  for (let q = 0; q < nq; q++) {
    const rows = Math.min(QUAD, n - q * QUAD);
    const idx = unpackIndices(layer.packed.subarray(q * QUAD * rowBytes, (q * QUAD + rows) * rowBytes), rows, k, bits); // [rows, K]
    for (let gi = 0; gi < G; gi++) {
      const k0 = gi * g;
      const glen = Math.min(g, k - k0);
      for (let r = 0; r < rows; r++) scales[(q * G + gi) * QUAD + r] = layer.scales[(q * QUAD + r) * G + gi];
      for (let c = 0; c < cpg; c++) {
        iv.fill(0);
        for (let j = 0; j < 8; j++) {
          for (let t = 0; t < 4; t++) {
            const kk = c * CHUNK + 4 * j + t; // within the group
            if (kk >= glen) continue; // padding: index 0, met by a zero activation
            for (let r = 0; r < rows; r++) iv[j * 16 + 4 * r + t] = idx[r * k + k0 + kk];
          }
        }
        packChunk(iv, layoutBits, indices, q * quadBytes + (gi * cpg + c) * cb);
      }
    }
  }

  const table16 = paddedTable(layer, 16);
  const tb = new Uint8Array(table16.buffer);
  const planes = new Uint8Array(64);
  for (let e = 0; e < 16; e++) for (let p = 0; p < 4; p++) planes[p * 16 + e] = tb[e * 4 + p];
  return {
    kind: 'lut',
    n,
    k,
    nq,
    bits,
    layoutBits,
    groupSize: g,
    paddedGroup: gp,
    groups: G,
    quadBytes,
    indices,
    scales,
    table: table16,
    planes,
    relaxedCodebook: buildCodebook(table16, RELAXED_CODE_RANGE[0], RELAXED_CODE_RANGE[1]),
    simdCodebook: buildCodebook(table16, SIMD_CODE_RANGE[0], SIMD_CODE_RANGE[1]),
    relaxed8Codebook: buildCodebook(table16, RELAXED8_CODE_RANGE[0], RELAXED8_CODE_RANGE[1]),
  };
}

/** Bytes a scale record adds after its group's chunk: the row quad's 4 scales as f16. */
export const RECORD_SCALE_BYTES = 8;

/**
 * The records stream of a lut layout (see the header): [nq][G][chunk, 4 x f16], or null unless each
 * group is one chunk and every scale is exactly an f16 value (so the kernels' f16 -> f32 gives the
 * layout's f32 scales bit for bit; a NaN scale keeps the f32 layout).
 */
export function packF16Records(lay: LutLayout): Uint8Array | null {
  if (lay.paddedGroup !== CHUNK) return null;
  const h = new Uint16Array(lay.scales.length);
  for (let i = 0; i < h.length; i++) {
    h[i] = f32ToF16Bits(lay.scales[i]);
    if (f16BitsToF32(h[i]) !== lay.scales[i]) return null;
  }
  const cb = chunkBytes(lay.layoutBits);
  const rec = cb + RECORD_SCALE_BYTES;
  const out = new Uint8Array(lay.nq * lay.groups * rec);
  for (let i = 0; i < lay.nq * lay.groups; i++) {
    out.set(lay.indices.subarray(i * cb, (i + 1) * cb), i * rec);
    for (let r = 0; r < QUAD; r++) {
      out[i * rec + cb + 2 * r] = h[i * QUAD + r] & 0xff;
      out[i * rec + cb + 2 * r + 1] = h[i * QUAD + r] >> 8;
    }
  }
  return out;
}

/** Packs the 8 index vectors of one chunk (iv: [8][16]) into `out` at `o` (see the header). */
function packChunk(iv: Uint8Array, layoutBits: 2 | 3 | 4, out: Uint8Array, o: number): void {
  if (layoutBits === 4) {
    for (let v = 0; v < 4; v++) for (let i = 0; i < 16; i++) out[o + v * 16 + i] = iv[2 * v * 16 + i] | (iv[(2 * v + 1) * 16 + i] << 4);
    return;
  }
  for (let v = 0; v < 2; v++) {
    for (let i = 0; i < 16; i++) {
      let b = 0;
      for (let s = 0; s < 4; s++) b |= (iv[(4 * v + s) * 16 + i] & 3) << (2 * s);
      out[o + v * 16 + i] = b;
    }
  }
  if (layoutBits === 3) {
    for (let i = 0; i < 16; i++) {
      let b = 0;
      for (let j = 0; j < 8; j++) b |= ((iv[j * 16 + i] >> 2) & 1) << j;
      out[o + 32 + i] = b;
    }
  }
}

/**
 * Row `row` of a lut layer back from its layout (the inverse of packLut for one row): indices from
 * the chunks of the row's quad, times the row's scale per group, by dequantizeRow's f32 rule.
 * `indices` and `scales` are the layout's arrays (or views of them in wasm memory), or `indices` is
 * packF16Records' stream and `scales` 'records' (then `quadBytes` is the stream's bytes per row quad).
 */
export function readLutRow(
  lay: Pick<LutLayout, 'k' | 'layoutBits' | 'groupSize' | 'paddedGroup' | 'groups' | 'quadBytes' | 'table'>,
  indices: Uint8Array, scales: Float32Array | 'records', row: number, out: Float32Array, at = 0,
): void {
  const { k, layoutBits: lb, groupSize: g, groups: G, quadBytes, table } = lay;
  const records = scales === 'records'; // packF16Records: `indices` is the records stream
  const cpg = lay.paddedGroup / CHUNK;
  const cb = chunkBytes(lb);
  const groupBytes = cpg * cb + (records ? RECORD_SCALE_BYTES : 0);
  const q = row >> 2;
  const r = row & 3;
  for (let gi = 0; gi < G; gi++) {
    const go = q * quadBytes + gi * groupBytes;
    const s = records ? f16BitsToF32(indices[go + cb + 2 * r] | (indices[go + cb + 2 * r + 1] << 8)) : scales[(q * G + gi) * QUAD + r];
    const glen = Math.min(g, k - gi * g);
    for (let kk = 0; kk < glen; kk++) {
      const o = go + (kk >> 5) * cb; // the chunk holding kk
      const j = (kk & 31) >> 2; // index vector
      const i = 4 * r + (kk & 3); // byte within it
      let idx: number;
      if (lb === 4) idx = (indices[o + (j >> 1) * 16 + i] >> (4 * (j & 1))) & 15;
      else {
        idx = (indices[o + (j >> 2) * 16 + i] >> (2 * (j & 3))) & 3;
        if (lb === 3) idx |= ((indices[o + 32 + i] >> j) & 1) << 2;
      }
      out[at + gi * g + kk] = dequantValue(table[idx], s);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Activations, per matmul

/**
 * Activation tiles: M rows are cut into tiles of up to `mt` rows; a tile of t rows starting at row m0
 * takes elements [m0*Kp, (m0+t)*Kp) laid out [Kp/4][t][4], so one pointer and constant offsets reach
 * every row of the tile. Groups are padded to gp with zeros (the padding indices then contribute 0).
 */
export interface ActGeometry {
  readonly m: number;
  readonly k: number;
  readonly groupSize: number; // g (K for dense)
  readonly paddedGroup: number; // gp, a multiple of 4
  readonly groups: number; // G
  readonly tile: number; // rows per tile (the kernel's MT)
}

export function paddedK(a: ActGeometry): number {
  return a.groups * a.paddedGroup;
}

/** Element offset of (row i, padded column c) in the tiled layout. */
function tiledOffset(a: ActGeometry, kp: number, i: number, c: number): number {
  const m0 = i - (i % a.tile);
  const t = Math.min(a.tile, a.m - m0);
  return m0 * kp + ((c >> 2) * t + (i - m0)) * 4 + (c & 3);
}

/** Writes x [M, K] as padded f32 rows [M][Kp] (groups padded to gp with zeros) into `out`. */
export function padRows(a: ActGeometry, x: Float32Array, out: Float32Array): void {
  const kp = paddedK(a);
  if (kp === a.k) {
    out.set(x.subarray(0, a.m * a.k));
    return;
  }
  out.fill(0, 0, kp * a.m);
  for (let i = 0; i < a.m; i++) {
    for (let gi = 0; gi < a.groups; gi++) {
      const k0 = gi * a.groupSize;
      const len = Math.min(a.groupSize, a.k - k0);
      out.set(x.subarray(i * a.k + k0, i * a.k + k0 + len), i * kp + gi * a.paddedGroup);
    }
  }
}

/** Writes x [M, K] as f32 tiles into `out` (kp*M elements, zero padding written too); spec of act_tile_f32. */
export function tileF32(a: ActGeometry, x: Float32Array, out: Float32Array): void {
  const kp = paddedK(a);
  out.fill(0, 0, kp * a.m);
  for (let i = 0; i < a.m; i++) {
    for (let gi = 0; gi < a.groups; gi++) {
      const k0 = gi * a.groupSize;
      const len = Math.min(a.groupSize, a.k - k0);
      const c0 = gi * a.paddedGroup;
      if (a.tile === 1) {
        out.set(x.subarray(i * a.k + k0, i * a.k + k0 + len), i * kp + c0);
        continue;
      }
      for (let c = 0; c < len; c++) out[tiledOffset(a, kp, i, c0 + c)] = x[i * a.k + k0 + c];
    }
  }
}

/**
 * Quantizes x [M, K] per block of `block` padded columns (blocks tile each padded group) to integers
 * in [-qmax, qmax] with scale d = amax/qmax, written as tiles into `q` (Int8Array or Int16Array), and
 * per (block, row) the pair (d * codebookScale, f32; corr = offset * sum(q), i32) into `params`
 * laid out [tile: [blocks][t][2]]. Rounding is to nearest, ties to even (f32x4.nearest's rule).
 * The specification of codegen's act_quant8/act_quant16, which the backend runs.
 */
export function quantizeActivations(
  a: ActGeometry,
  x: Float32Array,
  block: number,
  qmax: number,
  codebookScale: number,
  offset: number,
  q: Int8Array | Int16Array,
  params: Int32Array, // reinterpreted as f32 for d
): void {
  const kp = paddedK(a);
  const nb = kp / block;
  const pf = new Float32Array(params.buffer, params.byteOffset, params.length);
  q.fill(0, 0, kp * a.m);
  const bpg = a.paddedGroup / block;
  for (let i = 0; i < a.m; i++) {
    const m0 = i - (i % a.tile);
    const t = Math.min(a.tile, a.m - m0);
    const pbase = m0 * nb * 2 + (i - m0) * 2;
    for (let b = 0; b < nb; b++) {
      const gi = Math.floor(b / bpg);
      const c0 = (b % bpg) * block; // within the padded group
      const k0 = gi * a.groupSize + c0;
      const len = Math.max(0, Math.min(block, Math.min(a.groupSize, a.k - gi * a.groupSize) - c0));
      let amax = 0;
      for (let c = 0; c < len; c++) amax = Math.max(amax, Math.abs(x[i * a.k + k0 + c]));
      const d = Math.fround(amax / qmax);
      const inv = amax > 0 ? Math.fround(qmax / amax) : 0;
      let sum = 0;
      for (let c = 0; c < len; c++) {
        const v = roundEven(Math.fround(x[i * a.k + k0 + c] * inv));
        const qi = Math.max(-qmax, Math.min(qmax, v));
        sum += qi;
        q[tiledOffset(a, kp, i, gi * a.paddedGroup + c0 + c)] = qi;
      }
      pf[pbase + b * t * 2] = Math.fround(d * codebookScale);
      params[pbase + b * t * 2 + 1] = offset * sum;
    }
  }
}

function roundEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
