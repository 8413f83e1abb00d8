// The planner: a cluster view (or a partition of it) in, an ordered plan out. Deterministic: the same
// view, request and configuration give the same plan, so a dry run returns exactly what would run.
//
// Policies run in a fixed order on one working copy: repair (drain, pin, ban, anti-affinity: hard, no
// back-off), balance (relieve overloaded hosts), affinity (follow-the-sun), consolidate (empty
// underloaded hosts). Stability: only focus hosts' problems are addressed, a VM moved less than
// backoffMs ago stays (except for hard repairs), a host is emptied only if all its VMs can leave (the
// gain of a consolidation is a whole host), and overload relief stops as soon as the host is back under
// its goal. Moves stay inside the source's site when they can; a move to another site must free a
// larger share of its host (requiredGain). The moves are then grouped into waves under the per-host
// in/out caps.
import { firstFitDecreasing, lowerBound } from './bounds.js'
import { utilization } from './resources.js'
import { schedule } from './schedule.js'
import { preferredSite } from './sites.js'
import { misplaced } from './triggers.js'
import {
  type ClusterView,
  DEFAULT_CONFIG,
  type Move,
  type PlacementConfig,
  type Plan,
  type PlanRequest,
  POLICIES,
  type Problem,
  type Resources,
  type VmView,
} from './types.js'
import { DEST, NONE, SOURCE, Workspace } from './workspace.js'

export class PlanRequestError extends Error {
  readonly code = 'bad-plan-request'
}

export function plan(view: ClusterView, req: PlanRequest, config: Partial<PlacementConfig> = {}): Plan {
  const cfg = { ...DEFAULT_CONFIG, ...config }
  const policies = new Set(req.policies ?? POLICIES)
  for (const p of policies) if (!POLICIES.includes(p)) throw new PlanRequestError(`unknown policy: ${p}`)
  const byId = new Map(view.hosts.map((h) => [h.id, h]))
  const scopeHosts = req.scope
    ? req.scope.map((id) => {
        const h = byId.get(id)
        if (!h) throw new PlanRequestError(`unknown host in scope: ${id}`)
        return h
      })
    : view.hosts
  const ws = new Workspace(scopeHosts, view.vms, cfg)
  const focus: number[] = []
  for (const id of req.focus ?? scopeHosts.map((h) => h.id)) {
    const i = ws.pos.get(id)
    if (i === undefined) throw new PlanRequestError(`focus host not in scope: ${id}`)
    focus.push(i)
  }
  const now = req.now
  const movable = (v: VmView): boolean => v.lastMovedAt === undefined || now - v.lastMovedAt >= cfg.backoffMs
  const scopeVms = ws.vmsOn.flat()
  const activeBefore = ws.vmsOn.filter((l) => l.length > 0).length

  const problems: Problem[] = []
  for (const i of focus) {
    const h = ws.hosts[i]!
    if (h.state === 'draining' && ws.vmsOn[i]!.length > 0) problems.push({ kind: 'drain', host: h.id })
    else if (h.state === 'up' && ws.utilization(i) > cfg.overload)
      problems.push({ kind: 'overload', host: h.id })
    else if (h.state === 'up' && misplaced(h, ws.vmsOn[i]!, now, cfg))
      problems.push({ kind: 'misplaced', host: h.id })
    else if (h.state === 'up' && ws.vmsOn[i]!.length > 0 && ws.utilization(i) < cfg.underload)
      problems.push({ kind: 'underload', host: h.id })
  }

  if (policies.has('repair')) for (const i of focus) repair(ws, i)
  if (policies.has('balance')) for (const i of focus) relieve(ws, i, movable)
  if (policies.has('affinity')) for (const i of focus) follow(ws, i, now, movable)
  if (policies.has('consolidate')) consolidate(ws, focus, movable)

  const resolved: Problem[] = []
  const unresolved: Problem[] = []
  for (const p of problems) {
    const i = ws.pos.get(p.host)!
    const ok =
      p.kind === 'overload'
        ? ws.utilization(i) <= cfg.overload
        : p.kind === 'drain' || p.kind === 'underload'
          ? ws.vmsOn[i]!.length === 0
          : !misplaced(ws.hosts[i]!, ws.vmsOn[i]!, now, cfg)
    ;(ok ? resolved : unresolved).push(p)
  }
  // Underload is an opportunity, not a fault: it is unresolved only if consolidation was asked for.
  const unres = unresolved.filter((p) => p.kind !== 'underload' || policies.has('consolidate'))

  const moves: Move[] = ws.moves.map((m) => ({
    vm: m.vm.id,
    from: ws.hosts[m.from]!.id,
    to: ws.hosts[m.to]!.id,
    reason: m.reason,
    wave: 0,
    bytes: m.vm.memoryBytes,
  }))
  const { waves } = schedule(scopeHosts, view.vms, moves, cfg)
  const emptied: string[] = []
  const woken: string[] = []
  ws.hosts.forEach((h, i) => {
    if (ws.role[i]! & SOURCE && ws.vmsOn[i]!.length === 0) emptied.push(h.id)
    if (ws.role[i]! & DEST && h.state === 'standby') woken.push(h.id)
  })
  const activeAfter = ws.vmsOn.filter((l) => l.length > 0).length
  return {
    moves,
    waves,
    emptied,
    woken,
    resolved,
    unresolved: unres,
    stats: {
      hosts: scopeHosts.length,
      vms: scopeVms.length,
      activeBefore,
      activeAfter,
      lowerBound: lowerBound(scopeHosts, scopeVms),
      ...(req.baselines === false
        ? {}
        : { ffd: firstFitDecreasing(scopeHosts, scopeVms, 1 - cfg.headroom).hosts }),
      migrations: moves.length,
      bytes: moves.reduce((s, m) => s + m.bytes, 0),
    },
  }
}

