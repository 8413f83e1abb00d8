// The invariants checked after every fault: every VM is held by exactly one live host (never lost,
// never twice), a VM whose bytes were frozen (paused) still has them, no migration stays open, and
// every agent's gossip view puts each VM on the host that holds it.
import type { RunningAgent } from '../helpers/agent-process.js'
import { sleep } from '../helpers/agent-process.js'
import type { FaultMesh } from './mesh.js'

const TERMINAL = new Set(['done', 'failed', 'cancelled'])

/** What the scenario knows of a VM it created. */
export interface TrackedVm {
  id: string
  /** The digest of a paused VM, which no migration or restart may change. */
  digest?: string
}

export interface AuditResult {
  vms: number
  lost: string[]
  twice: string[]
  digestMismatch: string[]
  /** Paused VMs that came back in another state (other than crashed with their host). */
  wrongState: string[]
  /** VMs that were live on a host killed with -9: they are crashed there, which is what a host crash does. */
  crashedWithHost: number
  /** Migrations still open on some agent when the audit gave up waiting. */
  stuckMigrations: number
  /** Placement events still open, or hosts still reserved, when the audit gave up waiting. */
  stuckLeases: number
  /** From the end of the faults until every agent's view matched, or NaN if it never did. */
  convergeMs: number
}

async function get(agent: RunningAgent, path: string): Promise<any> {
  try {
    const r = await agent.request('GET', path)
    return r.status === 200 ? r.body : undefined
  } catch {
    return undefined
  }
}

async function openMigrations(mesh: FaultMesh): Promise<number> {
  let open = 0
  for (const a of mesh.live()) {
    const body = await get(a, '/v1/migrations')
    for (const m of body?.migrations ?? []) if (!TERMINAL.has(m.phase)) open++
  }
  return open
}

/** Placement events still open and hosts still reserved by one (leases run out within seconds). */
async function heldLeases(mesh: FaultMesh): Promise<number> {
  let held = 0
  for (const a of mesh.live()) {
    const body = await get(a, '/v1/placement/events')
    if (!body) continue
    held += (body.open?.length ?? 0) + (body.reservedBy ? 1 : 0)
  }
  return held
}

export async function audit(
  mesh: FaultMesh,
  tracked: TrackedVm[],
  opts: { settleMs?: number; convergeMs?: number } = {},
): Promise<AuditResult> {
  const t0 = Date.now()
  // In-doubt handovers resolve once both sides are up, placement leases run out: give them time
  let stuck = await openMigrations(mesh)
  let leases = await heldLeases(mesh)
  while (stuck + leases > 0 && Date.now() - t0 < (opts.settleMs ?? 120_000)) {
    await sleep(500)
    stuck = await openMigrations(mesh)
    leases = await heldLeases(mesh)
  }

  const holders = new Map<string, { host: number; peerId: string; state: string }[]>()
  for (const h of mesh.liveHosts()) {
    const body = await get(h.agent!, '/v1/vms')
    for (const vm of body?.vms ?? []) {
      const list = holders.get(vm.id) ?? []
      list.push({ host: h.index, peerId: h.peerId!, state: vm.state })
      holders.set(vm.id, list)
    }
  }

  const result: AuditResult = {
    vms: tracked.length,
    lost: [],
    twice: [],
    digestMismatch: [],
    wrongState: [],
    crashedWithHost: 0,
    stuckMigrations: stuck,
    stuckLeases: leases,
    convergeMs: Number.NaN,
  }
  const placed = new Map<string, string>()
  for (const vm of tracked) {
    const on = holders.get(vm.id) ?? []
    if (on.length === 0) result.lost.push(vm.id)
    if (on.length > 1) result.twice.push(vm.id)
    if (on.length !== 1) continue
    const holder = on[0]!
    placed.set(vm.id, holder.peerId)
    if (holder.state === 'crashed') {
      result.crashedWithHost++
      continue
    }
    if (vm.digest === undefined) continue
    if (holder.state !== 'paused') {
      result.wrongState.push(vm.id)
      continue
    }
    const d = await get(mesh.hosts[holder.host]!.agent!, `/v1/vms/${vm.id}/digest`)
    if (d?.combined !== vm.digest) result.digestMismatch.push(vm.id)
  }

  // Every live agent's view of where each held VM is
  const tc = Date.now()
  const deadline = tc + (opts.convergeMs ?? 60_000)
  for (;;) {
    let agree = true
    for (const a of mesh.live()) {
      const body = await get(a, '/v1/cluster/vms')
      const where = new Map<string, string>((body?.vms ?? []).map((v: any) => [v.id, v.host]))
      for (const [id, peer] of placed) if (where.get(id) !== peer) agree = false
      if (!agree) break
    }
    if (agree) {
      result.convergeMs = Date.now() - tc
      break
    }
    if (Date.now() > deadline) break
    await sleep(200)
  }
  return result
}

/** True when nothing in the result breaks an invariant. */
export function clean(r: AuditResult): boolean {
  return (
    r.lost.length === 0 &&
    r.twice.length === 0 &&
    r.digestMismatch.length === 0 &&
    r.wrongState.length === 0 &&
    r.stuckMigrations === 0 &&
    r.stuckLeases === 0 &&
    Number.isFinite(r.convergeMs)
  )
}
