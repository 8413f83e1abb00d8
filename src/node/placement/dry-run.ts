// `POST /v1/placement/plan` with dryRun: the planner on the mesh as gossip shows it (this host from its
// own state), nothing moves. The planner is deterministic: the same view and request give the same plan.
import {
  type ClusterView,
  DEFAULT_CONFIG,
  type Move,
  type PlacementConfig,
  type Plan,
  type PolicyName,
  plan,
  utilization,
  type VmView,
} from '../../placement/index.js'
import { PlacementLookupError } from './errors.js'
import type { PlacementSettings } from './settings.js'

export interface DryRunRequest {
  policies: readonly PolicyName[]
  /** Hosts whose problems the plan addresses (default: every host). */
  hosts?: readonly string[]
  /** Only these VMs may move (default: any). */
  vms?: readonly string[]
}

export interface DryRunResult {
  dryRun: true
  policies: PolicyName[]
  at: string
  hosts: number
  vms: number
  moves: (Move & { why: string })[]
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

/** Throws PlacementLookupError for a host or VM the view does not have. */
export function dryRun(
  view: ClusterView,
  req: DryRunRequest,
  settings: PlacementSettings,
  now: number,
): DryRunResult {
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
  const cfg = plannerConfig(settings)
  const p = plan(
    { hosts: view.hosts, vms },
    { policies: req.policies, ...(req.hosts ? { focus: req.hosts } : {}), now },
    cfg,
  )
  const load = new Map<string, number>()
  for (const h of view.hosts) {
    const used = { cpu: 0, mem: 0, disk: 0 }
    for (const v of vms)
      if (v.host === h.id) {
        used.cpu += v.demand.cpu
        used.mem += v.demand.mem
        used.disk += v.demand.disk
      }
    load.set(h.id, utilization(used, h.capacity))
  }
  const pct = (h: string) => `${Math.round((load.get(h) ?? 0) * 100)} %`
  const why = (m: Move): string => {
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
  return {
    dryRun: true,
    policies: [...req.policies],
    at: new Date(now).toISOString(),
    hosts: view.hosts.length,
    vms: view.vms.length,
    moves: p.moves.map((m) => ({ ...m, why: why(m) })),
    waves: p.waves,
    emptied: p.emptied,
    resolved: p.resolved,
    unresolved: p.unresolved,
    stats: p.stats,
  }
}
