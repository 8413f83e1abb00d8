// Cooperative placement between 8 real agents on loopback, with small synthetic VMs (memory is the
// resource that matters: every host has 256 MiB). Each case starts from an empty mesh: an overloaded
// host is relieved, two overloads competing for the one host with room never over-commit it, a drain
// spreads over several hosts (and stays draining across a restart until it is ended), a dry run's plan
// applied by its id runs exactly as shown, a leader killed mid-event frees the hosts of its partition,
// and (last, as its trigger is the slowest) an underloaded host is emptied.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, afterEach, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../helpers/agent-process.js'

const N = 8
const CAPACITY_MIB = 256
let dir: string
const agents: RunningAgent[] = []
let configs: { config: string; slow: string; patient: string }

// Fast triggers for the test; headroom 0.2 means a destination stays at or under 204 MiB.
const BASE = `gossip:
  probeIntervalMs: 500
  probeTimeoutMs: 400
  suspicionMult: 4
  heartbeatMs: 500
  debounceMs: 50
capacity:
  memoryMiB: ${CAPACITY_MIB}
  vcpus: 4
  diskMiB: 4096
placement:
  tickMs: 200
  overloadGraceMs: 3000
  underloadGraceMs: 20000
  leaseMs: 3000
  joinTimeoutMs: 1500
  retryBackoffMs: 4000
`

before(async () => {
  dir = await tempDir('skymesh-placement-')
  const config = join(dir, 'agent.yaml')
  await writeFile(config, BASE)
  // The last agent's own migrations are slow (1 MiB/s), so an event it leads lasts long enough to kill it.
  const slow = join(dir, 'slow.yaml')
  await writeFile(slow, `${BASE}  migrationBandwidthMiBps: 1\n`)
  // Agent 6 never acts on its own problems within a test (an hour of grace): plans applied by id only.
  const patient = join(dir, 'patient.yaml')
  await writeFile(
    patient,
    BASE.replace('overloadGraceMs: 3000', 'overloadGraceMs: 3600000').replace(
      'underloadGraceMs: 20000',
      'underloadGraceMs: 3600000',
    ),
  )
  configs = { config, slow, patient }
  const args = (file: string) => ['--config', file, '--log-level', 'info']
  agents.push(await startAgent({ dataDir: join(dir, 'h0'), args: args(config), timeoutMs: 60_000 }))
  const boot = [agents[0]!.addrs[0]!]
  // A few at a time (a loaded 2-core box starts 7 node processes slowly); each is kept for after().
  for (let k = 1; k < N; k += 3) {
    await Promise.all(
      Array.from({ length: Math.min(3, N - k) }, async (_, j) => {
        const i = k + j
        const a = await startAgent({
          dataDir: join(dir, `h${i}`),
          args: args(i === N - 1 ? slow : i === 6 ? patient : config),
          bootstrap: boot,
          timeoutMs: 60_000,
        })
        agents[i] = a
      }),
    )
  }
  await waitFor(
    'the mesh to form',
    async () => {
      const views = await Promise.all(agents.map((a) => a.request('GET', '/v1/cluster')))
      return views.every((v) => v.body.counts.alive === N && v.body.hosts.every((h: Host) => h.capacity))
    },
    120_000,
  )
})

after(async () => {
  // SKYMESH_TEST_LOGS=DIR keeps every agent's log there (what CI shows when a case fails).
  const keep = process.env.SKYMESH_TEST_LOGS
  if (keep)
    for (const [i, a] of agents.entries()) await writeFile(join(keep, `placement-h${i}.log`), a.output())
  await Promise.all(agents.filter(Boolean).map((a) => a.stop()))
  await removeDir(dir)
})

afterEach(async () => {
  await emptyMesh()
})

interface Host {
  peerId: string
  status: string
  capacity?: { memoryMiB: number }
  used?: { memoryMiB: number }
  vmCount: number
}

interface PlacementEvent {
  id: string
  kind: string
  state: string
  leader: string
  members: string[]
  moves: { vm: string; from: string; to: string; reason: string; wave: number }[]
}

const live = () => agents.filter((a) => a.proc.exitCode === null && a.proc.signalCode === null)