/** Hard constraints: a draining host empties (spread over several hosts); pin, ban, anti-affinity. */
function repair(ws: Workspace, i: number): void {
  const h = ws.hosts[i]!
  if (h.state === 'draining') {
    const vms = ws.vmsOn[i]!.filter((v) => !ws.movedVms.has(v.id)).sort(bySizeDesc)
    const spread = Math.max(1, Math.min(ws.cfg.drainSpread, vms.length))
    const cap = Math.ceil(vms.length / spread)
    const taken = new Map<number, number>()
    for (const v of vms) {
      if (v.constraints?.pin === h.id) continue
      let to = ws.findSpreadDest(v, i, taken, cap)
      if (to < 0) to = ws.findDest(v, i, { wake: ws.cfg.wakeStandby, full: true, site: h.site })
      if (to < 0) continue
      taken.set(to, (taken.get(to) ?? 0) + 1)
      ws.move(v, i, to, 'drain')
    }
    return
  }
  if (!ws.vmsOn[i]!.some((v) => v.constraints)) return
  const seen = new Set<string>()
  for (const v of [...ws.vmsOn[i]!].sort(byId)) {
    const c = v.constraints
    if (!c || ws.movedVms.has(v.id)) continue
    let reason: 'pin' | 'ban' | 'anti-affinity' | undefined
    if (c.pin !== undefined && c.pin !== h.id) reason = 'pin'
    else if (c.ban?.includes(h.id)) reason = 'ban'
    else if (c.antiAffinity) {
      if (seen.has(c.antiAffinity)) reason = 'anti-affinity'
      seen.add(c.antiAffinity)
    }
    if (!reason) continue
    const to = ws.findDest(v, i, { wake: ws.cfg.wakeStandby, full: true, site: h.site })
    if (to >= 0) ws.move(v, i, to, reason)
  }
}

/** Brings an overloaded host back under overload - minGain, moving as few and as small VMs as it can. */
function relieve(ws: Workspace, i: number, movable: (v: VmView) => boolean): void {
  const h = ws.hosts[i]!
  const cfg = ws.cfg
  if (h.state !== 'up' || ws.utilization(i) <= cfg.overload) return
  const goal = Math.max(0, cfg.overload - cfg.minGain)
  const cap = h.capacity
  const excess = () => ({
    cpu: ws.used[i]!.cpu - goal * cap.cpu,
    mem: ws.used[i]!.mem - goal * cap.mem,
    disk: ws.used[i]!.disk - goal * cap.disk,
  })
  const candidates = ws.vmsOn[i]!.filter(
    (v) => movable(v) && !ws.movedVms.has(v.id) && v.constraints?.pin !== h.id,
  ).sort(byId)
  const tried = new Set<string>()
  for (;;) {
    const e = excess()
    if (e.cpu <= 0 && e.mem <= 0 && e.disk <= 0) return
    const left = candidates.filter((v) => !tried.has(v.id))
    if (left.length === 0) return
    const pick = cheapestCover(left, e, cap)
    for (const v of pick) {
      tried.add(v.id)
      // Its gain is the share of the host it frees: enough to cross sites only if it is large.
      const to = ws.findDest(v, i, { wake: cfg.wakeStandby, site: h.site, gain: shareOf(v, cap) })
      if (to >= 0) ws.move(v, i, to, 'overload')
    }
  }
}

