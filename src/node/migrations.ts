// The agent's side of live migration: capacity reservations for incoming VMs, the registry and
// journal updates at each step of the handover, and the recovery of a handover left in doubt.
// The engine (src/transfer) moves the bytes and runs the protocol; this decides what the host owns.
import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import { Counter, Gauge, Histogram } from 'prom-client'
import {
  type BulkLinkAdvisor,
  copyNetworkDef,
  type DirectInit,
  type IncomingOffer,
  type LocalVm,
  type MigrateOptions,
  MigrationError,
  type MigrationNic,
  MigrationRefusedError,
  MigrationService,
  type MigrationView,
  type Reservation,
} from '../transfer/index.js'
import type { VmDriver, VmInstance } from '../vm/types.js'
import { AgentError } from './errors.js'
import type { Host } from './p2p.js'
import type { Store } from './store.js'
import type { Resources, VmRecord } from './types.js'

/** What the glue needs from the agent: its registry and capacity, nothing else. */
export interface MigrationOwner {
  readonly peerId: string
  record(id: string): VmRecord | undefined
  instance(id: string): VmInstance | undefined
  /** Free capacity now, reservations included. */
  free(): Resources
  vmDir(id: string): string
  /**
   * Registers a VM that arrived (the agent adopts the instance); `nics`: what `checkNics` made of
   * the NICs its offer carried.
   */
  adoptIncoming(rec: VmRecord, instance: VmInstance, nics?: readonly MigrationNic[]): Promise<void>
  /** Optional, source: the VM's overlay NICs, sent in the offer. */
  nicsOf?(id: string): readonly MigrationNic[]
  /**
   * Optional, destination: checks the NICs an offer carries (changes nothing); throws with the reason
   * (the offer is refused BAD_OFFER). What it returns (the NICs as checked) is handed to `adoptIncoming`.
   */
  checkNics?(vmId: string, nics: readonly MigrationNic[]): readonly MigrationNic[] | undefined
  /**
   * Optional, destination: holds the offer's NICs for the migration (checked again: nobody else gets
   * their MAC or IP until the commit or `releaseNics`); throws as checkNics. Returns them as checked.
   */
  holdNics?(migrationId: string, vmId: string, nics: readonly MigrationNic[]): readonly MigrationNic[]
  /** Optional, destination: the hold of an incoming migration goes (failed, or the VM arrived). */
  releaseNics?(migrationId: string): void
  /** Optional, destination: whether the overlay keeps NICs for a local VM. */
  hasNics?(vmId: string): boolean
  /** Optional, destination: NICs of a committed arrival, back from the journal (the overlay lost them). */
  restoreNics?(vmId: string, nics: readonly MigrationNic[]): void
  /** Drops a VM that left: destroys its instance, deletes its record. */
  releaseOutgoing(id: string): Promise<void>
  /** The VM's record changed (state, migration marker): persist and gossip it. */
  update(id: string, patch: Partial<VmRecord>): Promise<void>
  /**
   * An arrived VM lost its memory (post-copy broke after the handover): stop its instance, keep its
   * disk and record (now `crashed`), as after a host crash.
   */
  crashIncoming(id: string): Promise<void>
  /** Removes what an incoming migration left in the VM's directory (no record owns it). */
  discardIncomingDir(id: string): Promise<void>
  /** Whether the VM's directory (its disk) exists. */
  hasVmDir(id: string): Promise<boolean>
  /** Saves the record of a VM whose commit was journaled but whose record was not (agent died between). */
  restoreRecord(rec: VmRecord): Promise<void>
  /**
   * Optional: what comes with an incoming VM besides its bytes (its virtual-cluster context, from the
   * source), before anything is reserved. If it throws, the offer is refused.
   */
  prepareIncoming?(vmId: string, from: string, signal: AbortSignal): Promise<void>
  /** Optional: makes a content-addressed image complete here (fetched from the mesh); false if it cannot. */
  ensureImage?(imageId: string, signal: AbortSignal, from?: string): Promise<boolean>
}

