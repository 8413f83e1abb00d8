// Content-hash dedup within one data stream. Both ends keep the same table, updated by the same frame
// runs in the same order (a page or block always travels on the same stream): DATA runs with hashes
// register their units, REF runs copy a registered unit's content and register the target, and DATA
// without hashes or ZERO forget the target. So a REF always names content the destination holds.
import { hash } from 'node:crypto'
import { HASH_BYTES, MAX_DEDUP_ENTRIES } from './constants.js'

/** The first HASH_BYTES of sha256(data): 128 bits, and the final digest catches any mistake anyway. */
export function contentHash(data: Uint8Array): Uint8Array {
  return hash('sha256', data, 'buffer').subarray(0, HASH_BYTES)
}

export function hashKey(h: Uint8Array): string {
  return Buffer.from(h.buffer, h.byteOffset, h.byteLength).toString('latin1')
}

export class DedupTable {
  readonly #byHash = new Map<string, number>()
  readonly #byUnit = new Map<number, string>()
  readonly #max: number

  constructor(max = MAX_DEDUP_ENTRIES) {
    this.#max = max
  }

  get size(): number {
    return this.#byUnit.size
  }

  /** True if `unit` may be registered (the table is not full, or it already holds `unit`). */
  canRegister(unit: number): boolean {
    return this.#byUnit.size < this.#max || this.#byUnit.has(unit)
  }

  /** The unit holding this content, if any. */
  lookup(key: string): number | undefined {
    return this.#byHash.get(key)
  }

  /** `unit` now holds content `key`; returns false (and changes nothing) if the table is full. */
  register(unit: number, key: string): boolean {
    if (!this.canRegister(unit)) return false
    this.forget(unit)
    this.#byUnit.set(unit, key)
    this.#byHash.set(key, unit)
    return true
  }

  /** `unit` was overwritten with content the table does not know. */
  forget(unit: number): void {
    const old = this.#byUnit.get(unit)
    if (old === undefined) return
    this.#byUnit.delete(unit)
    if (this.#byHash.get(old) === unit) this.#byHash.delete(old)
  }
}