/**
 * Which VMs to move to remove the excess `e` with the fewest bytes (migration time is bytes over the
 * host's link, so fewer bytes relieve it sooner): the cheapest single VM that covers all of it, or a
 * greedy set by relief per byte, whichever moves less. Without any cover: the VM that helps most.
 */
function cheapestCover(left: VmView[], e: Resources, cap: Resources): VmView[] {
  const share = (v: VmView) =>
    Math.max(
      e.cpu > 0 && cap.cpu > 0 ? v.demand.cpu / cap.cpu : 0,
      e.mem > 0 && cap.mem > 0 ? v.demand.mem / cap.mem : 0,
      e.disk > 0 && cap.disk > 0 ? v.demand.disk / cap.disk : 0,
    )
  const useful = left.filter((v) => share(v) > 0)
  if (useful.length === 0) return left
  const covers = (d: Resources) =>
    (e.cpu <= 0 || d.cpu >= e.cpu) && (e.mem <= 0 || d.mem >= e.mem) && (e.disk <= 0 || d.disk >= e.disk)
  const single = useful
    .filter((v) => covers(v.demand))
    .sort((a, b) => a.memoryBytes - b.memoryBytes || byId(a, b))[0]
  const perByte = (v: VmView) => share(v) / Math.max(1, v.memoryBytes)
  const set: VmView[] = []
  const sum = { cpu: 0, mem: 0, disk: 0 }
  for (const v of [...useful].sort((a, b) => perByte(b) - perByte(a) || byId(a, b))) {
    if (covers(sum)) break
    set.push(v)
    sum.cpu += v.demand.cpu
    sum.mem += v.demand.mem
    sum.disk += v.demand.disk
  }
  const bytes = (vs: VmView[]) => vs.reduce((s, v) => s + v.memoryBytes, 0)
  if (covers(sum) && (!single || bytes(set) < bytes([single]))) return set
  if (single) return [single]
  return [useful.sort((a, b) => share(b) - share(a) || byId(a, b))[0]!]
}

/** Follow-the-sun: VMs on this host that prefer another site now move there if a host has room. */
function follow(ws: Workspace, i: number, now: number, movable: (v: VmView) => boolean): void {
  const h = ws.hosts[i]!
  if (ws.role[i]! & DEST || (h.state !== 'up' && h.state !== 'draining')) return
  if (!ws.vmsOn[i]!.some((v) => v.constraints?.sites)) return
  for (const v of [...ws.vmsOn[i]!].sort(byId)) {
    const site = preferredSite(v.constraints?.sites, now)
    if (site === undefined || site === h.site || !movable(v) || v.constraints?.pin !== undefined) continue
    const to = ws.findDest(v, i, { site, requireSite: true })
    if (to >= 0) ws.move(v, i, to, 'affinity')
  }
}

/** Empties underloaded hosts, least loaded first, into running hosts; all VMs of a host or none. */
function consolidate(ws: Workspace, focus: number[], movable: (v: VmView) => boolean): void {
  const cfg = ws.cfg
  const util = new Map(focus.map((i) => [i, ws.utilization(i)]))
  const order = focus
    .filter((i) => ws.hosts[i]!.state === 'up' && ws.vmsOn[i]!.length > 0 && util.get(i)! < cfg.underload)
    .sort((a, b) => util.get(a)! - util.get(b)! || (ws.hosts[a]!.id < ws.hosts[b]!.id ? -1 : 1))
  for (const i of order) {
    if (ws.role[i] !== NONE) continue
    const vms = [...ws.vmsOn[i]!].sort(bySizeDesc)
    if (vms.some((v) => !movable(v) || v.constraints?.pin === ws.hosts[i]!.id)) continue
    const mark = ws.moves.length
    let ok = true
    // The gain of emptying a host: the share of it that its VMs did not use (it can power down).
    const gain = 1 - util.get(i)!
    for (const v of vms) {
      const to = ws.findDest(v, i, { nonEmpty: true, site: ws.hosts[i]!.site, gain })
      if (to < 0) {
        ok = false
        break
      }
      ws.move(v, i, to, 'consolidate')
    }
    if (!ok) ws.undo(mark)
  }
}

/** The share of a host's capacity a VM frees when it leaves (its largest resource share). */
function shareOf(v: VmView, cap: Resources): number {
  return Math.max(
    cap.cpu > 0 ? v.demand.cpu / cap.cpu : 0,
    cap.mem > 0 ? v.demand.mem / cap.mem : 0,
    cap.disk > 0 ? v.demand.disk / cap.disk : 0,
  )
}

function byId(a: VmView, b: VmView): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0
}

function bySizeDesc(a: VmView, b: VmView): number {
  return b.demand.mem - a.demand.mem || b.demand.cpu - a.demand.cpu || byId(a, b)
}

export { utilization }
