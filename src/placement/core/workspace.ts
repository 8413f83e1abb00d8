// The planner's working copy of a scope: where each VM would be, what each host would hold, and which
// hosts already give or take VMs. A host is a source or a destination within one plan, never both, so
// destinations only fill (up to their final load) and sources only empty: any order of the moves, and
// any grouping into waves, keeps every host within capacity. Only hard repairs and overload relief may
// take VMs out of a host that received some; a destination is never a host that already gives VMs, so
// the moves form no cycle and the scheduler can always order them.
import { FitIndex } from './fit-index.js'
import { addTo, fits, utilization, zero } from './resources.js'
import { requiredGain } from './sites.js'
import type { HostView, MoveReason, PlacementConfig, Resources, VmView } from './types.js'

/** Role bits of a host within one plan. */
export const NONE = 0
export const SOURCE = 1
export const DEST = 2

export interface TentativeMove {
  vm: VmView
  from: number
  to: number
  reason: MoveReason
  prevRoleFrom: number
  prevRoleTo: number
}

export interface DestOptions {
  /** Accept standby hosts (powering them on). */
  wake?: boolean
  /** Only hosts that already hold VMs. */
  nonEmpty?: boolean
  /** Fill up to the full capacity instead of 1 - headroom (hard repairs only). */
  full?: boolean
  site?: string
  requireSite?: boolean
  /**
   * The gain of this move (share of a host freed): hosts of another site than the source are used
   * only if it reaches requiredGain for that link. Undefined: any site (hard repairs, follow-the-sun).
   */
  gain?: number
}

export class Workspace {
  readonly hosts: HostView[]
  readonly pos = new Map<string, number>()
  readonly used: Resources[]
  readonly vmsOn: VmView[][]
  readonly role: Int8Array
  readonly moves: TentativeMove[] = []
  readonly movedVms = new Set<string>()
  private readonly groupsOn: Map<string, number>[]
  private readonly limit: Resources[]
  /** Hosts in first-fit order: fullest running hosts first, then standby. */
  private readonly order: number[]
  private readonly slotOf: Int32Array
  private readonly index: FitIndex

  constructor(
    hosts: readonly HostView[],
    vms: readonly VmView[],
    readonly cfg: PlacementConfig,
  ) {
    this.hosts = [...hosts]
    this.hosts.forEach((h, i) => {
      this.pos.set(h.id, i)
    })
    this.used = this.hosts.map(() => zero())
    this.vmsOn = this.hosts.map(() => [])
    this.groupsOn = this.hosts.map(() => new Map())
    this.role = new Int8Array(this.hosts.length)
    for (const v of vms) {
      const i = this.pos.get(v.host)
      if (i === undefined) continue
      addTo(this.used[i]!, v.demand)
      this.vmsOn[i]!.push(v)
      const g = v.constraints?.antiAffinity
      if (g) this.groupsOn[i]!.set(g, (this.groupsOn[i]!.get(g) ?? 0) + 1)
    }
    const keep = 1 - cfg.headroom
    this.limit = this.hosts.map((h) => ({
      cpu: h.capacity.cpu * keep,
      mem: h.capacity.mem * keep,
      disk: h.capacity.disk * keep,
    }))
    const util = this.hosts.map((h, i) => utilization(this.used[i]!, h.capacity))
    const rank = (i: number): number => (this.hosts[i]!.state === 'up' ? 0 : 1)
    this.order = this.hosts
      .map((_, i) => i)
      .filter((i) => this.hosts[i]!.state === 'up' || this.hosts[i]!.state === 'standby')
      .sort(
        (a, b) =>
          rank(a) - rank(b) || util[b]! - util[a]! || (this.hosts[a]!.id < this.hosts[b]!.id ? -1 : 1),
      )
    this.slotOf = new Int32Array(this.hosts.length).fill(-1)
    this.order.forEach((h, s) => {
      this.slotOf[h] = s
    })
    this.index = new FitIndex(this.order.map((h) => this.room(h)))
  }

  utilization(i: number): number {
    return utilization(this.used[i]!, this.hosts[i]!.capacity)
  }

  /** What a host may still take under its headroom limit. */
  private room(i: number): Resources {
    const u = this.used[i]!
    const l = this.limit[i]!
    return { cpu: l.cpu - u.cpu, mem: l.mem - u.mem, disk: l.disk - u.disk }
  }

  private refresh(i: number): void {
    const s = this.slotOf[i]!
    if (s < 0) return
    if (this.role[i]! & SOURCE) this.index.close(s)
    else this.index.set(s, this.room(i))
  }

