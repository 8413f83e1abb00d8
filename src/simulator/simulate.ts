// The discrete-event simulator: hosts, VMs and their CPU demand from a trace, a network with latency,
// live migrations whose duration comes from the migration engine's cost model, and one of three
// schedulers on top: `cooperative` (a PlacementNode per host, the real protocol and planner), `central`
// (the same planner over the whole view every 30 s, as Entropy/VMPlaceS's central solver), or `none`.
// Everything is driven by one event queue and a seeded trace, so a run is deterministic for a seed
// (unless computeDelay is `measured`, which adds the planner's real compute time to simulated time).
import { performance } from 'node:perf_hooks'
import {
  type ClusterView,
  DEFAULT_CONFIG,
  type EventRecord,
  firstFitDecreasing,
  type HostState,
  type HostView,
  lowerBound,
  type MemberSnapshot,
  type Move,
  misplaced,
  type Output,
  type PlacementConfig,
  PlacementNode,
  type Plan,
  type Planner,
  type ProblemKind,
  type ProtocolConfig,
  plan as planCore,
  problemOf,
  seededRng,
  TriggerTracker,
  type VmView,
  validatePlan,
} from '../placement/index.js'
import { migrationCost, postcopyCost } from './cost.js'
import { EventQueue } from './heap.js'
import { quantile, round } from './stats.js'
import { MiB, type Trace } from './trace.js'

export type Mode = 'cooperative' | 'central' | 'none'

export interface SimConfig {
  mode: Mode
  seed: number
  placement?: Partial<PlacementConfig>
  protocol?: Partial<ProtocolConfig>
  /** One-way message latency between hosts of one site, and between sites (ms). */
  latencyMs?: number
  interSiteLatencyMs?: number
  /** How old the gossip view is that cooperative leaders use to pick whom to ask (ms). */
  gossipDelayMs?: number
  /** NIC bandwidth per host, shared by its migrations in flight (bytes/s). */
  bandwidthBps?: number
  downtimeMs?: number
  centralPeriodMs?: number
  /** `measured`: planner compute time delays its decisions in simulated time; `none`: instant. */
  computeDelay?: 'measured' | 'none'
  sampleMs?: number
  /** FFD over the whole view is computed this often (it is the costly sample). */
  ffdEveryMs?: number
  /** Hosts that crash (relative ms): their node stops, messages to them are lost. */
  crashes?: { host: string; atMs: number }[]
  /**
   * How overload relief migrates (both schedulers): `postcopy` (default) resumes the VM on the
   * destination after the downtime, so the load leaves at once and memory follows; `precopy` moves
   * the load only when the copy converges. Other moves always pre-copy.
   */
  reliefMode?: 'precopy' | 'postcopy'
  /** Check every central plan with the plan validator (costly at 10,000 hosts). */
  validatePlans?: boolean
  /** Return every event record (tests and debugging). */
  keepRecords?: boolean
}

export interface Sample {
  t: number
  active: number
  cpuLoad: number
  memLoad: number
  overloaded: number
  lowerBound: number
  ffd?: number
}

export interface ModeResult {
  mode: Mode
  hosts: number
  vms: number
  durationS: number
  wallMs: number
  overload: {
    episodes: number
    p50S: number
    p99S: number
    /** Episodes that outlasted the trigger's grace: how long they lasted beyond it (both modes alike). */
    pastGrace: number
    pastGraceP50S: number
    pastGraceP99S: number
    openAtEnd: number
    cumulativeS: number
  }
  events: {
    opened: number
    outcomes: Record<string, number>
    byKind: Record<string, number>
    toPlanP50Ms: number
    toPlanP99Ms: number
    toDoneP50Ms: number
    toDoneP99Ms: number
    /** Overload events that relieved their host: from opening to the host under its threshold. */
    toReliefP50Ms: number
    toReliefP99Ms: number
    partitionP50: number
    partitionMax: number
  }
  plannerMs: { count: number; p50: number; p99: number; max: number }
  migrations: number
  bytes: number
  failedMigrations: number
  activeHosts: { start: number; end: number; min: number }
  lowerBoundEnd: number
  ffdEnd: number
  violations: { overcommit: number; unreserved: number; doubleMove: number; invalidPlans: number }
  /** Live hosts still reserved at the end by an event whose leader crashed (leases should free them). */
  stranded: number
  series: Sample[]
  records?: EventRecord[]
  /** Migrations started, in order (with keepRecords). */
  started?: { move: Move; eventId: string; at: number }[]
}