async function createVms(agent: RunningAgent, name: string, sizesMiB: number[]): Promise<string[]> {
  const ids: string[] = []
  for (const [k, memoryMiB] of sizesMiB.entries()) {
    const r = await agent.request('POST', '/v1/vms', {
      name: `${name}-${k}`,
      vcpus: 1,
      memoryMiB,
      diskMiB: 8,
    })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    ids.push(r.body.id)
  }
  return ids
}

/** VM ids on each agent, from each agent's own registry. */
async function vmsOn(agent: RunningAgent): Promise<string[]> {
  const r = await agent.request('GET', '/v1/vms')
  return (r.body.vms as { id: string }[]).map((v) => v.id)
}

async function usedMiB(agent: RunningAgent): Promise<number> {
  return (await agent.request('GET', '/v1/node')).body.used.memoryMiB
}

async function events(agent: RunningAgent) {
  return (await agent.request('GET', '/v1/placement/events')).body as {
    draining: boolean
    reservedBy?: { id: string; leader: string }
    open: PlacementEvent[]
    recent: PlacementEvent[]
  }
}

/**
 * Deletes every VM (waiting out migrations in flight) until every live host is empty and free. All at
 * once: a host half emptied looks underloaded, and the consolidation grace (20 s) must not run out.
 */
async function emptyMesh(): Promise<void> {
  await waitFor(
    'an empty, unreserved mesh',
    async () => {
      const left = await Promise.all(
        live().map(async (a) => {
          const ids = await vmsOn(a)
          await Promise.all(ids.map((id) => a.request('DELETE', `/v1/vms/${id}`)))
          return ids.length + ((await events(a)).reservedBy ? 1 : 0)
        }),
      )
      return left.every((n) => n === 0)
    },
    120_000,
  )
}

/** Where each of `ids` runs now, by asking every live agent; asserts none runs twice. */
async function locate(ids: string[]): Promise<Map<string, RunningAgent>> {
  const where = new Map<string, RunningAgent>()
  for (const a of live()) {
    for (const id of await vmsOn(a)) {
      if (!ids.includes(id)) continue
      assert.ok(!where.has(id), `${id} runs on two hosts`)
      where.set(id, a)
    }
  }
  return where
}

