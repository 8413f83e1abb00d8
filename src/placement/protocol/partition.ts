// How an event grows its partition and which plan it runs, as pure functions shared by the protocol node
// (which gathers members one message at a time) and the dry run (which replays the same walk over the
// states it knows): the same ring, the same candidate filter, the same planner call and the same rule
// for accepting a plan give the same partition and the same plan.
import {
  type ClusterView,
  plan as corePlan,
  DEFAULT_CONFIG,
  type PlacementConfig,
  type Plan,
  type PlanRequest,
  type PolicyName,
  type ProblemKind,
} from '../core/index.js'
import type { MemberSnapshot } from './messages.js'

export interface Ring {
  /** The peer after `id` on the ring (the ring holds every live host, this one included). */
  next(id: string): string
  size(): number
}

export type Planner = (view: ClusterView, req: PlanRequest, cfg: Partial<PlacementConfig>) => Plan

/** The policies an event of each kind plans with (always for its leader's problem only). */
export const POLICIES_FOR: Readonly<Record<ProblemKind, readonly PolicyName[]>> = Object.freeze({
  overload: ['repair', 'balance'],
  underload: ['consolidate'],
  drain: ['repair'],
  misplaced: ['repair', 'affinity'],
})

/**
 * The next ring peer after `cursor` worth asking to join, looking at most `maxScan` positions ahead;
 * undefined when the ring comes back to `self` or nothing within reach is worth asking.
 */
export function nextCandidate(
  ring: Ring,
  self: string,
  cursor: string,
  isMember: (id: string) => boolean,
  worth: ((id: string) => boolean) | undefined,
  maxScan: number,
): string | undefined {
  const n = Math.min(ring.size(), maxScan)
  let c = cursor
  for (let k = 0; k < n; k++) {
    c = ring.next(c)
    if (c === self) return undefined
    if (isMember(c)) continue
    if (worth && !worth(c)) continue
    return c
  }
  return undefined
}

/** The planner call of an event: its members' states (leader first), its leader's problem only. */
export function planPartition(
  planner: Planner,
  snaps: readonly MemberSnapshot[],
  kind: ProblemKind,
  self: string,
  now: number,
  cfg: Partial<PlacementConfig>,
): Plan {
  const view: ClusterView = { hosts: snaps.map((s) => s.host), vms: snaps.flatMap((s) => s.vms) }
  return planner(view, { policies: POLICIES_FOR[kind], focus: [self], now, baselines: false }, cfg)
}

/**
 * What an event does with a plan: run it (it fixes the leader's problem), keep it as a drain's
 * fallback (it fixes the drain but over fewer hosts than drainSpread), or keep growing.
 */
export function judgePlan(
  p: Plan,
  self: string,
  kind: ProblemKind,
  cfg: Pick<PlacementConfig, 'drainSpread'>,
): 'execute' | 'fallback' | 'grow' {
  const fixed = p.resolved.some((r) => r.host === self && r.kind === kind)
  if (p.moves.length === 0) return 'grow'
  // Misplaced VMs are independent: a plan that places some is worth running if nothing better comes.
  if (!fixed) return kind === 'misplaced' ? 'fallback' : 'grow'
  if (kind === 'drain') {
    const dests = new Set(p.moves.map((m) => m.to)).size
    if (dests < Math.min(cfg.drainSpread, p.moves.length)) return 'fallback'
  }
  return 'execute'
}

export interface GatherInit {
  self: string
  kind: ProblemKind
  ring: Ring
  /** A host's state as it would answer a join; undefined: it would not answer. */
  snapshot: (id: string) => MemberSnapshot | undefined
  worthAsking?: (id: string) => boolean
  /** Hosts held by another event (they answer busy and are skipped). */
  reserved?: (id: string) => boolean
  planner?: Planner
  now: number
  placement?: Partial<PlacementConfig>
  maxPartition: number
  maxScan: number
}

export interface Gathered {
  /** The partition when its plan was accepted (or when it stopped growing), leader first. */
  members: string[]
  /** The plan the event runs; undefined: the event ends unresolved. */
  plan?: Plan
  asked: number
  plannerRuns: number
}

/** Replays an event's growth over known states, every candidate answering at once. */
export function gatherPartition(g: GatherInit): Gathered {
  const cfg = { ...DEFAULT_CONFIG, ...g.placement }
  const planner = g.planner ?? corePlan
  const own = g.snapshot(g.self)
  if (!own) return { members: [g.self], asked: 0, plannerRuns: 0 }
  const snaps = new Map<string, MemberSnapshot>([[g.self, own]])
  let cursor = g.self
  let asked = 0
  let runs = 0
  let fallback: Gathered | undefined
  while (snaps.size < g.maxPartition) {
    const c = nextCandidate(g.ring, g.self, cursor, (id) => snaps.has(id), g.worthAsking, g.maxScan)
    if (c === undefined) break
    cursor = c
    asked++
    const s = g.reserved?.(c) ? undefined : g.snapshot(c)
    if (!s || s.host.id !== c) continue
    snaps.set(c, s)
    runs++
    const p = planPartition(planner, [...snaps.values()], g.kind, g.self, g.now, cfg)
    const verdict = judgePlan(p, g.self, g.kind, cfg)
    if (verdict === 'execute') return { members: [...snaps.keys()], plan: p, asked, plannerRuns: runs }
    if (verdict === 'fallback') fallback = { members: [...snaps.keys()], plan: p, asked, plannerRuns: runs }
  }
  if (fallback) return { ...fallback, asked, plannerRuns: runs }
  return { members: [...snaps.keys()], asked, plannerRuns: runs }
}
