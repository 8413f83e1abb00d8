// The fault scenarios: each run injects faults into a live mesh while VMs move, then the runner
// audits the invariants (audit.ts). Faults land at random moments from a seeded generator, so a
// failing run can be replayed with its seed.
import type { Rng } from '../../src/placement/core/index.js'
import type { RunningAgent } from '../helpers/agent-process.js'
import { sleep } from '../helpers/agent-process.js'
import type { TrackedVm } from './audit.js'
import type { FaultMesh, MeshHost } from './mesh.js'

export interface ScenarioContext {
  mesh: FaultMesh
  rng: Rng
  /** VMs the scenario created and the audit checks. */
  tracked: TrackedVm[]
  /** How long churn-like scenarios keep injecting. */
  durationMs: number
  /** Lines for the report (e.g. why a retry failed). */
  notes: string[]
  log: (line: string) => void
}

export interface RunOutcome {
  faults: number
  /** Migrations started, and how many of them a retry after the faults could not complete. */
  migrations: number
  retryFailures: number
}

export interface Scenario {
  name: string
  what: string
  /** Loopback agents, or hosts in network namespaces (sites). */
  mesh: { kind: 'loopback'; hosts: number } | { kind: 'netns'; sites: { name: string; hosts: number }[] }
  run(ctx: ScenarioContext): Promise<RunOutcome>
}

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)]!
const between = (rng: Rng, lo: number, hi: number) => lo + rng() * (hi - lo)

let vmSeq = 0

/** A VM that writes memory and disk (busy), or one filled then paused (its digest is then fixed). */
async function createVm(ctx: ScenarioContext, on: RunningAgent, paused: boolean): Promise<TrackedVm> {
  const r = await on.request('POST', '/v1/vms', {
    name: `fault-${process.pid}-${++vmSeq}`,
    vcpus: 1,
    memoryMiB: 32,
    diskMiB: 64,
    workload: { dirtyMiBps: 8, hotSetMiB: 16, diskWriteMiBps: 1 },
  })
  if (r.status !== 201) throw new Error(`create VM: ${r.status} ${JSON.stringify(r.body)}`)
  const id = r.body.id as string
  await sleep(400)
  if (!paused) {
    ctx.tracked.push({ id })
    return { id }
  }
  const p = await on.request('POST', `/v1/vms/${id}/pause`)
  if (p.status !== 200) throw new Error(`pause VM: ${p.status} ${JSON.stringify(p.body)}`)
  const d = await on.request('GET', `/v1/vms/${id}/digest`)
  const vm = { id, digest: d.body.combined as string }
  ctx.tracked.push(vm)
  return vm
}

/** Starts a migration; undefined if the agent refused it (e.g. the destination is not known yet). */
async function migrate(ctx: ScenarioContext, from: RunningAgent, vmId: string, to: MeshHost) {
  const body: Record<string, unknown> = {
    to: to.peerId,
    mode: pick(ctx.rng, ['precopy', 'postcopy', 'auto'] as const),
  }
  // A slow link spreads the fault over every phase; an unlimited one lands it near the handover
  const bw = pick(ctx.rng, [8, 16, 32, undefined])
  if (bw !== undefined) body.bandwidthMiBps = bw
  const r = await from.request('POST', `/v1/vms/${vmId}/migrate`, body)
  if (r.status !== 202) {
    ctx.log(`migration of ${vmId} refused: ${JSON.stringify(r.body)}`)
    return undefined
  }
  return r.body.id as string
}

/**
 * After the faults: where the VM is, and whether it can still move. A retry must succeed once the
 * mesh has healed; right after a heal or restart the peers may still be reconnecting, so up to three
 * attempts, a few seconds apart. Each failed attempt's reason is kept for the report.
 */
async function retry(ctx: ScenarioContext, vmId: string): Promise<boolean> {
  // The migration the fault hit may still run (or resolve an in-doubt handover): let it end first
  const settle = Date.now() + 120_000
  while (Date.now() < settle && (await moving(ctx, vmId))) await sleep(300)
  for (let attempt = 1; attempt <= 3; attempt++) {
    const why = await retryOnce(ctx, vmId)
    if (why === undefined) return true
    ctx.notes.push(`retry ${attempt} of ${vmId}: ${why}`)
    ctx.log(`retry ${attempt} of ${vmId}: ${why}`)
    await sleep(3000)
  }
  return false
}

