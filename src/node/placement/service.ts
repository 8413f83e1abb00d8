// The agent's placement service: drives this host's side of the cooperative protocol (src/placement)
// with real time, the gossip view and the migration engine. It reads this host's load every tick (the
// protocol's trigger tracker applies the grace periods and the minimum gain is the planner's), carries
// the plan's migrations out through the same call the API's migrate uses (the plan's waves keep the
// per-host caps), and keeps open and recent events for the API. Members that gossip declares dead
// lose their leases at once (otherwise a lease simply runs out).
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { HostStateView, MemberView } from '../../gossip/types.js'
import {
  type ClusterView,
  dispatch,
  type EventRecord,
  type EventRef,
  type Move,
  type Output,
  type PlacementMessage,
  PlacementNode,
  POLICIES,
  type ProblemKind,
  seededRng,
  utilization,
} from '../../placement/index.js'
import { type DryRunRequest, type DryRunResult, dryRun, planIdOf, plannerConfig } from './dry-run.js'
import { PlacementConflictError, PlacementDisabledError, PlacementLookupError } from './errors.js'
import { createPlacementMetrics, type PlacementMetrics } from './metrics.js'
import type { PlacementSettings } from './settings.js'
import { type DropReason, type PlacementHost, PlacementTransport } from './transport.js'
import { type CapacityLike, hostView, type LocalVm, localSnapshot, vmView } from './view.js'

export interface PlacementGossip {
  members(): MemberView[]
  hosts(): HostStateView[]
}

export interface PlacementServiceInit {
  self: string
  site: string
  capacity: CapacityLike
  settings: PlacementSettings
  logger: Logger
  metrics: Registry
  gossip: PlacementGossip
  localVms: () => LocalVm[]
  /** Starts a live migration of a local VM (what POST /v1/vms/:id/migrate does); returns its id. */
  migrate: (vmId: string, to: string, opts?: { mode?: 'precopy' | 'postcopy' | 'auto' }) => { id: string }
  /** A migration's phase, or undefined if unknown. */
  migrationPhase: (id: string) => string | undefined
  /** The libp2p host; without it (unit tests) messages go to `send`. */
  host?: PlacementHost
  send?: (to: string, msg: PlacementMessage) => void
  dialTimeoutMs?: number
  /** Clock (tests pass their own). */
  now?: () => number
  /** Measured migration bandwidth between sites (bytes/s, keyed `from>to`), from the sites view. */
  siteLinks?: () => Readonly<Record<string, number>> | undefined
  /** Where the drain flag is kept across restarts (the agent's level store). */
  store?: { load(): Promise<unknown>; save(value: unknown): Promise<void> }
}

/** One event as the API shows it: open (growing, executing) or finished. */
export interface PlacementEventView {
  id: string
  kind: ProblemKind
  leader: string
  state: 'growing' | 'executing' | EventRecord['outcome']
  openedAt: string
  plannedAt?: string
  closedAt?: string
  durationMs?: number
  members: string[]
  moves: Move[]
  plannerRuns?: number
  asked?: number
  /** Why it ended so (a rejected operator's plan). */
  note?: string
}

/** An applied dry-run plan, once its event carries it out. */
export interface AppliedPlan {
  planId: string
  event: string
  kind: ProblemKind
  partition: string[]
  moves: Move[]
}

export interface PlacementStatus {
  self: string
  enabled: boolean
  draining: boolean
  /** The event that holds this host now (as leader or member). */
  reservedBy?: EventRef
  open: PlacementEventView[]
  recent: PlacementEventView[]
}

const DONE_PHASES = new Set(['done'])
const FAILED_PHASES = new Set(['failed', 'cancelled'])

export class PlacementService {
  readonly node: PlacementNode
  private readonly transport?: PlacementTransport
  private readonly metrics: PlacementMetrics
  private readonly log: Logger
  private readonly now: () => number
  private draining = false
  private timer?: NodeJS.Timeout
  private wakeTimer?: NodeJS.Timeout
  private wakeAt = Number.POSITIVE_INFINITY
  private running = false
  private openEvent?: PlacementEventView
  private readonly recent: PlacementEventView[] = []
  /** Placement migration id -> engine migration id. */
  private readonly inflight = new Map<string, string>()
  /** VMs present at start, and when later ones (moved in) were first seen. */
  private readonly known = new Set<string>()
  private readonly arrivedAt = new Map<string, number>()
  private readonly gone = new Set<string>()
  /** An operator's plan being gathered: settled when its event executes or ends. */
  private applying?: {
    eventId: string
    planId: string
    kind: ProblemKind
    resolve: (r: AppliedPlan) => void
    reject: (e: Error) => void
  }

