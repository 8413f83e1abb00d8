// Builds the sections the browser shows from what the agent knows. Pure apart from the agent calls.
import type { ClusterVm, MigrationView, VmRecord } from '../node/types.js'
import { lowerBound } from '../placement/index.js'
import type { DashboardSource, DashMigration, DashVm, HistoryPoint } from './types.js'

const MiB = 1024 * 1024
const TERMINAL = new Set(['done', 'failed', 'cancelled'])

/** Remembers when each VM of the mesh was last seen to change host; forgets VMs that left the mesh. */
export class MoveTracker {
  private readonly seen = new Map<string, { host: string; epoch: number; movedAt: number | null }>()

  update(vms: readonly ClusterVm[], now: number): Map<string, number | null> {
    const out = new Map<string, number | null>()
    const present = new Set<string>()
    for (const v of vms) {
      present.add(v.id)
      const prev = this.seen.get(v.id)
      let movedAt = prev?.movedAt ?? null
      if (prev && (prev.host !== v.host || v.epoch > prev.epoch)) movedAt = now
      this.seen.set(v.id, { host: v.host, epoch: v.epoch, movedAt })
      out.set(v.id, movedAt)
    }
    for (const id of this.seen.keys()) if (!present.has(id)) this.seen.delete(id)
    return out
  }

  get size(): number {
    return this.seen.size
  }
}

export function buildVms(source: DashboardSource, moves: MoveTracker, now: number): DashVm[] {
  const { agent } = source
  const self = agent.nodeInfo().peerId
  const local = new Map<string, VmRecord>(agent.listVms().map((r) => [r.id, r]))
  const mesh = agent.clusterVms()
  // A VM created a moment ago is local before gossip has it: show it at once.
  for (const r of local.values()) {
    if (mesh.some((v) => v.id === r.id)) continue
    mesh.push({
      id: r.id,
      name: r.name,
      host: r.host,
      epoch: r.epoch,
      status: 'ok',
      state: r.state,
      vcpus: r.vcpus,
      memoryMiB: r.memoryMiB,
      diskMiB: r.diskMiB,
      cpu: 0,
      dirtyMiBps: 0,
    })
  }
  const movedAt = moves.update(mesh, now)
  const ips = meshAddresses(source)
  return mesh.map((v) => {
    const rec = local.get(v.id)
    const out: DashVm = {
      ...v,
      local: v.host === self && rec !== undefined,
      ips: rec?.nics?.map((n) => n.ip) ?? ips.get(v.id) ?? [],
      movedAt: movedAt.get(v.id) ?? null,
    }
    if (rec?.migration) out.migration = { id: rec.migration.id, phase: rec.migration.phase }
    return out
  })
}

/** VM id -> its addresses on the overlay's networks (as this agent's overlay knows them). */
function meshAddresses(source: DashboardSource): Map<string, string[]> {
  const out = new Map<string, string[]>()
  const nets = source.networks
  if (!nets) return out
  try {
    for (const n of nets.listNetworks()) {
      for (const m of nets.getNetwork(n.name).vms) {
        const list = out.get(m.vmId) ?? []
        if (!list.includes(m.ip)) list.push(m.ip)
        out.set(m.vmId, list)
      }
    }
  } catch {
    // no overlay running: no addresses
  }
  return out
}

/** Running migrations and the newest `maxFinished` finished ones, newest first. */
export function buildMigrations(
  list: readonly MigrationView[],
  vms: readonly DashVm[],
  maxFinished: number,
): DashMigration[] {
  const byId = new Map(vms.map((v) => [v.id, v]))
  const running = list.filter((m) => !TERMINAL.has(m.phase))
  const finished = list
    .filter((m) => TERMINAL.has(m.phase))
    .sort((a, b) => b.startedAt - a.startedAt)
    .slice(0, maxFinished)
  return [...running.sort((a, b) => b.startedAt - a.startedAt), ...finished].map((m) => {
    const vm = byId.get(m.vmId)
    const vmBytes = vm ? (vm.memoryMiB + vm.diskMiB) * MiB : 0
    // Rounds re-send dirty pages, so bytes can pass the VM's size before the end: hold at 99 %.
    const progress =
      m.phase === 'done'
        ? 1
        : vmBytes > 0
          ? Math.min(0.99, m.bytesSent / vmBytes)
          : m.phase === 'offer'
            ? 0
            : 0.5
    return { ...m, vmName: vm?.name ?? m.vmId, vmBytes, progress }
  })
}

/** Active hosts and the lower bound now: from placement's view of the mesh, else from gossip alone. */
export function historyPoint(source: DashboardSource, vms: readonly DashVm[], now: number): HistoryPoint {
  const cluster = source.agent.cluster()
  const alive = cluster.hosts.filter((h) => h.status === 'alive' || h.self)
  if (source.placement) {
    const view = source.placement.clusterView()
    const busy = new Set(view.vms.map((v) => v.host))
    const bound = lowerBound(view.hosts, view.vms)
    return {
      t: now,
      active: view.hosts.filter((h) => busy.has(h.id)).length,
      lowerBound: Number.isFinite(bound) ? bound : view.hosts.length,
      alive: alive.length,
    }
  }
  const busy = new Set(vms.filter((v) => v.status === 'ok').map((v) => v.host))
  const need = vms.reduce((s, v) => s + v.memoryMiB, 0)
  const cap = Math.max(1, ...alive.map((h) => h.capacity?.memoryMiB ?? 0))
  return {
    t: now,
    active: alive.filter((h) => busy.has(h.peerId)).length,
    lowerBound: Math.ceil(need / cap),
    alive: alive.length,
  }
}
