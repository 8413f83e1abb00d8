// A fixed-size bitmap backed by a Uint32Array: one bit per page or block.
// `count()` is O(1) (kept up to date by set/clear); `indices()` skips empty words.

import type { DirtyBitmap } from './types.js'

/** Number of set bits in a 32-bit word. */
function popcount32(w: number): number {
  let v = w - ((w >>> 1) & 0x55555555)
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333)
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24
}

export class Bitmap implements DirtyBitmap {
  readonly size: number
  readonly #words: Uint32Array
  #count = 0

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`invalid bitmap size ${size}`)
    this.size = size
    this.#words = new Uint32Array(Math.ceil(size / 32))
  }

  /** A bitmap with the given bits set. */
  static fromIndices(size: number, indices: Iterable<number>): Bitmap {
    const b = new Bitmap(size)
    for (const i of indices) b.set(i)
    return b
  }

  /**
   * Reads the format written by `toBytes()`: bit i is bit (i % 8) of byte (i >> 3), independent of the
   * host's byte order. Bits past `size` must be zero.
   */
  static fromBytes(bytes: Uint8Array, size: number): Bitmap {
    const b = new Bitmap(size)
    const need = Math.ceil(size / 8)
    if (bytes.length !== need) {
      throw new RangeError(`bitmap of ${size} bits needs ${need} bytes, got ${bytes.length}`)
    }
    const words = b.#words
    for (let byte = 0; byte < need; byte++) {
      const v = bytes[byte]!
      if (v !== 0) words[byte >>> 2]! |= v << ((byte & 3) * 8)
    }
    const tail = size % 32
    if (tail !== 0 && words.length > 0 && words[words.length - 1]! >>> tail !== 0) {
      throw new RangeError('bitmap bytes have bits set past its size')
    }
    b.#recount()
    return b
  }

  /** ceil(size / 8) bytes, see `fromBytes`. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(Math.ceil(this.size / 8))
    const words = this.#words
    for (let w = 0; w < words.length; w++) {
      const v = words[w]!
      if (v === 0) continue
      const base = w * 4
      for (let k = 0; k < 4 && base + k < out.length; k++) out[base + k] = (v >>> (k * 8)) & 0xff
    }
    return out
  }

  get(i: number): boolean {
    this.#check(i)
    return (this.#words[i >>> 5]! & (1 << (i & 31))) !== 0
  }

  set(i: number): void {
    this.#check(i)
    const w = i >>> 5
    const bit = 1 << (i & 31)
    const old = this.#words[w]!
    if ((old & bit) === 0) {
      this.#words[w] = old | bit
      this.#count++
    }
  }

  clear(i: number): void {
    this.#check(i)
    const w = i >>> 5
    const bit = 1 << (i & 31)
    const old = this.#words[w]!
    if ((old & bit) !== 0) {
      this.#words[w] = old & ~bit
      this.#count--
    }
  }

  /** Sets every bit. */
  fill(): void {
    this.#words.fill(0xffffffff)
    const tail = this.size % 32
    if (tail !== 0) this.#words[this.#words.length - 1] = (2 ** tail - 1) >>> 0
    this.#count = this.size
  }

  clearAll(): void {
    this.#words.fill(0)
    this.#count = 0
  }

  count(): number {
    return this.#count
  }

  /** Adds every bit of `other` (same size) to this bitmap. */
  or(other: Bitmap): this {
    if (other.size !== this.size) throw new RangeError(`bitmap sizes differ: ${this.size} vs ${other.size}`)
    const a = this.#words
    const b = other.#words
    for (let w = 0; w < a.length; w++) a[w]! |= b[w]!
    this.#recount()
    return this
  }

  clone(): Bitmap {
    const c = new Bitmap(this.size)
    c.#words.set(this.#words)
    c.#count = this.#count
    return c
  }

  *indices(): Generator<number> {
    const words = this.#words
    for (let w = 0; w < words.length; w++) {
      let v = words[w]!
      while (v !== 0) {
        const low = v & -v
        yield w * 32 + 31 - Math.clz32(low)
        v = (v ^ low) >>> 0
      }
    }
  }

  #check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.size) {
      throw new RangeError(`bit ${i} out of range 0..${this.size - 1}`)
    }
  }

  #recount(): void {
    let n = 0
    for (const v of this.#words) if (v !== 0) n += popcount32(v)
    this.#count = n
  }
}