export interface MigrationsInit {
  host: Host
  logger: Logger
  driver: VmDriver
  store: Store
  owner: MigrationOwner
  metrics: Registry
  /** Direct or relayed connection for bulk transfer (nat.ts); absent: whatever connection exists. */
  link?: BulkLinkAdvisor
  /** The direct data channel's settings (config `migration:`). */
  direct?: DirectInit
}

export class AgentMigrations {
  readonly service: MigrationService
  private readonly reservations = new Map<string, Resources>()
  /** Incoming migrations: the checked NICs their offers carried (migration id -> checkNics' result). */
  private readonly offeredNics = new Map<string, readonly MigrationNic[] | undefined>()
  /** Incoming migrations: the journal entry written at the reservation (migration id -> entry id). */
  private readonly inJournal = new Map<string, string>()
  /** Incoming migrations whose commit is journaled (a later failure is a post-commit one). */
  private readonly committedIn = new Set<string>()
  private readonly log: Logger
  private readonly outcomes: Counter
  private readonly durations: Histogram
  private readonly downtimes: Histogram
  private readonly wireBytes: Counter

  constructor(private readonly init: MigrationsInit) {
    this.log = init.logger
    this.outcomes = new Counter({
      name: 'skymesh_migrations_total',
      help: 'Migrations by direction and outcome',
      labelNames: ['direction', 'outcome'],
      registers: [init.metrics],
    })
    this.durations = new Histogram({
      name: 'skymesh_migration_duration_seconds',
      help: 'Total time of finished outgoing migrations',
      labelNames: ['mode'],
      buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300],
      registers: [init.metrics],
    })
    this.downtimes = new Histogram({
      name: 'skymesh_migration_downtime_seconds',
      help: 'Downtime (pause at the source until running at the destination) of finished migrations',
      labelNames: ['mode'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers: [init.metrics],
    })
    this.wireBytes = new Counter({
      name: 'skymesh_migration_wire_bytes_total',
      help: 'Bytes outgoing migrations put on their streams (before encryption)',
      registers: [init.metrics],
    })
    const active = () => this.service.list().filter((m) => !['done', 'failed', 'cancelled'].includes(m.phase))
    new Gauge({
      name: 'skymesh_migrations_active',
      help: 'Migrations in progress by direction',
      labelNames: ['direction'],
      registers: [init.metrics],
      collect() {
        const now = active()
        this.set({ direction: 'out' }, now.filter((m) => m.direction === 'out').length)
        this.set({ direction: 'in' }, now.filter((m) => m.direction === 'in').length)
      },
    })
    this.service = new MigrationService(
      {
        host: init.host,
        logger: init.logger,
        driver: init.driver,
        vmDir: (id) => init.owner.vmDir(id),
        lookupVm: (id) => this.lookupVm(id),
        link: init.link,
        hooks: {
          nicsOf: (id) => init.owner.nicsOf?.(id) ?? [],
          reserve: (offer, opts) => this.reserve(offer, opts.signal),
          onCommit: (m, instance, newEpoch) => this.onCommit(m, instance, newEpoch),
          lookupOutcome: (id) => this.lookupOutcome(id),
          ensureBaseImage: async (id, opts) =>
            (await init.owner.ensureImage?.(id, opts.signal, opts.from)) ?? false,
          onHandover: (m) => this.onHandover(m),
          onReleased: (m) => this.onReleased(m),
          onAborted: (m) => this.onAborted(m),
          onInDoubt: (m) => this.onInDoubt(m),
        },
      },
      { ...(init.direct ? { direct: init.direct } : {}) },
    )
    this.service.on('progress', (m: MigrationView) => this.onProgress(m))
  }

  /** Memory, vCPUs and disk held for incoming VMs not committed yet. */
  reserved(): Resources {
    const r = { vcpus: 0, memoryMiB: 0, diskMiB: 0 }
    for (const x of this.reservations.values()) {
      r.vcpus += x.vcpus
      r.memoryMiB += x.memoryMiB
      r.diskMiB += x.diskMiB
    }
    return r
  }

