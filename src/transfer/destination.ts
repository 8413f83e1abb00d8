// The destination side of one migration: fills a paused, empty VM from the data streams, verifies it
// against the source's digest, and on COMMIT journals (onCommit hook), resumes and answers RUNNING.
// It never resumes without COMMIT; if its control stream dies before COMMIT it discards the copy, and
// a status query then answers "aborted" (so a COMMIT that was lost in flight never takes effect).
//
// Post-copy emulation for synthetic VMs: the guest runs with pages missing. Its writes are seen through
// dirty tracking (polled every few ms and before each pushed page is applied); a write to a page that
// has not arrived yet counts as a fault: the page is fetched with priority (so every page is still sent
// once, and the image check below covers it) but not written over the guest's newer content. The
// synthetic workload writes whole pages, so this ends with the same memory a guest that had blocked on
// the fault would have; what it does not model is the stall itself (reads of missing pages, done only
// by the workload's CPU burn, see zeroes and change nothing).
import { setMaxListeners } from 'node:events'
import { isIP } from 'node:net'
import type { Logger } from 'pino'
import { pb } from '../proto/index.js'
import { Bitmap, type VmInstance, type VmSpec } from '../vm/index.js'
import { decompressPayload } from './compress.js'
import {
  DATA_READ_BUFFER,
  FRAME_PAYLOAD_BYTES,
  HASH_BYTES,
  MAX_DATA_STREAMS,
  MAX_FETCH_PAGES,
  MAX_FRAME_BYTES,
  MAX_ID_LENGTH,
} from './constants.js'
import type { ContentStore, StoredPage } from './content-store.js'
import { contentHash, DedupTable, hashKey } from './dedup.js'
import { diskDigestOf, PageListDigest } from './digest.js'
import {
  asMigrationError,
  CancelledError,
  LinkError,
  MigrationError,
  MigrationRefusedError,
  ProtocolError,
  VerifyFailedError,
} from './errors.js'
import { type Geometry, type ParsedFrame, parseFrame, type Space } from './frame.js'
import { offeredNics } from './nics.js'
import type { MigrationOfferMsg } from './pb-types.js'
import type { Mode } from './policy.js'
import { type Counters, emptyCounters, type MigrationView, type Phase } from './progress.js'
import { decodeOffer, type PunchInvite } from './punch.js'
import type { Outcome } from './status.js'
import type { DestinationHooks, MigrationNic, TransferTimeouts } from './types.js'
import { type Control, type ControlChannel, type FrameChannel, Framed, withTimeout } from './wire.js'

const FAULT_POLL_MS = 5

export interface ValidOffer {
  migrationId: string
  spec: VmSpec
  epoch: number
  geometry: Geometry
  mode: Mode
  streams: number
  compression: boolean
  /** The VM was paused at the source; it stays paused after the handover. */
  paused: boolean
  /** The address the source reached us at, asking for a direct data channel (direct.ts). */
  directHost?: string
  /** The source's hole-punch invite (punch.ts), when it has no direct connection to us. */
  punch?: PunchInvite
  /** The source's disk is a layer over this image (hex id), if any. */
  baseImage?: string
  /** The VM's overlay NICs (checked by the agent's reserve hook). */
  nics: MigrationNic[]
}

const MODE_FROM_PB: Record<number, Mode> = {
  [pb.MigrationMode.PRECOPY]: 'precopy',
  [pb.MigrationMode.POSTCOPY]: 'postcopy',
  [pb.MigrationMode.AUTO]: 'auto',
}