interface Flight {
  vm: number
  from: number
  to: number
  done: (ok: boolean, t: number) => void
  /** Post-copy: the VM (its load) already runs on the destination. */
  switched: boolean
}

/**
 * Placement settings the simulator uses unless told otherwise: loads in the synthetic trace change once
 * a minute, so a 2 s grace filters no noise there and the cooperative side reacts as DVMS does; hosts
 * under 45 % are candidates to empty (at 30 % too few hosts qualify to approach the FFD packing).
 */
export const SIM_PLACEMENT: Partial<PlacementConfig> = { overloadGraceMs: 2_000, underload: 0.45 }

export function simulate(trace: Trace, config: SimConfig): ModeResult {
  return new Sim(trace, config).run()
}

class Sim {
  private readonly q = new EventQueue()
  private readonly cfg: Required<Omit<SimConfig, 'placement' | 'protocol' | 'crashes'>> &
    Pick<SimConfig, 'crashes' | 'protocol'>
  private readonly pcfg: PlacementConfig
  private readonly hosts: HostView[]
  private readonly ids: string[]
  private readonly hostIdx = new Map<string, number>()
  private readonly vmIdx = new Map<string, number>()
  private readonly state: HostState[]
  private readonly crashed: Uint8Array
  private readonly hostVms: Set<number>[]
  private readonly hostCpu: Float64Array
  private readonly hostMem: Float64Array
  private readonly outN: Int32Array
  private readonly inN: Int32Array
  private readonly vmHost: Int32Array
  /** Where a VM's load runs: its host, or its destination once a post-copy switched over. */
  private readonly vmCpuHost: Int32Array
  private readonly vmCpu: Float64Array
  private readonly vmMigrating: Uint8Array
  private readonly vmLastMoved: Float64Array
  private readonly overSince: Float64Array
  /** When each host's last overload episode ended. */
  private readonly overEnded: Float64Array
  private readonly reliefMs: number[] = []
  private readonly episodes: number[] = []
  private cumOverload = 0
  private readonly nodes: PlacementNode[] = []
  private readonly wakeAt: Float64Array
  private readonly plannerSum: Float64Array
  private readonly plannerMs: number[] = []
  private readonly records: EventRecord[] = []
  private readonly opened: number[] = []
  private readonly gCpu: Float64Array
  private readonly gMem: Float64Array
  private readonly gVms: Int32Array
  private migrations = 0
  private bytes = 0
  private failedMigrations = 0
  private readonly violations = { overcommit: 0, unreserved: 0, doubleMove: 0, invalidPlans: 0 }
  private readonly series: Sample[] = []
  private readonly sortedCap: { cpu: number[]; mem: number[] }
  private now: number
  private readonly end: number
  private centralBusy = false
  private readonly centralTracker: TriggerTracker