  /** Whether VM v may run on host i as far as its constraints say. */
  allowed(v: VmView, i: number): boolean {
    const c = v.constraints
    if (!c) return true
    const id = this.hosts[i]!.id
    if (c.pin !== undefined && c.pin !== id) return false
    if (c.ban?.includes(id)) return false
    return !(c.antiAffinity && (this.groupsOn[i]!.get(c.antiAffinity) ?? 0) > 0)
  }

  private candidate(v: VmView, from: number, i: number, o: DestOptions): boolean {
    if (i === from || this.role[i]! & SOURCE) return false
    const h = this.hosts[i]!
    if (h.state !== 'up' && !(h.state === 'standby' && o.wake)) return false
    if (o.nonEmpty && this.vmsOn[i]!.length === 0) return false
    if (o.requireSite && h.site !== o.site) return false
    if (o.gain !== undefined && o.gain < requiredGain(this.hosts[from]!.site, h.site, this.cfg)) return false
    return this.allowed(v, i)
  }

  /** A destination for v (first fit, fullest first), honouring headroom and constraints; -1 if none. */
  findDest(v: VmView, from: number, o: DestOptions = {}): number {
    if (o.full) {
      // Hard repairs may use the headroom: a linear scan, they are rare.
      let best = -1
      for (const i of this.order) {
        if (!this.candidate(v, from, i, o)) continue
        if (!fits(this.used[i]!, v.demand, this.hosts[i]!.capacity)) continue
        if (o.site !== undefined && this.hosts[i]!.site === o.site) return i
        if (best < 0) best = i
      }
      return best
    }
    const pick = (requireSite: boolean): number => {
      const opts = { ...o, requireSite }
      const s = this.index.findFirst(v.demand, (slot) => this.candidate(v, from, this.order[slot]!, opts))
      return s < 0 ? -1 : this.order[s]!
    }
    if (o.site !== undefined) {
      const i = pick(true)
      if (i >= 0 || o.requireSite) return i
    }
    return pick(false)
  }

  /** Worst fit (most room left) among hosts that took fewer than `cap` VMs of this drain; own site first. */
  findSpreadDest(v: VmView, from: number, taken: Map<number, number>, cap: number): number {
    let best = -1
    let bestRoom = Number.NEGATIVE_INFINITY
    for (const i of this.order) {
      if ((taken.get(i) ?? 0) >= cap || !this.candidate(v, from, i, { wake: this.cfg.wakeStandby })) continue
      if (!fits(this.used[i]!, v.demand, this.limit[i]!)) continue
      const r = this.room(i)
      const h = this.hosts[i]!.capacity
      const score = Math.min(h.cpu > 0 ? r.cpu / h.cpu : 1, h.mem > 0 ? r.mem / h.mem : 1)
      // Running hosts before standby ones, the source's site before others, then the most room.
      const rank =
        (this.hosts[i]!.state === 'up' ? 10 : 0) +
        (this.hosts[i]!.site === this.hosts[from]!.site ? 5 : 0) +
        score
      if (rank > bestRoom) {
        bestRoom = rank
        best = i
      }
    }
    return best
  }

  move(v: VmView, from: number, to: number, reason: MoveReason): void {
    this.moves.push({ vm: v, from, to, reason, prevRoleFrom: this.role[from]!, prevRoleTo: this.role[to]! })
    this.shift(v, from, to)
    this.role[from] = this.role[from]! | SOURCE
    this.role[to] = this.role[to]! | DEST
    this.movedVms.add(v.id)
    this.refresh(from)
    this.refresh(to)
  }

  /** Undoes the moves made after `mark` (moves.length at that time), newest first. */
  undo(mark: number): void {
    while (this.moves.length > mark) {
      const m = this.moves.pop()!
      this.shift(m.vm, m.to, m.from)
      this.role[m.from] = m.prevRoleFrom
      this.role[m.to] = m.prevRoleTo
      this.movedVms.delete(m.vm.id)
      this.refresh(m.from)
      this.refresh(m.to)
    }
  }

  private shift(v: VmView, from: number, to: number): void {
    addTo(this.used[from]!, v.demand, -1)
    addTo(this.used[to]!, v.demand)
    const list = this.vmsOn[from]!
    const k = list.lastIndexOf(v)
    if (k >= 0) {
      list[k] = list[list.length - 1]!
      list.pop()
    }
    this.vmsOn[to]!.push(v)
    const g = v.constraints?.antiAffinity
    if (g) {
      this.groupsOn[from]!.set(g, (this.groupsOn[from]!.get(g) ?? 1) - 1)
      this.groupsOn[to]!.set(g, (this.groupsOn[to]!.get(g) ?? 0) + 1)
    }
  }
}
