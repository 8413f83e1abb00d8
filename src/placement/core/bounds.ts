// Baselines a plan is measured against: the lower bound on active hosts and First-Fit-Decreasing.
import { FitIndex } from './fit-index.js'
import { EPS, scaled, size } from './resources.js'
import { DIMS, type HostView, type Resources, type VmView } from './types.js'

/**
 * The fewest hosts any placement needs: per resource, the smallest k such that the k largest
 * capacities hold the summed demand (ceil(sum / capacity) when hosts are alike); the max over resources.
 */
export function lowerBound(hosts: readonly HostView[], vms: readonly VmView[]): number {
  const need = { cpu: 0, mem: 0, disk: 0 }
  for (const v of vms) {
    need.cpu += v.demand.cpu
    need.mem += v.demand.mem
    need.disk += v.demand.disk
  }
  let bound = 0
  for (const d of DIMS) {
    if (need[d] <= EPS) continue
    const caps = hosts.map((h) => h.capacity[d]).sort((a, b) => b - a)
    let k = 0
    let sum = 0
    while (sum + EPS < need[d] && k < caps.length) sum += caps[k++]!
    bound = Math.max(bound, sum + EPS < need[d] ? Number.POSITIVE_INFINITY : k)
  }
  return bound
}

export interface FfdResult {
  /** Hosts holding at least one VM. */
  hosts: number
  assignment: Map<string, string>
  unplaced: string[]
}

/**
 * First-Fit-Decreasing from scratch (ignores where VMs run now): VMs by decreasing size, each on the
 * first host (largest first, then by id) with room under `fill` of its capacity. Respects pin, ban and
 * anti-affinity. Hosts that are down or draining take nothing.
 */
export function firstFitDecreasing(hosts: readonly HostView[], vms: readonly VmView[], fill = 1): FfdResult {
  const usable = hosts
    .filter((h) => h.state === 'up' || h.state === 'standby')
    .sort((a, b) => b.capacity.cpu + b.capacity.mem - (a.capacity.cpu + a.capacity.mem) || cmp(a.id, b.id))
  const ref = usable[0]?.capacity ?? { cpu: 1, mem: 1, disk: 1 }
  const index = new FitIndex(usable.map((h) => scaled(h.capacity, fill)))
  const pos = new Map(usable.map((h, i) => [h.id, i]))
  const groups = new Map<string, Set<number>>()
  const order = [...vms].sort((a, b) => size(b.demand, ref) - size(a.demand, ref) || cmp(a.id, b.id))
  const assignment = new Map<string, string>()
  const unplaced: string[] = []
  const used = new Set<number>()
  for (const v of order) {
    const c = v.constraints
    const group = c?.antiAffinity ? groups.get(c.antiAffinity) : undefined
    const accept = (i: number): boolean => {
      const id = usable[i]!.id
      if (c?.pin !== undefined && c.pin !== id) return false
      if (c?.ban?.includes(id)) return false
      return !group?.has(i)
    }
    let i: number
    if (c?.pin !== undefined) {
      const p = pos.get(c.pin)
      i = p !== undefined && index.findFirst(v.demand, (j) => j === p && accept(j), p) === p ? p : -1
    } else i = index.findFirst(v.demand, accept)
    if (i < 0) {
      unplaced.push(v.id)
      continue
    }
    const r = index.room(i)
    index.set(i, { cpu: r.cpu - v.demand.cpu, mem: r.mem - v.demand.mem, disk: r.disk - v.demand.disk })
    used.add(i)
    assignment.set(v.id, usable[i]!.id)
    if (c?.antiAffinity) {
      const g = groups.get(c.antiAffinity) ?? new Set<number>()
      g.add(i)
      groups.set(c.antiAffinity, g)
    }
  }
  return { hosts: used.size, assignment, unplaced }
}

export function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

export type { Resources }
