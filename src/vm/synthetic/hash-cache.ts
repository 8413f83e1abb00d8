// Per-unit (page or block) content hashes kept up to date as units are written, so a digest of a big VM
// costs only the units written since the last look plus a small tree on top, not a pass over every byte.
// That is what keeps a migration's verification out of its downtime: pages are hashed as they are sent
// (source) and written (destination), and at the pause only the last round's pages are new.
//
// Digest format (the VmInstance.digest() contract, see types.ts): units in groups of GROUP units;
//   unitHash(i)  = sha256(unit i bytes)                      (non-zero units only)
//   groupHash(g) = sha256( for each non-zero unit i of g, ascending: i u32 BE || unitHash(i) )
//   digest       = sha256( for each group g holding a non-zero unit, ascending: g u32 BE || groupHash(g) )
// A pure function of the content: a plain copy of the same bytes has the same digest.
import { hash } from 'node:crypto'

export const HASH_LEN = 32
/** Units per group (2^10): a dirty page costs a rehash of at most 1024 x 36 bytes of its group. */
export const GROUP_SHIFT = 10
const GROUP = 1 << GROUP_SHIFT
const RECORD = 4 + HASH_LEN

export function sha256(data: Uint8Array): Buffer {
  return hash('sha256', data, 'buffer') as unknown as Buffer
}

export class UnitHashCache {
  readonly count: number
  /**
   * One group record per unit, `i u32 BE || unitHash(i)` (the layout groupHash hashes), the index written
   * with the unit's first non-zero hash (only those records are ever hashed; writing all indices up front
   * cost ~30 ms for a 1 GiB VM, in every migration's setup): a group's input is then copied in runs of non-zero units (or hashed in place when all are),
   * not built unit by unit — at the pause of a migration every group the last round touched is rehashed.
   */
  readonly #records: Uint8Array
  readonly #view: DataView
  /** Bit set: the cached value of the unit is stale (written since it was hashed). */
  readonly #stale: Uint32Array
  #staleCount = 0
  /** Bit set: the unit held non-zero bytes when hashed. */
  readonly #nonZero: Uint32Array
  readonly #groupHashes: Uint8Array
  readonly #groupFresh: Uint8Array
  readonly #groupNonEmpty: Uint8Array
  /** Bumped when a unit is invalidated: lets an async reader know its bytes may be outdated. */
  readonly #gen: Uint32Array

  constructor(count: number) {
    this.count = count
    this.#records = new Uint8Array(count * RECORD)
    this.#view = new DataView(this.#records.buffer)
    this.#stale = new Uint32Array(Math.ceil(count / 32))
    this.#nonZero = new Uint32Array(Math.ceil(count / 32))
    const groups = Math.ceil(count / GROUP)
    this.#groupHashes = new Uint8Array(groups * HASH_LEN)
    this.#groupFresh = new Uint8Array(groups)
    this.#groupNonEmpty = new Uint8Array(groups)
    this.#gen = new Uint32Array(count)
  }

  get staleCount(): number {
    return this.#staleCount
  }

