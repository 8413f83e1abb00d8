// Guest memory of a synthetic VM: one Buffer of the VM's size, 4 KiB pages, optional dirty tracking.

import { constants as bufferConstants } from 'node:buffer'
import { Bitmap } from '../bitmap.js'
import { PAGE_SIZE, VmError, type VmMemory } from '../types.js'

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

  writePage(i: number, data: Uint8Array): void {
    const buf = this.#live()
    this.#check(i)
    if (data.length !== PAGE_SIZE) {
      throw new VmError('VM_OUT_OF_RANGE', `page data is ${data.length} bytes, expected ${PAGE_SIZE}`)
    }
    buf.set(data, i * PAGE_SIZE)
    this.#touched.set(i)
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

  stopDirtyTracking(): void {
    this.#dirty = null
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