  constructor(private readonly init: PlacementServiceInit) {
    this.log = init.logger
    this.now = init.now ?? Date.now
    const s = init.settings
    this.metrics = createPlacementMetrics(init.metrics, {
      reserved: () => this.node.reservedBy() !== undefined,
    })
    const seed = Number.parseInt(randomBytes(4).toString('hex'), 16)
    this.node = new PlacementNode({
      self: init.self,
      ring: { next: (id) => this.nextOnRing(id), size: () => this.ring().length },
      local: () => this.snapshot(),
      rng: seededRng(seed),
      // the same planner settings as a dry run, so a dry run returns the plan an event would run
      placement: plannerConfig(s),
      protocol: {
        leaseMs: s.leaseMs,
        joinTimeoutMs: s.joinTimeoutMs,
        maxPartition: s.maxPartition,
        retryBackoffMs: s.retryBackoffMs,
      },
      worthAsking: (host, kind) => this.worthAsking(host, kind),
      ...(init.siteLinks ? { siteLinks: init.siteLinks } : {}),
    })
    if (init.host && s.enabled) {
      this.transport = new PlacementTransport({
        host: init.host,
        logger: init.logger,
        isMember: (peer) => this.isMember(peer),
        onMessage: (from, msg) => this.deliver(from, msg),
        onDrop: (from, reason) => this.dropped(from, reason),
        dialTimeoutMs: init.dialTimeoutMs,
      })
    }
  }

  get enabled(): boolean {
    return this.init.settings.enabled
  }

  async start(): Promise<void> {
    for (const v of this.init.localVms()) this.known.add(v.id)
    const saved = (await this.init.store?.load().catch(() => undefined)) as { draining?: unknown } | undefined
    if (saved?.draining === true) {
      this.draining = true
      this.log.info('still draining (since before the restart): every VM leaves this host')
    }
    if (!this.enabled) return
    await this.transport?.start()
    this.running = true
    this.timer = setInterval(() => this.tick(), this.init.settings.tickMs)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    this.running = false
    this.applying?.reject(new PlacementConflictError('placement stopped before the plan could run'))
    this.applying = undefined
    clearInterval(this.timer)
    clearTimeout(this.wakeTimer)
    await this.transport?.stop()
  }

  /** One step: member deaths, migration results, then the protocol's own timers and detection. */
  tick(): void {
    if (!this.running) return
    const now = this.now()
    for (const m of this.init.gossip.members()) {
      if (m.status === 'dead' || m.status === 'left') {
        if (!this.gone.has(m.peerId)) {
          this.gone.add(m.peerId)
          this.apply(this.node.peerGone(m.peerId, now))
        }
      } else this.gone.delete(m.peerId)
    }
    for (const [pid, mid] of [...this.inflight]) {
      const phase = this.init.migrationPhase(mid)
      if (phase === undefined || DONE_PHASES.has(phase) || FAILED_PHASES.has(phase)) {
        this.inflight.delete(pid)
        const ok = phase !== undefined && DONE_PHASES.has(phase)
        this.metrics.migrations.inc({ outcome: ok ? 'done' : 'failed' })
        this.apply(this.node.migrationFinished(pid, ok, this.now()))
      }
    }
    this.apply(this.node.tick(this.now()))
  }

  /** A decoded message from a mesh member (the transport, or tests). */
  deliver(from: string, msg: PlacementMessage): void {
    if (!this.running) return
    if (msg.type === 'drain') {
      this.log.info({ from }, 'drain asked by a peer')
      this.startDrain()
      return
    }
    if (msg.type === 'undrain') {
      this.log.info({ from }, 'end of drain asked by a peer')
      this.stopDrain()
      return
    }
    this.apply(this.node.handle(from, msg, this.now()))
  }

