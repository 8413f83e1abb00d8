// Arithmetic on resource vectors.
import { DIMS, type Resources } from './types.js'

/** Slack for float sums: loads are compared to capacity with this tolerance. */
export const EPS = 1e-9

export const zero = (): Resources => ({ cpu: 0, mem: 0, disk: 0 })

export function addTo(a: Resources, b: Resources, sign = 1): void {
  a.cpu += sign * b.cpu
  a.mem += sign * b.mem
  a.disk += sign * b.disk
}

export function scaled(a: Resources, f: number): Resources {
  return { cpu: a.cpu * f, mem: a.mem * f, disk: a.disk * f }
}

/** used + extra <= limit in every resource (a resource with zero capacity accepts zero demand). */
export function fits(used: Resources, extra: Resources, limit: Resources): boolean {
  return (
    used.cpu + extra.cpu <= limit.cpu + EPS &&
    used.mem + extra.mem <= limit.mem + EPS &&
    used.disk + extra.disk <= limit.disk + EPS
  )
}

/** The highest used/capacity ratio over the resources (0 for a resource the host does not have). */
export function utilization(used: Resources, cap: Resources): number {
  let u = 0
  for (const d of DIMS) {
    const c = cap[d]
    if (c > 0) u = Math.max(u, used[d] / c)
    else if (used[d] > EPS) return Number.POSITIVE_INFINITY
  }
  return u
}

/** A size to sort by: the largest share of a reference capacity. */
export function size(demand: Resources, ref: Resources): number {
  let s = 0
  for (const d of DIMS) if (ref[d] > 0) s = Math.max(s, demand[d] / ref[d])
  return s
}

export function validResources(r: Resources): boolean {
  return DIMS.every((d) => Number.isFinite(r[d]) && r[d] >= 0)
}