  async start(): Promise<void> {
    await this.rollBackIncoming()
    await this.service.start()
    // A handover journaled but never resolved (the agent died, or the answer never came): ask.
    for (const e of await this.init.store.listJournal({ kind: 'migration-out', state: 'open' })) {
      void this.resolveInDoubt(e.id, e.vmId ?? '', String(e.data.migrationId), String(e.data.to))
    }
  }

  async stop(): Promise<void> {
    await this.service.stop()
  }

  /**
   * Incoming migrations the agent died in before their commit: discard the partial copy (its directory)
   * and close the entry as aborted, so a status query answers "aborted" and a retry starts clean.
   */
  private async rollBackIncoming(): Promise<void> {
    const { store, owner } = this.init
    for (const e of await store.listJournal({ kind: 'migration-in' })) {
      if (!e.vmId) continue
      if (e.state === 'committed') {
        await this.restoreCommitted(e.vmId, e.data)
        await this.restoreNics(e.vmId, e.data)
        continue
      }
      if (!owner.record(e.vmId)) await owner.discardIncomingDir(e.vmId)
      if (e.state === 'open') {
        await store.updateJournal(e.id, { state: 'aborted' })
        this.log.warn({ vm: e.vmId, migration: e.data.migrationId }, 'incoming migration rolled back')
      }
    }
  }

  migrate(vmId: string, to: string, options: MigrateOptions): MigrationView {
    const rec = this.init.owner.record(vmId)
    if (!rec) throw new AgentError('VM_NOT_FOUND', `no VM with id '${vmId}' on this host`)
    let peer: PeerId
    try {
      peer = peerIdFromString(to)
    } catch {
      throw new AgentError('BAD_REQUEST', `to: '${to}' is not a peer id`, { field: 'to' })
    }
    try {
      return this.service.migrate(vmId, peer, options)
    } catch (err) {
      if (err instanceof MigrationRefusedError) {
        throw new AgentError(err.code === 'UNKNOWN_VM' ? 'VM_NOT_FOUND' : 'INVALID_STATE', err.message, {
          reason: err.code,
        })
      }
      throw err
    }
  }

  list(): MigrationView[] {
    return this.service.list().sort((a, b) => b.startedAt - a.startedAt)
  }

  get(id: string): MigrationView {
    const m = this.service.get(id)
    if (!m) throw new AgentError('NOT_FOUND', `no migration '${id}' on this host`)
    return m
  }

  cancel(id: string): MigrationView {
    try {
      this.service.cancel(id)
    } catch (err) {
      if (err instanceof MigrationError && err.code === 'UNKNOWN_MIGRATION') {
        throw new AgentError('NOT_FOUND', err.message)
      }
      if (err instanceof MigrationError)
        throw new AgentError('INVALID_STATE', err.message, { reason: err.code })
      throw err
    }
    return this.get(id)
  }

  /** The migration in flight for a VM, if any (the agent refuses pause/delete meanwhile). */
  activeFor(vmId: string): MigrationView | undefined {
    return this.service
      .list()
      .find((m) => m.vmId === vmId && !['done', 'failed', 'cancelled'].includes(m.phase))
  }

  // --- engine hooks ---

  private lookupVm(id: string): LocalVm | undefined {
    const rec = this.init.owner.record(id)
    const instance = this.init.owner.instance(id)
    if (!rec || !instance) return undefined
    return {
      instance,
      spec: {
        id: rec.id,
        name: rec.name,
        vcpus: rec.vcpus,
        memoryMiB: rec.memoryMiB,
        diskMiB: rec.diskMiB,
        workload: rec.workload,
      },
      epoch: rec.epoch,
    }
  }