  constructor(
    private readonly trace: Trace,
    config: SimConfig,
  ) {
    this.cfg = {
      latencyMs: 1,
      interSiteLatencyMs: 40,
      gossipDelayMs: 1000,
      bandwidthBps: 1.25e9,
      downtimeMs: 300,
      centralPeriodMs: 30_000,
      computeDelay: 'none',
      sampleMs: 60_000,
      ffdEveryMs: 600_000,
      validatePlans: false,
      keepRecords: false,
      reliefMode: 'postcopy',
      ...config,
    }
    // The simulated links between sites are as fast as inside one: the planner knows it (measured).
    const sites = [...new Set(trace.hosts.map((h) => h.site))]
    const siteBandwidthBps: Record<string, number> = {}
    for (const x of sites)
      for (const y of sites) if (x !== y) siteBandwidthBps[`${x}>${y}`] = this.cfg.bandwidthBps
    this.pcfg = { ...DEFAULT_CONFIG, ...SIM_PLACEMENT, siteBandwidthBps, ...config.placement }
    this.centralTracker = new TriggerTracker(this.pcfg)
    this.hosts = trace.hosts
    this.ids = this.hosts.map((h) => h.id)
    this.ids.forEach((id, i) => {
      this.hostIdx.set(id, i)
    })
    trace.vms.forEach((v, k) => {
      this.vmIdx.set(v.id, k)
    })
    const nH = this.hosts.length
    const nV = trace.vms.length
    this.state = this.hosts.map((h) => h.state)
    this.crashed = new Uint8Array(nH)
    this.hostVms = this.hosts.map(() => new Set<number>())
    this.hostCpu = new Float64Array(nH)
    this.hostMem = new Float64Array(nH)
    this.outN = new Int32Array(nH)
    this.inN = new Int32Array(nH)
    this.vmHost = new Int32Array(nV)
    this.vmCpuHost = new Int32Array(nV)
    this.vmCpu = new Float64Array(nV)
    this.vmMigrating = new Uint8Array(nV)
    this.vmLastMoved = new Float64Array(nV).fill(Number.NaN)
    this.overSince = new Float64Array(nH).fill(Number.NaN)
    this.overEnded = new Float64Array(nH).fill(Number.NaN)
    this.wakeAt = new Float64Array(nH).fill(Number.POSITIVE_INFINITY)
    this.plannerSum = new Float64Array(nH)
    this.gCpu = new Float64Array(nH)
    this.gMem = new Float64Array(nH)
    this.gVms = new Int32Array(nH)
    this.now = trace.startMs
    this.end = trace.startMs + trace.durationMs
    trace.vms.forEach((v, k) => {
      this.vmHost[k] = v.host
      this.vmCpuHost[k] = v.host
      this.vmCpu[k] = v.cpu0
      this.hostVms[v.host]!.add(k)
      this.hostCpu[v.host] = this.hostCpu[v.host]! + v.cpu0
      this.hostMem[v.host] = this.hostMem[v.host]! + v.memMiB
    })
    this.hosts.forEach((_, h) => {
      if (this.hostVms[h]!.size === 0 && this.state[h] === 'up') this.state[h] = 'standby'
    })
    this.sortedCap = {
      cpu: this.hosts.map((h) => h.capacity.cpu).sort((a, b) => b - a),
      mem: this.hosts.map((h) => h.capacity.mem).sort((a, b) => b - a),
    }
  }

