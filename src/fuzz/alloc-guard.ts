// Catches a reader that sizes an allocation from a lying header: inside the fuzz worker every typed
// array and ArrayBuffer constructor is wrapped, and one larger than the case's budget (a multiple of
// the input's size) throws AllocationTooLarge instead of allocating. Installed in the worker process only.

/** Thrown instead of an allocation over budget; never a FluteError, so the harness counts it as a bug. */
export class AllocationTooLarge extends Error {
  constructor(readonly bytes: number, readonly budget: number, readonly what: string) {
    super(`${what} of ${bytes} bytes exceeds the budget of ${budget} bytes`);
    this.name = 'AllocationTooLarge';
  }
}

let budget = Infinity;
let largest = 0;
let installed = false;

const CTORS = [
  'ArrayBuffer', 'SharedArrayBuffer', 'Uint8Array', 'Int8Array', 'Uint8ClampedArray', 'Uint16Array', 'Int16Array',
  'Uint32Array', 'Int32Array', 'Float32Array', 'Float64Array', 'BigUint64Array', 'BigInt64Array',
] as const;

/** Bytes a constructor call will allocate: only a length argument allocates (a buffer or array-like copies). */
function requested(name: string, width: number, args: readonly unknown[]): number {
  const a = args[0];
  if (typeof a === 'number') return a * width;
  if (name.endsWith('Buffer')) return 0;
  // Array-likes and iterables: their length, when they state one.
  if (a !== null && typeof a === 'object' && !(a instanceof ArrayBuffer) && typeof (a as { length?: unknown }).length === 'number') {
    return (a as { length: number }).length * width;
  }
  return 0;
}

/** Wraps the global constructors once; later calls only change the budget. */
export function installAllocationGuard(): void {
  if (installed) return;
  installed = true;
  const g = globalThis as unknown as Record<string, unknown>;
  for (const name of CTORS) {
    const Ctor = g[name] as (new (...args: unknown[]) => object) & { BYTES_PER_ELEMENT?: number };
    if (typeof Ctor !== 'function') continue;
    const width = Ctor.BYTES_PER_ELEMENT ?? 1;
    g[name] = new Proxy(Ctor, {
      construct(target, args, newTarget) {
        const bytes = requested(name, width, args);
        if (bytes > budget) throw new AllocationTooLarge(bytes, budget, `new ${name}`);
        if (bytes > largest) largest = bytes;
        // A subclass (newTarget) keeps its own prototype; the proxy itself stands for the original.
        return Reflect.construct(target, args, newTarget === g[name] ? target : newTarget);
      },
    });
  }
}

/** Sets the largest single allocation allowed from now on (Infinity: no limit), and resets the high mark. */
export function setAllocationBudget(bytes: number): void {
  budget = bytes;
  largest = 0;
}

/** The largest allocation seen since the budget was last set. */
export function largestAllocation(): number {
  return largest;
}