/** Checks an offer's fields and bounds; throws MigrationRefusedError('BAD_OFFER'). */
export function validateOffer(o: MigrationOfferMsg | null | undefined): ValidOffer {
  const bad = (msg: string) => new MigrationRefusedError('BAD_OFFER', msg)
  if (!o) throw bad('no offer')
  const id = o.migrationId ?? ''
  if (id.length === 0 || id.length > MAX_ID_LENGTH) throw bad('bad migration id')
  const s = o.spec
  if (!s?.id || s.id.length > 256) throw bad('bad VM id')
  const mode = MODE_FROM_PB[o.mode ?? 0]
  if (!mode) throw bad(`unknown mode ${o.mode}`)
  const streams = o.streams ?? 0
  if (!(streams >= 1 && streams <= MAX_DATA_STREAMS))
    throw bad(`streams ${streams} outside 1..${MAX_DATA_STREAMS}`)
  const g: Geometry = {
    pageSize: o.pageSize ?? 0,
    pageCount: o.pageCount ?? 0,
    blockSize: o.blockSize ?? 0,
    blockCount: o.blockCount ?? 0,
    dedup: o.dedup === true,
  }
  if (
    g.pageSize < 512 ||
    g.pageSize > FRAME_PAYLOAD_BYTES ||
    g.blockSize < 512 ||
    g.blockSize > FRAME_PAYLOAD_BYTES
  ) {
    throw bad('bad page or block size')
  }
  const epoch = o.epoch ?? 0
  if (!Number.isSafeInteger(epoch) || epoch < 0) throw bad('bad epoch')
  const w = s.workload
  const spec: VmSpec = {
    id: s.id,
    name: s.name ?? s.id,
    vcpus: s.vcpus ?? 1,
    memoryMiB: s.memoryMib ?? 0,
    diskMiB: s.diskMib ?? 0,
    workload: {
      dirtyMiBps: w?.dirtyMibps ?? 0,
      hotSetMiB: w?.hotSetMib ?? 0,
      cpu: w?.cpu ?? 0,
      diskWriteMiBps: w?.diskWriteMibps ?? 0,
    },
  }
  if (spec.memoryMiB * 1024 * 1024 !== g.pageSize * g.pageCount)
    throw bad('memory size does not match the page count')
  if (spec.diskMiB * 1024 * 1024 !== g.blockSize * g.blockCount)
    throw bad('disk size does not match the block count')
  const directHost = o.directHost ?? ''
  if (directHost !== '' && (directHost.length > 64 || isIP(directHost) === 0)) throw bad('bad direct host')
  return {
    migrationId: id,
    spec,
    epoch,
    geometry: g,
    mode,
    streams,
    compression: o.compression === true,
    paused: o.paused === true,
    nics: offeredNics(s),
    ...(directHost ? { directHost } : {}),
    ...(o.punch ? { punch: checkInvite(o.punch, bad) } : {}),
    ...(o.baseImage ? { baseImage: checkImageId(o.baseImage, bad) } : {}),
  }
}

function checkImageId(id: string, bad: (msg: string) => Error): string {
  if (!/^[0-9a-f]{64}$/.test(id)) throw bad('base image id is not 64 hex digits')
  return id
}

export interface IncomingInit {
  offer: ValidOffer
  from: string
  to: string
  control: ControlChannel
  /**
   * The empty VM, still being made (the offer is accepted while it is, so the source opens its data
   * streams meanwhile): no frame is applied before it exists, and if it cannot be made the migration
   * aborts (a MigrationError rejection keeps its code; any other is NO_CAPACITY).
   */
  instance: Promise<VmInstance>
  reservation: { release(): void }
  hooks: DestinationHooks
  timeouts: TransferTimeouts
  logger: Logger
  signal: AbortSignal
  /** This host's content store: pages the source may reference after a content query. */
  store?: ContentStore
  onChange: (view: MigrationView) => void
  /** `reason`: why it aborted (the status protocol passes it on to the source). */
  onOutcome: (outcome: Outcome, epoch?: number, reason?: string) => void
}

type State = 'receiving' | 'switched' | 'committing' | 'committed' | 'postcopy' | 'ended'

export class IncomingMigration {
  readonly id: string
  readonly done: Promise<MigrationView>
  readonly #i: IncomingInit
  readonly #log: Logger
  readonly #ac = new AbortController()
  readonly #signal: AbortSignal
  readonly #c: Counters = emptyCounters()
  readonly #streams: (FrameChannel | undefined)[]
  #channel: 'libp2p' | 'direct-sealed' | undefined
  readonly #tables: { memory: DedupTable; disk: DedupTable }[] = []
  readonly #zeroPage: Uint8Array
  readonly #zeroBlock: Uint8Array
  #state: State = 'receiving'
  #phase: Phase = 'precopy'
  #round = 0
  #lastRound = 0
  readonly #startedAt = Date.now()
  readonly #t0 = performance.now()
  #totalMs: number | undefined
  #epoch: number | undefined
  #error: { code: string; message: string } | undefined
  #postcopy = false
  // Post-copy (and auto, which may switch): per-page content hashes of the source image
  readonly #pageHashes: Uint8Array | undefined
  readonly #nonZero: Bitmap | undefined
  #pending: Bitmap | undefined
  #received: Bitmap | undefined
  #receivedCount = 0
  #localWritten: Bitmap | undefined
  #requested: Bitmap | undefined
  #faultQueue: number[] = []
  #wakeReceived: (() => void) | undefined
  #lastEmit = 0
  /** Store pages the source was told we hold (kept for this migration even if the store evicts them). */
  readonly #pinned = new Map<string, StoredPage>()
  /** When the source last sent something while we receive (a silent link never resets a stream). */
  #lastHeard = performance.now()
  /** Frames applied per data stream. */
  readonly #applied: number[]
  /** Early switchover: frames each stream carries in all (none may come after them). */
  #expected: number[] | undefined
  /** Wakes a wait of the switchover (`#until`): a data stream attached or applied a frame. */
  #wake: (() => void) | undefined
  /** The VM once made (`ready` resolved); frames and the switchover wait for it. */
  #vm: VmInstance | undefined
  readonly #ready: Promise<VmInstance>
  /** ms from the accept until the VM was made (for the logs). */
  #preparedMs: number | undefined

