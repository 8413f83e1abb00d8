// Warm-up of the engine's per-unit code when an agent starts (MigrationServiceInit.warmUp).
//
// Why: an agent's first migration ran its hot loops (frame building and parsing, applying pages and
// blocks, hashing them into the VM's digest cache, the dedup tables) in V8's interpreter and
// baseline tiers for most of round 0, and paid TurboFan's compiles in the middle of it, on a 2-core
// host where both ends' CPU is the bound. Here, once, in the background after start: a small
// synthetic VM's pages and blocks go through the same code a migration runs — FrameBuilder and
// encodeFrameParts as the source builds frames, then a real IncomingMigration that parses, applies,
// hashes and acknowledges them — over an in-memory channel, and is cancelled (the VM is destroyed).
// Nothing leaves the process, no reservation, hook or outcome of the service is touched.
// Cost: ~4096 page and 128 block applications (2 MiB of guest memory, a 2 MiB disk file in a
// temporary directory), tens of ms of CPU plus V8's background compiles. Synthetic VMs only.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { pb } from '../proto/index.js'
import type { VmDriver, VmInstance, VmSpec } from '../vm/index.js'
import { DEFAULTS, FRAME_PAYLOAD_BYTES, HASH_BYTES, MAX_FRAME_BYTES, MAX_RUNS } from './constants.js'
import { DedupTable, hashKey } from './dedup.js'
import { IncomingMigration, type ValidOffer } from './destination.js'
import { encodeFrameParts, FrameBuilder, type Space } from './frame.js'
import { roundOrder } from './round-plan.js'
import type { ControlChannel, FrameChannel } from './wire.js'

export interface WarmUpResult {
  ms: number
  frames: number
  /** Frames the destination acknowledged (each once applied): all of them. */
  acked: number
  pages: number
  blocks: number
}

/**
 * Runs the warm-up (see the top); undefined if the driver is not the synthetic one. `rounds`: how
 * many times the VM's 512 pages are sent (enough calls for V8 to optimise the loops), `blockRounds` its
 * 32 blocks (64 KiB each: fewer rounds reach the same calls' count).
 */
