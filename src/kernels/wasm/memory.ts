// The backend's one WebAssembly.Memory (shared when threads are possible) and a first-fit allocator
// over it: prepared layers and per-matmul scratch live here; the memory grows as layers are prepared.
// wasm32, so everything must fit in 4 GiB; alloc() throws E_BACKEND with the numbers when it cannot.

import { FluteError } from '../../errors.js';

export const PAGE = 65536;
const ALIGN = 64; // cache line: v128 loads never straddle one at the start of a buffer

export class WasmHeap {
  private u8v: Uint8Array;
  private readonly free: { start: number; size: number }[] = []; // sorted by start, coalesced
  private readonly used = new Map<number, number>(); // ptr -> size
  private top: number; // end of the highest allocation

  private constructor(
    readonly memory: WebAssembly.Memory,
    readonly maxBytes: number,
    reserved: number,
  ) {
    this.top = reserved;
    this.u8v = new Uint8Array(memory.buffer);
  }

  /**
   * Creates the memory. A shared memory needs a declared maximum and reserves address space for it, so
   * try 4 GiB first and halve on failure (32-bit hosts, small browsers); `maxMiB` caps the attempt.
   */
  static create(opts: { shared: boolean; initialMiB: number; maxMiB: number; reservedBytes: number }): WasmHeap {
    const initial = Math.max(1, Math.ceil((opts.initialMiB * 1024 * 1024) / PAGE));
    let lastErr: unknown = null;
    for (let maxPages = Math.min(65536, Math.floor((opts.maxMiB * 1024 * 1024) / PAGE)); maxPages >= Math.max(initial, 256); maxPages >>= 1) {
      try {
        const memory = new WebAssembly.Memory({ initial, maximum: maxPages, shared: opts.shared } as WebAssembly.MemoryDescriptor);
        return new WasmHeap(memory, maxPages * PAGE, opts.reservedBytes);
      } catch (e) {
        lastErr = e;
      }
    }
    throw new FluteError('E_BACKEND', `wasm: could not create a ${opts.shared ? 'shared ' : ''}WebAssembly.Memory of ${opts.initialMiB} MiB: ${(lastErr as Error)?.message ?? lastErr}`);
  }

  /** Views over the current buffer (recreated after growth). */
  get u8(): Uint8Array {
    if (this.u8v.byteLength !== this.memory.buffer.byteLength) this.u8v = new Uint8Array(this.memory.buffer);
    return this.u8v;
  }
  f32(ptr: number, length: number): Float32Array {
    return new Float32Array(this.u8.buffer, ptr, length);
  }
  i32(ptr: number, length: number): Int32Array {
    return new Int32Array(this.u8.buffer, ptr, length);
  }
  i8(ptr: number, length: number): Int8Array {
    return new Int8Array(this.u8.buffer, ptr, length);
  }
  i16(ptr: number, length: number): Int16Array {
    return new Int16Array(this.u8.buffer, ptr, length);
  }

  get size(): number {
    return this.memory.buffer.byteLength;
  }
  get allocatedBytes(): number {
    let s = 0;
    for (const v of this.used.values()) s += v;
    return s;
  }

  /** Allocates `bytes` (64-byte aligned, contents undefined); `what` names the tensor in errors. */
  alloc(bytes: number, what: string): number {
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    for (let i = 0; i < this.free.length; i++) {
      const b = this.free[i];
      if (b.size < size) continue;
      const ptr = b.start;
      if (b.size === size) this.free.splice(i, 1);
      else {
        b.start += size;
        b.size -= size;
      }
      this.used.set(ptr, size);
      return ptr;
    }
    const ptr = Math.ceil(this.top / ALIGN) * ALIGN;
    const end = ptr + size;
    if (end > this.maxBytes) {
      throw new FluteError(
        'E_BACKEND',
        `wasm: ${what} needs ${(size / 2 ** 20).toFixed(1)} MiB but the backend's memory is capped at ${(this.maxBytes / 2 ** 20).toFixed(0)} MiB ` +
          `(${(this.allocatedBytes / 2 ** 20).toFixed(1)} MiB in use; wasm32 allows 4096 MiB at most): release layers or use a smaller model`,
      );
    }
    if (end > this.size) {
      // grow geometrically so preparing a model layer by layer does not grow once per layer
      const want = Math.min(this.maxBytes, Math.max(end, this.size + (this.size >> 2)));
      try {
        this.memory.grow(Math.ceil((want - this.size) / PAGE));
      } catch (e) {
        throw new FluteError('E_BACKEND', `wasm: could not grow memory to ${(want / 2 ** 20).toFixed(0)} MiB for ${what}: ${(e as Error).message}`, { cause: e });
      }
    }
    this.top = end;
    this.used.set(ptr, size);
    return ptr;
  }

  release(ptr: number): void {
    const size = this.used.get(ptr);
    if (size === undefined) return;
    this.used.delete(ptr);
    if (ptr + size === this.top) {
      this.top = ptr;
      // the block below may now be free space at the top
      const last = this.free[this.free.length - 1];
      if (last && last.start + last.size === this.top) {
        this.top = last.start;
        this.free.pop();
      }
      return;
    }
    let i = 0;
    while (i < this.free.length && this.free[i].start < ptr) i++;
    this.free.splice(i, 0, { start: ptr, size });
    // coalesce with neighbours
    if (i + 1 < this.free.length && ptr + size === this.free[i + 1].start) {
      this.free[i].size += this.free[i + 1].size;
      this.free.splice(i + 1, 1);
    }
    if (i > 0 && this.free[i - 1].start + this.free[i - 1].size === ptr) {
      this.free[i - 1].size += this.free[i].size;
      this.free.splice(i, 1);
    }
  }
}
