// A small seeded PRNG (mulberry32): the workload's page choice and content are reproducible per seed.

export class Prng {
  #state: number

  constructor(seed: number) {
    this.#state = seed >>> 0
  }

  /** A uniformly distributed unsigned 32-bit integer. */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0
    let t = this.#state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.next() / 0x100000000) * n)
  }
}

/** FNV-1a over a string: a default seed derived from the VM id. */
export function seedFromString(s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

/**
 * Fills `words` with a pattern: a header word (never zero) and then pseudo-random words whose upper
 * half is zero, so the content is about 2:1 compressible, like real guest memory rather than noise.
 */
export function fillPattern(words: Uint32Array, header: number, seed: number): void {
  words[0] = header >>> 0 || 1
  let x = (seed ^ Math.imul(header, 0x9e3779b1)) >>> 0 || 0x2545f491
  for (let j = 1; j < words.length; j++) {
    // xorshift32: cheap enough to fill every written page in full
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    words[j] = x & 0xffff
  }
}
