// Copy-on-write disk of a synthetic VM created from an image: reads of a block the VM never wrote fall
// through to the shared base image; writes go to the VM's own sparse layer (a SyntheticDisk in its
// directory). `disk.layer` records which blocks the VM wrote (zero writes included: a zero block over
// a non-zero base block must read as zero), `disk.base` which image is below. Digests are the same
// pure function of the content as a plain disk's, so a migration to a plain disk verifies as usual.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Bitmap } from '../bitmap.js'
import { BLOCK_SIZE, VmError } from '../types.js'
import { SyntheticDisk } from './disk.js'
import { writeFileAtomic } from './files.js'
import type { BaseImage, GuestDisk } from './guest-disk.js'
import { sha256, UnitHashCache } from './hash-cache.js'

export const DISK_BASE = 'disk.base'
export const DISK_LAYER = 'disk.layer'

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE)

export class OverlayDisk implements GuestDisk {
  readonly blockSize = BLOCK_SIZE
  readonly blockCount: number
  readonly base: BaseImage
  readonly #own: SyntheticDisk
  readonly #dir: string
  /** Blocks the VM wrote (they read from its own layer). */
  readonly #written: Bitmap
  readonly #baseBlocks: number
  readonly #baseHashes = new Map<number, Uint8Array | null>()

  private constructor(dir: string, own: SyntheticDisk, base: BaseImage, written: Bitmap) {
    this.#dir = dir
    this.#own = own
    this.base = base
    this.blockCount = own.blockCount
    this.#written = written
    this.#baseBlocks = Math.min(own.blockCount, Math.ceil(base.size / BLOCK_SIZE))
  }

  /** A new overlay of `bytes` over `base` in `dir` (the disk must be at least as large as the image). */
  static async create(dir: string, bytes: number, base: BaseImage): Promise<OverlayDisk> {
    if (base.size > bytes) {
      throw new VmError(
        'VM_OUT_OF_RANGE',
        `the image is ${base.size} bytes, larger than the disk of ${bytes}`,
      )
    }
    const own = await SyntheticDisk.create(dir, bytes)
    const disk = new OverlayDisk(dir, own, base, new Bitmap(own.blockCount))
    await writeFileAtomic(
      join(dir, DISK_BASE),
      Buffer.from(JSON.stringify({ image: base.id, size: base.size })),
    )
    await disk.#saveLayer()
    return disk
  }

  /** Reopens the overlay left in `dir` by `close()`. */
  static async open(dir: string, bytes: number, base: BaseImage): Promise<OverlayDisk> {
    const own = await SyntheticDisk.open(dir, bytes)
    let written: Bitmap
    try {
      written = Bitmap.fromBytes(await readFile(join(dir, DISK_LAYER)), own.blockCount)
    } catch (err) {
      await own.close({ sync: false })
      throw new VmError('VM_IO', `cannot open the overlay in ${dir}: ${(err as Error).message}`)
    }
    return new OverlayDisk(dir, own, base, written)
  }

  /** The image id recorded in `dir`, if its disk is an overlay. */
  static async baseOf(dir: string): Promise<string | undefined> {
    try {
      const j = JSON.parse(await readFile(join(dir, DISK_BASE), 'utf8')) as { image?: unknown }
      return typeof j.image === 'string' ? j.image : undefined
    } catch {
      return undefined
    }
  }

  get bytes(): number {
    return this.#own.bytes
  }

  get open(): boolean {
    return this.#own.open
  }

  /** The base image below (a migration to a host holding it sends only the own layer). */
  get baseImage(): { id: string; size: number } {
    return { id: this.base.id, size: this.base.size }
  }

  /** Blocks in the VM's own layer (what a migration needs to move beyond the base). */
  ownBlocks(): Bitmap {
    return this.#written.clone()
  }

  #fromBase(i: number): boolean {
    return !this.#written.get(i)
  }

  async readBlock(i: number): Promise<Uint8Array> {
    this.#check(i)
    if (!this.#fromBase(i)) return this.#own.readBlock(i)
    if (i >= this.#baseBlocks) return Buffer.alloc(BLOCK_SIZE)
    return this.base.readBlock(i)
  }

  async writeBlock(i: number, data: Uint8Array): Promise<void> {
    this.#check(i)
    // A zero block over the base stays a hole in the own layer; the layer map says "read zeroes here".
    await this.#own.writeBlock(i, data)
    this.#written.set(i)
  }

  async writeBlocks(first: number, data: Uint8Array): Promise<void> {
    const n = data.length / BLOCK_SIZE
    this.#check(first)
    if (Number.isInteger(n) && n >= 1) this.#check(first + n - 1)
    await this.#own.writeBlocks(first, data)
    for (let k = 0; k < n; k++) this.#written.set(first + k)
  }

  async #baseHash(i: number): Promise<Uint8Array | null> {
    if (i >= this.#baseBlocks) return null
    const cached = this.#baseHashes.get(i)
    if (cached !== undefined) return cached
    const data = await this.base.readBlock(i)
    const h = ZERO_BLOCK.equals(data) ? null : sha256(data)
    this.#baseHashes.set(i, h)
    return h
  }

  async blockHash(i: number): Promise<Uint8Array | null> {
    this.#check(i)
    return this.#fromBase(i) ? this.#baseHash(i) : this.#own.blockHash(i)
  }

  async readBlockHashed(
    i: number,
    into?: Uint8Array,
  ): Promise<{ data: Uint8Array; hash: Uint8Array | null }> {
    this.#check(i)
    if (!this.#fromBase(i)) return this.#own.readBlockHashed(i, into)
    const data = i < this.#baseBlocks ? await this.base.readBlock(i) : Buffer.alloc(BLOCK_SIZE)
    return { data, hash: ZERO_BLOCK.equals(data) ? null : sha256(data) }
  }

  /** Every block of the base plus every block the VM wrote (a superset of the non-zero blocks). */
  allocatedBlocks(): Bitmap {
    const b = this.#written.clone()
    for (let i = 0; i < this.#baseBlocks; i++) b.set(i)
    return b
  }

  async digest(): Promise<string> {
    if (!this.#own.open) throw new VmError('VM_INVALID_STATE', 'the disk is closed')
    const cache = new UnitHashCache(this.blockCount)
    for (const i of this.allocatedBlocks().indices()) cache.set(i, await this.blockHash(i))
    return cache.digest()
  }

  startDirtyTracking(): void {
    this.#own.startDirtyTracking()
  }

  takeDirtyBlocks(): Bitmap {
    return this.#own.takeDirtyBlocks()
  }

  stopDirtyTracking(): void {
    this.#own.stopDirtyTracking()
  }

  markDirty(i: number): void {
    this.#own.markDirty(i)
  }

  async flush(): Promise<void> {
    await this.#own.flush()
    await this.#saveLayer()
  }

  async close(opts: { sync?: boolean } = {}): Promise<void> {
    if (!this.#own.open) return
    if (opts.sync !== false) await this.#saveLayer()
    await this.#own.close(opts)
  }

  async #saveLayer(): Promise<void> {
    await writeFileAtomic(join(this.#dir, DISK_LAYER), this.#written.toBytes())
  }

  #check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.blockCount) {
      throw new VmError('VM_OUT_OF_RANGE', `block ${i} out of range 0..${this.blockCount - 1}`)
    }
  }
}