/** Whether some live agent still has an open migration of the VM. */
async function moving(ctx: ScenarioContext, vmId: string): Promise<boolean> {
  for (const a of ctx.mesh.live()) {
    try {
      const r = await a.request('GET', '/v1/migrations')
      const open = (r.body?.migrations ?? []).some(
        (m: any) => m.vmId === vmId && !['done', 'failed', 'cancelled'].includes(m.phase),
      )
      if (open) return true
    } catch {
      // an agent going away answers nothing
    }
  }
  return false
}

/** One retry: undefined if it succeeded (or there is nothing to move), else why not. */
async function retryOnce(ctx: ScenarioContext, vmId: string): Promise<string | undefined> {
  const { mesh } = ctx
  for (const h of mesh.liveHosts()) {
    const r = await h.agent!.request('GET', `/v1/vms/${vmId}`)
    if (r.status !== 200) continue
    if (r.body.state !== 'running' && r.body.state !== 'paused') return undefined // crashed with its host
    const others = mesh.liveHosts().filter((o) => o !== h)
    if (others.length === 0) return undefined
    const to = pick(ctx.rng, others)
    const m = await h.agent!.request('POST', `/v1/vms/${vmId}/migrate`, { to: to.peerId })
    if (m.status !== 202) return `refused: ${JSON.stringify(m.body)}`
    const deadline = Date.now() + 120_000
    while (Date.now() < deadline) {
      const v = await h.agent!.request('GET', `/v1/migrations/${m.body.id}`)
      if (v.body?.phase === 'done') return undefined
      if (v.body?.phase === 'failed' || v.body?.phase === 'cancelled')
        return `${v.body.phase}: ${JSON.stringify(v.body.error)}`
      await sleep(200)
    }
    return 'did not end within 120 s'
  }
  return undefined
}

/** kill -9 of one side of a migration at a random moment, a restart after a random pause. */
function killDuringMigration(side: 'source' | 'destination'): Scenario['run'] {
  return async (ctx) => {
    const { mesh, rng } = ctx
    const live = mesh.liveHosts()
    const src = pick(rng, live)
    const dst = pick(
      rng,
      live.filter((h) => h !== src),
    )
    const vm = await createVm(ctx, src.agent!, rng() < 0.5)
    const mig = await migrate(ctx, src.agent!, vm.id, dst)
    await sleep(between(rng, 0, 2500))
    const victim = side === 'source' ? src : dst
    ctx.log(`kill -9 ${side} h${victim.index} during migration ${mig ?? '(refused)'}`)
    await mesh.kill(victim.index)
    await sleep(between(rng, 200, 2000))
    await mesh.start(victim.index)
    await sleep(1000)
    return { faults: 1, migrations: mig ? 1 : 0, retryFailures: (await retry(ctx, vm.id)) ? 0 : 1 }
  }
}

/** A graceful restart (SIGTERM, start again) of a host that holds VMs, one of them moving. */
const restartHolder: Scenario['run'] = async (ctx) => {
  const { mesh, rng } = ctx
  const live = mesh.liveHosts()
  const src = pick(rng, live)
  const dst = pick(
    rng,
    live.filter((h) => h !== src),
  )
  const moving = await createVm(ctx, src.agent!, rng() < 0.5)
  await createVm(ctx, src.agent!, true)
  const mig = await migrate(ctx, src.agent!, moving.id, dst)
  await sleep(between(rng, 0, 2000))
  const victim = rng() < 0.5 ? src : dst
  ctx.log(`restart h${victim.index}`)
  await mesh.restart(victim.index)
  await sleep(1000)
  return { faults: 1, migrations: mig ? 1 : 0, retryFailures: (await retry(ctx, moving.id)) ? 0 : 1 }
}

/** The two sites of a namespace mesh and a random live host in each. */
function crossSitePair({ mesh, rng }: ScenarioContext) {
  const [a, b] = [mesh.netns!.sites[0]!.name, mesh.netns!.sites[1]!.name]
  const src = pick(
    rng,
    mesh.liveHosts().filter((h) => h.site === a),
  )
  const dst = pick(
    rng,
    mesh.liveHosts().filter((h) => h.site === b),
  )
  return { a, b, src, dst }
}