  /** Drains this host or asks `peer` to drain itself. Throws if `peer` is not a live member. */
  drain(peer: string): { host: string; self: boolean; vms: number } {
    if (peer === this.init.self) {
      this.startDrain()
      return { host: peer, self: true, vms: this.snapshot().vms.length }
    }
    this.requirePeer(peer)
    this.send(peer, { type: 'drain', eventId: `drain-${randomBytes(6).toString('hex')}` })
    const st = this.init.gossip.hosts().find((h) => h.peerId === peer)
    return { host: peer, self: false, vms: st?.vms.length ?? 0 }
  }

  /**
   * Ends a drain of this host or asks `peer` to end its own: it takes VMs again and keeps those it
   * still runs (migrations already under way finish). Throws if `peer` is not a live member.
   */
  undrain(peer: string): { host: string; self: boolean; wasDraining?: boolean } {
    if (peer === this.init.self) {
      const was = this.draining
      this.stopDrain()
      return { host: peer, self: true, wasDraining: was }
    }
    this.requirePeer(peer)
    this.send(peer, { type: 'undrain', eventId: `undrain-${randomBytes(6).toString('hex')}` })
    return { host: peer, self: false }
  }

  private requirePeer(peer: string): void {
    const m = this.init.gossip.members().find((x) => x.peerId === peer)
    if (m?.status !== 'alive') throw new PlacementLookupError('host', `no live host ${peer} in the mesh`)
    if (!this.running) throw new PlacementDisabledError()
  }

  status(): PlacementStatus {
    const lead = this.node.leading()
    const open: PlacementEventView[] = []
    if (this.openEvent && lead && lead.id === this.openEvent.id) {
      open.push({ ...this.openEvent, state: lead.state, members: lead.members })
    }
    const holder = this.node.reservedBy()
    return {
      self: this.init.self,
      enabled: this.enabled,
      draining: this.draining,
      ...(holder ? { reservedBy: holder } : {}),
      open,
      recent: [...this.recent].reverse(),
    }
  }

  /** The events the mesh would run now, their partitions and plans, as gossip shows it; moves nothing. */
  dryRun(req: DryRunRequest): DryRunResult {
    return dryRun(
      {
        view: this.clusterView(),
        ring: { next: (id) => this.nextOnRing(id), size: () => this.ring().length },
        worthAsking: (host, kind) => this.worthAsking(host, kind),
      },
      req,
      this.init.settings,
      this.now(),
      this.init.siteLinks?.(),
    )
  }

  /**
   * Runs exactly the plan a dry run showed as `planId`: this host must be its leader and still have it
   * as its plan now; its event gathers the same hosts and carries the plan out only if, over their
   * fresh states, the planner gives that same plan. Resolves once the plan runs; PlacementConflictError
   * (409) when the view changed, a host is busy, or this host is held by another event.
   */
  applyPlan(planId: string): Promise<AppliedPlan> {
    if (!this.running) return Promise.reject(new PlacementDisabledError())
    if (this.applying)
      return Promise.reject(new PlacementConflictError(`plan ${this.applying.planId} is being applied`))
    // This host's event alone, or as a dry run of the whole mesh shows it (other events holding hosts).
    const own = this.dryRun({ policies: POLICIES, hosts: [this.init.self] })
    const ev =
      own.events.find((e) => e.planId === planId) ??
      this.dryRun({ policies: POLICIES }).events.find((e) => e.planId === planId)
    if (!ev) {
      const mine = own.events.find((e) => e.planId)
      return Promise.reject(
        new PlacementConflictError(
          `plan ${planId} is not what would run now: the mesh changed since the dry run` +
            (mine ? ` (this host's plan is now ${mine.planId})` : ' (this host has no plan now)'),
        ),
      )
    }
    if (ev.leader !== this.init.self)
      return Promise.reject(
        new PlacementConflictError(`plan ${planId} is led by ${ev.leader}: apply it on that host's agent`),
      )
    const opened = this.node.openFixed(
      ev.kind,
      ev.partition,
      (p) => planIdOf(this.init.self, ev.kind, p.moves) === planId,
      this.now(),
    )
    if (!opened) {
      const by = this.node.reservedBy()
      return Promise.reject(
        new PlacementConflictError(`this host is held by event ${by?.id ?? '?'}: try again when it ends`),
      )
    }
    this.log.info({ plan: planId, event: opened.eventId, hosts: ev.partition.length }, 'applying a plan')
    const done = new Promise<AppliedPlan>((resolve, reject) => {
      this.applying = { eventId: opened.eventId, planId, kind: ev.kind, resolve, reject }
    })
    this.apply(opened.out)
    return done
  }

