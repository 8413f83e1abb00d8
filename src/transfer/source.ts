// The source side of one migration: offer, pre-copy rounds (or the disk alone for post-copy), pause,
// stop-copy, verify, handover, and the post-copy push. See README.md "Exactly one running copy" for
// what happens on each failure; the short version:
// - anything that fails before COMMIT is sent: the VM is resumed here (if paused) and the migration
//   ends `failed` (or `cancelled`); the destination discards its copy when its streams die;
// - COMMIT sent but no RUNNING: the VM stays paused here and the destination is asked (status
//   protocol, with backoff, within `statusTimeoutMs`) whether it committed: yes -> release, no ->
//   resume here, no answer -> HANDOVER_IN_DOUBT with the VM still paused (never two copies running).

import { setMaxListeners } from 'node:events'
import type { PeerId } from '@libp2p/interface'
import type { Logger } from 'pino'
import { pb } from '../proto/index.js'
import { Bitmap, type RetainedMemory, type VmInstance, type VmSpec } from '../vm/index.js'
import { compressPayload } from './compress.js'
import {
  CONTROL_PROTOCOL,
  DATA_PROTOCOL,
  FRAME_PAYLOAD_BYTES,
  HASH_BYTES,
  MAX_QUERY_HASHES,
  MAX_RUNS,
  MAX_WINDOW_BYTES,
  STOP_AIM,
} from './constants.js'
import type { ContentStore } from './content-store.js'
import { CostModel } from './cost.js'
import { DataSender } from './data-sender.js'
import { DedupTable, hashKey } from './dedup.js'
import { diskDigestOf, pageDigestOf } from './digest.js'
import { connectDirect, type DirectGrant, directHostOf } from './direct.js'
import {
  asMigrationError,
  CancelledError,
  HandoverInDoubtError,
  LinkError,
  MigrationError,
  MigrationRefusedError,
  ProtocolError,
  type RefusalCode,
  VerifyFailedError,
} from './errors.js'
import { encodeFrameParts, FrameBuilder, type Space } from './frame.js'
import { nicsToOffer } from './nics.js'
import type { ResolvedOptions } from './options.js'
import type { MigrationControlMsg } from './pb-types.js'
import { decideNextRound, estimateEtaMs, fitRoundCost, type RoundDecision, SHRINK_FACTOR } from './policy.js'
import { type Counters, emptyCounters, MiB, type MigrationView, type Phase } from './progress.js'
import {
  askObserved,
  decodeOffer,
  MAX_PUNCH_STREAMS,
  newPunchSecret,
  PUNCH_TIMEOUT_MS,
  type PunchEndpoint,
  type PunchInvite,
  pickPunchPorts,
  punchAll,
  punchPorts,
  withPorts,
} from './punch.js'
import { sleep, TokenBucket } from './rate.js'
import { DirtyRateTrigger, roundOrder, throttleFor, writeRateBps } from './round-plan.js'
import { type Outcome, queryStatus } from './status.js'
import type { MigrationHost, SourceHooks, TransferTimeouts } from './types.js'
import { type Control, ControlChannel, type FrameChannel, Framed, withTimeout } from './wire.js'

/** Pages (and blocks) go to streams in shards of this many, so an index always uses the same stream. */
const PAGE_SHARD = 64
const BLOCK_SHARD = 4
/** Disk reads in flight per stream while a round's blocks are framed (each is a thread-pool trip). */
const BLOCK_READ_AHEAD = 16
/** The early switchover leaves at most this long (at the measured rate) of the last round unacknowledged. */
const EARLY_SWITCHOVER_MS = 500
/** Payload buffers kept per stream (the 8 MiB window holds 8 frames of 1 MiB). */
const POOL_BUFFERS = 10
/** Auto-converge: the share of the guest held back at each step (QEMU goes 20 % + 10 % .. 99 %). */
const THROTTLE_STEPS = [0.5, 0.75, 0.9, 0.97, 0.99]
/**
 * Auto-converge counts the guest's dirty pages this long after tracking started, while round 0 runs:
 * short enough that the count is not yet saturated by the hot set, long enough for a few workload ticks.
 */
const DIRTY_SAMPLE_MS = 300
/** Rounds shorter than this do not feed the predictive throttle (their dirty count is too coarse). */
const MIN_RATE_MS = 100

export interface OutgoingInit {
  id: string
  host: MigrationHost
  to: PeerId
  instance: VmInstance
  spec: VmSpec
  epoch: number
  options: ResolvedOptions
  hooks: SourceHooks
  timeouts: TransferTimeouts
  logger: Logger
  /** Where the released VM's memory is kept as a dedup source (none: not kept). */
  store?: ContentStore
  /** Ask for a direct data channel (direct.ts); absent: libp2p streams only. */
  direct?: { connectTimeoutMs: number }
  /**
   * Why the relay cannot carry this migration, when only a relayed connection reaches the destination
   * and its limit is smaller than the VM: then the hole punch is the only way, and without it the
   * migration fails (LINK, "cannot reach X directly: ...") before any data is sent.
   */
  relayTooSmall?: () => string | undefined
  /** The service's lifetime: aborted when it stops. */
  signal: AbortSignal
  onChange: (view: MigrationView) => void
}

const MODE_TO_PB = {
  precopy: pb.MigrationMode.PRECOPY,
  postcopy: pb.MigrationMode.POSTCOPY,
  auto: pb.MigrationMode.AUTO,
}

const REFUSE_FROM_PB: Record<number, RefusalCode> = {
  [pb.RefuseCode.UNKNOWN_VM]: 'UNKNOWN_VM',
  [pb.RefuseCode.NO_CAPACITY]: 'NO_CAPACITY',
  [pb.RefuseCode.ALREADY_MIGRATING]: 'ALREADY_MIGRATING',
  [pb.RefuseCode.BUSY]: 'BUSY',
  [pb.RefuseCode.BAD_OFFER]: 'BAD_OFFER',
  [pb.RefuseCode.VM_EXISTS]: 'VM_EXISTS',
  [pb.RefuseCode.STOPPING]: 'STOPPING',
}

