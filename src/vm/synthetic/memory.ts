// Guest memory of a synthetic VM: one Buffer of the VM's size, 4 KiB pages, optional dirty tracking.

import { constants as bufferConstants } from 'node:buffer'
import { Bitmap } from '../bitmap.js'
import { PAGE_SIZE, VmError, type VmMemory } from '../types.js'

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE)

export class SyntheticMemory implements VmMemory {
  readonly pageSize = PAGE_SIZE
  readonly pageCount: number
  #buf: Buffer | null
  #words: Uint32Array | null
  #dirty: Bitmap | null = null

  /** Zeroed memory of `bytes` (a multiple of the page size), or `buf` read back from a suspend image. */
  constructor(bytes: number, buf?: Buffer) {
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
  }

  isZeroPage(i: number): boolean {
    const buf = this.#live()
    this.#check(i)
    const off = i * PAGE_SIZE
    return buf.compare(ZERO_PAGE, 0, PAGE_SIZE, off, off + PAGE_SIZE) === 0
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
    const b = new Bitmap(this.pageCount)
    for (let i = 0; i < this.pageCount; i++) if (!this.isZeroPage(i)) b.set(i)
    return b
  }

  /** The whole memory (no copy); the caller must not keep it past `free()`. */
  raw(): Buffer {
    return this.#live()
  }

  /** A writable view of page `i` as 32-bit words, for the workload. */
  pageWords(i: number): Uint32Array {
    this.#live()
    const w = PAGE_SIZE / 4
    return this.#words!.subarray(i * w, (i + 1) * w)
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