export async function warmUpEngine(
  driver: VmDriver,
  logger: Logger,
  signal: AbortSignal,
  rounds = 8,
  blockRounds = 2,
): Promise<WarmUpResult | undefined> {
  if (driver.name !== 'synthetic') return undefined
  const t0 = performance.now()
  const dir = await mkdtemp(join(tmpdir(), 'skymesh-warmup-'))
  const spec: VmSpec = {
    id: 'warmup',
    name: 'warmup',
    vcpus: 1,
    memoryMiB: 2,
    diskMiB: 2,
    workload: { dirtyMiBps: 0, hotSetMiB: 0, cpu: 0, diskWriteMiBps: 0 },
  }
  let source: VmInstance | undefined
  let incoming: IncomingMigration | undefined
  try {
    source = await driver.create(spec, { dir: join(dir, 'src') })
    await source.pause()
    await fill(source)
    signal.throwIfAborted()
    const ac = new AbortController()
    const onAbort = () => ac.abort(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    const quiet = logger.child({ component: 'transfer-warmup' }, { level: 'silent' })
    const offer: ValidOffer = {
      migrationId: 'warmup',
      spec,
      epoch: 0,
      geometry: {
        pageSize: source.memory.pageSize,
        pageCount: source.memory.pageCount,
        blockSize: source.disk.blockSize,
        blockCount: source.disk.blockCount,
        dedup: true,
      },
      mode: 'precopy',
      streams: 1,
      compression: false,
      paused: true,
      nics: [],
    }
    incoming = new IncomingMigration({
      offer,
      from: 'warmup',
      to: 'warmup',
      control: idleControl(),
      instance: driver.prepareIncoming(spec, { dir: join(dir, 'dst') }),
      reservation: { release: () => undefined },
      hooks: {},
      timeouts: {
        dialTimeoutMs: DEFAULTS.dialTimeoutMs,
        stepTimeoutMs: DEFAULTS.stepTimeoutMs,
        stallTimeoutMs: DEFAULTS.stallTimeoutMs,
        statusTimeoutMs: DEFAULTS.statusTimeoutMs,
        windowBytes: DEFAULTS.windowBytes,
      },
      logger: quiet,
      signal: ac.signal,
      onChange: () => undefined,
      onOutcome: () => undefined,
    })
    const channel = new ReplayChannel(frames(source, rounds, blockRounds))
    incoming.attachData(channel, 0)
    await channel.drained
    incoming.cancel()
    await incoming.done
    signal.removeEventListener('abort', onAbort)
    return {
      ms: Math.round(performance.now() - t0),
      frames: channel.frames,
      acked: channel.acks,
      pages: rounds * source.memory.pageCount,
      blocks: blockRounds * source.disk.blockCount,
    }
  } finally {
    if (incoming?.cancel()) await incoming.done.catch(() => undefined)
    await source?.destroy().catch(() => undefined)
    await rm(dir, { recursive: true, force: true }).catch(() => undefined)
  }
}

/** Pages and blocks of varied content (unique per unit, so every unit is DATA with its hash). */
async function fill(vm: VmInstance): Promise<void> {
  const page = Buffer.alloc(vm.memory.pageSize)
  for (let i = 0; i < vm.memory.pageCount; i++) {
    page.fill(`warm-up page ${i} `)
    vm.memory.writePage(i, page)
  }
  const block = Buffer.alloc(vm.disk.blockSize)
  for (let i = 0; i < vm.disk.blockCount; i++) {
    block.fill(`warm-up block ${i} `)
    await vm.disk.writeBlock(i, block)
  }
}

/**
 * Frames as the source builds them in a round (pages then blocks, DATA with hashes, a dedup table),
 * one at a time: each is built in the same two buffers once the destination is done with the last
 * (fresh megabytes are what a first migration pays most for on some hosts: no new ones here).
 */
async function* frames(vm: VmInstance, rounds: number, blockRounds: number): AsyncGenerator<Uint8Array> {
  const { memory, disk } = vm
  const payload = Buffer.allocUnsafeSlow(FRAME_PAYLOAD_BYTES)
  const b = new FrameBuilder(FRAME_PAYLOAD_BYTES, MAX_RUNS, () => payload)
  const out = Buffer.allocUnsafeSlow(MAX_FRAME_BYTES)
  const into = Buffer.allocUnsafeSlow(disk.blockSize)
  const pages = Array.from({ length: memory.pageCount }, (_, i) => i)
  let seq = 0
  const take = (): Uint8Array => {
    const { runs, payload: p } = b.take()
    let n = 0
    for (const part of encodeFrameParts({
      seq: seq++,
      round: 0,
      runs,
      payload: p,
      codec: 'none',
      rawLength: p.length,
    })) {
      out.set(part, n)
      n += part.length
    }
    return out.subarray(0, n)
  }
  for (let r = 0; r < rounds; r++) {
    // A fresh table per round: every unit is sent as DATA again (no references), as in round 0
    const tables: Record<Space, DedupTable> = { memory: new DedupTable(), disk: new DedupTable() }
    const add = (space: Space, i: number, hash: Uint8Array, data: Parameters<FrameBuilder['addData']>[2]) => {
      const h = hash.subarray(0, HASH_BYTES)
      const key = hashKey(h)
      const unit = space === 'memory' ? memory.pageSize : disk.blockSize
      if (tables[space].lookup(key) === undefined && tables[space].register(i, key))
        b.addData(space, i, data, h, unit)
      else b.addData(space, i, data, undefined, unit)
    }
    for (const i of roundOrder(pages, () => false, memory.pageCount)) {
      if (!b.fits(memory.pageSize)) yield take()
      const h = memory.pageHash(i)
      if (h !== null) add('memory', i, h, (dst, off) => memory.readPageInto(i, dst, off))
    }
    for (let i = 0; r < blockRounds && i < disk.blockCount; i++) {
      if (!b.fits(disk.blockSize)) yield take()
      const { data, hash } = await disk.readBlockHashed(i, into)
      if (hash !== null) add('disk', i, hash, data)
    }
    if (!b.empty) yield take()
  }
}

/** A control stream on which nothing arrives (the warm-up ends by cancelling the migration). */
function idleControl(): ControlChannel {
  const waitForAbort = (_types: unknown, signal?: AbortSignal) =>
    new Promise<never>((_, reject) => {
      if (signal?.aborted) reject(signal.reason)
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true })
    })
  return {
    framed: { abort: () => undefined, close: async () => undefined, written: 0 },
    expect: waitForAbort,
    send: async () => undefined,
  } as unknown as ControlChannel
}

/** Hands out the frames, one per read, then waits; the destination's acknowledgements are checked. */
class ReplayChannel implements FrameChannel {
  readonly written = 0
  readonly drained: Promise<void>
  readonly #frames: AsyncGenerator<Uint8Array>
  #sent = 0
  #acks = 0
  #end = false
  #done!: () => void

  constructor(frames: AsyncGenerator<Uint8Array>) {
    this.#frames = frames
    this.drained = new Promise((resolve) => {
      this.#done = resolve
    })
  }

  get frames(): number {
    return this.#sent
  }

  get acks(): number {
    return this.#acks
  }

  async write(bytes: Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (bytes instanceof Uint8Array) pb.DataAck.decode(bytes)
    this.#acks++
    if (this.#end && this.#acks === this.#sent) this.#done()
  }

  async read(signal?: AbortSignal): Promise<Uint8Array | null> {
    const next = await this.#frames.next()
    if (!next.done) {
      this.#sent++
      return next.value
    }
    this.#end = true
    if (this.#acks === this.#sent) this.#done()
    // No more frames: the stream stays open (as a source's between rounds) until the cancel
    return new Promise((_, reject) => {
      if (signal?.aborted) reject(signal.reason)
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true })
    })
  }

  async close(): Promise<void> {}

  abort(): void {
    this.#done()
  }
}
