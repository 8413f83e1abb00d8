// MigrationService: live migration in and out of this host over libp2p (the js-libp2p service shape:
// narrow components, an all-optional init, start/stop, typed events). The agent supplies the VMs and
// the journal through `MigrationComponents` and its hooks (see types.ts for when each hook runs).
import { randomUUID } from 'node:crypto'
import { EventEmitter, setMaxListeners } from 'node:events'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from 'pino'
import { pb } from '../proto/index.js'
import {
  CONTROL_PROTOCOL,
  DATA_PROTOCOL,
  DEFAULT_RETAIN_BYTES,
  DEFAULTS,
  MAX_DATA_STREAMS,
  STATUS_PROTOCOL,
} from './constants.js'
import { ContentStore } from './content-store.js'
import { IncomingMigration, newDataFramed, readDataHello, validateOffer } from './destination.js'
import { type DirectInit, DirectListener } from './direct.js'
import { asMigrationError, MigrationError, MigrationRefusedError, type RefusalCode } from './errors.js'
import { raiseMallocMmapThreshold } from './malloc-threshold.js'
import { type MigrateOptions, type ResolvedOptions, resolveOptions } from './options.js'
import { type MigrationView, TERMINAL_PHASES } from './progress.js'
import {
  askObserved,
  OBSERVED_PROTOCOL,
  PUNCH_TIMEOUT_MS,
  type PunchEndpoint,
  pickPunchPorts,
  punchChannels,
  punchPorts,
  serveObserved,
  withPorts,
} from './punch.js'
import {
  migratesWithQemu,
  type QemuIncomingMigration,
  QemuMigrations,
  QemuOutgoingMigration,
} from './qemu/index.js'
import type { SealedFramed } from './sealed.js'
import { OutgoingMigration } from './source.js'
import { type Outcome, queryStatus, serveStatus } from './status.js'
import type { MigrationComponents, MigrationHost, TransferTimeouts } from './types.js'
import { ControlChannel, withTimeout } from './wire.js'

export interface MigrationServiceInit {
  /** Outgoing migrations at once (more are refused with BUSY); default 2. */
  maxOutgoing?: number
  /** Incoming migrations at once (more are refused with BUSY); default 2. */
  maxIncoming?: number
  /** Defaults for `migrate` options. */
  defaults?: Partial<ResolvedOptions>
  timeouts?: Partial<TransferTimeouts>
  /** Finished migrations kept for `get`/`list`; default 100. */
  keepFinished?: number
  /** Outcomes remembered for status queries; default 4096. */
  keepOutcomes?: number
  /**
   * MiB of non-zero memory of VMs that migrated away kept as a dedup source for later migrations here
   * (a VM that comes back sends only what changed); default 1024, 0 turns it off.
   */
  retainMiB?: number
  /**
   * Direct data channel (direct.ts): data units over sealed connections (sealed.ts) instead of libp2p streams
   * when the link allows; `{ enabled: false }` turns it off both ways.
   */
  direct?: DirectInit
  /**
   * `stop()` lets migrations past their handover (a post-copy push, a COMMIT awaiting RUNNING) finish
   * for up to this long before it cuts them (default 8000 ms): a graceful restart in the middle of a
   * post-copy would otherwise lose the VM (README "What post-copy cannot survive").
   */
  stopGraceMs?: number
}

/** How an outgoing migration reaches its destination (src/node/nat.ts decides). */
export interface BulkLink {
  kind: 'direct' | 'hole-punched' | 'relayed'
  /** Why it is not direct, when it is not. */
  note?: string
  /**
   * Relayed, and the relay cannot carry this much: the transfer may run only over skymesh's own hole
   * punch, and fails before sending anything when it gets none (this says why, for that message).
   */
  relayTooSmall?: string
}

/**
 * Bulk transfer prefers a direct connection: before the offer, `prepare` tries to get one (direct
 * dial, hole punching) and says what the migration will use, or throws (a LinkError) when only a
 * relayed connection exists and its limits cannot carry `bytes`.
 */
