// Orders moves into waves under the per-host caps (maxOut leaving, maxIn arriving per wave): moves that
// do not fit a wave wait for the next one (the queue). A move reserves its demand on the destination
// for the whole wave and frees the source only at the end of the wave, as a live migration does.
import { addTo, fits, zero } from './resources.js'
import type { HostView, Move, PlacementConfig, Resources, VmView } from './types.js'

export function schedule(
  hosts: readonly HostView[],
  vms: readonly VmView[],
  moves: Move[],
  cfg: Pick<PlacementConfig, 'maxIn' | 'maxOut'>,
): { waves: number; dropped: Move[] } {
  const cap = new Map<string, Resources>(hosts.map((h) => [h.id, h.capacity]))
  const used = new Map<string, Resources>(hosts.map((h) => [h.id, zero()]))
  const demand = new Map<string, Resources>()
  for (const v of vms) {
    demand.set(v.id, v.demand)
    const u = used.get(v.host)
    if (u) addTo(u, v.demand)
  }
  let pending = moves
  let wave = 0
  const dropped: Move[] = []
  while (pending.length > 0) {
    const outs = new Map<string, number>()
    const ins = new Map<string, number>()
    const next: Move[] = []
    const started: Move[] = []
    for (const m of pending) {
      const d = demand.get(m.vm)!
      const u = used.get(m.to)!
      if (
        (outs.get(m.from) ?? 0) >= cfg.maxOut ||
        (ins.get(m.to) ?? 0) >= cfg.maxIn ||
        !fits(u, d, cap.get(m.to)!)
      ) {
        next.push(m)
        continue
      }
      outs.set(m.from, (outs.get(m.from) ?? 0) + 1)
      ins.set(m.to, (ins.get(m.to) ?? 0) + 1)
      addTo(u, d)
      m.wave = wave
      started.push(m)
    }
    if (started.length === 0) {
      // Cannot happen for planner output (sources never receive); kept so bad input cannot loop.
      dropped.push(...next)
      break
    }
    for (const m of started) addTo(used.get(m.from)!, demand.get(m.vm)!, -1)
    pending = next
    wave++
  }
  if (dropped.length > 0) {
    const gone = new Set(dropped)
    const keep = moves.filter((m) => !gone.has(m))
    moves.length = 0
    moves.push(...keep)
  }
  return { waves: wave, dropped }
}
