// Guest disk of a synthetic VM: a sparse file `disk.img` in 64 KiB blocks, with a bitmap of the blocks
// ever written (persisted to `disk.alloc`, so a digest reads only those) and optional dirty tracking.

import type { FileHandle } from 'node:fs/promises'
import { open, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Bitmap } from '../bitmap.js'
import { BLOCK_SIZE, type VmDisk, VmError } from '../types.js'
import { runs } from './digest.js'
import { readExactly, writeExactly, writeFileAtomic } from './files.js'
import { sha256, UnitHashCache } from './hash-cache.js'

export const DISK_IMG = 'disk.img'
export const DISK_ALLOC = 'disk.alloc'

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE)

export class SyntheticDisk implements VmDisk {
  readonly blockSize = BLOCK_SIZE
  readonly blockCount: number
  readonly #dir: string
  #fh: FileHandle | null
  readonly #alloc: Bitmap
  #dirty: Bitmap | null = null
  #closing = false
  readonly #pending = new Set<Promise<unknown>>()
  /** sha256 of each block, kept as blocks are written and read (see hash-cache.ts). */
  readonly #hashes: UnitHashCache
  /** Writes in flight per block: a hash is cached only when none is, so the cache matches the file. */
  readonly #writing = new Map<number, number>()

  private constructor(dir: string, fh: FileHandle, blockCount: number, alloc: Bitmap) {
    this.#dir = dir
    this.#fh = fh
    this.blockCount = blockCount
    this.#alloc = alloc
    this.#hashes = new UnitHashCache(blockCount)
    // Blocks never written are zero (what a new cache holds); the others are unknown until read
    for (const i of alloc.indices()) this.#hashes.invalidate(i)
  }