export interface BulkLinkAdvisor {
  prepare(peer: PeerId, bytes: number, opts: { signal: AbortSignal }): Promise<BulkLink>
}

export interface MigrationEvents {
  /** Any change (throttled to ~10/s per migration while data flows; every phase change). */
  progress: [MigrationView]
  /** A migration reached done, failed or cancelled. */
  finished: [MigrationView]
}

type Entry = OutgoingMigration | IncomingMigration | QemuOutgoingMigration | QemuIncomingMigration

const REFUSE_TO_PB: Record<RefusalCode, number> = {
  UNKNOWN_VM: pb.RefuseCode.UNKNOWN_VM,
  NO_CAPACITY: pb.RefuseCode.NO_CAPACITY,
  ALREADY_MIGRATING: pb.RefuseCode.ALREADY_MIGRATING,
  BUSY: pb.RefuseCode.BUSY,
  BAD_OFFER: pb.RefuseCode.BAD_OFFER,
  VM_EXISTS: pb.RefuseCode.VM_EXISTS,
  STOPPING: pb.RefuseCode.STOPPING,
  REFUSED: pb.RefuseCode.REFUSE_UNSPECIFIED,
}

export class MigrationService extends EventEmitter<MigrationEvents> {
  readonly #c: MigrationComponents
  readonly #log: Logger
  readonly #maxOut: number
  readonly #maxIn: number
  readonly #defaults: Partial<ResolvedOptions>
  readonly #timeouts: TransferTimeouts
  readonly #keepFinished: number
  readonly #keepOutcomes: number
  /** Memory of VMs that left, as a dedup source (content-store.ts). */
  readonly store: ContentStore
  readonly #active = new Map<string, Entry>()
  readonly #finished = new Map<string, MigrationView>()
  readonly #outcomes = new Map<string, { outcome: Outcome; epoch?: number; reason?: string }>()
  /** The link each outgoing migration uses (while it and its finished view are kept). */
  readonly #links = new Map<string, { link?: BulkLink }>()
  /** Peers (ids) our bulk data reached over a hole-punched channel (punch.ts), either direction. */
  readonly punchedPeers = new Set<string>()
  readonly #advisor?: BulkLinkAdvisor
  #ac = new AbortController()
  #started = false
  /** VMs that migrate with QEMU's own stream (qemu/): same limits, hooks and bookkeeping. */
  readonly #qemu: QemuMigrations
  readonly #directInit: DirectInit
  readonly #stopGraceMs: number
  #direct: DirectListener | undefined

