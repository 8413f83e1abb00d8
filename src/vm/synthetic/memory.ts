// Guest memory of a synthetic VM: one Buffer of the VM's size, 4 KiB pages, optional dirty tracking.

import { constants as bufferConstants } from 'node:buffer'
import { Bitmap } from '../bitmap.js'
import { PAGE_SIZE, type RetainedMemory, VmError, type VmMemory } from '../types.js'
import { sha256, UnitHashCache } from './hash-cache.js'

const WORDS_PER_PAGE = PAGE_SIZE / 4
/** Pages checked with one compare when scanning for zero pages: whole zero regions cost one call. */
const SCAN_PAGES = 64
const ZERO_RUN = Buffer.alloc(SCAN_PAGES * PAGE_SIZE)

export class SyntheticMemory implements VmMemory {
  readonly pageSize = PAGE_SIZE
  readonly pageCount: number
  #buf: Buffer | null
  #words: Uint32Array | null
  #dirty: Bitmap | null = null
  /**
   * Pages ever written: the others are known to be zero without reading them (reading untouched
   * memory would fault in every page of a freshly allocated buffer).
   */
  #touched: Bitmap
  /** sha256 of each page, refreshed as pages are written (see hash-cache.ts). */
  readonly #hashes: UnitHashCache

  /**
   * Zeroed memory of `bytes` (a multiple of the page size), or `buf` read back from a suspend image
   * with `touched` its non-zero pages (every page if not given).
   */
  constructor(bytes: number, buf?: Buffer, touched?: Bitmap) {
    if (!Number.isInteger(bytes) || bytes <= 0 || bytes % PAGE_SIZE !== 0) {
      throw new VmError('VM_OUT_OF_RANGE', `memory must be a positive multiple of ${PAGE_SIZE} bytes`)
    }
    if (bytes > bufferConstants.MAX_LENGTH) {
      throw new VmError('VM_OUT_OF_RANGE', `memory of ${bytes} bytes exceeds this Node's buffer limit`)
    }
    if (buf && buf.length !== bytes) throw new VmError('VM_IO', `memory buffer is ${buf.length} bytes`)
    this.pageCount = bytes / PAGE_SIZE
    this.#buf = buf ?? Buffer.alloc(bytes)
    // A large Buffer.alloc is never pooled, so its offset is 0 and word-aligned
    this.#words = new Uint32Array(this.#buf.buffer, this.#buf.byteOffset, bytes / 4)
    this.#touched = touched?.clone() ?? new Bitmap(this.pageCount)
    if (buf && !touched) this.#touched.fill()
    if (this.#touched.size !== this.pageCount) throw new VmError('VM_IO', 'page map does not fit memory')
    // Untouched pages are zero, and a zero unit is what a new cache holds: only touched ones are unknown
    this.#hashes = new UnitHashCache(this.pageCount)
    for (const i of this.#touched.indices()) this.#hashes.invalidate(i)
  }

  get bytes(): number {
    return this.pageCount * PAGE_SIZE
  }

  /** False once the memory is freed (the VM was suspended or stopped). */
  get present(): boolean {
    return this.#buf !== null
  }

  readPage(i: number): Uint8Array {
    const buf = this.#live()
    this.#check(i)
    // allocUnsafeSlow: the copy owns its ArrayBuffer (no pool), so `.buffer` is safe to hand on
    const out = Buffer.allocUnsafeSlow(PAGE_SIZE)
    buf.copy(out, 0, i * PAGE_SIZE, (i + 1) * PAGE_SIZE)
    return out
  }

  readPageInto(i: number, target: Uint8Array, offset: number): void {
    const buf = this.#live()
    this.#check(i)
    if (offset < 0 || offset + PAGE_SIZE > target.length) {
      throw new VmError('VM_OUT_OF_RANGE', `no room for a page at ${offset} in ${target.length} bytes`)
    }
    target.set(buf.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), offset)
  }

  writePage(i: number, data: Uint8Array): void {
    const buf = this.#live()
    this.#check(i)
    if (data.length !== PAGE_SIZE) {
      throw new VmError('VM_OUT_OF_RANGE', `page data is ${data.length} bytes, expected ${PAGE_SIZE}`)
    }
    buf.set(data, i * PAGE_SIZE)
    this.#touched.set(i)
    // Hashed now, while the bytes are in cache: the digest at the end of a migration then costs nothing
    this.#hashes.set(i, isAllZero(data) ? null : sha256(data))
  }

  pageHash(i: number): Uint8Array | null {
    this.#live()
    this.#check(i)
    this.#refresh(i)
    return this.#hashes.get(i)
  }

  /** The memory digest (hex, format in hash-cache.ts); rehashes only pages written since last time. */
  digest(): string {
    this.#live()
    for (const i of this.#hashes.staleIndices()) this.#refresh(i)
    return this.#hashes.digest()
  }

  /** Hashes the digest tree's groups of pages hashed since (see UnitHashCache.warm). */
  warmDigest(): void {
    if (this.#buf) this.#hashes.warm()
  }

  maybeNonZeroPages(): Iterable<number> {
    this.#live()
    return this.#touched.clone().indices()
  }

  isZeroPage(i: number): boolean {
    this.#live()
    this.#check(i)
    return this.#isZero(i)
  }

  startDirtyTracking(): void {
    this.#dirty ??= new Bitmap(this.pageCount)
  }

  takeDirtyPages(): Bitmap {
    const d = this.#dirty
    if (!d) throw new VmError('VM_INVALID_STATE', 'dirty page tracking is not started')
    this.#dirty = new Bitmap(this.pageCount)
    return d
  }

  isDirty(i: number): boolean {
    return this.#dirty?.get(i) ?? false
  }

  stopDirtyTracking(): void {
    this.#dirty = null
  }

  retain(): RetainedMemory {
    const buf = this.#live()
    for (const i of this.#hashes.staleIndices()) this.#refresh(i)
    const hashes = this.#hashes
    const pageCount = this.pageCount
    return {
      pageSize: PAGE_SIZE,
      pageCount,
      nonZeroPages: () => hashes.nonZeroIndices(),
      pageHash: (i) => hashes.get(i),
      page: (i) => {
        if (!Number.isInteger(i) || i < 0 || i >= pageCount) throw new RangeError(`page ${i} out of range`)
        return buf.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)
      },
    }
  }

  // --- for the driver and the workload (not part of VmMemory) ---

  /** The pages that are not all zeroes. */
  nonZeroPages(): Bitmap {
    const buf = this.#live()
    const b = new Bitmap(this.pageCount)
    let runStart = -1
    let runEnd = -1
    // Touched pages in runs: a whole zero run costs one compare
    const flush = () => {
      const off = runStart * PAGE_SIZE
      const len = (runEnd - runStart) * PAGE_SIZE
      if (buf.compare(ZERO_RUN, 0, len, off, off + len) === 0) return
      for (let i = runStart; i < runEnd; i++) if (!this.#isZero(i)) b.set(i)
    }
    for (const i of this.#touched.indices()) {
      if (i === runEnd && runEnd - runStart < SCAN_PAGES) {
        runEnd++
        continue
      }
      if (runStart >= 0) flush()
      runStart = i
      runEnd = i + 1
    }
    if (runStart >= 0) flush()
    return b
  }

  /** The whole memory (no copy); the caller must not keep it past `free()`. */
  raw(): Buffer {
    return this.#live()
  }

  /** A writable view of page `i` as 32-bit words, for the workload (the page counts as written). */
  pageWords(i: number): Uint32Array {
    this.#live()
    this.#touched.set(i)
    this.#hashes.invalidate(i)
    return this.#words!.subarray(i * WORDS_PER_PAGE, (i + 1) * WORDS_PER_PAGE)
  }

  /** Records a guest write to page `i` (when tracking). */
  markDirty(i: number): void {
    this.#dirty?.set(i)
  }

  /** Releases the memory; every later access throws VM_INVALID_STATE. */
  free(): void {
    this.#buf = null
    this.#words = null
    this.#dirty = null
  }

  #refresh(i: number): void {
    if (!this.#hashes.isStale(i)) return
    const off = i * PAGE_SIZE
    this.#hashes.set(i, this.#isZero(i) ? null : sha256(this.#buf!.subarray(off, off + PAGE_SIZE)))
  }

  #isZero(i: number): boolean {
    if (!this.#touched.get(i)) return true
    // Most non-zero pages differ in their first or last word: no native call for them
    const w = i * WORDS_PER_PAGE
    const words = this.#words!
    if (words[w] !== 0 || words[w + WORDS_PER_PAGE - 1] !== 0) return false
    const off = i * PAGE_SIZE
    return this.#buf!.compare(ZERO_RUN, 0, PAGE_SIZE, off, off + PAGE_SIZE) === 0
  }

  #live(): Buffer {
    if (!this.#buf) throw new VmError('VM_INVALID_STATE', 'the memory of a suspended or stopped VM is gone')
    return this.#buf
  }

  #check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.pageCount) {
      throw new VmError('VM_OUT_OF_RANGE', `page ${i} out of range 0..${this.pageCount - 1}`)
    }
  }
}

function isAllZero(data: Uint8Array): boolean {
  if (data[0] !== 0 || data[data.length - 1] !== 0) return false
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).compare(ZERO_RUN, 0, data.length) === 0
}
