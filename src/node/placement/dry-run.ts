// `POST /v1/placement/plan` with dryRun: the events the mesh would run now, each with the partition it
// would gather and the plan it would carry out, replayed with the protocol's own functions
// (gatherPartition: the same ring walk, candidate filter, planner call and acceptance rule as a live
// event) over the mesh as gossip shows it (this host from its own state). Nothing moves. Events of
// several hosts are replayed in the order the protocol ranks them, and a host used by one event is
// busy for the others, as it would be. Each event carries a plan id: `{ dryRun: false, planId }` on
// the leader's agent runs exactly that plan, or answers 409 if the hosts changed meanwhile.
import { createHash } from 'node:crypto'
import {
  type ClusterView,
  DEFAULT_CONFIG,
  DEFAULT_PROTOCOL,
  firstFitDecreasing,
  gatherPartition,
  lowerBound,
  type MemberSnapshot,
  type Move,
  misplaced,
  type PlacementConfig,
  type Plan,
  POLICIES_FOR,
  type PolicyName,
  type ProblemKind,
  problemOf,
  type Ring,
  utilization,
  type VmView,
} from '../../placement/index.js'
import { PlacementLookupError } from './errors.js'
import type { PlacementSettings } from './settings.js'

export interface DryRunRequest {
  policies: readonly PolicyName[]
  /** Hosts whose events to show (default: every host with a problem now). */
  hosts?: readonly string[]
  /** What if only these VMs could move (default: any). A what-if has no plan ids: it never runs. */
  vms?: readonly string[]
}

/** The mesh as the dry run reads it: the view, the ring and the gossip filter of candidates. */
export interface DryRunWorld {
  view: ClusterView
  ring: Ring
  worthAsking?: (host: string, kind: ProblemKind) => boolean
}

export type DryRunMove = Move & { why: string }

export interface DryRunEvent {
  /** Run it with { dryRun: false, planId } on the leader's agent (absent for a what-if). */
  planId?: string
  leader: string
  kind: ProblemKind
  /** The hosts the event would gather, leader first. */
  partition: string[]
  moves: DryRunMove[]
  waves: number
  emptied: string[]
  /** Set when the event would find no plan (unresolved) or cannot open now (its host is busy). */
  note?: string
}

export interface DryRunResult {
  dryRun: true
  policies: PolicyName[]
  at: string
  hosts: number
  vms: number
  whatIf: boolean
  events: DryRunEvent[]
  /** Every event's moves, in event order. */
  moves: DryRunMove[]
  waves: number
  emptied: string[]
  resolved: Plan['resolved']
  unresolved: Plan['unresolved']
  stats: Plan['stats']
}

export function plannerConfig(s: PlacementSettings): PlacementConfig {
  return {
    ...DEFAULT_CONFIG,
    overload: s.overload,
    underload: s.underload,
    headroom: s.headroom,
    overloadGraceMs: s.overloadGraceMs,
    underloadGraceMs: s.underloadGraceMs,
    backoffMs: s.backoffMs,
    minGain: s.minGain,
    maxIn: s.maxIn,
    maxOut: s.maxOut,
    drainSpread: s.drainSpread,
    wakeStandby: false,
  }
}

/** The id of a leader's plan: what it moves, where and in which wave. */
export function planIdOf(leader: string, kind: ProblemKind, moves: readonly Move[]): string {
  const body = JSON.stringify([leader, kind, moves.map((m) => [m.vm, m.from, m.to, m.wave])])
  return createHash('sha256').update(body).digest('hex').slice(0, 16)
}

const RANK: Record<ProblemKind, number> = { drain: 0, overload: 0, misplaced: 1, underload: 1 }