  run(): ModeResult {
    const wall0 = performance.now()
    const t0 = this.now
    for (let h = 0; h < this.hosts.length; h++) this.updateOverload(h)
    const activeStart = this.active()
    if (this.cfg.mode === 'cooperative') this.startCooperative()
    if (this.cfg.mode === 'central') this.q.push(t0 + this.cfg.centralPeriodMs, () => this.centralRound())
    for (const c of this.cfg.crashes ?? []) {
      const h = this.hostIdx.get(c.host)
      if (h !== undefined) this.q.push(t0 + c.atMs, () => this.crash(h))
    }
    const loads = this.trace.loads()
    const pullLoads = () => {
      const b = loads.next()
      if (b.done) return
      this.q.push(t0 + b.value.t, () => {
        const touched = new Set<number>()
        for (let i = 0; i < b.value.vms.length; i++) {
          const k = b.value.vms[i]!
          const h = this.vmCpuHost[k]!
          const d = b.value.cpu[i]! - this.vmCpu[k]!
          this.vmCpu[k] = b.value.cpu[i]!
          this.hostCpu[h] = this.hostCpu[h]! + d
          touched.add(h)
        }
        for (const h of touched) {
          this.updateOverload(h)
          this.touch(h)
        }
        pullLoads()
      })
    }
    pullLoads()
    this.gossipRefresh()
    let nextFfd = t0
    const sample = () => {
      const withFfd = this.now >= nextFfd
      if (withFfd) nextFfd = this.now + this.cfg.ffdEveryMs
      this.series.push(this.sample(withFfd || this.now + this.cfg.sampleMs >= this.end))
      if (this.now + this.cfg.sampleMs <= this.end) this.q.push(this.now + this.cfg.sampleMs, sample)
    }
    this.q.push(t0, sample)
    for (;;) {
      const ev = this.q.pop()
      if (!ev || ev[0] > this.end) break
      this.now = ev[0]
      ev[1]()
    }
    this.now = this.end
    let openAtEnd = 0
    for (let h = 0; h < this.hosts.length; h++) {
      if (!Number.isNaN(this.overSince[h]!)) {
        openAtEnd++
        this.cumOverload += this.end - this.overSince[h]!
      }
    }
    const last = this.series[this.series.length - 1]
    // Resolution times are those of overload events (consolidation events are opportunities, not faults).
    const done = this.records.filter((r) => r.plannedAt !== undefined && r.kind === 'overload')
    const outcomes: Record<string, number> = {}
    const byKind: Record<string, number> = {}
    for (const r of this.records) {
      outcomes[r.outcome] = (outcomes[r.outcome] ?? 0) + 1
      byKind[r.kind] = (byKind[r.kind] ?? 0) + 1
    }
    const sizes = this.records.map((r) => r.members.length)
    const grace = this.pcfg.overloadGraceMs
    const pastGrace = this.episodes.filter((d) => d > grace).map((d) => d - grace)
    return {
      mode: this.cfg.mode,
      hosts: this.hosts.length,
      vms: this.trace.vms.length,
      durationS: this.trace.durationMs / 1000,
      wallMs: round(performance.now() - wall0, 0),
      overload: {
        episodes: this.episodes.length,
        p50S: round(quantile(this.episodes, 0.5) / 1000, 1),
        p99S: round(quantile(this.episodes, 0.99) / 1000, 1),
        pastGrace: pastGrace.length,
        pastGraceP50S: round(quantile(pastGrace, 0.5) / 1000, 1),
        pastGraceP99S: round(quantile(pastGrace, 0.99) / 1000, 1),
        openAtEnd,
        cumulativeS: round(this.cumOverload / 1000, 0),
      },
      events: {
        opened: this.records.length,
        outcomes,
        byKind,
        toPlanP50Ms: round(
          quantile(
            done.map((r) => r.plannedAt! - r.openedAt),
            0.5,
          ),
          1,
        ),
        toPlanP99Ms: round(
          quantile(
            done.map((r) => r.plannedAt! - r.openedAt),
            0.99,
          ),
          1,
        ),
        toDoneP50Ms: round(
          quantile(
            done.filter((r) => r.outcome === 'done').map((r) => r.closedAt - r.openedAt),
            0.5,
          ),
          0,
        ),
        toDoneP99Ms: round(
          quantile(
            done.filter((r) => r.outcome === 'done').map((r) => r.closedAt - r.openedAt),
            0.99,
          ),
          0,
        ),
        toReliefP50Ms: round(quantile(this.reliefMs, 0.5), 0),
        toReliefP99Ms: round(quantile(this.reliefMs, 0.99), 0),
        partitionP50: quantile(sizes, 0.5),
        partitionMax: sizes.length ? Math.max(...sizes) : 0,
      },
      plannerMs: {
        count: this.plannerMs.length,
        p50: round(quantile(this.plannerMs, 0.5), 3),
        p99: round(quantile(this.plannerMs, 0.99), 3),
        max: round(
          this.plannerMs.length ? this.plannerMs.reduce((m, x) => Math.max(m, x), 0) : Number.NaN,
          3,
        ),
      },
      migrations: this.migrations,
      bytes: Math.round(this.bytes),
      failedMigrations: this.failedMigrations,
      activeHosts: {
        start: activeStart,
        end: last?.active ?? activeStart,
        min: Math.min(...this.series.map((s) => s.active)),
      },
      lowerBoundEnd: last?.lowerBound ?? 0,
      ffdEnd: last?.ffd ?? 0,
      violations: this.violations,
      stranded: this.nodes.filter((n, h) => {
        const e = !this.crashed[h] && n.reservedBy()
        return e && this.crashed[this.hostIdx.get(e.leader)!]
      }).length,
      series: this.series,
      ...(this.cfg.keepRecords ? { records: this.records, started: this.started } : {}),
    }
  }