  /** A new empty disk of `bytes` (a multiple of the block size); replaces any disk in `dir`. */
  static async create(dir: string, bytes: number): Promise<SyntheticDisk> {
    const blocks = blockCountOf(bytes)
    // Only the size is set: the file stays sparse until blocks are written
    const fh = await open(join(dir, DISK_IMG), 'w+')
    try {
      await fh.truncate(bytes)
      const disk = new SyntheticDisk(dir, fh, blocks, new Bitmap(blocks))
      // Not made durable here (two fsyncs, tens of ms on a busy disk, on the incoming migration's path):
      // it is read back only from a suspend image, whose close rewrites it durably before the manifest
      await writeFile(join(dir, DISK_ALLOC), disk.#alloc.toBytes())
      return disk
    } catch (err) {
      await fh.close()
      throw err
    }
  }

  /** Opens the disk left in `dir` by `close()` (e.g. with a suspend image). */
  static async open(dir: string, bytes: number): Promise<SyntheticDisk> {
    const blocks = blockCountOf(bytes)
    const path = join(dir, DISK_IMG)
    let alloc: Bitmap
    try {
      const st = await stat(path)
      if (st.size !== bytes) throw new VmError('VM_IO', `${path} is ${st.size} bytes, expected ${bytes}`)
      const allocBytes = await readFile(join(dir, DISK_ALLOC))
      alloc = Bitmap.fromBytes(allocBytes, blocks)
    } catch (err) {
      throw asIoError(err, `cannot open the disk in ${dir}`)
    }
    const fh = await open(path, 'r+')
    return new SyntheticDisk(dir, fh, blocks, alloc)
  }

  get bytes(): number {
    return this.blockCount * BLOCK_SIZE
  }

  readBlock(i: number): Promise<Uint8Array> {
    return this.#readBlockInto(i)
  }

  /** Block `i` read into `into` (a new buffer if not given). */
  async #readBlockInto(i: number, into?: Uint8Array): Promise<Uint8Array> {
    const fh = this.#live()
    this.#check(i)
    if (into && into.length !== BLOCK_SIZE) {
      throw new VmError('VM_OUT_OF_RANGE', `a block is read into ${BLOCK_SIZE} bytes, not ${into.length}`)
    }
    if (!this.#alloc.get(i)) return into ? into.fill(0) : Buffer.alloc(BLOCK_SIZE)
    const out = into ?? Buffer.allocUnsafeSlow(BLOCK_SIZE)
    const gen = this.#hashes.generation(i)
    await this.#track(readExactly(fh, out, 0, BLOCK_SIZE, i * BLOCK_SIZE, DISK_IMG))
    this.#learn(i, gen, out)
    return out
  }

  async blockHash(i: number): Promise<Uint8Array | null> {
    this.#live()
    this.#check(i)
    if (this.#hashes.isStale(i)) {
      const data = await this.readBlock(i)
      // A write raced the read: the hash of what was read, not cached
      if (this.#hashes.isStale(i)) return ZERO_BLOCK.equals(data) ? null : sha256(data)
    }
    return this.#hashes.get(i)
  }

  async readBlockHashed(
    i: number,
    into?: Uint8Array,
  ): Promise<{ data: Uint8Array; hash: Uint8Array | null }> {
    // A write in flight when the read starts may land before, during or after it (a read can see part
    // of it), and its completion caches the new bytes' hash without a new generation: no cache then
    const quiet = !this.#hashes.isStale(i) && !this.#writing.has(i)
    const gen = this.#hashes.generation(i)
    const data = await this.#readBlockInto(i, into)
    // The cached hash is of these bytes only if no write was in flight or started since the read began
    if (quiet && !this.#hashes.isStale(i) && this.#hashes.generation(i) === gen && !this.#writing.has(i)) {
      return { data, hash: this.#hashes.get(i) }
    }
    return { data, hash: ZERO_BLOCK.equals(data) ? null : sha256(data) }
  }

  /** The disk digest (hex, format in hash-cache.ts); reads only blocks not hashed since written. */
  async digest(): Promise<string> {
    this.#live()
    await Promise.allSettled([...this.#pending])
    for (let attempt = 0; this.#hashes.staleCount > 0; attempt++) {
      if (attempt >= 3)
        throw new VmError('VM_IO', 'the disk keeps changing under its digest: pause the VM first')
      for (const [first, count] of runs(this.#hashes.staleIndices(), 16)) {
        const gens = Array.from({ length: count }, (_, k) => this.#hashes.generation(first + k))
        const data = await this.readBlocks(first, count)
        for (let k = 0; k < count; k++)
          this.#learn(first + k, gens[k]!, data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE))
      }
      await Promise.allSettled([...this.#pending])
    }
    return this.#hashes.digest()
  }

  /** Hashes the digest tree's groups of blocks hashed since (see UnitHashCache.warm). */
  warmDigest(): void {
    if (this.open) this.#hashes.warm()
  }

  /** Caches the hash of `data` read from block `i` if no write touched the block since `gen`. */
  #learn(i: number, gen: number, data: Uint8Array): void {
    if (!this.#hashes.isStale(i) || this.#hashes.generation(i) !== gen || this.#writing.has(i)) return
    this.#hashes.set(i, ZERO_BLOCK.equals(data) ? null : sha256(data))
  }

  async writeBlock(i: number, data: Uint8Array): Promise<void> {
    if (data.length !== BLOCK_SIZE) {
      throw new VmError('VM_OUT_OF_RANGE', `block data is ${data.length} bytes, expected ${BLOCK_SIZE}`)
    }
    await this.writeBlocks(i, data)
  }

  /**
   * Consecutive blocks from `first` (`data`: a whole number of blocks) in one write per run of blocks
   * that need writing: a migration's 1 MiB frame of 16 blocks costs one thread-pool round trip, not 16
   * (each woke a pool thread that, on a busy 2-core host, took the CPU from the receiving thread).
   */
  async writeBlocks(first: number, data: Uint8Array): Promise<void> {
    const fh = this.#live()
    const n = data.length / BLOCK_SIZE
    if (!Number.isInteger(n) || n < 1) {
      throw new VmError(
        'VM_OUT_OF_RANGE',
        `block data is ${data.length} bytes, not whole blocks of ${BLOCK_SIZE}`,
      )
    }
    this.#check(first)
    this.#check(first + n - 1)
    const zero: boolean[] = []
    const writes: Promise<void>[] = []
    let start = -1
    for (let k = 0; k <= n; k++) {
      let skip = true
      if (k < n) {
        zero.push(ZERO_BLOCK.equals(data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE)))
        // A zero block on a hole is already there: keep the file sparse
        skip = zero[k]! && !this.#alloc.get(first + k)
      }
      if (!skip && start < 0) start = k
      if (skip && start >= 0) {
        writes.push(
          this.#writeRun(
            fh,
            first + start,
            data.subarray(start * BLOCK_SIZE, k * BLOCK_SIZE),
            zero.slice(start, k),
          ),
        )
        start = -1
      }
    }
    await Promise.all(writes)
  }

  /** Writes blocks `first...` (`zero[k]`: block k is all zeroes) and caches their hashes. */
  async #writeRun(fh: FileHandle, first: number, data: Uint8Array, zero: boolean[]): Promise<void> {
    const n = data.length / BLOCK_SIZE
    const gens: number[] = []
    for (let k = 0; k < n; k++) {
      const i = first + k
      this.#hashes.invalidate(i)
      gens.push(this.#hashes.generation(i))
      this.#writing.set(i, (this.#writing.get(i) ?? 0) + 1)
    }
    let ok = false
    try {
      await this.#track(writeExactly(fh, data, 0, data.length, first * BLOCK_SIZE))
      ok = true
    } finally {
      for (let k = 0; k < n; k++) {
        const i = first + k
        const w = this.#writing.get(i)! - 1
        if (w === 0) this.#writing.delete(i)
        else this.#writing.set(i, w)
        // Cached only if this was the last write to the block and nothing else wrote it meanwhile
        if (ok && w === 0 && this.#hashes.generation(i) === gens[k])
          this.#hashes.set(i, zero[k] ? null : sha256(data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE)))
      }
    }
    // Set only once the bytes are in the file, so a reader never sees the bit before the data
    for (let k = 0; k < n; k++) this.#alloc.set(first + k)
  }

  allocatedBlocks(): Bitmap {
    return this.#alloc.clone()
  }

  startDirtyTracking(): void {
    this.#dirty ??= new Bitmap(this.blockCount)
  }

  takeDirtyBlocks(): Bitmap {
    const d = this.#dirty
    if (!d) throw new VmError('VM_INVALID_STATE', 'dirty block tracking is not started')
    this.#dirty = new Bitmap(this.blockCount)
    return d
  }

  stopDirtyTracking(): void {
    this.#dirty = null
  }

  // --- for the driver and the workload (not part of VmDisk) ---

  get open(): boolean {
    return this.#fh !== null && !this.#closing
  }

  /** Records a guest write to block `i` (when tracking); call after the write completed. */
  markDirty(i: number): void {
    this.#dirty?.set(i)
  }

  /** `count` consecutive blocks from `first` as one buffer (holes read as zeroes). */
  async readBlocks(first: number, count: number): Promise<Buffer> {
    const fh = this.#live()
    this.#check(first)
    this.#check(first + count - 1)
    const out = Buffer.alloc(count * BLOCK_SIZE)
    await this.#track(readExactly(fh, out, 0, out.length, first * BLOCK_SIZE, DISK_IMG))
    return out
  }

  /** Makes the written blocks and the allocation bitmap durable. */
  async flush(): Promise<void> {
    const fh = this.#live()
    await Promise.allSettled([...this.#pending])
    await fh.datasync()
    await this.#saveAlloc()
  }

  /**
   * Waits for pending I/O, flushes and closes the file; later calls throw VM_INVALID_STATE.
   * `sync: false` skips the flush, for a disk about to be deleted (fsync of what is thrown away only
   * costs time: ~1 s for a fresh 64 MiB here).
   */
  async close(opts: { sync?: boolean } = {}): Promise<void> {
    if (!this.#fh || this.#closing) return
    this.#closing = true
    const fh = this.#fh
    try {
      await Promise.allSettled([...this.#pending])
      if (opts.sync !== false) {
        await fh.datasync()
        await this.#saveAlloc()
      }
    } finally {
      this.#fh = null
      await fh.close()
    }
  }

  async #saveAlloc(): Promise<void> {
    await writeFileAtomic(join(this.#dir, DISK_ALLOC), this.#alloc.toBytes())
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#pending.add(p)
    const done = () => this.#pending.delete(p)
    void p.then(done, done)
    return p
  }

  #live(): FileHandle {
    if (!this.#fh || this.#closing) throw new VmError('VM_INVALID_STATE', 'the disk is closed')
    return this.#fh
  }

  #check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.blockCount) {
      throw new VmError('VM_OUT_OF_RANGE', `block ${i} out of range 0..${this.blockCount - 1}`)
    }
  }
}

function blockCountOf(bytes: number): number {
  if (!Number.isInteger(bytes) || bytes < 0 || bytes % BLOCK_SIZE !== 0) {
    throw new VmError('VM_OUT_OF_RANGE', `disk must be a multiple of ${BLOCK_SIZE} bytes`)
  }
  return bytes / BLOCK_SIZE
}

function asIoError(err: unknown, what: string): VmError {
  if (err instanceof VmError) return err
  const msg = err instanceof Error ? err.message : String(err)
  return new VmError('VM_IO', `${what}: ${msg}`)
}