  constructor(init: IncomingInit) {
    this.#i = init
    this.id = init.offer.migrationId
    this.#log = init.logger.child({ migration: this.id, vm: init.offer.spec.id, side: 'in' })
    this.#signal = AbortSignal.any([this.#ac.signal, init.signal])
    setMaxListeners(Number.POSITIVE_INFINITY, this.#signal)
    this.#streams = new Array(init.offer.streams).fill(undefined)
    this.#applied = new Array(init.offer.streams).fill(0)
    for (let k = 0; k < init.offer.streams; k++)
      this.#tables.push({ memory: new DedupTable(), disk: new DedupTable() })
    const g = init.offer.geometry
    this.#zeroPage = new Uint8Array(g.pageSize)
    this.#zeroBlock = new Uint8Array(g.blockSize)
    if (init.offer.mode !== 'precopy') {
      this.#pageHashes = new Uint8Array(g.pageCount * HASH_BYTES)
      this.#nonZero = new Bitmap(g.pageCount)
    }
    init.onOutcome('pending')
    this.#ready = init.instance.then((vm) => {
      this.#vm = vm
      this.#preparedMs = Math.round((performance.now() - this.#t0) * 10) / 10
      return vm
    })
    this.#ready.catch((err: unknown) => {
      this.#ac.abort(
        err instanceof MigrationError
          ? err
          : new MigrationRefusedError(
              'NO_CAPACITY',
              `cannot create the VM: ${asMigrationError(err).message}`,
            ),
      )
    })
    this.done = this.#run()
  }

  get vmId(): string {
    return this.#i.offer.spec.id
  }

  get from(): string {
    return this.#i.from
  }

  view(): MigrationView {
    return {
      id: this.id,
      vmId: this.vmId,
      direction: 'in',
      from: this.#i.from,
      to: this.#i.to,
      mode: this.#i.offer.mode,
      postcopy: this.#postcopy,
      phase: this.#phase,
      round: this.#round,
      startedAt: this.#startedAt,
      ...this.#c,
      dirtyRateMiBps: 0,
      bandwidthMiBps: 0,
      ...(this.#totalMs !== undefined ? { totalMs: this.#totalMs } : {}),
      ...(this.#epoch !== undefined ? { epoch: this.#epoch } : {}),
      ...(this.#error ? { error: this.#error } : {}),
      ...(this.#channel ? { channel: this.#channel } : {}),
    }
  }

  /** Drops the migration unless it has committed; false if too late. */
  cancel(): boolean {
    if (this.#state === 'committing' || this.#state === 'committed' || this.#state === 'postcopy')
      return false
    if (this.#state === 'ended') return false
    this.#ac.abort(new CancelledError())
    return true
  }

  /** Binds data stream `index` (from the DataHello); false if the slot is taken or out of range. */
  attachData(framed: FrameChannel, index: number, channel: 'libp2p' | 'direct-sealed' = 'libp2p'): boolean {
    if (this.#state !== 'receiving' || index >= this.#streams.length || this.#streams[index]) return false
    this.#streams[index] = framed
    this.#channel ??= channel
    this.#wake?.()
    void this.#receive(index, framed).catch((err: unknown) => {
      const e = asMigrationError(err, 'LINK')
      framed.abort(e)
      this.#ac.abort(e)
    })
    return true
  }

  #setPhase(p: Phase): void {
    this.#phase = p
    this.#emit(true)
  }

  #emit(force = false): void {
    const now = performance.now()
    if (!force && now - this.#lastEmit < 100) return
    this.#lastEmit = now
    try {
      this.#i.onChange(this.view())
    } catch {
      // listeners' problem
    }
  }

  async #run(): Promise<MigrationView> {
    const { control, offer, hooks, timeouts } = this.#i
    let resumed = false
    // A partition that resets nothing leaves every read pending: give up (and discard) after the
    // stall timeout without a frame, as the source does without an acknowledgement
    const idle = setInterval(() => {
      if (this.#state === 'receiving' && performance.now() - this.#lastHeard > timeouts.stallTimeoutMs)
        this.#ac.abort(new LinkError(`nothing from the source for ${timeouts.stallTimeoutMs} ms`))
    }, 1000)
    idle.unref()
    try {
      let sw = await control.expect(['switchover', 'contentQuery'], this.#signal)
      while (sw.msg === 'contentQuery') {
        this.#lastHeard = performance.now()
        await this.#answerContentQuery(sw.contentQuery?.hashes ?? new Uint8Array(0))
        sw = await control.expect(['switchover', 'contentQuery'], this.#signal)
      }
      const s = sw.switchover!
      const instance = await this.#vmReady()
      // Milestones of the pause as seen here (ms since the switchover arrived), logged at the end
      this.#switchedAt = performance.now()
      this.#lastHeard = this.#switchedAt
      if (this.#streams.some((f) => f === undefined)) await this.#allStreamsOpen()
      // Early switchover (pre-copy): the last round may still be on its way; it is applied (and
      // acknowledged) before anything is verified, and no frame may follow it
      if ((s.streamFrames?.length ?? 0) > 0) await this.#lastFrames(s)
      clearInterval(idle)
      if ((s.round ?? 0) < this.#lastRound) {
        throw new ProtocolError(`switchover at round ${s.round}, last frame of round ${this.#lastRound}`)
      }
      this.#state = 'switched'
      this.#setPhase('verify')
      if (s.postcopy) {
        if (offer.mode === 'precopy' || !this.#pageHashes)
          throw new ProtocolError('post-copy in a pre-copy migration')
        let pending: Bitmap
        try {
          pending = Bitmap.fromBytes(s.pending ?? new Uint8Array(0), offer.geometry.pageCount)
        } catch (err) {
          throw new ProtocolError(`bad pending bitmap: ${(err as Error).message}`)
        }
        this.#pending = pending
        this.#received = new Bitmap(offer.geometry.pageCount)
        this.#localWritten = new Bitmap(offer.geometry.pageCount)
        this.#requested = new Bitmap(offer.geometry.pageCount)
        const disk = await diskDigestOf(instance.disk)
        const ok = disk === s.diskDigest
        await control.send(
          { verified: { ok, digest: disk, message: ok ? '' : 'disk digest differs' } },
          this.#signal,
        )
        if (!ok) throw new VerifyFailedError(`disk digest ${disk} differs from the source's ${s.diskDigest}`)
      } else {
        this.#mark('digesting')
        const d = await instance.digest()
        const ok = d.combined === s.digest
        // A committing switchover (one round trip) gets an answer here only if the check failed
        if (!ok || !s.commitEpoch) {
          await control.send(
            { verified: { ok, digest: d.combined, message: ok ? '' : 'digest differs' } },
            this.#signal,
          )
        }
        if (!ok) throw new VerifyFailedError(`digest ${d.combined} differs from the source's ${s.digest}`)
      }
      this.#mark('verified')
      this.#setPhase('handover')
      const committing = !s.postcopy && Number(s.commitEpoch ?? 0) > 0
      const newEpoch = committing
        ? Number(s.commitEpoch)
        : ((
            await withTimeout(timeouts.stepTimeoutMs * 2, 'COMMIT', this.#signal, (sig) =>
              control.expect(['commit'], sig),
            )
          ).commit?.epoch ?? 0)
      if (newEpoch !== offer.epoch + 1)
        throw new ProtocolError(`COMMIT with epoch ${newEpoch}, expected ${offer.epoch + 1}`)
      // From here the VM is ours once the journal has it: no cancel, no discard on a dead stream
      this.#state = 'committing'
      this.#epoch = newEpoch
      this.#mark('commit')
      await hooks.onCommit?.(this.view(), instance, newEpoch, { signal: this.#i.signal })
      this.#mark('journaled')
      this.#state = 'committed'
      this.#i.onOutcome('committed', newEpoch)
      this.#i.reservation.release()
      if (s.postcopy) {
        this.#postcopy = true
        instance.memory.startDirtyTracking()
        instance.memory.takeDirtyPages()
      }
      // A VM its owner had paused arrives paused (and so byte for byte as it left).
      if (!offer.paused || s.postcopy) await instance.resume()
      resumed = true
      this.#mark('resumed')
      await control.send({ running: { epoch: newEpoch } }, this.#i.signal).catch((err: unknown) => {
        // The source asks the status protocol when RUNNING does not arrive
        this.#log.warn({ err: asMigrationError(err).message }, 'could not send RUNNING')
      })
      if (s.postcopy) await this.#postcopyPhase()
      this.#finish('done')
    } catch (err) {
      await this.#fail(err, resumed)
    } finally {
      clearInterval(idle)
      this.#stopFaultPolling()
      await Promise.allSettled([control.framed.close(), ...this.#streams.map((f) => f?.close())])
    }
    return this.view()
  }

  /**
   * The switchover came before the DataHello of some data stream: wait for them (at most half a step
   * timeout, well inside the source's wait for RUNNING). A hello goes over its own data connection
   * (direct or hole-punched), the switchover over the control stream (maybe relayed): with no frame in
   * between (an idle VM sends none) nothing orders the two.
   */
  async #allStreamsOpen(): Promise<void> {
    const ms = Math.round(this.#i.timeouts.stepTimeoutMs / 2)
    const missing = () => this.#streams.flatMap((f, k) => (f === undefined ? [k] : []))
    this.#log.info({ missing: missing() }, 'switchover before every data stream opened: waiting for them')
    try {
      await withTimeout(ms, 'data streams', this.#signal, (signal) =>
        this.#until(() => missing().length === 0, signal),
      )
    } catch (err) {
      if (this.#signal.aborted) throw err
      throw new ProtocolError(
        `switchover before every data stream opened (streams ${missing().join(', ')} missing after ${ms} ms)`,
      )
    }
  }

  /** Waits until every stream applied the frames the switchover counts (the stall timeout still runs). */
  async #lastFrames(s: NonNullable<Control['switchover']>): Promise<void> {
    const expected = s.streamFrames ?? []
    if (s.postcopy || expected.length !== this.#streams.length)
      throw new ProtocolError(`switchover counts frames of ${expected.length} streams`)
    for (let k = 0; k < expected.length; k++) {
      if (!(expected[k]! >= this.#applied[k]!))
        throw new ProtocolError(
          `switchover counts ${expected[k]} frames on stream ${k}, ${this.#applied[k]} came`,
        )
    }
    this.#expected = expected
    await this.#until(() => this.#applied.every((n, k) => n >= expected[k]!), this.#signal)
    this.#signal.throwIfAborted()
    this.#mark('lastFrames')
  }

  /** The VM, once made; throws if it cannot be, or when the migration aborts first. */
  async #vmReady(): Promise<VmInstance> {
    if (this.#vm) return this.#vm
    let onAbort: (() => void) | undefined
    try {
      return await Promise.race([
        this.#ready,
        new Promise<never>((_, reject) => {
          onAbort = () => reject(this.#signal.reason)
          if (this.#signal.aborted) onAbort()
          else this.#signal.addEventListener('abort', onAbort, { once: true })
        }),
      ])
    } finally {
      if (onAbort) this.#signal.removeEventListener('abort', onAbort)
    }
  }

  /** Waits until `done()`, checked again whenever a data stream attaches or applies a frame. */
  async #until(done: () => boolean, signal: AbortSignal): Promise<void> {
    while (!done()) {
      signal.throwIfAborted()
      let onAbort: (() => void) | undefined
      await new Promise<void>((resolve) => {
        this.#wake = resolve
        onAbort = resolve
        signal.addEventListener('abort', onAbort, { once: true })
      })
      if (onAbort) signal.removeEventListener('abort', onAbort)
      this.#wake = undefined
    }
  }

  /** Which of these content hashes our store holds (a bitmap); those pages are pinned for us. */
  async #answerContentQuery(hashes: Uint8Array): Promise<void> {
    if (!this.#i.offer.geometry.dedup) throw new ProtocolError('content query in a migration without dedup')
    const n = hashes.length / HASH_BYTES
    const have = new Uint8Array(Math.ceil(n / 8))
    const store = this.#i.store
    for (let j = 0; j < n && store; j++) {
      const key = hashKey(hashes.subarray(j * HASH_BYTES, (j + 1) * HASH_BYTES))
      const found = store.lookup(key)
      if (!found) continue
      this.#pinned.set(key, found)
      have[j >>> 3]! |= 1 << (j & 7)
    }
    await this.#i.control.send({ contentReply: { have } }, this.#signal)
  }

  // ------------------------------------------------------------------ data

  async #receive(k: number, framed: FrameChannel): Promise<void> {
    const g = this.#i.offer.geometry
    let seq = 0
    // Frames wait (in the stream, under its flow control) until the VM exists; a VM that cannot be
    // made aborts the migration (see the constructor), not this stream
    try {
      await this.#vmReady()
    } catch {
      return
    }
    while (true) {
      const bytes = await framed.read(this.#signal)
      if (bytes === null) return
      this.#lastHeard = performance.now()
      const f = parseFrame(bytes, g)
      if (f.seq !== seq) throw new ProtocolError(`frame ${f.seq} on stream ${k}, expected ${seq}`)
      if (this.#expected && this.#state === 'receiving' && seq >= this.#expected[k]!)
        throw new ProtocolError(`frame ${f.seq} on stream ${k} after the switchover's last`)
      seq++
      if (f.codec === 'lz4' && !this.#i.offer.compression)
        throw new ProtocolError('lz4 frame without compression')
      await this.#apply(k, f)
      // Digest tree groups of what just arrived, hashed now rather than in the pause's check
      if (this.#state === 'receiving') this.#vm!.warmDigest?.()
      this.#applied[k]!++
      this.#wake?.()
      this.#c.frames++
      this.#c.wireBytes += bytes.length
      if (f.codec === 'lz4') this.#c.compressedFrames++
      await framed.write(pb.DataAck.encode({ seq: f.seq, bytes: bytes.length }).finish(), this.#signal)
      this.#emit()
    }
  }

  async #apply(k: number, f: ParsedFrame): Promise<void> {
    const postcopy = this.#state === 'committed' || this.#state === 'postcopy'
    if (!postcopy && this.#state !== 'receiving') throw new ProtocolError(`data frame while ${this.#state}`)
    if (!postcopy) {
      if (f.round < this.#lastRound)
        throw new ProtocolError(`frame of round ${f.round} after round ${this.#lastRound}`)
      this.#lastRound = f.round
      this.#round = f.round
    }
    const g = this.#i.offer.geometry
    const payload =
      f.codec === 'lz4' ? await decompressPayload(f.payload, f.rawLength, FRAME_PAYLOAD_BYTES) : f.payload
    this.#signal.throwIfAborted()
    // Guest writes up to now (the guest cannot run while this frame is applied: same thread), once per
    // frame: polling them per page made post-copy O(pages^2)
    if (postcopy) this.#absorbLocalWrites()
    const { memory, disk } = this.#vm!
    const diskWrites: Promise<void>[] = []
    let off = 0
    for (const run of f.runs) {
      const unit = run.space === 'memory' ? g.pageSize : g.blockSize
      if (postcopy && (run.space !== 'memory' || run.kind === 'ref' || run.hashes)) {
        throw new ProtocolError('post-copy frames carry memory pages only')
      }
      const table = this.#tables[k]![run.space]
      // A run of block bytes is contiguous in the payload: one write for the run where the disk can
      const runStart = off
      const batchBlocks = run.space === 'disk' && run.kind === 'data' && disk.writeBlocks !== undefined
      for (let j = 0; j < run.count; j++) {
        const idx = run.first + j
        const hash = run.hashes?.subarray(j * HASH_BYTES, (j + 1) * HASH_BYTES)
        let data: Uint8Array
        if (run.kind === 'data') {
          data = payload.subarray(off, off + unit)
          off += unit
          if (hash) {
            if (!table.register(idx, hashKey(hash))) throw new ProtocolError('dedup table overflow')
          } else {
            table.forget(idx)
          }
        } else if (run.kind === 'zero') {
          data = run.space === 'memory' ? this.#zeroPage : this.#zeroBlock
          table.forget(idx)
        } else {
          const key = hashKey(hash!)
          const from = table.lookup(key)
          const stored = from === undefined && run.space === 'memory' ? this.#pinned.get(key) : undefined
          if (from === undefined && !stored)
            throw new ProtocolError(`reference to content stream ${k} never registered`)
          if (stored) {
            data = stored.image.page(stored.page)
            this.#c.storePages++
          } else if (run.space === 'memory') {
            data = memory.readPage(from!)
          } else {
            // The referenced block may still be on its way to the file
            await Promise.all(diskWrites.splice(0))
            data = await disk.readBlock(from!)
          }
          table.register(idx, key)
          if (stored) {
            // counted above
          } else if (run.space === 'memory') this.#c.dedupPages++
          else this.#c.dedupBlocks++
        }
        if (run.space === 'memory') {
          this.#c.pagesSent++
          if (run.kind === 'zero') this.#c.zeroPages++
          if (postcopy) this.#postcopyPage(idx, run.kind === 'zero' ? null : data)
          else {
            // writePage hashes the page (the VM keeps it for its digest): reuse that hash
            memory.writePage(idx, data)
            if (this.#pageHashes) this.#trackHash(idx, run.kind === 'zero' ? null : memory.pageHash(idx))
          }
        } else {
          this.#c.blocksSent++
          if (run.kind === 'zero') this.#c.zeroBlocks++
          if (!batchBlocks) diskWrites.push(disk.writeBlock(idx, data))
        }
        if (run.kind === 'data') this.#c.bytesSent += unit
      }
      if (batchBlocks && run.count > 0)
        diskWrites.push(disk.writeBlocks!(run.first, payload.subarray(runStart, off)))
    }
    await Promise.all(diskWrites)
  }

  /** Keeps the per-page hash of the source image (modes that may post-copy); null: a zero page. */
  #trackHash(idx: number, pageHash: Uint8Array | null): void {
    if (!this.#pageHashes || !this.#nonZero) return
    if (pageHash === null) {
      this.#nonZero.clear(idx)
      return
    }
    this.#pageHashes.set(pageHash.subarray(0, HASH_BYTES), idx * HASH_BYTES)
    this.#nonZero.set(idx)
  }

  // ------------------------------------------------------------------ post-copy

  #pollTimer: NodeJS.Timeout | undefined

  #stopFaultPolling(): void {
    if (this.#pollTimer) clearInterval(this.#pollTimer)
    this.#pollTimer = undefined
  }

  async #postcopyPhase(): Promise<void> {
    const { control, timeouts } = this.#i
    this.#state = 'postcopy'
    this.#setPhase('postcopy')
    const pending = this.#pending!
    let pushDone: string | undefined
    const reader = (async () => {
      const m = await control.expect(['pushDone'], this.#signal)
      pushDone = m.pushDone?.pageDigest ?? ''
      this.#wakeReceived?.()
    })()
    // The wait below wakes on a failed reader or an abort too; it checks these flags, not promises that
    // would collect a reaction per wake (one per frame, for as long as the push runs)
    let readerFailed: { err: unknown } | undefined
    reader.catch((err: unknown) => {
      readerFailed = { err }
      this.#wakeReceived?.()
    })
    this.#pollTimer = setInterval(() => {
      try {
        this.#absorbLocalWrites()
        this.#sendFaults()
      } catch (err) {
        this.#ac.abort(asMigrationError(err))
      }
    }, FAULT_POLL_MS)
    this.#pollTimer.unref()
    const all = pending.count()
    // Wakes on every received page or the push-done; a watchdog fails a push that stalls
    let lastProgress = performance.now()
    let stalled: Error | undefined
    const watchdog = setInterval(() => {
      if (performance.now() - lastProgress > timeouts.stallTimeoutMs) {
        stalled = new LinkError(`no post-copy page for ${timeouts.stallTimeoutMs} ms`)
        this.#wakeReceived?.()
      }
    }, 1000)
    watchdog.unref()
    const onAbort = () => this.#wakeReceived?.()
    this.#signal.addEventListener('abort', onAbort, { once: true })
    const check = () => {
      this.#signal.throwIfAborted()
      if (readerFailed) throw readerFailed.err
      if (stalled) throw stalled
    }
    try {
      while (this.#receivedCount < all || pushDone === undefined) {
        check()
        const before = this.#receivedCount
        await new Promise<void>((resolve) => (this.#wakeReceived = resolve))
        check()
        if (this.#receivedCount !== before) lastProgress = performance.now()
      }
    } finally {
      clearInterval(watchdog)
      this.#signal.removeEventListener('abort', onAbort)
    }
    this.#stopFaultPolling()
    const d = new PageListDigest()
    for (const i of this.#nonZero!.indices())
      d.add(i, this.#pageHashes!.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES))
    const got = d.hex()
    const ok = got === pushDone
    await control.send({ complete: { ok, message: ok ? '' : `page digest ${got} differs` } }, this.#i.signal)
    if (!ok) throw new VerifyFailedError(`post-copy page digest ${got} differs from the source's ${pushDone}`)
  }

  /** Guest writes since the last look: a write to a page still missing is a fault. */
  #absorbLocalWrites(): void {
    const memory = this.#vm!.memory
    const pending = this.#pending!
    for (const i of memory.takeDirtyPages().indices()) {
      if (!pending.get(i) || this.#received!.get(i)) continue
      this.#localWritten!.set(i)
      if (!this.#requested!.get(i)) {
        this.#requested!.set(i)
        this.#faultQueue.push(i)
      }
    }
  }

  #sendFaults(): void {
    while (this.#faultQueue.length > 0) {
      const pages = this.#faultQueue.splice(0, MAX_FETCH_PAGES)
      this.#c.faultPages += pages.length
      this.#i.control.send({ fetch: { pages } }, this.#i.signal).catch((err: unknown) => {
        this.#ac.abort(asMigrationError(err, 'LINK'))
      })
    }
  }

  #postcopyPage(idx: number, data: Uint8Array | null): void {
    const pending = this.#pending!
    if (!pending.get(idx) || this.#received!.get(idx))
      throw new ProtocolError(`page ${idx} pushed twice or not pending`)
    this.#received!.set(idx)
    this.#receivedCount++
    // The guest's own write is newer than the source's page: keep it
    const memory = this.#vm!.memory
    if (!this.#localWritten!.get(idx)) {
      memory.writePage(idx, data ?? this.#zeroPage)
      this.#trackHash(idx, memory.pageHash(idx))
    } else {
      this.#trackHash(idx, data === null || isZero(data) ? null : contentHash(data))
    }
    this.#wakeReceived?.()
  }

  // ------------------------------------------------------------------ end

  #switchedAt: number | undefined
  readonly #marks: Record<string, number> = {}

  #mark(name: string): void {
    if (this.#switchedAt !== undefined)
      this.#marks[name] = Math.round((performance.now() - this.#switchedAt) * 10) / 10
  }

  #finish(phase: 'done' | 'failed' | 'cancelled'): void {
    this.#state = 'ended'
    this.#pinned.clear()
    this.#totalMs = performance.now() - this.#t0
    this.#setPhase(phase)
    this.#log.info(
      {
        phase,
        totalMs: Math.round(this.#totalMs),
        channel: this.#channel,
        preparedMs: this.#preparedMs,
        switchover: this.#marks,
      },
      'incoming migration finished',
    )
  }

  async #fail(err: unknown, resumed: boolean): Promise<void> {
    const e =
      this.#ac.signal.aborted && this.#ac.signal.reason instanceof MigrationError
        ? this.#ac.signal.reason
        : asMigrationError(err)
    this.#error = { code: e.code, message: e.message }
    const { control } = this.#i
    control.framed.abort(new Error(`migration failed: ${e.code}`))
    for (const f of this.#streams) f?.abort(new Error('migration failed'))
    // A VM still being made is destroyed once it is (a failed one left nothing to destroy)
    const instance = this.#vm ?? (await this.#i.instance.catch(() => undefined))
    if (this.#state === 'committed' || this.#state === 'postcopy') {
      // Ours for good (the epoch moved): after a broken post-copy the guest cannot get its missing
      // pages, so it is stopped where it is (paused) rather than run on holes
      this.#error = {
        code: this.#postcopy ? 'POSTCOPY_LOST' : e.code,
        message: e.message,
      }
      if (this.#postcopy && resumed) await instance?.pause().catch(() => undefined)
      this.#log.error({ err: e.message }, 'migration failed after commit')
      this.#finish('failed')
      return
    }
    this.#i.onOutcome('aborted', undefined, `${e.code}: ${e.message}`)
    this.#i.reservation.release()
    await instance?.destroy().catch((destroyErr: unknown) => {
      this.#log.error({ err: asMigrationError(destroyErr).message }, 'could not discard the incoming VM')
    })
    this.#log.info({ code: e.code, err: e.message }, 'incoming migration discarded')
    this.#finish(e instanceof CancelledError ? 'cancelled' : 'failed')
  }
}

/** Binds an incoming data stream: reads its DataHello (bounded), then hands it to `attach`. */
export async function readDataHello(
  framed: FrameChannel,
  signal: AbortSignal,
): Promise<{ migrationId: string; reservationId: string; streamIndex: number }> {
  const bytes = await framed.read(signal)
  if (bytes === null) throw new LinkError('data stream ended before its hello')
  let h: InstanceType<typeof pb.DataHello>
  try {
    h = pb.DataHello.decode(bytes)
  } catch {
    throw new ProtocolError('undecodable data hello')
  }
  if (h.migrationId.length === 0 || h.migrationId.length > MAX_ID_LENGTH)
    throw new ProtocolError('bad migration id')
  return { migrationId: h.migrationId, reservationId: h.reservationId, streamIndex: h.streamIndex }
}

export function newDataFramed(stream: ConstructorParameters<typeof Framed>[0]): Framed {
  return new Framed(stream, MAX_FRAME_BYTES, DATA_READ_BUFFER)
}

function isZero(data: Uint8Array): boolean {
  return (
    Buffer.from(data.buffer, data.byteOffset, data.byteLength).equals(ZERO_4K.subarray(0, data.length)) &&
    data.length <= ZERO_4K.length
  )
}

const ZERO_4K = Buffer.alloc(64 * 1024)

export type { Space }

function checkInvite(p: { attemptId?: string | null }, bad: (m: string) => Error): PunchInvite {
  try {
    return decodeOffer(pb.PunchOffer.encode(p).finish(), true)
  } catch (err) {
    throw bad((err as Error).message)
  }
}