  private readonly started: { move: Move; eventId: string; at: number }[] = []

  /** Event records of the cooperative run (tests read them). */
  eventRecords(): readonly EventRecord[] {
    return this.records
  }

  // ------------------------------------------------------------------ world

  private active(): number {
    let n = 0
    for (let h = 0; h < this.hosts.length; h++) if (this.hostVms[h]!.size > 0 && !this.crashed[h]) n++
    return n
  }

  private updateOverload(h: number): void {
    const over =
      !this.crashed[h] && this.hostCpu[h]! > this.pcfg.overload * this.hosts[h]!.capacity.cpu + 1e-9
    const since = this.overSince[h]!
    if (over && Number.isNaN(since)) this.overSince[h] = this.now
    else if (!over && !Number.isNaN(since)) {
      this.overEnded[h] = this.now
      this.episodes.push(this.now - since)
      this.cumOverload += this.now - since
      this.overSince[h] = Number.NaN
    }
  }

  private vmView(k: number): VmView {
    const v = this.trace.vms[k]!
    const last = this.vmLastMoved[k]!
    return {
      id: v.id,
      host: this.ids[this.vmHost[k]!]!,
      demand: { cpu: this.vmCpu[k]!, mem: v.memMiB, disk: 0 },
      memoryBytes: v.memMiB * MiB,
      ...(v.constraints ? { constraints: v.constraints } : {}),
      ...(Number.isNaN(last) ? {} : { lastMovedAt: last }),
    }
  }

  private hostView(h: number): HostView {
    const base = this.hosts[h]!
    return {
      id: base.id,
      site: base.site,
      capacity: base.capacity,
      state: this.crashed[h] ? 'down' : this.state[h]!,
    }
  }

  private snapshot(h: number): MemberSnapshot {
    const vms: VmView[] = []
    for (const k of this.hostVms[h]!) vms.push(this.vmView(k))
    return { host: this.hostView(h), vms }
  }

  private latency(a: number, b: number): number {
    return this.hosts[a]!.site === this.hosts[b]!.site ? this.cfg.latencyMs : this.cfg.interSiteLatencyMs
  }

  private crash(h: number): void {
    this.crashed[h] = 1
    this.nodes[h]?.crash()
    this.updateOverload(h)
  }

  private sample(withFfd: boolean): Sample {
    let cpu = 0
    let mem = 0
    let capCpu = 0
    let capMem = 0
    let overloaded = 0
    for (let h = 0; h < this.hosts.length; h++) {
      if (this.crashed[h]) continue
      cpu += this.hostCpu[h]!
      capCpu += this.hosts[h]!.capacity.cpu
      capMem += this.hosts[h]!.capacity.mem
      if (!Number.isNaN(this.overSince[h]!)) overloaded++
    }
    for (let k = 0; k < this.trace.vms.length; k++) mem += this.trace.vms[k]!.memMiB
    const need = (sum: number, caps: number[]) => {
      let k = 0
      let s = 0
      while (s + 1e-9 < sum && k < caps.length) s += caps[k++]!
      return k
    }
    const s: Sample = {
      t: round((this.now - this.trace.startMs) / 1000, 0),
      active: this.active(),
      cpuLoad: round(cpu / capCpu, 4),
      memLoad: round(mem / capMem, 4),
      overloaded,
      lowerBound: Math.max(need(cpu, this.sortedCap.cpu), need(mem, this.sortedCap.mem)),
    }
    if (withFfd) {
      const view = this.view()
      s.ffd = firstFitDecreasing(view.hosts, view.vms, 1 - this.pcfg.headroom).hosts
    }
    return s
  }

