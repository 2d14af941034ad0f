// A small WebAssembly binary encoder: LEB128, the sections a kernel module needs (types, an imported
// shared memory, functions, exports, code) and a function-body builder with the opcodes the kernel
// generators use. It knows nothing about kernels; codegen.ts decides what to emit.

// ---------------------------------------------------------------------------------------------
// Value types and opcodes (WebAssembly core 2.0 + SIMD128 + relaxed SIMD)

export const I32 = 0x7f;
export const I64 = 0x7e;
export const F32 = 0x7d;
export const F64 = 0x7c;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof I64 | typeof F32 | typeof F64 | typeof V128;

/** Single-byte core opcodes. */
export const Op = {
  unreachable: 0x00, block: 0x02, loop: 0x03, if: 0x04, else: 0x05, end: 0x0b, br: 0x0c, br_if: 0x0d,
  return: 0x0f, call: 0x10, drop: 0x1a, select: 0x1b,
  local_get: 0x20, local_set: 0x21, local_tee: 0x22,
  i32_load: 0x28, f32_load: 0x2a, i32_load8_u: 0x2d, i32_store: 0x36, f32_store: 0x38, i32_store8: 0x3a,
  i32_const: 0x41, f32_const: 0x43,
  i32_eqz: 0x45, i32_eq: 0x46, i32_ne: 0x47, i32_lt_s: 0x48, i32_lt_u: 0x49, i32_gt_s: 0x4a, i32_gt_u: 0x4b,
  i32_le_s: 0x4c, i32_le_u: 0x4d, i32_ge_s: 0x4e, i32_ge_u: 0x4f,
  i32_add: 0x6a, i32_sub: 0x6b, i32_mul: 0x6c, i32_div_u: 0x6e, i32_rem_u: 0x70, i32_and: 0x71, i32_or: 0x72, i32_shl: 0x74,
  i32_shr_u: 0x76,
  f32_add: 0x92, f32_sub: 0x93, f32_mul: 0x94, f32_div: 0x95, f32_min: 0x96, f32_max: 0x97, f32_gt: 0x5e,
  f32_convert_i32_s: 0xb2, f32_reinterpret_i32: 0xbe,
} as const;

/** Atomic memory opcodes of the threads proposal (after the 0xfe prefix). */
export const A = {
  i32_atomic_rmw_add: 0x1e, i32_atomic_rmw_sub: 0x25,
} as const;

/** SIMD opcodes (after the 0xfd prefix, LEB128-encoded). */
export const S = {
  v128_load: 0, v128_load8_splat: 7, v128_load32_splat: 9, v128_load64_splat: 10, v128_store: 11,
  v128_const: 12, i8x16_shuffle: 13, i8x16_swizzle: 14, i8x16_splat: 15, i16x8_splat: 16, i32x4_splat: 17,
  f32x4_splat: 19, i32x4_extract_lane: 27, f32x4_extract_lane: 31,
  v128_not: 77, v128_and: 78, v128_andnot: 79, v128_or: 80, v128_xor: 81, v128_bitselect: 82, f32x4_ge: 70,
  v128_store32_lane: 90, v128_store64_lane: 91, v128_load32_zero: 92, v128_load64_zero: 93,
  i8x16_narrow_i16x8_s: 101, i8x16_shl: 107, i8x16_shr_u: 109, i8x16_add: 110, i8x16_sub: 113,
  i16x8_narrow_i32x4_s: 133, i16x8_extend_low_i8x16_s: 135, i16x8_extend_high_i8x16_s: 136,
  i16x8_shl: 139, i16x8_shr_u: 141, i16x8_add: 142, i32x4_extadd_pairwise_i16x8_s: 126,
  i32x4_shl: 171, i32x4_shr_s: 172, i32x4_shr_u: 173, i32x4_add: 174, i32x4_sub: 177, i32x4_mul: 181, i32x4_max_s: 184, i32x4_dot_i16x8_s: 186,
  f32x4_abs: 224, f32x4_neg: 225, f32x4_add: 228, f32x4_sub: 229, f32x4_mul: 230, f32x4_div: 231,
  f32x4_min: 232, f32x4_max: 233, f32x4_pmin: 234, f32x4_pmax: 235, f32x4_nearest: 106,
  i32x4_trunc_sat_f32x4_s: 248, f32x4_convert_i32x4_s: 250,
  // relaxed SIMD
  i8x16_relaxed_swizzle: 0x100, i32x4_relaxed_trunc_f32x4_s: 0x101, f32x4_relaxed_madd: 0x105, i16x8_relaxed_dot_i8x16_i7x16_s: 0x112,
  i32x4_relaxed_dot_i8x16_i7x16_add_s: 0x113,
  // half precision (fp16 proposal)
  f32x4_promote_low_f16x8: 0x14b,
} as const;

// ---------------------------------------------------------------------------------------------
// LEB128 and byte helpers