  /** This host's state as the protocol and the planner see it. */
  snapshot() {
    const now = this.now()
    const vms = this.init.localVms()
    if (this.arrivedAt.size > vms.length) {
      const here = new Set(vms.map((v) => v.id))
      for (const id of this.arrivedAt.keys()) if (!here.has(id)) this.arrivedAt.delete(id)
    }
    for (const v of vms) {
      // A VM at epoch > 1 came by migration: it is left alone for the back-off period.
      if (v.epoch > 1 && !this.known.has(v.id) && !this.arrivedAt.has(v.id)) this.arrivedAt.set(v.id, now)
    }
    return localSnapshot(
      this.init.self,
      this.init.site,
      this.init.capacity,
      this.draining,
      vms,
      (id) => this.arrivedAt.get(id),
      this.init.settings.rules,
    )
  }

  /** The whole mesh as gossip shows it (this host from its own fresh state), for dry runs. */
  clusterView(): ClusterView {
    const self = this.snapshot()
    const alive = new Set(
      this.init.gossip
        .members()
        .filter((m) => m.status === 'alive' && !m.self)
        .map((m) => m.peerId),
    )
    const hosts = [self.host]
    const vms = [...self.vms]
    for (const h of this.init.gossip.hosts()) {
      if (h.peerId === this.init.self || !alive.has(h.peerId)) continue
      hosts.push(hostView(h.peerId, h.site, h.capacity, 'up'))
      for (const v of h.vms) {
        const view = vmView(h.peerId, { ...v, epoch: v.epoch }, undefined, this.init.settings.rules)
        if (view) vms.push(view)
      }
    }
    return { hosts, vms }
  }

  // ------------------------------------------------------------------ internals

  private startDrain(): void {
    if (!this.draining) {
      this.log.info('draining: every VM leaves this host')
      this.saveDrain(true)
    }
    this.draining = true
    if (this.running) this.apply(this.node.tick(this.now()))
  }

  private stopDrain(): void {
    if (this.draining) {
      this.log.info('drain ended: this host takes VMs again')
      this.saveDrain(false)
    }
    this.draining = false
  }

  private saveDrain(draining: boolean): void {
    void this.init.store?.save({ draining }).catch((err: unknown) => {
      this.log.warn({ err: (err as Error).message }, 'drain flag not saved')
    })
  }

  private apply(outputs: Output[]): void {
    dispatch(outputs, {
      send: (to, msg) => this.send(to, msg),
      migrate: (id, _eventId, move) => this.startMigration(id, move),
      event: (record) => this.closed(record),
      wake: (at) => this.scheduleWake(at),
    })
    this.trackOpen()
    const a = this.applying
    const lead = this.node.leading()
    if (a && lead?.id === a.eventId && lead.state === 'executing') {
      this.applying = undefined
      a.resolve({
        planId: a.planId,
        event: a.eventId,
        kind: a.kind,
        partition: lead.members,
        moves: lead.moves,
      })
    }
  }

  private send(to: string, msg: PlacementMessage): void {
    if (this.init.send) this.init.send(to, msg)
    else this.transport?.send(to, msg)
  }

  private startMigration(pid: string, move: Move): void {
    this.metrics.planned.inc({ reason: move.reason })
    try {
      // Plans for this host's own problem move only its own VMs.
      if (move.from !== this.init.self) throw new Error(`move of ${move.vm} is not from this host`)
      const mode = this.init.settings.reliefMode
      const m = this.init.migrate(move.vm, move.to, move.reason === 'overload' ? { mode } : {})
      this.inflight.set(pid, m.id)
      this.log.info({ vm: move.vm, to: move.to, reason: move.reason, migration: m.id }, 'placement migration')
    } catch (err) {
      this.log.warn({ vm: move.vm, to: move.to, err: (err as Error).message }, 'placement migration refused')
      this.metrics.migrations.inc({ outcome: 'refused' })
      // Reported on the next turn: the node is still dispatching this wave.
      setImmediate(() => {
        if (this.running) this.apply(this.node.migrationFinished(pid, false, this.now()))
      })
    }
  }