  private view(): ClusterView {
    const hosts = this.hosts.map((_, h) => this.hostView(h))
    const vms: VmView[] = []
    for (let k = 0; k < this.trace.vms.length; k++)
      if (!this.crashed[this.vmHost[k]!]) vms.push(this.vmView(k))
    return { hosts, vms }
  }

  // ------------------------------------------------------------------ migrations

  private startMigration(
    move: Move,
    f: (ok: boolean, t: number) => void,
    check?: (h: number) => boolean,
  ): void {
    const k = this.vmIdx.get(move.vm)
    const from = this.hostIdx.get(move.from)
    const to = this.hostIdx.get(move.to)
    if (k === undefined || from === undefined || to === undefined) {
      f(false, this.now)
      return
    }
    if (this.vmHost[k] !== from || this.vmMigrating[k]) {
      this.violations.doubleMove++
      f(false, this.now)
      return
    }
    if (this.crashed[from] || this.crashed[to]) {
      f(false, this.now)
      return
    }
    // Both ends must be reserved by the event that planned the move (never by another partition).
    if (check && (!check(from) || !check(to))) this.violations.unreserved++
    const mem = this.trace.vms[k]!.memMiB
    if (this.hostMem[to]! + mem > this.hosts[to]!.capacity.mem + 1e-6) {
      this.violations.overcommit++
      f(false, this.now)
      return
    }
    this.hostMem[to] = this.hostMem[to]! + mem
    this.vmMigrating[k] = 1
    if (this.state[to] === 'standby') this.state[to] = 'up'
    this.outN[from] = this.outN[from]! + 1
    this.inN[to] = this.inN[to]! + 1
    const share = Math.max(this.outN[from]!, this.inN[to]!)
    const flight: Flight = { vm: k, from, to, done: f, switched: false }
    if (move.reason === 'overload' && this.cfg.reliefMode === 'postcopy') {
      const cost = postcopyCost(mem * MiB, this.cfg.bandwidthBps / share, this.cfg.downtimeMs)
      this.q.push(this.now + cost.switchMs, () => this.switchOver(flight))
      this.q.push(this.now + cost.ms, () => this.endMigration(flight, cost.bytes))
      return
    }
    const cost = migrationCost(
      mem * MiB,
      this.trace.vms[k]!.dirtyBps,
      this.cfg.bandwidthBps / share,
      this.cfg.downtimeMs,
    )
    this.q.push(this.now + cost.ms, () => this.endMigration(flight, cost.bytes))
  }

  /** Post-copy resumes the VM on the destination: its load leaves the source now. */
  private switchOver(m: Flight): void {
    if (this.crashed[m.from] || this.crashed[m.to]) return
    this.shiftCpu(m.vm, m.from, m.to)
    m.switched = true
    this.updateOverload(m.from)
    this.updateOverload(m.to)
  }

  private shiftCpu(k: number, from: number, to: number): void {
    this.hostCpu[from] = this.hostCpu[from]! - this.vmCpu[k]!
    this.hostCpu[to] = this.hostCpu[to]! + this.vmCpu[k]!
    this.vmCpuHost[k] = to
  }