/** Sites cut off from each other while a VM crosses between them, healed a few seconds later. */
const partitionDuringMigration: Scenario['run'] = async (ctx) => {
  const { mesh, rng } = ctx
  const net = mesh.netns!
  const { a, b, src, dst } = crossSitePair(ctx)
  const vm = await createVm(ctx, src.agent!, rng() < 0.5)
  const mig = await migrate(ctx, src.agent!, vm.id, dst)
  await sleep(between(rng, 0, 2500))
  ctx.log(`partition ${a} | ${b} during ${mig ?? '(refused)'}`)
  await net.partition(a, b)
  await sleep(between(rng, 1000, 5000))
  await net.heal()
  await sleep(1000)
  return { faults: 1, migrations: mig ? 1 : 0, retryFailures: (await retry(ctx, vm.id)) ? 0 : 1 }
}

/**
 * A placement event cut in two: a host of the first site is drained (an event whose partition
 * grows over both sites and whose plan moves its VMs), the sites are partitioned while the event
 * runs, then healed. Its leases must run out or be released, and every VM end on one host. The
 * drained host restarts afterwards (a restart forgets the drain), ready for the next run.
 */
const partitionDuringPlacement: Scenario['run'] = async (ctx) => {
  const { mesh, rng } = ctx
  const net = mesh.netns!
  const [a, b] = [net.sites[0]!.name, net.sites[1]!.name]
  const host = pick(
    rng,
    mesh.liveHosts().filter((h) => h.site === a),
  )
  for (let k = 0; k < 3; k++) await createVm(ctx, host.agent!, rng() < 0.5)
  const r = await host.agent!.request('POST', `/v1/hosts/${host.peerId}/drain`)
  if (r.status !== 202) throw new Error(`drain: ${r.status} ${JSON.stringify(r.body)}`)
  await sleep(between(rng, 300, 3000))
  ctx.log(`partition ${a} | ${b} during the drain of h${host.index}`)
  await net.partition(a, b)
  await sleep(between(rng, 1000, 5000))
  await net.heal()
  // Let the event end (plan run, or leases out), then clear the drain
  const deadline = Date.now() + 60_000
  let moves = 0
  while (Date.now() < deadline) {
    const st = await host.agent!.request('GET', '/v1/placement/events')
    if (st.status === 200 && st.body.open.length === 0 && !st.body.reservedBy) {
      moves = st.body.recent?.[0]?.moves?.length ?? 0
      ctx.log(`drain of h${host.index}: ${st.body.recent?.[0]?.state ?? 'no event'}, ${moves} moves`)
      break
    }
    await sleep(500)
  }
  await mesh.restart(host.index)
  await sleep(1000)
  return { faults: 1, migrations: moves, retryFailures: 0 }
}

/** A slow, lossy wide-area link under a cross-site migration. */
const lossyLink: Scenario['run'] = async (ctx) => {
  const { mesh, rng } = ctx
  const net = mesh.netns!
  const { a, b, src, dst } = crossSitePair(ctx)
  const shape = { rateMbit: pick(rng, [20, 50, 100]), loss: pick(rng, [0.01, 0.03, 0.05]) }
  ctx.log(`shape ${b}: ${JSON.stringify(shape)}`)
  await net.shapeSite(b, shape)
  try {
    const vm = await createVm(ctx, src.agent!, rng() < 0.5)
    const mig = await migrate(ctx, src.agent!, vm.id, dst)
    // Let it run under the bad link for a while, then restore the link and let it end
    await sleep(between(rng, 2000, 6000))
    return { faults: 1, migrations: mig ? 1 : 0, retryFailures: 0 }
  } finally {
    await net.shapeSite(b, {})
  }
}

/**
 * Churn: for the scenario's duration, at random: an agent is killed (-9) or restarted, a new one
 * joins, one without VMs leaves, and VMs migrate between random hosts. At the end every host that
 * held VMs is started again.
 */