  private async reserve(offer: IncomingOffer, signal: AbortSignal): Promise<Reservation> {
    const { spec } = offer
    if (this.init.owner.record(spec.id)) {
      return { ok: false, code: 'VM_EXISTS', message: `VM ${spec.id} is already on this host` }
    }
    // The VM's NICs travel in the offer: a bad one refuses it before anything is reserved
    let nics: readonly MigrationNic[] | undefined
    try {
      nics = this.init.owner.checkNics?.(spec.id, offer.nics ?? [])
    } catch (err) {
      return { ok: false, code: 'BAD_OFFER', message: `VM ${spec.id}: ${(err as Error).message}` }
    }
    // Before the capacity check: the check and the reservation stay one step (no await between them).
    try {
      await this.init.owner.prepareIncoming?.(spec.id, offer.from, signal)
    } catch (err) {
      return { ok: false, code: 'REFUSED', message: `VM ${spec.id}: ${(err as Error).message}` }
    }
    const free = this.init.owner.free()
    if (spec.memoryMiB > free.memoryMiB || spec.diskMiB > free.diskMiB) {
      return {
        ok: false,
        code: 'NO_CAPACITY',
        message: `needs ${spec.memoryMiB} MiB memory / ${spec.diskMiB} MiB disk; free ${free.memoryMiB} / ${free.diskMiB}`,
      }
    }
    // The NICs are held with the capacity (no await between): checked again, since the context fetch
    // above gave other offers and new VMs time to take an address
    try {
      if (this.init.owner.holdNics)
        nics = this.init.owner.holdNics(offer.migrationId, spec.id, offer.nics ?? [])
    } catch (err) {
      return { ok: false, code: 'BAD_OFFER', message: `VM ${spec.id}: ${(err as Error).message}` }
    }
    this.reservations.set(offer.migrationId, {
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      diskMiB: spec.diskMiB,
    })
    this.offeredNics.set(offer.migrationId, nics)
    // Journaled before the VM's directory exists: a restart finds it and discards the partial copy. The
    // held NICs are in it: an open entry rolls back (the hold lived in memory only), a committed one
    // gives the VM its NICs back if the overlay lost them.
    try {
      const entry = await this.init.store.appendJournal({
        kind: 'migration-in',
        vmId: spec.id,
        state: 'open',
        data: { migrationId: offer.migrationId, from: offer.from, nics: journalNics(nics) },
      })
      this.inJournal.set(offer.migrationId, entry.id)
    } catch (err) {
      this.reservations.delete(offer.migrationId)
      this.offeredNics.delete(offer.migrationId)
      this.init.owner.releaseNics?.(offer.migrationId)
      throw err
    }
    return {
      ok: true,
      id: offer.migrationId,
      release: () => {
        this.reservations.delete(offer.migrationId)
        this.offeredNics.delete(offer.migrationId)
        this.init.owner.releaseNics?.(offer.migrationId)
        // Released without a commit: the engine discards the copy; the journal says so
        if (!this.committedIn.has(offer.migrationId)) void this.closeIncoming(offer.migrationId, 'aborted')
      },
    }
  }

  /**
   * A commit is journaled before the record is saved: an agent that died in between finds the commit
   * (the source was, or will be, told "committed" and drops its copy) with the disk but no record.
   * The VM is ours: its record comes back as crashed (the memory died with the agent).
   */
  private async restoreCommitted(vmId: string, data: Record<string, unknown>): Promise<void> {
    const { owner } = this.init
    const spec = data.spec as VmRecord | undefined
    if (owner.record(vmId) || !spec || !(await owner.hasVmDir(vmId))) return
    // The newest commit of this VM only: an older one may have left again since
    const newer = (await this.init.store.listJournal({ kind: 'migration-in', state: 'committed' })).filter(
      (x) => x.vmId === vmId,
    )
    if (newer.at(-1)?.data.migrationId !== data.migrationId) return
    const now = new Date().toISOString()
    await owner.restoreRecord({
      ...spec,
      state: 'crashed',
      host: owner.peerId,
      epoch: Number(data.epoch),
      createdAt: now,
      updatedAt: now,
    })
    this.log.warn({ vm: vmId, migration: data.migrationId }, 'committed arrival restored from the journal')
  }