  private endMigration(m: Flight, bytes: number): void {
    const { vm: k, from, to } = m
    const mem = this.trace.vms[k]!.memMiB
    this.outN[from] = this.outN[from]! - 1
    this.inN[to] = this.inN[to]! - 1
    this.vmMigrating[k] = 0
    if (this.crashed[from] || this.crashed[to]) {
      this.hostMem[to] = this.hostMem[to]! - mem
      // (A real post-copy that loses an end after the switch loses the VM; here it stays at the source.)
      if (m.switched) this.shiftCpu(k, to, from)
      this.failedMigrations++
      m.done(false, this.now)
      return
    }
    this.hostVms[from]!.delete(k)
    this.hostVms[to]!.add(k)
    if (!m.switched) this.shiftCpu(k, from, to)
    this.hostMem[from] = this.hostMem[from]! - mem
    this.vmHost[k] = to
    this.vmLastMoved[k] = this.now
    this.migrations++
    this.bytes += bytes
    if (this.hostVms[from]!.size === 0 && this.state[from] === 'up') this.state[from] = 'standby'
    this.updateOverload(from)
    this.updateOverload(to)
    m.done(true, this.now)
    this.touch(from)
    this.touch(to)
  }

  // ------------------------------------------------------------------ cooperative

  private startCooperative(): void {
    const n = this.hosts.length
    const ring = { next: (id: string) => this.ids[(this.hostIdx.get(id)! + 1) % n]!, size: () => n }
    const rng = seededRng(this.cfg.seed ^ 0xc0ffee)
    const keep = 1 - this.pcfg.headroom - 0.05
    for (let h = 0; h < n; h++) {
      const timed: Planner = (view, req, cfg) => {
        const t = performance.now()
        const p = planCore(view, req, cfg)
        const ms = performance.now() - t
        this.plannerSum[h] = this.plannerSum[h]! + ms
        this.lastPlannerMs += ms
        return p
      }
      const worthAsking = (id: string, kind: ProblemKind): boolean => {
        const c = this.hostIdx.get(id)!
        const cap = this.hosts[c]!.capacity
        const cpu = this.gCpu[c]! / cap.cpu
        const mem = this.gMem[c]! / cap.mem
        if (kind === 'underload')
          return this.gVms[c]! > 0 && Math.max(cpu, mem) >= this.pcfg.underload && Math.max(cpu, mem) < keep
        return Math.max(cpu, mem) < keep
      }
      this.nodes.push(
        new PlacementNode({
          self: this.ids[h]!,
          ring,
          local: () => this.snapshot(h),
          rng: () => rng(),
          placement: this.pcfg,
          ...(this.cfg.protocol ? { protocol: this.cfg.protocol } : {}),
          planner: timed,
          worthAsking,
        }),
      )
    }
    for (let h = 0; h < n; h++) this.touch(h)
  }

  private lastPlannerMs = 0

  /** Runs node h's handler and carries out its outputs (after its compute time when measured). */
  private drive(h: number, fn: (node: PlacementNode) => Output[]): void {
    const node = this.nodes[h]
    if (!node || this.crashed[h]) return
    this.lastPlannerMs = 0
    const out = fn(node)
    if (out.length === 0) return
    const delay = this.cfg.computeDelay === 'measured' ? this.lastPlannerMs : 0
    if (delay > 0) this.q.push(this.now + delay, () => this.apply(h, out))
    else this.apply(h, out)
  }

  private touch(h: number): void {
    if (this.cfg.mode === 'cooperative') this.drive(h, (n) => n.tick(this.now))
  }