  private trackOpen(): void {
    const lead = this.node.leading()
    if (!lead || this.openEvent?.id === lead.id) return
    const ref = this.node.reservedBy()
    const kind = ref?.id === lead.id ? ref.kind : 'overload'
    const openedAt = ref?.id === lead.id ? ref.openedAt : this.now()
    this.openEvent = {
      id: lead.id,
      kind,
      leader: this.init.self,
      state: lead.state,
      openedAt: new Date(openedAt).toISOString(),
      members: lead.members,
      moves: [],
    }
    this.metrics.opened.inc({ kind })
    this.log.info({ event: lead.id, kind }, 'placement event opened')
  }

  private closed(r: EventRecord): void {
    if (this.openEvent?.id === r.id) this.openEvent = undefined
    if (this.applying?.eventId === r.id) {
      const a = this.applying
      this.applying = undefined
      a.reject(new PlacementConflictError(`plan ${a.planId} did not run: ${r.note ?? r.outcome}`))
    }
    this.metrics.closed.inc({ kind: r.kind, outcome: r.outcome })
    this.recent.push({
      id: r.id,
      kind: r.kind,
      leader: r.leader,
      state: r.outcome,
      openedAt: new Date(r.openedAt).toISOString(),
      ...(r.plannedAt !== undefined ? { plannedAt: new Date(r.plannedAt).toISOString() } : {}),
      closedAt: new Date(r.closedAt).toISOString(),
      durationMs: r.closedAt - r.openedAt,
      members: r.members,
      moves: r.moves,
      plannerRuns: r.plannerRuns,
      asked: r.asked,
      ...(r.note ? { note: r.note } : {}),
    })
    while (this.recent.length > this.init.settings.history) this.recent.shift()
    const level = r.outcome === 'done' || r.outcome === 'yielded' ? 'info' : 'warn'
    this.log[level](
      { event: r.id, kind: r.kind, outcome: r.outcome, moves: r.moves.length, members: r.members.length },
      'placement event closed',
    )
  }

  private scheduleWake(at: number): void {
    if (!this.running || at >= this.wakeAt) return
    clearTimeout(this.wakeTimer)
    this.wakeAt = at
    this.wakeTimer = setTimeout(
      () => {
        this.wakeAt = Number.POSITIVE_INFINITY
        this.tick()
      },
      Math.max(0, at - this.now()),
    )
    this.wakeTimer.unref()
  }

  private dropped(from: string, reason: DropReason): void {
    this.metrics.dropped.inc({ reason })
    this.log.debug({ from, reason }, 'placement message dropped')
  }

  private isMember(peer: string): boolean {
    return this.init.gossip
      .members()
      .some((m) => m.peerId === peer && (m.status === 'alive' || m.status === 'suspect'))
  }

  /** Live hosts, this one included, sorted: every agent sees (nearly) the same ring. */
  private ring(): string[] {
    const ids = new Set([this.init.self])
    for (const m of this.init.gossip.members()) if (m.status === 'alive') ids.add(m.peerId)
    return [...ids].sort()
  }

  private nextOnRing(id: string): string {
    const r = this.ring()
    return r.find((x) => x > id) ?? r[0]!
  }

  /** From gossip: whether a host has room to help (it answers for itself when it joins). */
  private worthAsking(host: string, kind: ProblemKind): boolean {
    const st = this.init.gossip.hosts().find((h) => h.peerId === host)
    if (!st) return false
    const used = { cpu: st.cpuLoad, mem: st.used.memoryMiB, disk: st.used.diskMiB }
    const cap = { cpu: st.capacity.vcpus, mem: st.capacity.memoryMiB, disk: st.capacity.diskMiB }
    const u = utilization(used, cap)
    if (u >= 1 - this.init.settings.headroom) return false
    // Consolidation fills hosts that already run VMs; it never wakes an empty one.
    return kind !== 'underload' || st.vms.length > 0
  }
}