  /**
   * The overlay state is saved after the commit is journaled: an agent that died in between has the VM
   * (its record, or the one restoreCommitted brought back) without its NICs. They come from the
   * journal, for the newest commit of a VM that is here; else its IP and MAC would be nobody's.
   */
  private async restoreNics(vmId: string, data: Record<string, unknown>): Promise<void> {
    const { owner } = this.init
    const nics = Array.isArray(data.nics) ? (data.nics as MigrationNic[]) : []
    if (nics.length === 0 || !owner.restoreNics || !owner.record(vmId) || owner.hasNics?.(vmId)) return
    const newer = (await this.init.store.listJournal({ kind: 'migration-in', state: 'committed' })).filter(
      (x) => x.vmId === vmId,
    )
    if (newer.at(-1)?.data.migrationId !== data.migrationId) return
    owner.restoreNics(vmId, nics)
  }

  private async closeIncoming(migrationId: string, state: 'committed' | 'aborted'): Promise<void> {
    const id = this.inJournal.get(migrationId)
    if (!id) return
    if (state === 'aborted') this.inJournal.delete(migrationId)
    try {
      await this.init.store.updateJournal(id, { state })
    } catch (err) {
      this.log.warn({ migration: migrationId, err: (err as Error).message }, 'journal update failed')
    }
  }

  private async onCommit(m: MigrationView, instance: VmInstance, newEpoch: number): Promise<void> {
    const spec = instance.spec
    const now = new Date().toISOString()
    // Journal first: if we die between here and RUNNING, the source asks and we must say "committed".
    const data = {
      migrationId: m.id,
      from: m.from,
      epoch: newEpoch,
      spec: { ...spec },
      nics: journalNics(this.offeredNics.get(m.id)),
    }
    const entryId = this.inJournal.get(m.id)
    if (entryId) await this.init.store.updateJournal(entryId, { state: 'committed', data })
    else
      await this.init.store.appendJournal({ kind: 'migration-in', vmId: spec.id, state: 'committed', data })
    this.committedIn.add(m.id)
    try {
      await this.init.owner.adoptIncoming(
        {
          ...spec,
          state: instance.state,
          host: this.init.owner.peerId,
          epoch: newEpoch,
          createdAt: now,
          updatedAt: now,
        },
        instance,
        this.offeredNics.get(m.id),
      )
    } catch (err) {
      // The engine discards the copy and answers "aborted": the journal must not say otherwise
      this.committedIn.delete(m.id)
      await this.closeIncoming(m.id, 'aborted')
      throw err
    }
    this.reservations.delete(m.id)
    this.offeredNics.delete(m.id)
    this.init.owner.releaseNics?.(m.id) // the VM's own NICs now
    this.log.info({ vm: spec.id, from: m.from, epoch: newEpoch, migration: m.id }, 'VM arrived')
  }

  private async lookupOutcome(migrationId: string): Promise<'committed' | 'aborted' | undefined> {
    const entries = await this.init.store.listJournal({ kind: 'migration-in' })
    const e = entries.find((x) => x.data.migrationId === migrationId)
    if (e?.state === 'committed') return 'committed'
    if (e?.state === 'aborted') return 'aborted'
    return undefined
  }

  private async onHandover(m: MigrationView): Promise<void> {
    await this.init.store.appendJournal({
      kind: 'migration-out',
      vmId: m.vmId,
      data: { migrationId: m.id, to: m.to },
    })
  }

  private async onReleased(m: MigrationView): Promise<void> {
    await this.init.owner.releaseOutgoing(m.vmId)
    await this.closeJournal(m.id, 'committed')
    this.outcomes.inc({ direction: 'out', outcome: 'done' })
    this.log.info({ vm: m.vmId, to: m.to, migration: m.id }, 'VM left for its new host')
    // The final figures (total time, downtime) are set once the engine finishes: read them then.
    void this.service.done(m.id).then((f) => {
      if (f.totalMs !== undefined) this.durations.observe({ mode: f.mode }, f.totalMs / 1000)
      if (f.downtimeMs !== undefined) this.downtimes.observe({ mode: f.mode }, f.downtimeMs / 1000)
      this.wireBytes.inc(f.wireBytes)
    })
  }

  private async onAborted(m: MigrationView): Promise<void> {
    await this.closeJournal(m.id, 'aborted')
    this.log.warn({ vm: m.vmId, to: m.to, error: m.error }, 'migration failed; the VM runs here')
  }