  private apply(h: number, out: Output[]): void {
    for (const o of out) {
      if (o.kind === 'send') {
        const to = this.hostIdx.get(o.to)
        if (to === undefined) continue
        const from = this.ids[h]!
        const msg = o.msg
        if (msg.type === 'join') this.opened.push(this.now)
        this.q.push(this.now + this.latency(h, to), () => {
          if (!this.crashed[to]) this.drive(to, (n) => n.handle(from, msg, this.now))
        })
      } else if (o.kind === 'wake') {
        if (o.at < this.wakeAt[h]! || this.wakeAt[h]! < this.now) {
          this.wakeAt[h] = o.at
          this.q.push(o.at, () => {
            if (this.wakeAt[h] === o.at) this.wakeAt[h] = Number.POSITIVE_INFINITY
            this.drive(h, (n) => n.tick(this.now))
          })
        }
      } else if (o.kind === 'migrate') {
        const src = this.hostIdx.get(o.move.from)!
        const eventId = o.eventId
        if (this.cfg.keepRecords) this.started.push({ move: o.move, eventId, at: this.now })
        this.q.push(this.now + this.latency(h, src), () =>
          this.startMigration(
            o.move,
            (ok, t) => {
              this.q.push(t + this.latency(src, h), () =>
                this.drive(h, (n) => n.migrationFinished(o.id, ok, this.now)),
              )
            },
            (x) => this.nodes[x]!.reservedBy()?.id === eventId,
          ),
        )
      } else {
        const r = o.record
        const ended = this.overEnded[h]!
        if (
          r.kind === 'overload' &&
          r.outcome === 'done' &&
          ended >= r.openedAt &&
          Number.isNaN(this.overSince[h]!)
        )
          this.reliefMs.push(ended - r.openedAt)
        this.records.push(o.record)
        this.plannerMs.push(this.plannerSum[h]!)
        this.plannerSum[h] = 0
      }
    }
  }

  private gossipRefresh(): void {
    this.gCpu.set(this.hostCpu)
    this.gMem.set(this.hostMem)
    for (let h = 0; h < this.hosts.length; h++) this.gVms[h] = this.hostVms[h]!.size
    if (this.cfg.mode === 'cooperative')
      this.q.push(this.now + this.cfg.gossipDelayMs, () => this.gossipRefresh())
  }

  // ------------------------------------------------------------------ central

  private centralRound(): void {
    if (this.now + this.cfg.centralPeriodMs <= this.end)
      this.q.push(this.now + this.cfg.centralPeriodMs, () => this.centralRound())
    if (this.centralBusy) return
    const focus: string[] = []
    for (let h = 0; h < this.hosts.length; h++) {
      if (this.crashed[h]) continue
      const used = { cpu: this.hostCpu[h]!, mem: this.hostMem[h]!, disk: 0 }
      let wrong = false
      for (const k of this.hostVms[h]!)
        if (this.trace.vms[k]!.constraints) {
          wrong = misplaced(this.hostView(h), this.snapshot(h).vms, this.now, this.pcfg)
          break
        }
      const kind = problemOf(
        {
          state: this.state[h]!,
          capacity: this.hosts[h]!.capacity,
          used,
          vms: this.hostVms[h]!.size,
          misplaced: wrong,
        },
        this.pcfg,
      )
      const fired = this.centralTracker.observe(this.ids[h]!, kind, this.now)
      if (kind === 'overload' || fired) focus.push(this.ids[h]!)
    }
    if (focus.length === 0) return
    const view = this.view()
    const t = performance.now()
    const p = planCore(view, { focus, now: this.now, baselines: false }, this.pcfg)
    const ms = performance.now() - t
    this.plannerMs.push(ms)
    if (this.cfg.validatePlans && !validatePlan(view, p, this.pcfg).ok) this.violations.invalidPlans++
    if (p.moves.length === 0) return
    this.records.push({
      id: `central#${this.records.length + 1}`,
      kind: 'overload',
      leader: 'central',
      openedAt: this.now,
      plannedAt: this.now + ms,
      closedAt: this.now,
      outcome: 'done',
      members: [],
      moves: p.moves,
      plannerRuns: 1,
      asked: 0,
    })
    this.centralBusy = true
    const delay = this.cfg.computeDelay === 'measured' ? ms : 0
    this.q.push(this.now + delay, () => this.centralWave(p, 0))
  }

  private centralWave(p: Plan, wave: number): void {
    const moves = p.moves.filter((m) => m.wave === wave)
    if (moves.length === 0) {
      this.centralBusy = false
      return
    }
    let left = moves.length
    let failed = false
    for (const m of moves) {
      this.startMigration(m, (ok) => {
        if (!ok) failed = true
        if (--left === 0) {
          if (failed) this.centralBusy = false
          else this.centralWave(p, wave + 1)
        }
      })
    }
  }
}

export { lowerBound }