describe('placement between 8 agents', () => {
  it('relieves an overloaded host by live migration (and a dry run shows the move first)', async () => {
    const hot = agents[0]!
    // 8 x 30 MiB = 240 MiB of 256: 94 %, over the 90 % threshold. Every other host is empty.
    const ids = await createVms(hot, 'hot', Array(8).fill(30))
    const dry = await hot.request('POST', '/v1/placement/plan', {
      policy: 'balance',
      dryRun: true,
      hosts: [hot.peerId],
    })
    assert.equal(dry.status, 200, JSON.stringify(dry.body))
    assert.ok(dry.body.moves.length >= 1, JSON.stringify(dry.body))
    assert.ok(dry.body.moves.every((m: { from: string; reason: string }) => m.from === hot.peerId))
    assert.match(dry.body.moves[0].why, /over the 90 % threshold/)
    const done = await waitFor(
      'the overload event to finish',
      async () => (await events(hot)).recent.find((e) => e.kind === 'overload' && e.state === 'done'),
      120_000,
    )
    assert.ok(done.moves.length >= 1)
    assert.ok(done.moves.every((m) => m.from === hot.peerId && m.reason === 'overload'))
    await waitFor('the source to be back under its threshold', async () => (await usedMiB(hot)) <= 0.9 * 256)
    const where = await locate(ids)
    assert.equal(where.size, ids.length, 'every VM still runs somewhere')
    for (const m of done.moves) assert.equal(where.get(m.vm)?.peerId, m.to)
    const metrics = (await hot.request('GET', '/metrics')).body as string
    assert.match(metrics, /skymesh_placement_events_closed_total\{kind="overload",outcome="done"\} [1-9]/)
    assert.match(metrics, /skymesh_placement_migrations_planned_total\{reason="overload"\} [1-9]/)
  })

  it('two simultaneous overloads never over-commit the one host with room', async () => {
    // Five hosts at 200 MiB (78 %, no room for 80 MiB more), one with 100 MiB (room for one 80 MiB VM).
    const [a, b] = [agents[4]!, agents[5]!]
    const fillers = [0, 1, 2, 3, 7].map((k) => agents[k]!)
    const roomy = agents[6]!
    for (const f of fillers) await createVms(f, 'fill', [200])
    await createVms(roomy, 'room', [100])
    // Both overloaded (240 MiB: 94 %) at about the same time.
    await Promise.all([createVms(a, 'hot-a', [80, 80, 80]), createVms(b, 'hot-b', [80, 80, 80])])
    let peak = 0
    await waitFor(
      'one of the overloads to be relieved',
      async () => {
        peak = Math.max(peak, await usedMiB(roomy))
        const evs = [...(await events(a)).recent, ...(await events(b)).recent]
        return evs.some((e) => e.kind === 'overload' && e.state === 'done')
      },
      120_000,
    )
    // Give the other one time to try (it must find no room and give up, not squeeze in).
    const started = Date.now()
    await waitFor(
      'the other overload to give up at least once',
      async () => {
        peak = Math.max(peak, await usedMiB(roomy))
        const evs = [...(await events(a)).recent, ...(await events(b)).recent]
        return (
          evs.some((e) => e.kind === 'overload' && e.state === 'unresolved') || Date.now() - started > 10_000
        )
      },
      30_000,
    )
    peak = Math.max(peak, await usedMiB(roomy))
    assert.ok(peak <= 204, `the host with room went to ${peak} MiB (limit 204 with 20 % headroom)`)
    assert.equal((await vmsOn(roomy)).length, 2, 'it took exactly one of the hot VMs')
    const relieved = [(await usedMiB(a)) <= 230, (await usedMiB(b)) <= 230].filter(Boolean).length
    assert.equal(relieved, 1, 'exactly one overload could be relieved')
    for (const f of fillers) assert.equal((await vmsOn(f)).length, 1, 'no filler took a VM')
  })

  it('drains a host over several destinations', async () => {
    const host = agents[3]!
    // 3 x 70 MiB: no destination can take all three and stay under its 204 MiB.
    const ids = await createVms(host, 'drain', [70, 70, 70])
    const bad = await host.request('POST', '/v1/hosts/not-a-peer/drain')
    assert.equal(bad.status, 404, JSON.stringify(bad.body))
    const r = await agents[0]!.request('POST', `/v1/hosts/${host.peerId}/drain`)
    assert.equal(r.status, 202, JSON.stringify(r.body))
    await waitFor('the drained host to be empty', async () => (await vmsOn(host)).length === 0, 120_000)
    const where = await locate(ids)
    assert.equal(where.size, 3)
    const targets = new Set([...where.values()].map((a) => a.peerId))
    assert.ok(!targets.has(host.peerId))
    assert.ok(targets.size >= 2, `spread over ${targets.size} hosts`)
    assert.equal((await events(host)).draining, true)
    // The VMs leave the registry a moment before the service sees their migrations end.
    await waitFor('the drain event to close as done', async () =>
      (await events(host)).recent.some((e) => e.kind === 'drain' && e.state === 'done'),
    )
    // The drain is kept in the store: a restarted agent is still draining.
    await host.stop()
    agents[3] = await startAgent({
      dataDir: join(dir, 'h3'),
      args: ['--config', configs.config, '--log-level', 'info'],
      bootstrap: [agents[0]!.addrs[0]!],
      timeoutMs: 60_000,
    })
    const back = agents[3]!
    assert.equal(back.peerId, host.peerId)
    assert.equal((await events(back)).draining, true, 'still draining after the restart')
    await waitFor(
      'the restarted host to be back in every view',
      async () => {
        const views = await Promise.all(live().map((a) => a.request('GET', '/v1/cluster')))
        return views.every((v) => v.body.counts.alive === N)
      },
      60_000,
    )
    const missing = await agents[0]!.request('DELETE', '/v1/hosts/not-a-peer/drain')
    assert.equal(missing.status, 404, JSON.stringify(missing.body))
    // Ended from another agent, over the placement protocol.
    const end = await agents[0]!.request('DELETE', `/v1/hosts/${back.peerId}/drain`)
    assert.equal(end.status, 200, JSON.stringify(end.body))
    assert.equal(end.body.draining, false)
    await waitFor('the drain to end', async () => !(await events(back)).draining, 30_000)
  })

  it('runs exactly the plan a dry run showed, by its plan id (409 for a plan that is not current)', async () => {
    const hot = agents[6]! // an hour of grace: only an applied plan relieves it
    const ids = await createVms(hot, 'apply', Array(8).fill(30)) // 240 MiB of 256: overloaded
    const stale = await hot.request('POST', '/v1/placement/plan', {
      dryRun: false,
      planId: '0123456789abcdef',
    })
    assert.equal(stale.status, 409, JSON.stringify(stale.body))
    assert.match(stale.body.error.message, /changed since the dry run/)
    type Shown = { planId?: string; leader: string; partition: string[]; moves: PlacementEvent['moves'] }
    let shown: Shown | undefined
    let applied: { event: string; planId: string; moves: PlacementEvent['moves'] } | undefined
    await waitFor(
      'a dry-run plan to be applied',
      async () => {
        const dry = await hot.request('POST', '/v1/placement/plan', {
          policy: 'balance',
          dryRun: true,
          hosts: [hot.peerId],
        })
        assert.equal(dry.status, 200, JSON.stringify(dry.body))
        shown = (dry.body.events as Shown[]).find((e) => e.leader === hot.peerId)
        if (!shown?.planId) return false
        const r = await hot.request('POST', '/v1/placement/plan', { dryRun: false, planId: shown.planId })
        // 409: gossip moved between the two calls (a load report); dry run again.
        if (r.status === 409) return false
        assert.equal(r.status, 202, JSON.stringify(r.body))
        applied = r.body
        return true
      },
      60_000,
    )
    const key = (ms: PlacementEvent['moves']) => ms.map((m) => [m.vm, m.from, m.to, m.wave])
    assert.ok(shown!.moves.length >= 1)
    assert.deepEqual(key(applied!.moves), key(shown!.moves))
    const done = await waitFor(
      'the applied plan to finish',
      async () => (await events(hot)).recent.find((e) => e.id === applied!.event && e.state === 'done'),
      120_000,
    )
    assert.deepEqual(key(done.moves), key(shown!.moves), "the migrations run are the dry run's")
    const where = await locate(ids)
    assert.equal(where.size, ids.length)
    for (const m of done.moves) assert.equal(where.get(m.vm)?.peerId, m.to)
  })

  it('a leader killed mid-event (kill -9) frees the hosts of its partition', async () => {
    const leader = agents[N - 1]! // its migrations run at 1 MiB/s
    // 3 x 80 MiB (overloaded) of memory the VMs keep writing: a migration has real bytes to copy.
    for (const k of [0, 1, 2]) {
      const r = await leader.request('POST', '/v1/vms', {
        name: `busy-${k}`,
        vcpus: 1,
        memoryMiB: 80,
        diskMiB: 8,
        workload: { dirtyMiBps: 16, hotSetMiB: 40 },
      })
      assert.equal(r.status, 201, JSON.stringify(r.body))
    }
    const open = await waitFor(
      'the event to be executing',
      async () => (await events(leader)).open.find((e) => e.state === 'executing'),
      120_000,
    )
    const members = agents.filter((a) => a !== leader && open.members.includes(a.peerId))
    assert.ok(members.length >= 1)
    await waitFor(
      'a member to hold the lease',
      async () => {
        for (const m of members) if ((await events(m)).reservedBy?.id === open.id) return true
        return false
      },
      60_000,
    )
    await leader.kill9()
    await waitFor(
      'every member to be free again',
      async () => {
        for (const m of members) if ((await events(m)).reservedBy) return false
        return true
      },
      60_000,
    )
    // Free for real: a new event can use them (a fresh overload elsewhere is relieved).
    const hot = agents[0]!
    await createVms(hot, 'again', Array(8).fill(30))
    await waitFor(
      'a new overload to be relieved after the kill',
      async () => (await events(hot)).recent.some((e) => e.kind === 'overload' && e.state === 'done'),
      120_000,
    )
  })
  it('empties an underloaded host into one that runs VMs (consolidation)', async () => {
    const target = agents[2]!
    const idle = agents[1]!
    await createVms(target, 'base', [128]) // 50 %: neither over nor under
    const ids = await createVms(idle, 'idle', [16, 16]) // 12.5 %: under the 30 % threshold
    const done = await waitFor(
      'the consolidation event to finish',
      async () => (await events(idle)).recent.find((e) => e.kind === 'underload' && e.state === 'done'),
      120_000,
    )
    assert.ok(done.moves.every((m) => m.reason === 'consolidate'))
    await waitFor('the idle host to be empty', async () => (await vmsOn(idle)).length === 0, 30_000)
    const where = await locate(ids)
    for (const id of ids) assert.equal(where.get(id)?.peerId, target.peerId, 'onto the host that runs VMs')
  })
})