  private async onInDoubt(m: MigrationView): Promise<void> {
    this.log.error({ vm: m.vmId, to: m.to, migration: m.id }, 'handover in doubt: VM stays paused here')
    const entry = (await this.init.store.listJournal({ kind: 'migration-out', state: 'open' })).find(
      (e) => e.data.migrationId === m.id,
    )
    if (entry) void this.resolveInDoubt(entry.id, m.vmId, m.id, m.to)
  }

  /** Asks the destination until it says; committed -> drop our copy, aborted -> run it here. */
  private async resolveInDoubt(
    journalId: string,
    vmId: string,
    migrationId: string,
    to: string,
  ): Promise<void> {
    // About half an hour, at most 5 s apart: the VM is paused meanwhile, so notice the answer soon
    for (let attempt = 0; attempt < 360; attempt++) {
      try {
        const outcome = await this.service.queryStatus(peerIdFromString(to), migrationId, {
          signal: AbortSignal.timeout(5000),
        })
        if (outcome === 'committed') {
          if (this.init.owner.record(vmId)) await this.init.owner.releaseOutgoing(vmId)
          await this.init.store.updateJournal(journalId, { state: 'committed' })
          this.log.info({ vm: vmId, migration: migrationId }, 'in-doubt handover resolved: committed there')
          return
        }
        if (outcome === 'aborted' || outcome === 'unknown') {
          const vm = this.init.owner.instance(vmId)
          if (vm && vm.state === 'paused') await vm.resume()
          await this.init.store.updateJournal(journalId, { state: 'aborted' })
          this.log.warn(
            { vm: vmId, migration: migrationId },
            'in-doubt handover resolved: not committed, runs here',
          )
          return
        }
      } catch (err) {
        this.log.debug({ vm: vmId, err: (err as Error).message }, 'destination not answering yet')
      }
      await new Promise((r) => setTimeout(r, Math.min(5000, 500 * 2 ** Math.min(attempt, 4))).unref())
    }
    this.log.error(
      { vm: vmId, migration: migrationId },
      'handover still in doubt; VM left paused, operator needed',
    )
  }

  private async closeJournal(migrationId: string, state: 'committed' | 'aborted'): Promise<void> {
    for (const e of await this.init.store.listJournal({ kind: 'migration-out', state: 'open' })) {
      if (e.data.migrationId === migrationId) await this.init.store.updateJournal(e.id, { state })
    }
  }

  private onProgress(m: MigrationView): void {
    if (m.direction === 'in' && (m.phase === 'failed' || m.phase === 'cancelled')) {
      this.reservations.delete(m.id)
      this.inJournal.delete(m.id)
      // After the commit the VM is ours: a broken post-copy leaves it without part of its memory
      if (this.committedIn.delete(m.id) && m.error?.code === 'POSTCOPY_LOST') {
        this.log.error({ vm: m.vmId, from: m.from, migration: m.id }, 'post-copy lost: VM crashed here')
        void this.init.owner.crashIncoming(m.vmId).catch((err: unknown) => {
          this.log.error({ vm: m.vmId, err: (err as Error).message }, 'could not mark the VM crashed')
        })
      }
    }
    if (m.direction === 'in' && m.phase === 'done') {
      this.committedIn.delete(m.id)
      this.inJournal.delete(m.id)
    }
    if (m.phase === 'failed') this.outcomes.inc({ direction: m.direction, outcome: 'failed' })
    if (m.phase === 'cancelled') this.outcomes.inc({ direction: m.direction, outcome: 'cancelled' })
    if (m.direction === 'in' && m.phase === 'done') this.outcomes.inc({ direction: 'in', outcome: 'done' })
  }
}

/** NICs as the journal keeps them (plain JSON: network, MAC, IP, attach, the network's definition). */
function journalNics(nics: readonly MigrationNic[] | undefined): MigrationNic[] {
  return (nics ?? []).map((n) => ({
    network: n.network,
    mac: n.mac,
    ip: n.ip,
    ...(n.attach ? { attach: n.attach } : {}),
    ...(n.networkDef ? { networkDef: copyNetworkDef(n.networkDef) } : {}),
  }))
}
