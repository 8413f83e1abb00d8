// Which problems a host has now, and which have lasted long enough to act on (the grace periods that
// keep a short spike from moving VMs).
import { utilization } from './resources.js'
import { preferredSite } from './sites.js'
import {
  DEFAULT_CONFIG,
  type HostView,
  type PlacementConfig,
  type Problem,
  type ProblemKind,
  type Resources,
  type VmView,
} from './types.js'

export interface HostLoad {
  state: 'up' | 'standby' | 'draining' | 'down'
  capacity: Resources
  used: Resources
  vms: number
  /** A VM here breaks a constraint or prefers another site now (see misplaced()). */
  misplaced?: boolean
}

/**
 * Whether a VM on this host breaks a hard constraint (pinned elsewhere, banned here, a second VM of its
 * anti-affinity group) or, free to move (not pinned, not moved within backoffMs), prefers another
 * site at `now` (follow-the-sun).
 */
export function misplaced(
  host: Pick<HostView, 'id' | 'site'>,
  vms: readonly VmView[],
  now: number,
  cfg: Pick<PlacementConfig, 'backoffMs'> = DEFAULT_CONFIG,
): boolean {
  let groups: Set<string> | undefined
  for (const v of vms) {
    const c = v.constraints
    if (!c) continue
    if (c.pin !== undefined && c.pin !== host.id) return true
    if (c.ban?.includes(host.id)) return true
    if (c.antiAffinity) {
      groups ??= new Set()
      if (groups.has(c.antiAffinity)) return true
      groups.add(c.antiAffinity)
    }
    if (
      c.sites &&
      c.pin === undefined &&
      (v.lastMovedAt === undefined || now - v.lastMovedAt >= cfg.backoffMs)
    ) {
      const want = preferredSite(c.sites, now)
      if (want !== undefined && want !== host.site) return true
    }
  }
  return false
}

/** The problem a host has at this instant, if any (drain, overload, misplaced, underload, in that order). */
export function problemOf(
  load: HostLoad,
  cfg: Pick<PlacementConfig, 'overload' | 'underload'> = DEFAULT_CONFIG,
): ProblemKind | undefined {
  if (load.state === 'draining') return load.vms > 0 ? 'drain' : undefined
  if (load.state !== 'up') return undefined
  const u = utilization(load.used, load.capacity)
  if (u > cfg.overload) return 'overload'
  if (load.misplaced) return 'misplaced'
  if (load.vms > 0 && u < cfg.underload) return 'underload'
  return undefined
}

/** Remembers since when each host has had its current problem; a problem fires once it persisted. */
export class TriggerTracker {
  private readonly since = new Map<string, { kind: ProblemKind; at: number }>()

  constructor(
    private readonly cfg: Pick<PlacementConfig, 'overloadGraceMs' | 'underloadGraceMs'> = DEFAULT_CONFIG,
  ) {}

  /** Records the host's problem now (undefined: none) and returns it if it has lasted its grace. */
  observe(host: string, kind: ProblemKind | undefined, now: number): Problem | undefined {
    const prev = this.since.get(host)
    if (kind === undefined) {
      this.since.delete(host)
      return undefined
    }
    const at = prev && prev.kind === kind ? prev.at : now
    if (!prev || prev.kind !== kind) this.since.set(host, { kind, at })
    return now - at >= this.grace(kind) ? { kind, host } : undefined
  }

  /** When the host's current problem will have persisted long enough (undefined: no problem). */
  dueAt(host: string): number | undefined {
    const s = this.since.get(host)
    return s ? s.at + this.grace(s.kind) : undefined
  }

  /** Starts the grace again (after an attempt that could not fix the problem). */
  reset(host: string, now: number): void {
    const s = this.since.get(host)
    if (s) s.at = now
  }

  grace(kind: ProblemKind): number {
    return kind === 'overload' || kind === 'misplaced'
      ? this.cfg.overloadGraceMs
      : kind === 'underload'
        ? this.cfg.underloadGraceMs
        : 0
  }
}
