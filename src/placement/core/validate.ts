// Checks a plan against the view it was made from: every wave keeps every host within capacity (a move
// holds its demand on both hosts while it runs), the per-host caps hold, each VM moves from where it
// is, destinations take VMs, and no move breaks a hard constraint. Used by tests and the simulator.
import { addTo, fits, zero } from './resources.js'
import type { ClusterView, Move, PlacementConfig, Resources } from './types.js'

export interface PlanCheck {
  ok: boolean
  errors: string[]
  /** Where each VM of the view runs once the plan has run. */
  final: Map<string, string>
}

export function validatePlan(
  view: ClusterView,
  plan: { moves: readonly Move[] },
  cfg: Pick<PlacementConfig, 'maxIn' | 'maxOut'>,
): PlanCheck {
  const errors: string[] = []
  const hosts = new Map(view.hosts.map((h) => [h.id, h]))
  const vms = new Map(view.vms.map((v) => [v.id, v]))
  const used = new Map<string, Resources>(view.hosts.map((h) => [h.id, zero()]))
  const where = new Map<string, string>()
  const groups = new Map<string, Map<string, number>>()
  for (const v of view.vms) {
    where.set(v.id, v.host)
    const u = used.get(v.host)
    if (u) addTo(u, v.demand)
    const g = v.constraints?.antiAffinity
    if (g) bump(groups, v.host, g, 1)
  }
  const waves = new Map<number, Move[]>()
  for (const m of plan.moves) {
    if (!Number.isInteger(m.wave) || m.wave < 0) errors.push(`${m.vm}: bad wave ${m.wave}`)
    const w = waves.get(m.wave) ?? []
    w.push(m)
    waves.set(m.wave, w)
  }
  for (const w of [...waves.keys()].sort((a, b) => a - b)) {
    const list = waves.get(w)!
    const outs = new Map<string, number>()
    const ins = new Map<string, number>()
    const inWave = new Set<string>()
    for (const m of list) {
      const v = vms.get(m.vm)
      const to = hosts.get(m.to)
      if (!v) {
        errors.push(`wave ${w}: unknown VM ${m.vm}`)
        continue
      }
      if (!to) {
        errors.push(`wave ${w}: ${m.vm} to unknown host ${m.to}`)
        continue
      }
      if (inWave.has(m.vm)) errors.push(`wave ${w}: ${m.vm} moves twice`)
      inWave.add(m.vm)
      if (where.get(m.vm) !== m.from)
        errors.push(`wave ${w}: ${m.vm} is on ${where.get(m.vm)}, not ${m.from}`)
      if (m.from === m.to) errors.push(`wave ${w}: ${m.vm} moves to its own host`)
      if (to.state !== 'up' && to.state !== 'standby')
        errors.push(`wave ${w}: ${m.vm} to ${to.state} ${m.to}`)
      const c = v.constraints
      if (c?.pin !== undefined && c.pin !== m.to) errors.push(`wave ${w}: ${m.vm} pinned to ${c.pin}`)
      if (c?.ban?.includes(m.to)) errors.push(`wave ${w}: ${m.vm} banned from ${m.to}`)
      if (c?.antiAffinity && (groups.get(m.to)?.get(c.antiAffinity) ?? 0) > 0)
        errors.push(`wave ${w}: ${m.vm} joins anti-affinity group ${c.antiAffinity} on ${m.to}`)
      if (c?.antiAffinity) bump(groups, m.to, c.antiAffinity, 1)
      outs.set(m.from, (outs.get(m.from) ?? 0) + 1)
      ins.set(m.to, (ins.get(m.to) ?? 0) + 1)
      const u = used.get(m.to)!
      if (!fits(u, v.demand, to.capacity)) errors.push(`wave ${w}: ${m.to} over capacity with ${m.vm}`)
      addTo(u, v.demand)
    }
    for (const [h, n] of outs) if (n > cfg.maxOut) errors.push(`wave ${w}: ${n} migrations out of ${h}`)
    for (const [h, n] of ins) if (n > cfg.maxIn) errors.push(`wave ${w}: ${n} migrations into ${h}`)
    for (const m of list) {
      const v = vms.get(m.vm)
      if (!v || !hosts.has(m.to)) continue
      const u = used.get(m.from)
      if (u) addTo(u, v.demand, -1)
      where.set(m.vm, m.to)
      const g = v.constraints?.antiAffinity
      if (g) bump(groups, m.from, g, -1)
    }
  }
  return { ok: errors.length === 0, errors, final: where }
}

function bump(groups: Map<string, Map<string, number>>, host: string, g: string, by: number): void {
  const m = groups.get(host) ?? new Map<string, number>()
  m.set(g, (m.get(g) ?? 0) + by)
  groups.set(host, m)
}