  constructor(components: MigrationComponents & { link?: BulkLinkAdvisor }, init: MigrationServiceInit = {}) {
    super()
    // Now, so the GC has freed its chunk before the first migration's records (see the module)
    raiseMallocMmapThreshold()
    this.#c = components
    this.#advisor = components.link
    this.#log = components.logger.child({ component: 'transfer' })
    this.#maxOut = init.maxOutgoing ?? DEFAULTS.maxOutgoing
    this.#maxIn = init.maxIncoming ?? DEFAULTS.maxIncoming
    this.#defaults = init.defaults ?? {}
    this.#timeouts = {
      dialTimeoutMs: init.timeouts?.dialTimeoutMs ?? DEFAULTS.dialTimeoutMs,
      stepTimeoutMs: init.timeouts?.stepTimeoutMs ?? DEFAULTS.stepTimeoutMs,
      stallTimeoutMs: init.timeouts?.stallTimeoutMs ?? DEFAULTS.stallTimeoutMs,
      statusTimeoutMs: init.timeouts?.statusTimeoutMs ?? DEFAULTS.statusTimeoutMs,
      windowBytes: init.timeouts?.windowBytes ?? DEFAULTS.windowBytes,
    }
    this.#directInit = init.direct ?? {}
    this.#stopGraceMs = init.stopGraceMs ?? 8000
    this.#keepFinished = init.keepFinished ?? 100
    this.#keepOutcomes = init.keepOutcomes ?? 4096
    this.store = new ContentStore(
      init.retainMiB !== undefined ? init.retainMiB * 1024 * 1024 : DEFAULT_RETAIN_BYTES,
    )
    this.#qemu = new QemuMigrations({
      host: components.host,
      logger: this.#log,
      driver: components.driver,
      vmDir: (id) => components.vmDir(id),
      hooks: components.hooks ?? {},
      timeouts: this.#timeouts,
      signal: () => this.#ac.signal,
      started: () => this.#started,
      idUsed: (id) => this.#active.has(id) || this.#outcomes.has(id),
      hasVm: (vmId) => this.#c.lookupVm(vmId) !== undefined,
      migratingVm: (vmId) => this.#migratingVm(vmId),
      incomingFull: () =>
        this.#count('in') >= this.#maxIn ? `${this.#maxIn} incoming migrations already run` : undefined,
      holdIncoming: (id, vmId) => {
        this.#pendingIn.set(id, { id, vmId })
        return () => this.#pendingIn.delete(id)
      },
      track: (m) => this.#track(m),
      active: (id) => this.#active.get(id),
      setOutcome: (id, outcome, epoch) => this.#setOutcome(id, outcome, epoch),
      emitProgress: (v) => this.emit('progress', v),
      directData: this.#directInit.enabled !== false,
      ...(this.#directInit.connectTimeoutMs
        ? { directConnectTimeoutMs: this.#directInit.connectTimeoutMs }
        : {}),
    })
  }

  readonly [Symbol.toStringTag] = '@skymesh/transfer'

  async start(): Promise<void> {
    if (this.#started) return
    this.#ac = new AbortController()
    // Every migration and every step listens to it
    setMaxListeners(Number.POSITIVE_INFINITY, this.#ac.signal)
    const { host } = this.#c
    const limit = { maxInboundStreams: 4 * MAX_DATA_STREAMS, maxOutboundStreams: 4 * MAX_DATA_STREAMS }
    // A host behind NAT may be reachable only through a relay (a limited connection): allowed here,
    // the source decides (BulkLinkAdvisor) whether a migration may use one.
    const limited = { runOnLimitedConnection: true }
    await host.handle(CONTROL_PROTOCOL, (stream, conn) => this.#onControl(stream, conn), {
      maxInboundStreams: 16,
      ...limited,
    })
    await host.handle(DATA_PROTOCOL, (stream, conn) => this.#onData(stream, conn), { ...limit, ...limited })
    await host.handle(STATUS_PROTOCOL, (stream) => this.#onStatus(stream), {
      maxInboundStreams: 16,
      ...limited,
    })
    // "What is my address" for hosts that hole-punch the direct data channel (punch.ts)
    await host.handle(OBSERVED_PROTOCOL, (stream, conn) => serveObserved(stream, conn, this.#ac.signal), {
      maxInboundStreams: 8,
    })
    await this.#qemu.start()
    if (this.#directInit.enabled !== false)
      // Leased messages: the destination's data loop is done with a frame before it reads the next
      this.#direct = new DirectListener(this.#directInit, this.#log, (f, id) => void this.#onDirect(f, id), {
        messages: 'leased',
      })
    this.#started = true
  }

  /**
   * Refuses new work, cancels what can be cancelled (before the handover: the VM stays at the source),
   * lets what is past its handover finish within `stopGraceMs` (a post-copy cut short loses the VM),
   * then cuts the rest and waits (bounded) for everything to settle.
   */
  async stop(): Promise<void> {
    if (!this.#started) return
    this.#started = false
    await this.#c.host.unhandle([CONTROL_PROTOCOL, DATA_PROTOCOL]).catch(() => undefined)
    await this.#qemu.stop()
    this.#direct?.close()
    this.#direct = undefined
    const late: Promise<unknown>[] = []
    for (const m of this.#active.values())
      if (!m.cancel() && !TERMINAL_PHASES.includes(m.view().phase)) late.push(m.done)
    if (late.length > 0) {
      this.#log.info({ migrations: late.length }, 'stopping: waiting for migrations past their handover')
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        Promise.allSettled(late),
        new Promise((r) => {
          timer = setTimeout(r, this.#stopGraceMs)
        }),
      ])
      clearTimeout(timer)
    }
    await this.#c.host.unhandle([STATUS_PROTOCOL, OBSERVED_PROTOCOL]).catch(() => undefined)
    this.#ac.abort(new MigrationError('CANCELLED', 'the migration service is stopping'))
    const all = [...this.#active.values()].map((m) => m.done)
    await Promise.race([Promise.allSettled(all), new Promise((r) => setTimeout(r, 10_000).unref())])
  }

  /**
   * Starts moving `vmId` to `to`; returns at once (progress through `get`/events, the end through
   * `done(id)`). Throws MigrationRefusedError for UNKNOWN_VM, ALREADY_MIGRATING, BUSY, BAD_OFFER.
   */
  migrate(vmId: string, to: PeerId, options: MigrateOptions = {}): MigrationView {
    if (!this.#started) throw new MigrationRefusedError('STOPPING', 'the migration service is not running')
    const vm = this.#c.lookupVm(vmId)
    if (!vm) throw new MigrationRefusedError('UNKNOWN_VM', `no VM ${vmId} on this host`)
    // A paused VM dirties nothing: pre-copy moves it in one round and it arrives paused.
    const opts = resolveOptions(
      vm.instance.state === 'paused' ? { ...options, mode: 'precopy' } : options,
      this.#defaults,
    )
    if (vm.instance.state !== 'running' && vm.instance.state !== 'paused') {
      throw new MigrationRefusedError('BAD_OFFER', `VM ${vmId} is ${vm.instance.state}`)
    }
    if (this.#migratingVm(vmId))
      throw new MigrationRefusedError('ALREADY_MIGRATING', `VM ${vmId} is already migrating`)
    if (to.equals(this.#c.host.peerId))
      throw new MigrationRefusedError('BAD_OFFER', 'cannot migrate a VM to its own host')
    if (this.#count('out') >= this.#maxOut) {
      throw new MigrationRefusedError('BUSY', `${this.#maxOut} outgoing migrations already run`)
    }
    const signal = options.signal ? AbortSignal.any([options.signal, this.#ac.signal]) : this.#ac.signal
    if (migratesWithQemu(vm.instance)) {
      const q = this.#qemu.outgoing({
        id: randomUUID(),
        to,
        instance: vm.instance,
        spec: vm.spec,
        epoch: vm.epoch,
        options: opts,
        signal,
      })
      options.signal?.addEventListener('abort', () => q.cancel(), { once: true })
      this.#track(q)
      return q.view()
    }
    const id = randomUUID()
    const linkRef: { link?: BulkLink } = {}
    this.#links.set(id, linkRef)
    const bytes = (vm.spec.memoryMiB + vm.spec.diskMiB) * 1024 * 1024
    const m = new OutgoingMigration({
      id,
      host: this.#linkHost(id, bytes, linkRef),
      to,
      instance: vm.instance,
      spec: vm.spec,
      epoch: vm.epoch,
      options: opts,
      hooks: this.#c.hooks ?? {},
      timeouts: this.#timeouts,
      logger: this.#log,
      store: this.store,
      ...(this.#directInit.enabled !== false
        ? { direct: { connectTimeoutMs: this.#directInit.connectTimeoutMs ?? 3000 } }
        : {}),
      relayTooSmall: () => linkRef.link?.relayTooSmall,
      signal,
      onChange: (v) => this.emit('progress', this.#withLink(v)),
    })
    options.signal?.addEventListener('abort', () => m.cancel(), { once: true })
    this.#track(m)
    return this.#withLink(m.view())
  }

  list(): MigrationView[] {
    return [...[...this.#active.values()].map((m) => m.view()), ...this.#finished.values()].map((v) =>
      this.#withLink(v),
    )
  }

  get(id: string): MigrationView | undefined {
    const v = this.#active.get(id)?.view() ?? this.#finished.get(id)
    return v && this.#withLink(v)
  }

  /** The migration's final view (resolves, never rejects, once it is done, failed or cancelled). */
  done(id: string): Promise<MigrationView> {
    const m = this.#active.get(id)
    if (m) return m.done.then((v) => this.#withLink(v))
    const f = this.#finished.get(id)
    if (f) return Promise.resolve(this.#withLink(f))
    return Promise.reject(new MigrationError('UNKNOWN_MIGRATION', `no migration ${id}`))
  }

  /**
   * Cancels a migration before its handover (the VM keeps running at the source). Throws
   * UNKNOWN_MIGRATION, or TOO_LATE once COMMIT was sent / the migration ended.
   */
  cancel(id: string): void {
    const m = this.#active.get(id)
    if (!m) {
      if (this.#finished.has(id)) throw new MigrationError('TOO_LATE', `migration ${id} has ended`)
      throw new MigrationError('UNKNOWN_MIGRATION', `no migration ${id}`)
    }
    if (!m.cancel()) throw new MigrationError('TOO_LATE', `migration ${id} is past its handover`)
  }

  /** Asks `peer` whether migration `id` committed there (for an agent resolving a journaled handover). */
  async queryStatus(peer: PeerId, id: string, opts: { signal: AbortSignal }): Promise<Outcome> {
    return (await queryStatus(this.#limitedOk(), peer, id, opts)).outcome
  }

  // ------------------------------------------------------------------ internals

  #withLink(v: MigrationView): MigrationView {
    const l = this.#links.get(v.id)?.link
    if (!l) return v
    // A relayed link whose data went over a TLS channel of its own: the hole punch (punch.ts) worked
    if (l.kind === 'relayed' && v.channel === 'direct-sealed')
      return {
        ...v,
        link: 'hole-punched',
        linkNote: "libp2p control over the relay; data over skymesh's own TCP hole punch (sealed channel)",
      }
    return { ...v, link: l.kind, ...(l.note ? { linkNote: l.note } : {}) }
  }

  /** The host, with streams allowed on limited (relayed) connections: the mesh's own traffic may use them. */
  #limitedOk(): MigrationHost {
    const host = this.#c.host
    return {
      peerId: host.peerId,
      handle: host.handle.bind(host),
      unhandle: host.unhandle.bind(host),
      dialProtocol: (peer, protocols, opts) =>
        host.dialProtocol(peer, protocols, { ...opts, runOnLimitedConnection: true }),
      ...(host.getConnections ? { getConnections: host.getConnections.bind(host) } : {}),
    }
  }

  /**
   * The host an outgoing migration dials through: its first dial asks the link advisor for a direct
   * connection (or the reason there is none, or a refusal), and every stream may use a relayed one.
   */
  #linkHost(id: string, bytes: number, ref: { link?: BulkLink }): MigrationHost {
    const base = this.#limitedOk()
    const advisor = this.#advisor
    if (!advisor) return base
    let prepared: Promise<void> | undefined
    return {
      ...base,
      dialProtocol: async (peer, protocols, opts) => {
        prepared ??= (async () => {
          const signal = opts?.signal ?? this.#ac.signal
          const link = await advisor.prepare(peer as PeerId, bytes, { signal })
          ref.link = link
          if (link.kind === 'relayed') {
            this.#log.warn(
              { migration: id, to: peer.toString(), why: link.note },
              'migration runs over a relay',
            )
          }
        })()
        await prepared
        return base.dialProtocol(peer, protocols, opts)
      },
    }
  }

  #count(direction: 'in' | 'out'): number {
    let n = direction === 'in' ? this.#pendingIn.size : 0
    for (const m of this.#active.values()) {
      const out = m instanceof OutgoingMigration || m instanceof QemuOutgoingMigration
      if (out === (direction === 'out')) n++
    }
    return n
  }

  #migratingVm(vmId: string): boolean {
    for (const m of this.#active.values()) if (m.view().vmId === vmId) return true
    for (const p of this.#pendingIn.values()) if (p.vmId === vmId) return true
    return false
  }

  #track(m: Entry): void {
    this.#active.set(m.id, m)
    void m.done.then((v) => {
      this.#active.delete(m.id)
      this.#finished.set(m.id, v)
      while (this.#finished.size > this.#keepFinished) {
        const oldest = this.#finished.keys().next().value!
        this.#finished.delete(oldest)
        this.#links.delete(oldest)
      }
      const done = this.#withLink(v)
      if (done.phase === 'done' && done.link === 'hole-punched') this.punchedPeers.add(done.to)
      this.emit('finished', done)
    })
  }

  #setOutcome(id: string, outcome: Outcome, epoch?: number, reason?: string): void {
    this.#outcomes.delete(id)
    this.#outcomes.set(id, {
      outcome,
      ...(epoch !== undefined ? { epoch } : {}),
      ...(reason !== undefined ? { reason } : {}),
    })
    while (this.#outcomes.size > this.#keepOutcomes)
      this.#outcomes.delete(this.#outcomes.keys().next().value!)
  }

  async #onControl(stream: Stream, conn: Connection): Promise<void> {
    const control = new ControlChannel(stream)
    const signal = this.#ac.signal
    const refuse = async (code: RefusalCode, message: string) => {
      this.#log.info({ code, message, from: conn.remotePeer.toString() }, 'migration refused')
      await control.send({ refuse: { code: REFUSE_TO_PB[code], message } }, signal).catch(() => undefined)
      await control.framed.close()
    }
    let offer: ReturnType<typeof validateOffer>
    try {
      const m = await withTimeout(this.#timeouts.stepTimeoutMs, 'offer', signal, (s) =>
        control.expect(['offer'], s),
      )
      offer = validateOffer(m.offer)
    } catch (err) {
      const e = asMigrationError(err)
      if (e instanceof MigrationRefusedError) await refuse(e.code, e.message)
      else control.framed.abort(e)
      return
    }
    const vmId = offer.spec.id
    if (!this.#started) return refuse('STOPPING', 'the migration service is stopping')
    if (this.#active.has(offer.migrationId) || this.#outcomes.has(offer.migrationId)) {
      return refuse('BAD_OFFER', `migration id ${offer.migrationId} was used before`)
    }
    if (this.#c.lookupVm(vmId)) return refuse('VM_EXISTS', `VM ${vmId} already runs on this host`)
    if (this.#migratingVm(vmId)) return refuse('ALREADY_MIGRATING', `VM ${vmId} is already migrating here`)
    if (this.#count('in') >= this.#maxIn)
      return refuse('BUSY', `${this.#maxIn} incoming migrations already run`)
    const placeholder = { id: offer.migrationId, vmId }
    this.#pendingIn.set(placeholder.id, placeholder)
    // Milestones of the answer (ms since the offer arrived), for the logs
    const t0 = performance.now()
    const steps: Record<string, number> = {}
    const step = (name: string) => {
      steps[name] = Math.round((performance.now() - t0) * 10) / 10
    }
    const from = conn.remotePeer.toString()
    // Counted against the limit from here on, while the reservation and the VM are made
    let release: () => void = () => undefined
    try {
      const r = this.#c.hooks?.reserve
        ? await this.#c.hooks.reserve(
            { migrationId: offer.migrationId, from, spec: offer.spec, epoch: offer.epoch, nics: offer.nics },
            { signal },
          )
        : { ok: true as const, release: () => undefined }
      if (!r.ok) return await refuse(r.code, r.message)
      release = () => r.release()
      step('reserved')
      // A disk over a base image: with our own copy of the image (fetched now if needed, within half a
      // step) the disk here is a layer over it and the source sends only its layer.
      let baseImage: string | undefined
      if (offer.baseImage && this.#c.hooks?.ensureBaseImage) {
        const bound = AbortSignal.any([signal, AbortSignal.timeout(this.#timeouts.stepTimeoutMs / 2)])
        const ok = await this.#c.hooks
          .ensureBaseImage(offer.baseImage, { signal: bound, from })
          .catch(() => false)
        if (ok) baseImage = offer.baseImage
      }
      // The VM is made while the accept goes out and the source opens its data streams (making a 1 GiB
      // VM took 40-60 ms, a third of an idle VM's whole migration): IncomingMigration applies nothing
      // before it exists, and aborts (VM still at the source, reservation released) if it cannot be made
      const g = offer.geometry
      const instance = this.#c.driver
        .prepareIncoming(offer.spec, {
          dir: this.#c.vmDir(vmId),
          ...(baseImage ? { baseImage } : {}),
        })
        .then(async (vm) => {
          step('prepared')
          const geometry =
            vm.memory.pageSize === g.pageSize &&
            vm.memory.pageCount === g.pageCount &&
            vm.disk.blockSize === g.blockSize &&
            vm.disk.blockCount === g.blockCount
          // The accept told the source whether to skip the base image's blocks: the disk must be over it
          const base = baseImage === undefined || vm.disk.baseImage?.id === baseImage
          if (geometry && base) return vm
          await vm.destroy().catch(() => undefined)
          throw new MigrationRefusedError(
            'BAD_OFFER',
            geometry
              ? `the disk here is not a layer over base image ${baseImage}`
              : 'the offered geometry does not match the VM spec here',
          )
        })
      // IncomingMigration (next) handles a failure; this only keeps it from counting as unhandled
      instance.catch(() => undefined)
      const reservationId = randomUUID()
      const m = new IncomingMigration({
        offer,
        from,
        to: this.#c.host.peerId.toString(),
        control,
        instance,
        reservation: { release },
        hooks: this.#c.hooks ?? {},
        timeouts: this.#timeouts,
        logger: this.#log,
        signal,
        store: this.store,
        onChange: (v) => this.emit('progress', v),
        onOutcome: (o, epoch, reason) => {
          // The VM runs here again: a copy of it kept from an earlier departure is obsolete
          if (o === 'committed') this.store.drop(vmId)
          this.#setOutcome(offer.migrationId, o, epoch, reason)
        },
      })
      this.#reservations.set(offer.migrationId, reservationId)
      this.#track(m)
      // Direct data channel: listen where the source reached us, with a key made for this migration
      let direct: Awaited<ReturnType<DirectListener['grant']>> | undefined
      if (offer.directHost && this.#direct) {
        try {
          direct = await this.#direct.grant(offer.directHost, offer.migrationId)
        } catch (err) {
          this.#log.info(
            { migration: offer.migrationId, host: offer.directHost, err: asMigrationError(err).message },
            'no direct data channel: cannot listen there',
          )
        }
      }
      // Hole punch (punch.ts): the source has no direct connection; answer with our public address
      // and a fixed port, then punch towards its (in the background: the accept must go first)
      let punch: PunchEndpoint | undefined
      if (offer.punch && this.#direct) {
        try {
          const { ip } = await askObserved(this.#limitedOk(), signal)
          // As many fixed ports as the source's invite: one punched connection per data stream
          punch = withPorts(ip, await pickPunchPorts(punchPorts(offer.punch).length))
        } catch (err) {
          this.#log.info({ migration: offer.migrationId, err: (err as Error).message }, 'no hole punch')
        }
      }
      step('granted')
      void m.done.then(() => {
        this.#reservations.delete(offer.migrationId)
        direct?.release()
      })
      await control
        .send(
          {
            accept: {
              reservationId,
              contentEntries: offer.geometry.dedup ? this.store.entries : 0,
              ...(direct
                ? { directPort: direct.port, directKey: direct.key, directIdentity: direct.identity }
                : {}),
              ...(punch && offer.punch
                ? { punch: { attemptId: offer.punch.attemptId, ...punch, morePorts: punch.morePorts ?? [] } }
                : {}),
              baseImage: baseImage !== undefined,
            },
          },
          signal,
        )
        .catch((err: unknown) => {
          control.framed.abort(asMigrationError(err))
        })
      step('accepted')
      this.#log.info({ migration: offer.migrationId, steps }, 'migration offer answered')
      if (punch && offer.punch) {
        const invite = offer.punch
        const punchAc = new AbortController()
        void m.done.then(() => punchAc.abort())
        // Each punched connection is handed on as it comes (its DataHello says which stream it is)
        for (const p of punchChannels({
          role: 'responder',
          localPorts: punchPorts(punch),
          remote: invite,
          key: invite.key,
          identity: invite.identity,
          timeoutMs: PUNCH_TIMEOUT_MS,
          signal: AbortSignal.any([signal, punchAc.signal]),
        }))
          void p.then(
            (framed) => {
              this.punchedPeers.add(from)
              return this.#onDirect(framed, offer.migrationId)
            },
            (err: Error) =>
              this.#log.info(
                { migration: offer.migrationId, err: err.message },
                'hole punch failed: libp2p streams',
              ),
          )
      }
    } catch (err) {
      release()
      control.framed.abort(asMigrationError(err))
    } finally {
      this.#pendingIn.delete(placeholder.id)
    }
  }

  readonly #pendingIn = new Map<string, { id: string; vmId: string }>()
  readonly #reservations = new Map<string, string>()

  async #onData(stream: Stream, conn: Connection): Promise<void> {
    const framed = newDataFramed(stream)
    try {
      const hello = await withTimeout(this.#timeouts.stepTimeoutMs, 'data hello', this.#ac.signal, (s) =>
        readDataHello(framed, s),
      )
      const m = this.#active.get(hello.migrationId)
      if (
        !(m instanceof IncomingMigration) ||
        m.from !== conn.remotePeer.toString() ||
        this.#reservations.get(hello.migrationId) !== hello.reservationId ||
        !m.attachData(framed, hello.streamIndex)
      ) {
        framed.abort(new Error('unknown migration or stream'))
      }
    } catch (err) {
      framed.abort(asMigrationError(err))
    }
  }

  /** A direct connection whose sealed-channel identity belongs to `migrationId`: bind it by its DataHello. */
  async #onDirect(framed: SealedFramed, migrationId: string): Promise<void> {
    try {
      const hello = await withTimeout(this.#timeouts.stepTimeoutMs, 'data hello', this.#ac.signal, (s) =>
        readDataHello(framed, s),
      )
      const m = this.#active.get(hello.migrationId)
      if (
        hello.migrationId !== migrationId ||
        !(m instanceof IncomingMigration) ||
        this.#reservations.get(hello.migrationId) !== hello.reservationId ||
        !m.attachData(framed, hello.streamIndex, 'direct-sealed')
      ) {
        framed.abort(new Error('unknown migration or stream'))
      }
    } catch (err) {
      framed.abort(asMigrationError(err))
    }
  }

  async #onStatus(stream: Stream): Promise<void> {
    await serveStatus(
      stream,
      async (id) => {
        const known = this.#outcomes.get(id)
        if (known) return known
        const journal = await this.#c.hooks?.lookupOutcome?.(id)
        return { outcome: journal ?? 'unknown' }
      },
      this.#ac.signal,
    )
  }
}

/** js-libp2p style factory: `migrationService(init)(components)`. */
export function migrationService(
  init: MigrationServiceInit = {},
): (c: MigrationComponents) => MigrationService {
  return (c) => new MigrationService(c, init)
}

export { TERMINAL_PHASES }