export class OutgoingMigration {
  readonly id: string
  readonly done: Promise<MigrationView>
  readonly #i: OutgoingInit
  readonly #log: Logger
  readonly #ac = new AbortController()
  readonly #signal: AbortSignal
  readonly #c: Counters = emptyCounters()
  readonly #cost: CostModel
  readonly #bucket: TokenBucket | undefined
  #phase: Phase = 'offer'
  #round = 0
  #postcopy = false
  readonly #startedAt = Date.now()
  readonly #t0 = performance.now()
  #totalMs: number | undefined
  #downtimeMs: number | undefined
  #pausedAt: number | undefined
  #newEpoch: number | undefined
  #error: { code: string; message: string } | undefined
  #bandwidthBps = 0
  #dirtyBps = 0
  #roundRemaining = 0
  #commitSent = false
  /** The VM was paused by its owner before the migration: it stays paused, here or there. */
  #wasPaused = false
  #control: ControlChannel | undefined
  #senders: DataSender[] = []
  /** Payload buffers per data stream (index as #senders). */
  readonly #pools: PayloadPool[] = []
  #tables: { memory: DedupTable; disk: DedupTable }[] = []
  #lastEmit = 0
  /** Auto-converge step (index into THROTTLE_STEPS + 1; 0 = none) and the share held back. */
  #throttleStep = 0
  #throttle = 0
  /** When dirty tracking started (the round-0 sample of the guest's write rate counts from here). */
  #trackedAt = 0
  /** Per pre-copy round, what it measured and the throttle after it (in the finished log line). */
  #roundLog: {
    ms: number
    sentMiB: number
    leftMiB: number
    writeMiBps: number
    linkMiBps: number
    throttle: number
  }[] = []
  /** Slows the guest early when it dirties half of what each round sends (round-plan.ts). */
  readonly #dirtyTrigger = new DirtyRateTrigger()

  constructor(init: OutgoingInit) {
    this.id = init.id
    this.#i = init
    this.#log = init.logger.child({ migration: init.id, vm: init.spec.id })
    this.#signal = AbortSignal.any([this.#ac.signal, init.signal])
    setMaxListeners(Number.POSITIVE_INFINITY, this.#signal)
    this.#cost = new CostModel(init.options.compression, init.options.dedup)
    this.#bucket = init.options.bandwidthMiBps
      ? new TokenBucket(init.options.bandwidthMiBps * MiB)
      : undefined
    this.done = this.#run()
  }

  get phase(): Phase {
    return this.#phase
  }

  view(): MigrationView {
    const now = performance.now()
    const bw = this.#cost.link.rate(now) || this.#bandwidthBps
    return {
      id: this.id,
      vmId: this.#i.spec.id,
      direction: 'out',
      from: this.#i.host.peerId.toString(),
      to: this.#i.to.toString(),
      mode: this.#i.options.mode,
      postcopy: this.#postcopy,
      phase: this.#phase,
      round: this.#round,
      startedAt: this.#startedAt,
      ...this.#c,
      dirtyRateMiBps: this.#dirtyBps / MiB,
      bandwidthMiBps: bw / MiB,
      etaMs: estimateEtaMs({
        phase: this.#phase,
        roundRemainingBytes: this.#roundRemaining,
        dirtyBps: this.#dirtyBps,
        bandwidthBps: bw,
        downtimeMs: this.#i.options.downtimeMs,
      }),
      ...(this.#throttle > 0 ? { throttle: this.#throttle } : {}),
      ...(this.#totalMs !== undefined ? { totalMs: this.#totalMs } : {}),
      ...(this.#downtimeMs !== undefined ? { downtimeMs: this.#downtimeMs } : {}),
      ...(this.#newEpoch !== undefined ? { epoch: this.#newEpoch } : {}),
      ...(this.#error ? { error: this.#error } : {}),
      ...(this.#channel ? { channel: this.#channel } : {}),
      ...(this.#channelNote ? { channelNote: this.#channelNote } : {}),
    }
  }

  /** Rolls back if the handover has not started; false (and nothing changes) once COMMIT is sent. */
  cancel(): boolean {
    if (this.#commitSent || this.#totalMs !== undefined) return false
    this.#ac.abort(new CancelledError())
    return true
  }

  /** Milestones of the downtime (ms since the pause), for the logs. */
  readonly #marks: Record<string, number> = {}

  /** Milestones of the whole migration (ms since it began), for the logs. */
  readonly #timeline: Record<string, number> = {}

  #at(name: string): void {
    this.#timeline[name] = Math.round((performance.now() - this.#t0) * 10) / 10
  }

  #mark(name: string): void {
    this.#at(name)
    if (this.#pausedAt !== undefined)
      this.#marks[name] = Math.round((performance.now() - this.#pausedAt) * 10) / 10
  }

  #setPhase(p: Phase): void {
    this.#phase = p
    this.#log.debug({ phase: p, round: this.#round }, 'migration phase')
    this.#emit(true)
  }

  #emit(force = false): void {
    const now = performance.now()
    if (!force && now - this.#lastEmit < 100) return
    this.#lastEmit = now
    try {
      this.#i.onChange(this.view())
    } catch {
      // a listener's failure is not the migration's
    }
  }

  async #run(): Promise<MigrationView> {
    const { instance } = this.#i
    let paused = false
    this.#wasPaused = instance.state === 'paused'
    try {
      await this.#offer()
      this.#at('accepted')
      // Tracking starts before the streams open: round 0 then knows a little of what the guest writes
      instance.memory.startDirtyTracking()
      instance.disk.startDirtyTracking()
      this.#trackedAt = performance.now()
      await this.#openDataStreams()
      this.#at('streams')
      const decision = await this.#precopy()
      // Stop-copy: the guest stops here; from now on every ms counts as downtime
      this.#at('decided')
      this.#setPhase('stopcopy')
      await instance.pause()
      paused = true
      this.#pausedAt = performance.now()
      this.#mark('paused')
      if (decision.action === 'postcopy' || this.#i.options.mode === 'postcopy') {
        this.#postcopy = true
        await this.#switchoverPostcopy(decision.action === 'postcopy')
        await this.#handover()
      } else {
        // Pre-copy: the handover is journaled while the last round flows, and the switchover carries
        // the COMMIT (one round trip: switchover -> RUNNING)
        await this.#switchoverPrecopy()
      }
      if (this.#postcopy) {
        try {
          await this.#push()
        } catch (err) {
          // The guest runs at the destination on pages only we have: a broken push loses it
          const e = asMigrationError(err)
          throw e instanceof VerifyFailedError ? e : new MigrationError('POSTCOPY_LOST', e.message)
        }
      }
      await this.#release()
      this.#at('released')
      this.#finish('done')
      // Indexed after the figures are taken (a full 1 GiB image: ~0.2 s), before `done` resolves
      try {
        if (this.#retained) this.#i.store?.retain(this.#i.spec.id, this.#retained)
      } catch (err) {
        this.#log.debug({ err: asMigrationError(err).message }, 'memory not indexed for dedup')
      }
      this.#retained = undefined
      this.#at('retained')
    } catch (err) {
      await this.#fail(err, paused)
    } finally {
      try {
        if (this.#throttle > 0) instance.throttle?.(0)
      } catch {
        // the VM may be gone (released)
      }
      try {
        instance.memory.stopDirtyTracking()
        instance.disk.stopDirtyTracking()
      } catch {
        // the VM may be gone (released)
      }
      await this.#closeStreams()
    }
    return this.view()
  }

  // ------------------------------------------------------------------ offer

  async #offer(): Promise<void> {
    const { host, to, spec, instance, epoch, options, timeouts } = this.#i
    const stream = await withTimeout(timeouts.dialTimeoutMs, 'dial', this.#signal, (signal) =>
      host.dialProtocol(to, CONTROL_PROTOCOL, { signal }),
    )
    this.#at('dialed')
    const control = new ControlChannel(stream)
    this.#control = control
    this.#directHost = this.#directHostToAsk()
    // No direct connection: try a hole punch of our own (punch.ts) for the data channel
    if (!this.#directHost && this.#i.direct && options.channel !== 'libp2p') {
      try {
        const { ip } = await askObserved(host, this.#signal)
        const secret = newPunchSecret()
        // One punched connection per data stream (at most MAX_PUNCH_STREAMS)
        const ports = await pickPunchPorts(Math.min(options.streams, MAX_PUNCH_STREAMS))
        this.#punch = { ...secret, attemptId: this.id, ...withPorts(ip, ports) }
      } catch (err) {
        this.#signal.throwIfAborted()
        this.#channelNote = `${this.#channelNote ?? ''}; no hole punch: ${(err as Error).message}`
      }
    }
    if (!this.#directHost && !this.#punch) this.#failIfRelayTooSmall(this.#channelNote ?? 'no hole punch')
    this.#streams = this.#punch ? punchPorts(this.#punch).length : options.streams
    await control.send(
      {
        offer: {
          migrationId: this.id,
          spec: {
            id: spec.id,
            name: spec.name,
            vcpus: spec.vcpus,
            memoryMib: spec.memoryMiB,
            diskMib: spec.diskMiB,
            workload: {
              dirtyMibps: spec.workload.dirtyMiBps,
              hotSetMib: spec.workload.hotSetMiB,
              cpu: spec.workload.cpu,
              diskWriteMibps: spec.workload.diskWriteMiBps,
            },
            nics: nicsToOffer(this.#i.hooks.nicsOf?.(spec.id)),
          },
          epoch,
          pageSize: instance.memory.pageSize,
          pageCount: instance.memory.pageCount,
          blockSize: instance.disk.blockSize,
          blockCount: instance.disk.blockCount,
          mode: MODE_TO_PB[options.mode],
          streams: this.#streams,
          ...(this.#punch ? { punch: this.#punch } : {}),
          compression: options.compression !== 'off',
          dedup: options.dedup !== 'off',
          paused: this.#wasPaused,
          directHost: this.#directHost ?? '',
          baseImage: instance.disk.ownBlocks ? (instance.disk.baseImage?.id ?? '') : '',
        },
      },
      this.#signal,
    )
    this.#at('offerSent')
    const answer = await withTimeout(timeouts.stepTimeoutMs, 'the offer answer', this.#signal, (s) =>
      control.expect(['accept', 'refuse'], s),
    )
    if (answer.msg === 'refuse') {
      const code = REFUSE_FROM_PB[answer.refuse?.code ?? 0] ?? 'REFUSED'
      throw new MigrationRefusedError(code, answer.refuse?.message || `refused by ${to}: ${code}`)
    }
    this.#at('answer')
    this.#reservationId = answer.accept?.reservationId ?? ''
    const a = answer.accept
    if (this.#directHost && a?.directPort && a.directKey?.length === 32 && a.directIdentity) {
      if (a.directPort > 65535 || a.directIdentity.length > 64) throw new ProtocolError('bad direct channel')
      this.#grant = { port: a.directPort, key: a.directKey, identity: a.directIdentity }
    } else if (this.#directHost) {
      this.#channelNote = 'the destination offers no direct channel'
    }
    if (this.#punch && a?.punch) {
      const r = decodeOffer(pb.PunchOffer.encode(a.punch).finish(), false)
      if (r.attemptId !== this.#punch.attemptId)
        throw new ProtocolError('hole punch answer for another attempt')
      this.#punchRemote = r
    } else if (this.#punch) {
      this.#channelNote = `${this.#channelNote ?? ''}; the destination does not punch`
      this.#failIfRelayTooSmall('the destination does not punch')
    }
    // The destination's disk is a layer over its own copy of our base image: send only our layer.
    this.#baseShared = answer.accept?.baseImage === true && instance.disk.ownBlocks !== undefined
    // The destination holds content (a copy of this VM that left it, ...): ask which of our pages
    if (
      Number(answer.accept?.contentEntries ?? 0) > 0 &&
      options.dedup !== 'off' &&
      options.mode !== 'postcopy'
    )
      await this.#queryContent(control)
    // From now on the destination has nothing to say until asked: anything else (garbage, an abort,
    // the stream ending) fails the migration at once, not at the next step
    control.accepting(null)
    control.pump(this.#i.signal, (err) => {
      if (!this.#commitSent) this.#ac.abort(asMigrationError(err))
    })
  }

  /** Only the relay is left and it cannot carry this VM: fail now, saying why (no data sent yet). */
  #failIfRelayTooSmall(why: string): void {
    const relay = this.#i.relayTooSmall?.()
    if (relay) throw new LinkError(`cannot reach ${this.#i.to.toString()} directly: ${why}; ${relay}`)
  }

  #reservationId = ''
  /** Data streams (with a hole punch: one punched connection each, at most MAX_PUNCH_STREAMS). */
  #streams = 1
  #punch: PunchInvite | undefined
  #punchRemote: PunchEndpoint | undefined
  /** The direct data channel: the address asked for, what the destination granted, what is used. */
  #directHost: string | undefined
  #grant: DirectGrant | undefined
  #channel: 'libp2p' | 'direct-sealed' | undefined
  #channelNote: string | undefined

  /** The IP of our direct libp2p connection to the destination (none if disabled or relayed). */
  #directHostToAsk(): string | undefined {
    const { direct, options, host, to } = this.#i
    if (!direct) {
      this.#channelNote = 'direct channel disabled on this host'
      return undefined
    }
    if (options.channel === 'libp2p') {
      this.#channelNote = 'libp2p channel asked for'
      return undefined
    }
    for (const conn of host.getConnections?.(to) ?? []) {
      const h = directHostOf(conn)
      if (h) return h
    }
    this.#channelNote = 'no direct connection to the destination (relayed or unknown)'
    return undefined
  }
  /** The destination holds our disk's base image: blocks of the base never cross the wire. */
  #baseShared = false
  #retained: RetainedMemory | undefined
  /** Content hashes (keys) of pages the destination said it holds. */
  readonly #destHas = new Set<string>()

  /**
   * Asks the destination which of our non-zero pages' contents it holds (hashing them now: the VM
   * keeps the hashes, so round 0 does not hash again). Pages it holds then go as REF runs.
   */
  async #queryContent(control: ControlChannel): Promise<void> {
    const { instance, timeouts } = this.#i
    const memory = instance.memory
    const seen = new Set<string>()
    let batch: Uint8Array[] = []
    let keys: string[] = []
    const ask = async () => {
      await control.send({ contentQuery: { hashes: Buffer.concat(batch) } }, this.#signal)
      const r = await withTimeout(timeouts.stepTimeoutMs, 'the content reply', this.#signal, (s) =>
        control.expect(['contentReply'], s),
      )
      const have = r.contentReply?.have ?? new Uint8Array(0)
      if (have.length !== Math.ceil(keys.length / 8))
        throw new ProtocolError('content reply of the wrong size')
      for (let j = 0; j < keys.length; j++) if (have[j >>> 3]! & (1 << (j & 7))) this.#destHas.add(keys[j]!)
      batch = []
      keys = []
    }
    for (let i = 0; i < memory.pageCount; i++) {
      if (i % 8192 === 8191) {
        await new Promise<void>((r) => setImmediate(r))
        this.#signal.throwIfAborted()
      }
      const h = memory.pageHash(i)
      if (!h) continue
      const h16 = h.subarray(0, HASH_BYTES)
      const key = hashKey(h16)
      if (seen.has(key)) continue
      seen.add(key)
      batch.push(h16)
      keys.push(key)
      if (keys.length === MAX_QUERY_HASHES) await ask()
    }
    if (keys.length > 0) await ask()
    this.#log.debug({ asked: seen.size, held: this.#destHas.size }, 'destination content')
  }

  async #openDataStreams(): Promise<void> {
    const { host, to, timeouts, direct } = this.#i
    // Direct TLS connections (all of them, or none: then libp2p streams)
    if (this.#grant && this.#directHost && direct) {
      try {
        const channels = await connectDirect(
          this.#directHost,
          this.#grant,
          this.#streams,
          direct.connectTimeoutMs,
          this.#signal,
        )
        this.#channel = 'direct-sealed'
        for (let k = 0; k < channels.length; k++) await this.#addSender(channels[k]!, k)
        this.#log.debug({ host: this.#directHost, port: this.#grant.port }, 'direct data channel')
        return
      } catch (err) {
        this.#signal.throwIfAborted()
        this.#channelNote = `direct connection failed: ${asMigrationError(err).message}`
        this.#log.info({ err: this.#channelNote }, 'data over libp2p streams')
      }
    }
    if (this.#punch && this.#punchRemote) {
      try {
        const channels = await punchAll({
          role: 'initiator',
          localPorts: punchPorts(this.#punch),
          remote: this.#punchRemote,
          key: this.#punch.key,
          identity: this.#punch.identity,
          timeoutMs: PUNCH_TIMEOUT_MS,
          signal: this.#signal,
          maxMessage: 64,
        })
        this.#channel = 'direct-sealed'
        this.#channelNote = `hole-punched to ${this.#punchRemote.ip}:${this.#punchRemote.port}${channels.length > 1 ? ` (${channels.length} connections)` : ''}`
        for (let k = 0; k < channels.length; k++) await this.#addSender(channels[k]!, k)
        this.#log.info({ remote: this.#punchRemote, streams: channels.length }, 'hole-punched data channel')
        return
      } catch (err) {
        this.#signal.throwIfAborted()
        this.#channelNote = `hole punch failed: ${(err as Error).message}`
        this.#failIfRelayTooSmall(this.#channelNote)
        this.#log.info({ err: this.#channelNote }, 'data over libp2p streams (relayed)')
      }
    }
    this.#channel = 'libp2p'
    for (let k = 0; k < this.#streams; k++) {
      const stream = await withTimeout(timeouts.dialTimeoutMs, 'data stream', this.#signal, (signal) =>
        host.dialProtocol(to, DATA_PROTOCOL, { signal }),
      )
      await this.#addSender(new Framed(stream, 64, MAX_WINDOW_BYTES), k)
    }
  }

  async #addSender(channel: FrameChannel, k: number): Promise<void> {
    const { options, timeouts } = this.#i
    const dedupOn = options.dedup !== 'off'
    const sender = new DataSender(channel, {
      window: timeouts.windowBytes,
      stallTimeoutMs: timeouts.stallTimeoutMs,
      bucket: this.#bucket,
      onAck: (bytes) => this.#cost.link.add(bytes),
      signal: this.#signal,
    })
    this.#senders.push(sender)
    this.#pools.push(new PayloadPool())
    this.#tables.push({
      memory: new DedupTable(dedupOn ? undefined : 0),
      disk: new DedupTable(dedupOn ? undefined : 0),
    })
    await sender.hello(this.id, this.#reservationId, k)
    this.#c.wireBytes += sender.framed.written
  }

  // ------------------------------------------------------------------ pre-copy

  /** Rounds until the rest fits the downtime (or the cap, or auto's switch); returns the decision. */
  async #precopy(): Promise<RoundDecision> {
    const { instance, options } = this.#i
    const memory = instance.memory
    const disk = instance.disk
    const withMemory = options.mode !== 'postcopy'
    this.#setPhase('precopy')
    // Round 0: every non-zero page and every allocated block (the destination starts all zero)
    const history: number[] = []
    const roundCosts: { bytes: number; ms: number }[] = []
    // Pages never written are zero and the destination starts zeroed: only the others are looked at
    let pages: Iterable<number> | null = withMemory
      ? (memory.maybeNonZeroPages?.() ?? range(memory.pageCount))
      : null
    let blocks: Iterable<number> | null = (
      this.#baseShared ? disk.ownBlocks!() : disk.allocatedBlocks()
    ).indices()
    // Largest dirty set a round left (about the guest's hot set), for the write-rate estimate
    let hotBytes = 0
    while (true) {
      const t = performance.now()
      const before = this.#c.bytesSent
      const sampling = this.#round === 0 ? this.#sampleDirty() : undefined
      await this.#sendRound(this.#round, pages, blocks, this.#round === 0, undefined, true)
      const ms = performance.now() - t
      const sample = sampling?.stop()
      this.#at(`round${this.#round}`)
      const sent = this.#c.bytesSent - before
      // Rounds that carried little are dominated by latency: keep the rate of a fuller round
      if (sent >= MiB || this.#bandwidthBps === 0) this.#bandwidthBps = (sent / Math.max(ms, 1)) * 1000
      const dirtyPages = withMemory ? memory.takeDirtyPages() : null
      const dirtyBlocks = disk.takeDirtyBlocks()
      // The digest tree over what this round hashed, built now: at the pause only the last round's
      // groups are left to rehash (for an idle VM, none)
      instance.warmDigest?.()
      this.#at(`warm${this.#round}`)
      const remaining = (dirtyPages?.count() ?? 0) * memory.pageSize + dirtyBlocks.count() * disk.blockSize
      this.#dirtyBps = (remaining / Math.max(ms, 1)) * 1000
      history.push(remaining)
      if (this.#round > 0) roundCosts.push({ bytes: sent, ms })
      // Fixed cost per round from the rounds after the first (which also scans and hashes everything)
      const fit = roundCosts.length >= 2 ? fitRoundCost(roundCosts.slice(-6)) : { fixedMs: 0, bps: 0 }
      let decision = decideNextRound({
        mode: withMemory ? options.mode : 'precopy',
        round: this.#round,
        remainingBytes: remaining,
        history,
        bandwidthBps: fit.fixedMs > 0 ? fit.bps : this.#bandwidthBps,
        downtimeMs: options.downtimeMs,
        maxRounds: options.maxRounds,
        roundFixedMs: fit.fixedMs,
        aim: STOP_AIM,
      })
      const dirtyHigh = this.#dirtyTrigger.record(sent, remaining)
      // The guest's write rate: round 0 from the early sample (the round's own count is saturated by
      // the hot set), later rounds from their dirty count against the hot set seen so far
      const pageBytes = remaining - dirtyBlocks.count() * disk.blockSize
      // (a round shorter than MIN_RATE_MS holds a tick or two of a guest's writes: too coarse to judge)
      const writeBps = sample
        ? writeRateBps(sample.bytes, sample.ms, pageBytes)
        : ms >= MIN_RATE_MS
          ? writeRateBps(pageBytes, ms, this.#round > 0 ? hotBytes : 0)
          : 0
      hotBytes = Math.max(hotBytes, pageBytes)
      if (this.#autoConverge(decision, history, dirtyHigh, writeBps)) decision = { action: 'round' }
      this.#log.debug({ round: this.#round, ms, sent, remaining, fit, decision }, 'pre-copy round done')
      const mib = (x: number) => Math.round((x / MiB) * 10) / 10
      this.#roundLog.push({
        ms: Math.round(ms),
        sentMiB: mib(sent),
        leftMiB: mib(remaining),
        writeMiBps: mib(writeBps),
        linkMiBps: mib(this.#bandwidthBps),
        throttle: this.#throttle,
      })
      if (decision.action !== 'round') {
        // What the last round left dirty goes in the stop-copy (or is pending for post-copy)
        this.#leftover = { pages: dirtyPages, blocks: dirtyBlocks }
        return decision
      }
      this.#round++
      pages = dirtyPages?.indices() ?? null
      blocks = dirtyBlocks.indices()
      this.#emit(true)
    }
  }

  /**
   * Auto-converge (pre-copy mode, a guest that can be slowed): when a round did not shrink the rest
   * by SHRINK_FACTOR, the guest dirtied half of what each of the last rounds sent (`dirtyHigh`), or
   * pre-copy would stop for lack of progress, hold back more of the guest and go on. True if it did
   * (another round follows).
   */
  #autoConverge(decision: RoundDecision, history: number[], dirtyHigh: boolean, writeBps: number): boolean {
    const { instance, options } = this.#i
    if (options.mode !== 'precopy' || !options.autoConverge || !instance.throttle) return false
    if (this.#throttleStep >= THROTTLE_STEPS.length || this.#round + 1 >= options.maxRounds) return false
    const n = history.length
    const notShrinking = n >= 2 && history[n - 1]! >= history[n - 2]! * SHRINK_FACTOR
    const gaveUp = decision.action === 'stop' && decision.reason === 'no-progress'
    // Predictive: as much throttle as the measured write rate needs against the link (round-plan.ts)
    const predicted =
      decision.action === 'round'
        ? throttleFor({
            writeBps,
            bandwidthBps: this.#bandwidthBps,
            throttle: this.#throttle,
            steps: THROTTLE_STEPS,
          })
        : this.#throttle
    if (predicted > this.#throttle) {
      this.#throttleStep = THROTTLE_STEPS.indexOf(predicted) + 1
    } else if (gaveUp || (decision.action === 'round' && (notShrinking || dirtyHigh))) {
      this.#throttleStep++
    } else return false
    this.#throttle = THROTTLE_STEPS[this.#throttleStep - 1]!
    instance.throttle(this.#throttle)
    this.#dirtyTrigger.reset()
    // Rounds from here are judged against the slower guest
    history.splice(0, n - 1)
    this.#log.info({ round: this.#round, throttle: this.#throttle }, 'auto-converge: guest throttled')
    return true
  }

  /**
   * Counts the guest's dirty pages once, DIRTY_SAMPLE_MS after tracking started (round 0 runs
   * meanwhile); `stop()` ends it and returns the count, or undefined if the round ended first or the VM
   * cannot say which pages are dirty (or nothing would use it: no auto-converge).
   */
  #sampleDirty(): { stop(): { bytes: number; ms: number } | undefined } {
    const { instance, options } = this.#i
    const memory = instance.memory
    if (options.mode !== 'precopy' || !options.autoConverge || !instance.throttle || !memory.isDirty) {
      return { stop: () => undefined }
    }
    let got: { bytes: number; ms: number } | undefined
    const timer = setTimeout(
      () => {
        let n = 0
        for (let i = 0; i < memory.pageCount; i++) if (memory.isDirty!(i)) n++
        got = { bytes: n * memory.pageSize, ms: performance.now() - this.#trackedAt }
      },
      Math.max(0, DIRTY_SAMPLE_MS - (performance.now() - this.#trackedAt)),
    )
    return {
      stop: () => {
        clearTimeout(timer)
        return got
      },
    }
  }

  #leftover:
    | { pages: { indices(): Iterable<number> } | null; blocks: { indices(): Iterable<number> } }
    | undefined

  /** Sends the given pages and blocks over all streams and waits until all of it is acknowledged. */
  async #sendRound(
    round: number,
    pages: Iterable<number> | null,
    blocks: Iterable<number> | null,
    skipZero: boolean,
    /** Runs once every frame of the round is sent, while the acknowledgements are still on their way. */
    whileAcked?: () => Promise<void>,
    /** The guest runs: a page it dirtied again since the round began waits for the next round. */
    skipRedirtied = false,
    /** False: return once every frame is written (the early switchover counts them instead). */
    waitAcks = true,
  ): Promise<void> {
    const n = this.#senders.length
    const pl: number[][] = Array.from({ length: n }, () => [])
    const bl: number[][] = Array.from({ length: n }, () => [])
    if (pages) for (const i of pages) pl[Math.floor(i / PAGE_SHARD) % n]!.push(i)
    if (blocks) for (const i of blocks) bl[Math.floor(i / BLOCK_SHARD) % n]!.push(i)
    const { memory, disk } = this.#i.instance
    this.#roundRemaining =
      pl.reduce((a, l) => a + l.length, 0) * memory.pageSize +
      bl.reduce((a, l) => a + l.length, 0) * disk.blockSize
    await Promise.all(
      this.#senders.map((_, k) => this.#sendUnits(k, round, pl[k]!, bl[k]!, skipZero, skipRedirtied)),
    )
    await Promise.all([...(waitAcks ? this.#senders.map((s) => s.flush()) : []), whileAcked?.()])
    this.#roundRemaining = 0
  }

  /** One stream's share of a round: frames of pages, then of blocks. */
  async #sendUnits(
    k: number,
    round: number,
    pages: number[],
    blocks: number[],
    skipZero: boolean,
    skipRedirtied: boolean,
  ): Promise<void> {
    const { memory, disk } = this.#i.instance
    const b = new FrameBuilder(FRAME_PAYLOAD_BYTES, MAX_RUNS, this.#pools[k]!.alloc)
    const frame = new FrameState(this.#cost)
    // QEMU-style: a page written again since this round's snapshot is in the next round's set anyway;
    // sending it now would only be overwritten (the stop-copy round, guest paused, sends everything)
    const redirtied = skipRedirtied && memory.isDirty ? (i: number) => memory.isDirty!(i) : undefined
    // Regions written since the round began go last (round-plan.ts): fewer pages sent twice
    for (const i of roundOrder(pages, redirtied, memory.pageCount)) {
      if (redirtied?.(i)) {
        this.#c.redirtiedPages++
        continue
      }
      if (!b.fits(memory.pageSize)) await this.#emitFrame(k, round, b, frame)
      // The VM caches the hash until the page is written again: hashing as we send keeps the digest
      // at the pause down to the last round's pages (and gives dedup its key for free)
      const h = memory.pageHash(i)
      if (h === null) {
        this.#c.zeroPages++
        if (!skipZero) {
          b.addZero('memory', i)
          this.#tables[k]!.memory.forget(i)
          this.#c.pagesSent++
        }
        continue
      }
      this.#addUnit(
        k,
        b,
        frame,
        'memory',
        i,
        h,
        (dst, off) => memory.readPageInto(i, dst, off),
        memory.pageSize,
      )
    }
    // Blocks are read a few ahead (each read is a thread-pool round trip); each read still pairs its
    // bytes with their hash. Read buffers are reused once their bytes are in a frame: a fresh 64 KiB
    // buffer per block made a 1 GiB VM's round 0 allocate its whole disk data again, and the external
    // memory it added cost several full GCs per migration
    const spare: Uint8Array[] = []
    const reads: Promise<{ data: Uint8Array; hash: Uint8Array | null; into: Uint8Array }>[] = []
    const readAhead = (j: number) => {
      while (reads.length < BLOCK_READ_AHEAD && j + reads.length < blocks.length) {
        const into = spare.pop() ?? Buffer.allocUnsafeSlow(disk.blockSize)
        const r = disk.readBlockHashed(blocks[j + reads.length]!, into).then((x) => ({ ...x, into }))
        r.catch(() => undefined)
        reads.push(r)
      }
    }
    for (let j = 0; j < blocks.length; j++) {
      const i = blocks[j]!
      readAhead(j)
      if (!b.fits(disk.blockSize)) await this.#emitFrame(k, round, b, frame)
      // Bytes and hash from one read: a hash of newer bytes would make later REFs resolve to stale data
      const { data, hash: h, into } = await reads.shift()!
      this.#signal.throwIfAborted()
      if (h === null) {
        spare.push(into)
        this.#c.zeroBlocks++
        // Over a shared base a zero block of our layer hides a base block: it must be written there.
        if (!skipZero || this.#baseShared) {
          b.addZero('disk', i)
          this.#tables[k]!.disk.forget(i)
          this.#c.blocksSent++
        }
        continue
      }
      // addUnit copies the bytes into the frame's payload (or sends a reference): `into` is free after
      this.#addUnit(k, b, frame, 'disk', i, h, data)
      spare.push(into)
    }
    if (!b.empty) await this.#emitFrame(k, round, b, frame)
  }

  /** Adds a non-zero unit as DATA (registered if deduplicating) or as a REF to content already sent. */
  #addUnit(
    k: number,
    b: FrameBuilder,
    f: FrameState,
    space: Space,
    i: number,
    fullHash: Uint8Array,
    data: Uint8Array | ((dst: Uint8Array, off: number) => void),
    unit = 0,
  ): void {
    const table = this.#tables[k]![space]
    if (space === 'memory') this.#c.pagesSent++
    else this.#c.blocksSent++
    if (!f.hashing) {
      table.forget(i)
      b.addData(space, i, data, undefined, unit || undefined)
      return
    }
    const h = fullHash.subarray(0, HASH_BYTES)
    const key = hashKey(h)
    const inStream = table.lookup(key) !== undefined
    if (inStream || (space === 'memory' && this.#destHas.has(key))) {
      table.register(i, key)
      b.addRef(space, i, h)
      if (!inStream) this.#c.storePages++
      else if (space === 'memory') this.#c.dedupPages++
      else this.#c.dedupBlocks++
      return
    }
    if (table.register(i, key)) {
      b.addData(space, i, data, h, unit || undefined)
    } else {
      table.forget(i)
      b.addData(space, i, data, undefined, unit || undefined)
    }
  }

  async #emitFrame(k: number, round: number, b: FrameBuilder, f: FrameState): Promise<void> {
    const sender = this.#senders[k]!
    const { runs, payload, buffer } = b.take()
    f.finish()
    let body = payload
    let codec: 'none' | 'lz4' = 'none'
    if (payload.length >= 4096 && this.#cost.compressNext()) {
      const t = performance.now()
      const c = await compressPayload(payload)
      this.#cost.recordCompression(payload.length, c.length, performance.now() - t)
      if (c.length < payload.length * 0.97) {
        body = c
        codec = 'lz4'
        this.#c.compressedFrames++
      }
    }
    const bytes = encodeFrameParts({
      seq: sender.nextSeq,
      round,
      runs,
      payload: body,
      codec,
      rawLength: payload.length,
    })
    this.#c.frames++
    this.#c.bytesSent += payload.length
    const before = sender.framed.written
    await sender.send(bytes, buffer ? () => this.#pools[k]!.release(buffer) : undefined)
    this.#c.wireBytes += sender.framed.written - before
    this.#roundRemaining = Math.max(0, this.#roundRemaining - payload.length)
    this.#emit()
  }

  // ------------------------------------------------------------------ switchover

  async #switchoverPrecopy(): Promise<void> {
    const { instance, hooks, epoch } = this.#i
    const left = this.#leftover!
    // Journal first (an agent that restarts after this asks the destination instead of resuming), but
    // off the critical path: it runs while the last round is on its way. A journaled handover only
    // means "COMMIT may have been sent: ask before resuming"; a failure before the send still resumes.
    const journaled = (async () => {
      await hooks.onHandover?.(this.view(), { signal: this.#signal })
      this.#mark('journaled')
    })()
    journaled.catch(() => undefined)
    this.#journaling = journaled
    // Pages dirtied since the last round's snapshot, including while the guest was stopping
    const pages = new Bitmap(instance.memory.pageCount)
    for (const i of left.pages?.indices() ?? []) pages.set(i)
    for (const i of instance.memory.takeDirtyPages().indices()) pages.set(i)
    const blocks = new Bitmap(instance.disk.blockCount)
    for (const i of left.blocks.indices()) blocks.set(i)
    for (const i of instance.disk.takeDirtyBlocks().indices()) blocks.set(i)
    this.#round++
    // The source digest depends only on the paused VM (its page hashes are fresh once the last frames
    // are built): computed while the destination applies them, not after
    let digest: { combined: string } | undefined
    await this.#sendRound(
      this.#round,
      pages.indices(),
      blocks.indices(),
      false,
      async () => {
        digest = await instance.digest()
        this.#mark('digest')
      },
      false,
      false,
    )
    this.#mark('lastRound')
    await journaled
    this.#signal.throwIfAborted()
    if (!digest) throw new MigrationError('INTERNAL', 'no source digest')
    const d = digest.combined
    this.#setPhase('handover')
    // Early switchover: sent as soon as the last round is written, not acknowledged (one data round
    // trip less in the pause). The destination applies exactly `streamFrames` frames per stream before
    // it verifies, so the digest still covers every byte; a failure from here on is resolved as any
    // lost COMMIT (status protocol), never by resuming blindly.
    // Only what the link delivers in a moment may still be on its way (a slow link, or no rate measured
    // yet, waits for the acknowledgements first): the destination's wait for it then stays far inside
    // the step timeout the COMMIT's answer has.
    const early = (this.#bandwidthBps * EARLY_SWITCHOVER_MS) / 1000 / Math.max(1, this.#senders.length)
    await Promise.all(this.#senders.map((s) => s.drainTo(early)))
    this.#mark('drained')
    const streamFrames = this.#senders.map((s) => s.nextSeq)
    await this.#commit(epoch + 1, {
      switchover: { round: this.#round, digest: d, commitEpoch: epoch + 1, streamFrames },
    })
  }

  /** The handover journal write started at the pause (a failure waits for it before `onAborted`). */
  #journaling: Promise<void> | undefined
  #pending: Bitmap | undefined

  async #switchoverPostcopy(switched: boolean): Promise<void> {
    const { instance, timeouts } = this.#i
    const memory = instance.memory
    const left = this.#leftover!
    // Pages the destination lacks: after pre-copy rounds (auto), the dirty ones; in pure post-copy,
    // every non-zero page (the destination starts zeroed)
    const pending = new Bitmap(memory.pageCount)
    if (switched) {
      for (const i of left.pages?.indices() ?? []) pending.set(i)
      for (const i of memory.takeDirtyPages().indices()) pending.set(i)
    } else {
      for (const i of memory.maybeNonZeroPages?.() ?? range(memory.pageCount))
        if (!memory.isZeroPage(i)) pending.set(i)
    }
    this.#pending = pending
    const blocks = new Bitmap(instance.disk.blockCount)
    for (const i of left.blocks.indices()) blocks.set(i)
    for (const i of instance.disk.takeDirtyBlocks().indices()) blocks.set(i)
    this.#round++
    // The disk is complete before the switchover (as QEMU mirrors it): only memory is post-copied
    let diskDigest = ''
    await this.#sendRound(this.#round, null, blocks.indices(), false, async () => {
      diskDigest = await diskDigestOf(instance.disk)
    })
    this.#setPhase('verify')
    const control = this.#control!
    control.accepting(['verified'])
    await control.send(
      { switchover: { round: this.#round, postcopy: true, pending: pending.toBytes(), diskDigest } },
      this.#signal,
    )
    const v = await withTimeout(timeouts.stepTimeoutMs, 'verification', this.#signal, (s) =>
      control.expect(['verified'], s),
    )
    if (!v.verified?.ok) {
      throw new VerifyFailedError(`the destination's disk digest differs: ${v.verified?.message ?? ''}`)
    }
  }

  // ------------------------------------------------------------------ handover

  /** Post-copy: journal the handover, then COMMIT (the disk was verified in the switchover). */
  async #handover(): Promise<void> {
    const { hooks, epoch } = this.#i
    this.#setPhase('handover')
    // Journal first: an agent that restarts after this knows to ask the destination, not to resume
    await hooks.onHandover?.(this.view(), { signal: this.#signal })
    this.#mark('journaled')
    this.#signal.throwIfAborted()
    await this.#commit(epoch + 1, { commit: { epoch: epoch + 1 } })
  }

  /**
   * Sends the COMMIT (alone, or inside a pre-copy switchover) and waits for RUNNING. From the send on,
   * the VM never resumes here unless the destination says it did not commit.
   */
  async #commit(newEpoch: number, msg: MigrationControlMsg): Promise<void> {
    const { timeouts } = this.#i
    const control = this.#control!
    // Post-copy: the destination may ask for pages as soon as its guest runs, even before RUNNING lands
    control.accepting(
      this.#postcopy
        ? ['running', 'fetch', 'complete']
        : msg.switchover
          ? ['running', 'verified']
          : ['running'],
    )
    this.#commitSent = true
    let r: Control | undefined
    try {
      await control.send(msg, this.#i.signal)
      r = await withTimeout(timeouts.stepTimeoutMs, 'RUNNING', this.#i.signal, (s) =>
        control.expect(msg.switchover ? ['running', 'verified'] : ['running'], s),
      )
    } catch (err) {
      this.#log.warn(
        { err: asMigrationError(err).message },
        'commit sent but no RUNNING: asking the destination',
      )
      const outcome = await this.#resolveInDoubt()
      if (outcome === 'aborted') {
        // The destination never resumed it and never will (it refuses a late commit): ours again
        this.#commitSent = false
        const theirs = this.#destReason ? `; the destination: ${this.#destReason}` : ''
        throw new LinkError(
          `commit not acknowledged and the destination did not commit (${asMigrationError(err).message}${theirs})`,
        )
      }
      if (outcome === 'unknown') {
        throw new HandoverInDoubtError(
          `commit sent, the destination did not answer within ${timeouts.statusTimeoutMs} ms: the VM stays paused here`,
        )
      }
      if (this.#postcopy) {
        // It runs there, but its missing pages can no longer come from here over this stream
        throw new MigrationError(
          'POSTCOPY_LOST',
          'the destination committed but the post-copy stream is lost',
        )
      }
    }
    if (r !== undefined) {
      if (r.msg === 'verified') {
        // Only sent when the check failed: the destination discarded its copy and committed nothing
        this.#commitSent = false
        if (r.verified?.ok) throw new ProtocolError('verified{ok} in answer to a committing switchover')
        throw new VerifyFailedError(
          `the destination's digest ${r.verified?.digest ?? '?'} differs: ${r.verified?.message ?? ''}`,
        )
      }
      if (r.running?.epoch !== newEpoch) {
        // Not what we committed: find out whether it committed (as for a lost RUNNING)
        const outcome = await this.#resolveInDoubt()
        if (outcome !== 'committed') {
          if (outcome === 'aborted') this.#commitSent = false
          throw new ProtocolError(`RUNNING with epoch ${r.running?.epoch}`)
        }
      }
    }
    this.#mark('verified')
    this.#newEpoch = newEpoch
    this.#downtimeMs = performance.now() - this.#pausedAt!
    this.#mark('running')
  }

  /** Why the destination gave up, as its status reply said (for our error). */
  #destReason: string | undefined

  /** Asks the destination whether it committed, with backoff, within the status timeout. */
  async #resolveInDoubt(): Promise<Outcome | 'unknown'> {
    const { host, to, timeouts } = this.#i
    const deadline = performance.now() + timeouts.statusTimeoutMs
    let delay = 100
    while (performance.now() < deadline && !this.#i.signal.aborted) {
      try {
        const r = await queryStatus(host, to, this.id, {
          signal: AbortSignal.any([
            this.#i.signal,
            AbortSignal.timeout(Math.min(5000, timeouts.statusTimeoutMs)),
          ]),
        })
        this.#log.info({ outcome: r.outcome, reason: r.reason }, 'destination status')
        if (r.outcome === 'aborted') this.#destReason = r.reason
        if (r.outcome === 'committed' || r.outcome === 'aborted') return r.outcome
        if (r.outcome === 'unknown') return 'aborted'
      } catch (err) {
        this.#log.debug({ err: asMigrationError(err).message }, 'status query failed')
      }
      await sleep(Math.min(delay, Math.max(0, deadline - performance.now())), this.#i.signal).catch(
        () => undefined,
      )
      delay = Math.min(delay * 2, 5000)
    }
    return 'unknown'
  }

  // ------------------------------------------------------------------ post-copy push

  async #push(): Promise<void> {
    const { instance, timeouts } = this.#i
    const memory = instance.memory
    const control = this.#control!
    const pending = this.#pending!
    this.#setPhase('postcopy')
    const sent = new Bitmap(memory.pageCount)
    const urgent: number[] = []
    // Post-copy must not die with the migration's cancel signal: only the service stopping ends it
    const signal = this.#i.signal
    let complete: { ok: boolean; message: string } | undefined
    let wakeComplete: (() => void) | undefined
    const reader = (async () => {
      while (true) {
        const m = await control.expect(['fetch', 'complete'], signal)
        if (m.msg === 'complete') {
          complete = { ok: m.complete?.ok === true, message: m.complete?.message ?? '' }
          wakeComplete?.()
          return
        }
        for (const p of m.fetch?.pages ?? []) {
          if (p >= memory.pageCount) throw new ProtocolError(`fetch of page ${p}`)
          if (pending.get(p) && !sent.get(p)) urgent.push(p)
        }
      }
    })()
    const readerFailed = reader.catch((err: unknown) => {
      throw asMigrationError(err, 'LINK')
    })
    readerFailed.catch(() => undefined)
    const digest = pageDigestOf(memory, signal)
    digest.catch(() => undefined)
    this.#roundRemaining = pending.count() * memory.pageSize
    const n = this.#senders.length
    const shards: number[][] = Array.from({ length: n }, () => [])
    for (const i of pending.indices()) shards[Math.floor(i / PAGE_SHARD) % n]!.push(i)
    const round = this.#round + 1
    const worker = async (k: number) => {
      const b = new FrameBuilder()
      const sender = this.#senders[k]!
      const own = shards[k]!
      let next = 0
      while (true) {
        // Faulting pages first, in small frames: they hold up the guest
        while (urgent.length > 0 && b.fits(memory.pageSize)) {
          const p = urgent.shift()!
          if (sent.get(p)) continue
          sent.set(p)
          this.#c.faultPages++
          this.#addPushed(b, p)
        }
        if (b.empty) {
          while (next < own.length && b.fits(memory.pageSize) && urgent.length === 0) {
            const p = own[next++]!
            if (sent.get(p)) continue
            sent.set(p)
            this.#addPushed(b, p)
          }
        }
        if (b.empty) {
          if (next >= own.length) return
          continue
        }
        const { runs, payload } = b.take()
        const bytes = encodeFrameParts({
          seq: sender.nextSeq,
          round,
          runs,
          payload,
          codec: 'none',
          rawLength: payload.length,
        })
        this.#c.frames++
        this.#c.bytesSent += payload.length
        const before = sender.framed.written
        await sender.send(bytes)
        this.#c.wireBytes += sender.framed.written - before
        this.#roundRemaining = Math.max(0, this.#roundRemaining - payload.length)
        this.#emit()
      }
    }
    await Promise.race([Promise.all(this.#senders.map((_, k) => worker(k))), readerFailed])
    await Promise.race([Promise.all(this.#senders.map((s) => s.flush())), readerFailed])
    await control.send({ pushDone: { pageDigest: await digest } }, signal)
    if (!complete) {
      await withTimeout(timeouts.stepTimeoutMs, 'post-copy completion', signal, async (s) => {
        await Promise.race([
          new Promise<void>((resolve, reject) => {
            wakeComplete = resolve
            s.addEventListener('abort', () => reject(s.reason), { once: true })
          }),
          readerFailed,
        ])
      })
    }
    if (!complete?.ok) {
      throw new VerifyFailedError(
        `post-copy image check failed at the destination: ${complete?.message ?? ''}`,
      )
    }
  }

  #addPushed(b: FrameBuilder, p: number): void {
    const memory = this.#i.instance.memory
    this.#c.pagesSent++
    if (memory.isZeroPage(p)) {
      this.#c.zeroPages++
      b.addZero('memory', p)
    } else {
      b.addData('memory', p, memory.readPage(p))
    }
  }

  // ------------------------------------------------------------------ end

  async #release(): Promise<void> {
    const { hooks, instance, store } = this.#i
    // Kept (the buffer, not a copy) before the VM is destroyed; indexed once the migration is over
    try {
      this.#retained = store ? instance.memory.retain?.() : undefined
    } catch (err) {
      // Only an optimisation: the release goes on
      this.#log.debug({ err: asMigrationError(err).message }, 'memory not kept for dedup')
    }
    if (hooks.onReleased) await hooks.onReleased(this.view(), instance)
    else await instance.destroy()
  }

  #finish(phase: 'done' | 'failed' | 'cancelled'): void {
    this.#totalMs = performance.now() - this.#t0
    this.#roundRemaining = 0
    this.#setPhase(phase)
    this.#log.info(
      {
        phase,
        totalMs: Math.round(this.#totalMs),
        downtimeMs: this.#downtimeMs && Math.round(this.#downtimeMs),
        rounds: this.#round,
        throttle: this.#throttle,
        bytes: this.#c.bytesSent,
        wire: this.#c.wireBytes,
        error: this.#error,
        downtime: this.#marks,
        timeline: this.#timeline,
        roundLog: this.#roundLog,
      },
      'migration finished',
    )
  }

  async #fail(err: unknown, paused: boolean): Promise<void> {
    const e =
      this.#ac.signal.aborted && this.#ac.signal.reason instanceof MigrationError
        ? this.#ac.signal.reason
        : asMigrationError(err)
    this.#error = { code: e.code, message: e.message }
    const { instance, hooks } = this.#i
    // Make the destination drop what it has at once (it would anyway when the streams end)
    const abortErr = new Error(`migration failed: ${e.code}`)
    this.#control?.framed.abort(abortErr)
    for (const s of this.#senders) s.abort(abortErr)
    if (this.#commitSent) {
      // After COMMIT we never resume blindly: the VM stays paused here
      this.#finish('failed')
      try {
        await hooks.onInDoubt?.(this.view())
      } catch (hookErr) {
        this.#log.error({ err: asMigrationError(hookErr).message }, 'onInDoubt hook failed')
      }
      return
    }
    if (paused && !this.#wasPaused) {
      try {
        await instance.resume()
      } catch (resumeErr) {
        this.#log.error(
          { err: asMigrationError(resumeErr).message },
          'could not resume the VM after a failed migration',
        )
      }
    }
    this.#finish(e instanceof CancelledError ? 'cancelled' : 'failed')
    // A handover journaled after the abort was recorded would stay open
    await this.#journaling?.catch(() => undefined)
    try {
      await hooks.onAborted?.(this.view())
    } catch (hookErr) {
      this.#log.error({ err: asMigrationError(hookErr).message }, 'onAborted hook failed')
    }
  }

  async #closeStreams(): Promise<void> {
    const closing: Promise<void>[] = []
    for (const s of this.#senders) {
      s.finishing()
      closing.push(s.close())
    }
    if (this.#control) closing.push(this.#control.framed.close())
    await Promise.allSettled(closing)
  }
}

/**
 * Payload buffers of one stream's frames, reused once a frame is acknowledged (a fresh 1 MiB buffer a
 * frame costs page faults and garbage collection of external memory). At most a window's worth.
 */
class PayloadPool {
  readonly #free: Buffer[] = []
  readonly alloc = (bytes: number): Buffer => {
    const b = this.#free.pop()
    return b && b.length === bytes ? b : Buffer.allocUnsafe(bytes)
  }
  release(b: Buffer): void {
    if (this.#free.length < POOL_BUFFERS) this.#free.push(b)
  }
}

/** Per-frame choices. Units are hashed anyway (the VM caches it for the digest), so dedup costs only
 *  16 bytes a unit on the wire: it is on unless turned off. */
class FrameState {
  readonly hashing: boolean
  constructor(readonly cost: CostModel) {
    this.hashing = cost.dedup !== 'off'
  }
  finish(): void {}
}

function* range(n: number): Generator<number> {
  for (let i = 0; i < n; i++) yield i
}