export function uleb(v: number, out: number[] = []): number[] {
  if (!Number.isInteger(v) || v < 0) throw new RangeError(`uleb: expected a non-negative integer, got ${v}`);
  do {
    let b = v % 128;
    v = Math.floor(v / 128);
    if (v > 0) b |= 0x80;
    out.push(b);
  } while (v > 0);
  return out;
}

export function sleb(v: number, out: number[] = []): number[] {
  if (!Number.isInteger(v)) throw new RangeError(`sleb: expected an integer, got ${v}`);
  for (;;) {
    const b = v & 0x7f;
    v = Math.floor(v / 128); // arithmetic shift that also works beyond 32 bits
    const done = (v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0);
    out.push(done ? b : b | 0x80);
    if (done) return out;
  }
}

function utf8(s: string): number[] {
  const b = new TextEncoder().encode(s);
  return [...uleb(b.length), ...b];
}

function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

function vec(items: number[][]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

// ---------------------------------------------------------------------------------------------
// Function bodies

/**
 * Builds one function body. Methods append instructions; structured control (block/loop/if) takes
 * a callback for its body so nesting in the generator mirrors nesting in the wasm.
 */
export class FuncBuilder {
  readonly code: number[] = [];
  private readonly localTypes: ValType[] = [];

  constructor(
    readonly name: string,
    readonly params: readonly ValType[],
    readonly results: readonly ValType[] = [],
  ) {}

  /** A new local of type `t`; returns its index (params come first). */
  local(t: ValType): number {
    this.localTypes.push(t);
    return this.params.length + this.localTypes.length - 1;
  }

  locals(t: ValType, n: number): number[] {
    return Array.from({ length: n }, () => this.local(t));
  }

  op(...bytes: number[]): this {
    for (const b of bytes) this.code.push(b);
    return this;
  }

  // --- constants and locals
  i32(v: number): this {
    this.code.push(Op.i32_const);
    sleb(v | 0, this.code);
    return this;
  }
  f32(v: number): this {
    this.code.push(Op.f32_const);
    const b = new Uint8Array(new Float32Array([v]).buffer);
    for (const x of b) this.code.push(x);
    return this;
  }
  get(i: number): this {
    this.code.push(Op.local_get);
    uleb(i, this.code);
    return this;
  }
  set(i: number): this {
    this.code.push(Op.local_set);
    uleb(i, this.code);
    return this;
  }
  tee(i: number): this {
    this.code.push(Op.local_tee);
    uleb(i, this.code);
    return this;
  }

  // --- memory (align is log2 bytes)
  mem(opcode: number, align: number, offset: number): this {
    this.code.push(opcode);
    uleb(align, this.code);
    uleb(offset, this.code);
    return this;
  }
  i32Load(offset = 0): this {
    return this.mem(Op.i32_load, 2, offset);
  }
  f32Load(offset = 0): this {
    return this.mem(Op.f32_load, 2, offset);
  }

  // --- threads proposal: atomic memory operations (0xFE prefix; align must be the natural one)
  atomic(opcode: number, align: number, offset: number): this {
    this.code.push(0xfe);
    uleb(opcode, this.code);
    uleb(align, this.code);
    uleb(offset, this.code);
    return this;
  }

  // --- SIMD
  simd(opcode: number): this {
    this.code.push(0xfd);
    uleb(opcode, this.code);
    return this;
  }
  simdMem(opcode: number, align: number, offset: number): this {
    this.simd(opcode);
    uleb(align, this.code);
    uleb(offset, this.code);
    return this;
  }
  v128Load(offset = 0): this {
    return this.simdMem(S.v128_load, 4, offset);
  }
  v128Store(offset = 0): this {
    return this.simdMem(S.v128_store, 4, offset);
  }
  v128Const(bytes: ArrayLike<number>): this {
    if (bytes.length !== 16) throw new RangeError('v128.const needs 16 bytes');
    this.simd(S.v128_const);
    for (let i = 0; i < 16; i++) this.code.push(bytes[i] & 0xff);
    return this;
  }
  /** v128.const with every byte equal to `b`. */
  splatConst8(b: number): this {
    return this.v128Const(new Array(16).fill(b));
  }
  zero(): this {
    return this.splatConst8(0);
  }
  shuffle(lanes: readonly number[]): this {
    if (lanes.length !== 16 || lanes.some((l) => l < 0 || l > 31)) throw new RangeError(`bad shuffle ${lanes.join(',')}`);
    this.simd(S.i8x16_shuffle);
    for (const l of lanes) this.code.push(l);
    return this;
  }
  /** store*_lane / load*_lane: memarg then lane index. */
  simdMemLane(opcode: number, align: number, offset: number, lane: number): this {
    this.simdMem(opcode, align, offset);
    this.code.push(lane);
    return this;
  }
  lane(opcode: number, lane: number): this {
    this.simd(opcode);
    this.code.push(lane);
    return this;
  }

  // --- control
  block(body: () => void): this {
    this.code.push(Op.block, 0x40);
    body();
    this.code.push(Op.end);
    return this;
  }
  loop(body: () => void): this {
    this.code.push(Op.loop, 0x40);
    body();
    this.code.push(Op.end);
    return this;
  }
  /** Consumes an i32 condition. */
  if(then: () => void, otherwise?: () => void): this {
    this.code.push(Op.if, 0x40);
    then();
    if (otherwise) {
      this.code.push(Op.else);
      otherwise();
    }
    this.code.push(Op.end);
    return this;
  }
  br(depth: number): this {
    this.code.push(Op.br);
    uleb(depth, this.code);
    return this;
  }
  brIf(depth: number): this {
    this.code.push(Op.br_if);
    uleb(depth, this.code);
    return this;
  }
  call(funcIndex: number): this {
    this.code.push(Op.call);
    uleb(funcIndex, this.code);
    return this;
  }

  /**
   * `for (i = start; i < end; i += step) body()`, with i32 locals; `end` is re-read every pass.
   * Skips the body entirely when start >= end (signed compare).
   */
  forLoop(i: number, start: () => void, end: () => void, step: number, body: () => void): this {
    start();
    this.set(i);
    return this.block(() => {
      this.get(i);
      end();
      this.op(Op.i32_ge_s).brIf(0);
      this.loop(() => {
        body();
        this.get(i).i32(step).op(Op.i32_add).tee(i);
        end();
        this.op(Op.i32_lt_s).brIf(0);
      });
    });
  }

  /** Runs `body` `count` times (count read from an i32 local, consumed); nothing when count <= 0. */
  repeat(counter: number, body: () => void): this {
    return this.block(() => {
      this.get(counter).i32(1).op(Op.i32_lt_s).brIf(0);
      this.loop(() => {
        body();
        this.get(counter).i32(1).op(Op.i32_sub).tee(counter).brIf(0);
      });
    });
  }

  /** The encoded body: local declarations (run-length by type) then the code. */
  encode(): number[] {
    const groups: number[][] = [];
    for (let i = 0; i < this.localTypes.length; ) {
      let j = i;
      while (j < this.localTypes.length && this.localTypes[j] === this.localTypes[i]) j++;
      groups.push([...uleb(j - i), this.localTypes[i]]);
      i = j;
    }
    const body = [...vec(groups), ...this.code, Op.end];
    return [...uleb(body.length), ...body];
  }
}

// ---------------------------------------------------------------------------------------------
// Modules

export interface MemoryImport {
  readonly module: string;
  readonly name: string;
  readonly initialPages: number;
  readonly maximumPages: number;
  readonly shared: boolean;
}

/** A module of functions over one imported memory; exports the functions whose `exported` flag is set. */
export class ModuleBuilder {
  private readonly funcs: { f: FuncBuilder; exported: boolean }[] = [];

  constructor(private readonly memory: MemoryImport) {}

  /** Adds a function and returns its index (no imported functions, so the index is its position). */
  add(f: FuncBuilder, exported = true): number {
    this.funcs.push({ f, exported });
    return this.funcs.length - 1;
  }

  /** Index a function will get if it is the next one added (for forward calls). */
  get nextIndex(): number {
    return this.funcs.length;
  }

  encode(): Uint8Array<ArrayBuffer> {
    const sigKey = (f: FuncBuilder) => `${f.params.join(',')}->${f.results.join(',')}`;
    const sigs: string[] = [];
    const sigBytes: number[][] = [];
    const typeOf: number[] = [];
    for (const { f } of this.funcs) {
      const key = sigKey(f);
      let idx = sigs.indexOf(key);
      if (idx < 0) {
        idx = sigs.length;
        sigs.push(key);
        sigBytes.push([0x60, ...uleb(f.params.length), ...f.params, ...uleb(f.results.length), ...f.results]);
      }
      typeOf.push(idx);
    }
    const m = this.memory;
    const limits = m.shared ? [0x03, ...uleb(m.initialPages), ...uleb(m.maximumPages)] : [0x01, ...uleb(m.initialPages), ...uleb(m.maximumPages)];
    const imports = vec([[...utf8(m.module), ...utf8(m.name), 0x02, ...limits]]);
    const exportsList = this.funcs.flatMap(({ f, exported }, i) => (exported ? [[...utf8(f.name), 0x00, ...uleb(i)]] : []));
    const bytes = [
      0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
      ...section(1, vec(sigBytes)),
      ...section(2, imports),
      ...section(3, vec(typeOf.map((t) => uleb(t)))),
      ...section(7, vec(exportsList)),
      ...section(10, vec(this.funcs.map(({ f }) => f.encode()))),
    ];
    return Uint8Array.from(bytes);
  }
}
