// Shapes of the placement core: the cluster view it reads, the configuration of its policies, and the
// plan it returns. Plain JSON-safe objects: the agent builds them from gossip, the simulator from its
// world, and tests by hand.

export type Dim = 'cpu' | 'mem' | 'disk'
export const DIMS: readonly Dim[] = ['cpu', 'mem', 'disk']

/** cpu in cores, mem and disk in MiB (any unit works as long as capacity and demand agree). */
export interface Resources {
  cpu: number
  mem: number
  disk: number
}

/**
 * up: runs VMs and takes new ones. standby: empty and powered down, may be woken to relieve an overload.
 * draining: its VMs must leave, it takes none. down: unreachable, never a destination.
 */
export type HostState = 'up' | 'standby' | 'draining' | 'down'

export interface HostView {
  id: string
  site: string
  capacity: Resources
  state: HostState
}

/** A site a VM prefers during [fromHour, toHour) UTC; fromHour > toHour wraps past midnight. */
export interface SiteRule {
  site: string
  fromHour: number
  toHour: number
}

export interface VmConstraints {
  /** The only host it may run on. */
  pin?: string
  /** Hosts it must not run on. */
  ban?: readonly string[]
  /** At most one VM of a group per host. */
  antiAffinity?: string
  /** Follow-the-sun: the site it prefers, by time of day (first matching rule wins). */
  sites?: readonly SiteRule[]
}

export interface VmView {
  id: string
  host: string
  demand: Resources
  /** Bytes a migration copies (its memory); what "bytes moved" counts. */
  memoryBytes: number
  constraints?: VmConstraints
  /** When it last arrived on its host by migration (ms); recently moved VMs are left alone. */
  lastMovedAt?: number
}

export interface ClusterView {
  hosts: readonly HostView[]
  vms: readonly VmView[]
}

export type PolicyName = 'repair' | 'balance' | 'affinity' | 'consolidate'
export const POLICIES: readonly PolicyName[] = ['repair', 'balance', 'affinity', 'consolidate']

export interface PlacementConfig {
  /** A host is overloaded above this fraction of its capacity in any resource. */
  overload: number
  /** A host is underloaded (a candidate to empty) below this fraction in every resource. */
  underload: number
  /** Headroom: a destination must stay at or under 1 - headroom of its capacity after a move. */
  headroom: number
  /** An overload must persist this long before it triggers (ms). */
  overloadGraceMs: number
  /** An underload must persist this long before it triggers (ms). */
  underloadGraceMs: number
  /** A VM moved less than this long ago is not moved again, except to repair a hard constraint (ms). */
  backoffMs: number
  /** A balancing move must lower the source's utilization by at least this fraction of its capacity. */
  minGain: number
  /** Migrations in flight per host, in and out. Further moves wait for a later wave. */
  maxIn: number
  maxOut: number
  /** A drain spreads its VMs over at least this many destination hosts when there are enough. */
  drainSpread: number
  /** Overload relief may power on standby hosts when no running host has room. */
  wakeStandby: boolean
  /**
   * Cross-site cost. A move stays inside its source's site when a host there has room; a move to
   * another site must promise a larger gain (the share of a host's capacity it frees): crossSiteMinGain
   * over a link of crossSiteBandwidthBps, more over a slower link, less over a faster one (never less
   * than minGain, never more than 1: a whole host). Hard repairs (drain, pin, ban, anti-affinity) and
   * follow-the-sun may cross sites at any cost; they still prefer the source's site.
   */
  crossSiteMinGain: number
  /** Migration bandwidth between two sites when none was measured (bytes/s). */
  crossSiteBandwidthBps: number
  /** Measured migration bandwidth between sites (bytes/s), keyed `from>to` (gossiped per site). */
  siteBandwidthBps?: Readonly<Record<string, number>>
}

export const DEFAULT_CONFIG: Readonly<PlacementConfig> = Object.freeze({
  overload: 0.9,
  underload: 0.3,
  headroom: 0.2,
  overloadGraceMs: 10_000,
  underloadGraceMs: 120_000,
  backoffMs: 600_000,
  minGain: 0.05,
  maxIn: 2,
  maxOut: 2,
  drainSpread: 4,
  wakeStandby: true,
  crossSiteMinGain: 0.15,
  crossSiteBandwidthBps: 125_000_000,
})

/** misplaced: a VM breaks a hard constraint (pin, ban, anti-affinity) or prefers another site now. */
export type ProblemKind = 'overload' | 'underload' | 'drain' | 'misplaced'

export interface Problem {
  kind: ProblemKind
  host: string
}

export type MoveReason = 'drain' | 'pin' | 'ban' | 'anti-affinity' | 'overload' | 'affinity' | 'consolidate'

export interface Move {
  vm: string
  from: string
  to: string
  reason: MoveReason
  /** Moves of one wave run together; a wave starts when the previous one has finished. */
  wave: number
  bytes: number
}

export interface PlanRequest {
  /** Policies to apply, in their fixed order repair, balance, affinity, consolidate. Default: all. */
  policies?: readonly PolicyName[]
  /** Hosts the plan may use (a partition). Default: every host of the view. */
  scope?: readonly string[]
  /** Hosts whose problems the plan must address. Default: every host in scope. */
  focus?: readonly string[]
  /** Planning time (ms since epoch): back-off and time-of-day rules read it. */
  now: number
  /** Compute the FFD baseline for the scope into stats.ffd (default true; costly on a whole cluster). */
  baselines?: boolean
}

export interface PlanStats {
  hosts: number
  vms: number
  activeBefore: number
  activeAfter: number
  /** ceil(sum of demand / capacity), per resource, over the scope: no placement uses fewer hosts. */
  lowerBound: number
  /** Hosts First-Fit-Decreasing uses for the scope's VMs from scratch, with the same headroom. */
  ffd?: number
  migrations: number
  bytes: number
}

export interface Plan {
  moves: Move[]
  waves: number
  /** Hosts that hold no VM once the plan has run (may be powered down). */
  emptied: string[]
  /** Hosts that must be powered on (standby hosts receiving VMs). */
  woken: string[]
  /** Problems (of focus hosts) that the plan fixes, and those it cannot fix within its scope. */
  resolved: Problem[]
  unresolved: Problem[]
  stats: PlanStats
}