const churn: Scenario['run'] = async (ctx) => {
  const { mesh, rng } = ctx
  const end = Date.now() + ctx.durationMs
  let faults = 0
  let migrations = 0
  const joined: number[] = []
  const left = new Set<number>()
  for (const h of mesh.liveHosts()) for (let k = 0; k < 2; k++) await createVm(ctx, h.agent!, rng() < 0.5)
  while (Date.now() < end) {
    const live = mesh.liveHosts()
    const action = rng()
    if (action < 0.25 && live.length > 3) {
      const v = pick(rng, live)
      ctx.log(`churn: kill -9 h${v.index}`)
      await mesh.kill(v.index)
      faults++
    } else if (action < 0.4 && live.length > 2) {
      const v = pick(rng, live)
      ctx.log(`churn: restart h${v.index}`)
      await mesh.restart(v.index)
      faults++
    } else if (action < 0.55 && mesh.down().some((h) => !left.has(h.index))) {
      const v = pick(
        rng,
        mesh.down().filter((h) => !left.has(h.index)),
      )
      ctx.log(`churn: h${v.index} comes back`)
      await mesh.start(v.index)
      faults++
    } else if (action < 0.62 && joined.length < 3) {
      const h = await mesh.join(pick(rng, ['site-a', 'site-b']))
      joined.push(h.index)
      ctx.log(`churn: h${h.index} joins`)
      faults++
    } else if (action < 0.67 && joined.some((i) => mesh.hosts[i]!.agent && !left.has(i))) {
      // A host leaves for good only when it holds nothing (its VMs would leave with it)
      const i = joined.find((j) => mesh.hosts[j]!.agent && !left.has(j))!
      const vms = await mesh.hosts[i]!.agent!.request('GET', '/v1/vms')
      if ((vms.body?.vms ?? []).length === 0) {
        ctx.log(`churn: h${i} leaves`)
        await mesh.stop(i)
        left.add(i)
        faults++
      }
    } else if (live.length >= 2) {
      const from = pick(rng, live)
      const vms = (await from.agent!.request('GET', '/v1/vms')).body?.vms ?? []
      const movable: { id: string }[] = vms.filter((v: any) => v.state === 'running' || v.state === 'paused')
      if (movable.length > 0) {
        const to = pick(
          rng,
          live.filter((h) => h !== from),
        )
        if (await migrate(ctx, from.agent!, pick(rng, movable).id, to)) migrations++
      }
    }
    await sleep(between(rng, 800, 2500))
  }
  // Hosts that left on purpose stay away; every other host comes back so nothing it holds is lost
  for (const h of mesh.down()) if (!left.has(h.index)) await mesh.start(h.index)
  return { faults, migrations, retryFailures: 0 }
}

/** Two sites of two hosts each, in network namespaces. */
const TWO_SITES: Scenario['mesh'] = {
  kind: 'netns',
  sites: [
    { name: 'site-a', hosts: 2 },
    { name: 'site-b', hosts: 2 },
  ],
}

export const SCENARIOS: Scenario[] = [
  {
    name: 'kill-destination',
    what: 'kill -9 of the destination at a random moment of a migration, then restart',
    mesh: { kind: 'loopback', hosts: 3 },
    run: killDuringMigration('destination'),
  },
  {
    name: 'kill-source',
    what: 'kill -9 of the source at a random moment of a migration, then restart',
    mesh: { kind: 'loopback', hosts: 3 },
    run: killDuringMigration('source'),
  },
  {
    name: 'restart',
    what: 'graceful restart of a source or destination while a VM moves',
    mesh: { kind: 'loopback', hosts: 3 },
    run: restartHolder,
  },
  {
    name: 'partition',
    what: 'two sites partitioned during a cross-site migration, healed after 1-5 s',
    mesh: TWO_SITES,
    run: partitionDuringMigration,
  },
  {
    name: 'partition-placement',
    what: 'the two sites partitioned while a drain (a placement event) moves VMs, healed after 1-5 s',
    mesh: TWO_SITES,
    run: partitionDuringPlacement,
  },
  {
    name: 'lossy-link',
    what: 'a cross-site migration over a 20-100 Mbit/s link losing 1-5 % of packets',
    mesh: TWO_SITES,
    run: lossyLink,
  },
  {
    name: 'churn',
    what: 'agents killed, restarted, joining and leaving while VMs migrate',
    mesh: { kind: 'loopback', hosts: 5 },
    run: churn,
  },
]