/** Throws PlacementLookupError for a host or VM the view does not have. */
export function dryRun(
  world: DryRunWorld,
  req: DryRunRequest,
  settings: PlacementSettings,
  now: number,
  siteLinks?: Readonly<Record<string, number>>,
): DryRunResult {
  const { view } = world
  const hostIds = new Set(view.hosts.map((h) => h.id))
  for (const h of req.hosts ?? [])
    if (!hostIds.has(h)) throw new PlacementLookupError('host', `hosts: no live host ${h} in the mesh`)
  let vms: readonly VmView[] = view.vms
  if (req.vms) {
    const ids = new Set(view.vms.map((v) => v.id))
    for (const v of req.vms)
      if (!ids.has(v)) throw new PlacementLookupError('vm', `vms: no VM ${v} in the mesh`)
    const free = new Set(req.vms)
    // The others stay where they are.
    vms = view.vms.map((v) =>
      free.has(v.id) ? v : { ...v, constraints: { ...v.constraints, pin: v.host, ban: undefined } },
    )
  }
  const cfg = { ...plannerConfig(settings), ...(siteLinks ? { siteBandwidthBps: siteLinks } : {}) }
  const snaps = new Map<string, MemberSnapshot>(view.hosts.map((h) => [h.id, { host: h, vms: [] }]))
  for (const v of vms) snaps.get(v.host)?.vms.push(v)
  const load = new Map<string, number>()
  for (const [id, s] of snaps) load.set(id, utilization(sum(s.vms), s.host.capacity))

  // Which hosts would open an event now (their problem, without waiting for its grace period).
  const asked = new Set(req.policies)
  const leaders: { host: string; kind: ProblemKind }[] = []
  for (const id of req.hosts ?? view.hosts.map((h) => h.id)) {
    const s = snaps.get(id)!
    const kind = problemOf(
      {
        state: s.host.state,
        capacity: s.host.capacity,
        used: sum(s.vms),
        vms: s.vms.length,
        misplaced: misplaced(s.host, s.vms, now, cfg),
      },
      cfg,
    )
    if (kind && POLICIES_FOR[kind].some((p) => asked.has(p))) leaders.push({ host: id, kind })
  }
  leaders.sort((a, b) => RANK[a.kind] - RANK[b.kind] || (a.host < b.host ? -1 : a.host > b.host ? 1 : 0))

  const busy = new Set<string>()
  const events: DryRunEvent[] = []
  for (const { host, kind } of leaders) {
    if (busy.has(host)) {
      events.push({ leader: host, kind, partition: [], moves: [], waves: 0, emptied: [], note: 'busy' })
      continue
    }
    const g = gatherPartition({
      self: host,
      kind,
      ring: world.ring,
      snapshot: (id) => snaps.get(id),
      ...(world.worthAsking ? { worthAsking: (id: string) => world.worthAsking!(id, kind) } : {}),
      reserved: (id) => busy.has(id),
      now,
      placement: cfg,
      maxPartition: settings.maxPartition,
      maxScan: DEFAULT_PROTOCOL.maxScan,
    })
    const p = g.plan
    const moves = (p?.moves ?? []).map((m) => ({ ...m, why: why(m, load, cfg) }))
    if (p) for (const h of [host, ...p.moves.map((m) => m.to)]) busy.add(h)
    events.push({
      ...(p && !req.vms ? { planId: planIdOf(host, kind, p.moves) } : {}),
      leader: host,
      kind,
      partition: g.members,
      moves,
      waves: p?.waves ?? 0,
      emptied: p?.emptied ?? [],
      ...(p ? {} : { note: `no plan within ${g.members.length} host(s)` }),
    })
  }

  const moves = events.flatMap((e) => e.moves)
  const resolved = events.filter((e) => e.moves.length > 0).map((e) => ({ kind: e.kind, host: e.leader }))
  const unresolved = events.filter((e) => e.moves.length === 0).map((e) => ({ kind: e.kind, host: e.leader }))
  const after = new Map(vms.map((v) => [v.id, v.host]))
  for (const m of moves) after.set(m.vm, m.to)
  return {
    dryRun: true,
    policies: [...req.policies],
    at: new Date(now).toISOString(),
    hosts: view.hosts.length,
    vms: view.vms.length,
    whatIf: req.vms !== undefined,
    events,
    moves,
    waves: Math.max(0, ...events.map((e) => e.waves)),
    emptied: events.flatMap((e) => e.emptied),
    resolved,
    unresolved,
    stats: {
      hosts: view.hosts.length,
      vms: vms.length,
      activeBefore: new Set(vms.map((v) => v.host)).size,
      activeAfter: new Set(after.values()).size,
      lowerBound: lowerBound(view.hosts, vms),
      ffd: firstFitDecreasing(view.hosts, vms, 1 - cfg.headroom).hosts,
      migrations: moves.length,
      bytes: moves.reduce((s, m) => s + m.bytes, 0),
    },
  }
}

function sum(vms: readonly VmView[]) {
  const used = { cpu: 0, mem: 0, disk: 0 }
  for (const v of vms) {
    used.cpu += v.demand.cpu
    used.mem += v.demand.mem
    used.disk += v.demand.disk
  }
  return used
}

function why(m: Move, load: Map<string, number>, cfg: PlacementConfig): string {
  const pct = (h: string) => `${Math.round((load.get(h) ?? 0) * 100)} %`
  switch (m.reason) {
    case 'overload':
      return `${m.from} is at ${pct(m.from)}, over the ${Math.round(cfg.overload * 100)} % threshold`
    case 'consolidate':
      return `${m.from} is at ${pct(m.from)}, under ${Math.round(cfg.underload * 100)} %: emptied`
    case 'drain':
      return `${m.from} is draining`
    default:
      return `${m.reason} constraint of ${m.vm}`
  }
}
