// The one seeded generator behind reproducible randomness outside sampling (NFL's sequence order, the
// fuzzer, the kernel sweep, test data): mulberry32, tiny and good enough for shuffles and test values.
// Sampling has its own generator (model/sampler.ts createRng), whose sequences tests pin.

/** Uniform numbers in [0, 1) from a 32-bit seed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