  isStale(i: number): boolean {
    return (this.#stale[i >>> 5]! & (1 << (i & 31))) !== 0
  }

  generation(i: number): number {
    return this.#gen[i]!
  }

  /** Unit `i` was (or is about to be) written with bytes not hashed yet. */
  invalidate(i: number): void {
    const w = i >>> 5
    const bit = 1 << (i & 31)
    this.#gen[i] = (this.#gen[i]! + 1) >>> 0
    this.#groupFresh[i >>> GROUP_SHIFT] = 0
    if ((this.#stale[w]! & bit) === 0) {
      this.#stale[w]! |= bit
      this.#staleCount++
    }
  }

  /** Unit `i` now holds bytes whose sha256 is `h` (null: all zero). */
  set(i: number, h: Uint8Array | null): void {
    const w = i >>> 5
    const bit = 1 << (i & 31)
    if ((this.#stale[w]! & bit) !== 0) {
      this.#stale[w]! &= ~bit
      this.#staleCount--
    }
    if (h) {
      this.#view.setUint32(i * RECORD, i)
      this.#records.set(h.subarray(0, HASH_LEN), i * RECORD + 4)
      this.#nonZero[w]! |= bit
    } else {
      this.#nonZero[w]! &= ~bit
    }
    this.#groupFresh[i >>> GROUP_SHIFT] = 0
  }

  /** The cached hash of a fresh unit (a copy; null for a zero unit). Throws if stale. */
  get(i: number): Uint8Array | null {
    if (this.isStale(i)) throw new Error(`unit ${i} has no fresh hash`)
    if ((this.#nonZero[i >>> 5]! & (1 << (i & 31))) === 0) return null
    return Buffer.from(this.#records.subarray(i * RECORD + 4, (i + 1) * RECORD))
  }

  /** Indices of the units that were non-zero when hashed, ascending. */
  nonZeroIndices(): number[] {
    const out: number[] = []
    const words = this.#nonZero
    for (let w = 0; w < words.length; w++) {
      let v = words[w]!
      while (v !== 0) {
        const low = v & -v
        out.push(w * 32 + 31 - Math.clz32(low))
        v = (v ^ low) >>> 0
      }
    }
    return out
  }

  /** Indices of the stale units, ascending. */
  *staleIndices(): Generator<number> {
    const words = this.#stale
    for (let w = 0; w < words.length; w++) {
      let v = words[w]!
      while (v !== 0) {
        const low = v & -v
        yield w * 32 + 31 - Math.clz32(low)
        v = (v ^ low) >>> 0
      }
    }
  }

  /**
   * Hashes now every group whose units are all fresh but whose group hash is not (cheap when little
   * changed): a later `digest()` then rehashes only groups written after this call. A migration calls
   * it while pages arrive or between rounds, so its check at the pause does not build the whole tree.
   * Returns the number of groups hashed.
   */
  warm(): number {
    let n = 0
    const wordsPerGroup = GROUP >>> 5
    for (let g = 0; g < this.#groupFresh.length; g++) {
      if (this.#groupFresh[g]) continue
      let stale = false
      const end = Math.min(this.#stale.length, (g + 1) * wordsPerGroup)
      for (let w = g * wordsPerGroup; w < end && !stale; w++) stale = this.#stale[w] !== 0
      if (stale) continue
      this.#hashGroup(g)
      n++
    }
    return n
  }

  /** The digest (hex) of the content; every unit must be fresh (refresh the stale ones first). */
  digest(): string {
    if (this.#staleCount > 0) throw new Error(`${this.#staleCount} units have stale hashes`)
    const groups = this.#groupFresh.length
    const top = Buffer.allocUnsafe(groups * RECORD)
    let used = 0
    for (let g = 0; g < groups; g++) {
      if (!this.#groupFresh[g]) this.#hashGroup(g)
      if (!this.#groupNonEmpty[g]) continue
      top.writeUInt32BE(g, used)
      top.set(this.#groupHashes.subarray(g * HASH_LEN, (g + 1) * HASH_LEN), used + 4)
      used += RECORD
    }
    return sha256(top.subarray(0, used)).toString('hex')
  }

  #hashGroup(g: number): void {
    const first = g * GROUP
    const end = Math.min(this.count, first + GROUP)
    const records = this.#records
    // Runs of consecutive non-zero units, each copied in one go (GROUP is a multiple of 32: whole words)
    let buf: Uint8Array | undefined
    let used = 0
    let runStart = -1
    let all = true
    const flush = (runEnd: number) => {
      buf ??= Buffer.allocUnsafe((end - first) * RECORD)
      buf.set(records.subarray(runStart * RECORD, runEnd * RECORD), used)
      used += (runEnd - runStart) * RECORD
      runStart = -1
    }
    for (let w = first >>> 5; w < Math.ceil(end / 32); w++) {
      const v = this.#nonZero[w]!
      const base = w * 32
      if (v === 0xffffffff && base + 32 <= end) {
        if (runStart < 0) runStart = base
        continue
      }
      all = false
      for (let b = 0; b < 32 && base + b < end; b++) {
        const on = (v & (1 << b)) !== 0
        if (on && runStart < 0) runStart = base + b
        else if (!on && runStart >= 0) flush(base + b)
      }
    }
    let input: Uint8Array
    if (all) {
      // Every unit of the group is non-zero: its records are the input as they lie
      input = records.subarray(first * RECORD, end * RECORD)
      used = input.length
    } else {
      if (runStart >= 0) flush(end)
      input = buf ? buf.subarray(0, used) : new Uint8Array(0)
    }
    this.#groupNonEmpty[g] = used > 0 ? 1 : 0
    if (used > 0) this.#groupHashes.set(sha256(input), g * HASH_LEN)
    this.#groupFresh[g] = 1
  }
}
