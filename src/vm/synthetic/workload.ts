// The guest's activity: a timer that really writes pages into a hot set at the start of memory and
// blocks into a hot set at the start of the disk, at the spec's rates, marks them dirty, and burns its
// CPU share hashing hot pages. Every write stores a new counter, so written bytes always change.
// The disk hot set has the same size as the memory one (`hotSetMiB`, capped at the disk).

import { createHash } from 'node:crypto'
import { BLOCK_SIZE, PAGE_SIZE, type WorkloadSpec } from '../types.js'
import type { CpuBudget } from './cpu-budget.js'
import type { GuestDisk } from './guest-disk.js'
import type { SyntheticMemory } from './memory.js'
import { fillPattern, Prng } from './prng.js'
import { RateMeter } from './rate-meter.js'

const MiB = 1024 * 1024
const PAGES_PER_MIB = MiB / PAGE_SIZE
const BLOCKS_PER_MIB = MiB / BLOCK_SIZE
/** After an event-loop stall, catch up at most this many ticks' worth of work. */
const MAX_CATCH_UP_TICKS = 4
/** Most blocks written in one batch (4 MiB); the rest waits for the next tick. */
const MAX_BATCH_BLOCKS = 64
/** Bytes hashed between clock checks while burning CPU. */
const BURN_CHUNK = 64 * 1024

export interface WorkloadInit {
  seed: number
  tickMs: number
  vcpus: number
  budget: CpuBudget
  /** Called when the workload fails (e.g. a disk write error); it has stopped by then. */
  onFault: (err: unknown) => void
}

export interface WorkloadStats {
  cpu: number
  dirtyMiBps: number
  diskWriteMiBps: number
  pagesWritten: number
  blocksWritten: number
}

export class Workload {
  readonly #spec: WorkloadSpec
  readonly #memory: SyntheticMemory
  readonly #disk: GuestDisk
  readonly #init: WorkloadInit
  readonly #rng: Prng
  readonly #hotPages: number
  readonly #hotBlocks: number
  readonly #meter = new RateMeter()
  #timer: NodeJS.Timeout | null = null
  #last = 0
  #counter = 0
  #pageDebt = 0
  #blockDebt = 0
  #burnOffset = 0
  #diskBusy: Promise<void> | null = null
  #pagesWritten = 0
  #blocksWritten = 0

  constructor(spec: WorkloadSpec, memory: SyntheticMemory, disk: GuestDisk, init: WorkloadInit) {
    this.#spec = spec
    this.#memory = memory
    this.#disk = disk
    this.#init = init
    this.#rng = new Prng(init.seed)
    this.#hotPages = clamp(Math.round(spec.hotSetMiB * PAGES_PER_MIB), 1, memory.pageCount)
    this.#hotBlocks = clamp(Math.round(spec.hotSetMiB * BLOCKS_PER_MIB), 1, disk.blockCount)
  }

  get running(): boolean {
    return this.#timer !== null
  }

  start(): void {
    if (this.#timer) return
    this.#last = performance.now()
    this.#meter.reset(this.#last)
    this.#timer = setInterval(() => this.#tick(), this.#init.tickMs)
    this.#timer.unref()
  }

  /** Stops the timer and waits for a disk write in flight, so nothing changes after it resolves. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = null
    await this.#diskBusy
  }

  stats(): WorkloadStats {
    const running = this.running
    const r = this.#meter.rates()
    return {
      cpu: running ? r.cpu : 0,
      dirtyMiBps: running ? r.pagesPerSec / PAGES_PER_MIB : 0,
      diskWriteMiBps: running ? r.blocksPerSec / BLOCKS_PER_MIB : 0,
      pagesWritten: this.#pagesWritten,
      blocksWritten: this.#blocksWritten,
    }
  }

  #tick(): void {
    const start = performance.now()
    const dt = Math.min(start - this.#last, this.#init.tickMs * MAX_CATCH_UP_TICKS)
    this.#last = start
    try {
      const pages = this.#writePages(dt)
      this.#startDiskWrites(dt)
      const fillMs = performance.now() - start
      const cpuShare = Math.min(this.#spec.cpu, this.#init.vcpus, 1)
      const granted = this.#init.budget.take(Math.max(0, cpuShare * dt - fillMs))
      const burnMs = granted > 0 ? this.#burn(granted) : 0
      this.#meter.record(pages, 0, fillMs + burnMs)
    } catch (err) {
      this.#fail(err)
    }
  }

  /** Share of the guest's writes held back (auto-converge), 0..0.99. */
  #throttle = 0

  setThrottle(fraction: number): void {
    this.#throttle = clamp(fraction, 0, 0.99)
  }

  #writePages(dt: number): number {
    this.#pageDebt += (this.#spec.dirtyMiBps * (1 - this.#throttle) * PAGES_PER_MIB * dt) / 1000
    const n = Math.floor(this.#pageDebt)
    this.#pageDebt -= n
    for (let k = 0; k < n; k++) {
      const p = this.#rng.int(this.#hotPages)
      fillPattern(this.#memory.pageWords(p), ++this.#counter, this.#init.seed ^ p)
      this.#memory.markDirty(p)
    }
    this.#pagesWritten += n
    return n
  }

  #startDiskWrites(dt: number): void {
    if (this.#disk.blockCount === 0) return
    // While a batch is in flight the debt grows (capped), and the next batch catches up
    this.#blockDebt = Math.min(
      this.#blockDebt + (this.#spec.diskWriteMiBps * (1 - this.#throttle) * BLOCKS_PER_MIB * dt) / 1000,
      MAX_BATCH_BLOCKS,
    )
    const n = Math.min(Math.floor(this.#blockDebt), this.#hotBlocks)
    if (this.#diskBusy || n < 1) return
    this.#blockDebt -= n
    const batch = this.#writeBlocks(n).then(
      () => {
        this.#diskBusy = null
      },
      (err: unknown) => {
        this.#diskBusy = null
        this.#fail(err)
      },
    )
    this.#diskBusy = batch
  }

  async #writeBlocks(n: number): Promise<void> {
    const chosen = new Set<number>()
    while (chosen.size < n) chosen.add(this.#rng.int(this.#hotBlocks))
    const buf = Buffer.allocUnsafeSlow(n * BLOCK_SIZE)
    const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4)
    const perBlock = BLOCK_SIZE / 4
    const blocks = [...chosen]
    blocks.forEach((b, k) => {
      fillPattern(words.subarray(k * perBlock, (k + 1) * perBlock), ++this.#counter, this.#init.seed ^ ~b)
    })
    await Promise.all(
      blocks.map((b, k) => this.#disk.writeBlock(b, buf.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE))),
    )
    // Marked after the data is in the file: a copier that reads the block earlier sees it dirty again
    for (const b of blocks) this.#disk.markDirty(b)
    this.#blocksWritten += n
    this.#meter.record(0, n, 0)
  }

  /** Hashes the hot set for `ms` of real CPU time; returns the time spent. */
  #burn(ms: number): number {
    const start = performance.now()
    const mem = this.#memory.raw()
    const hotBytes = this.#hotPages * PAGE_SIZE
    const h = createHash('sha256')
    let elapsed = 0
    do {
      const end = Math.min(this.#burnOffset + BURN_CHUNK, hotBytes)
      h.update(mem.subarray(this.#burnOffset, end))
      this.#burnOffset = end >= hotBytes ? 0 : end
      elapsed = performance.now() - start
    } while (elapsed < ms)
    h.digest()
    return elapsed
  }

  #fail(err: unknown): void {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = null
    this.#init.onFault(err)
  }
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.max(Math.min(v, hi), Math.min(lo, hi))
}
