// Live migration under faults, with real agents and real libp2p: the destination agent is killed
// (kill -9, then restarted with the same data dir) or the link between the two is cut (a TCP relay
// both agents reach each other through resets every connection) at each phase of a migration. After
// each: the VM is on exactly one host (the source before the handover, the destination after the
// commit), it runs there with the right bytes, the destination keeps nothing of a failed attempt,
// and a retry succeeds. A killed source restarts and its journal resolves the migration.
//
// `npm test` runs a few representative cases; `npm run test:faults` (SKYMESH_FAULTS=full) all of them.
import assert from 'node:assert/strict'
import { after, afterEach, describe, it } from 'node:test'
import { type RunningAgent, sleep, waitFor } from '../helpers/agent-process.js'
import {
  createVm,
  logLine,
  type MigrationPair,
  migrationEnd,
  migrationWhen,
  startPair,
  vmDirExists,
  vmOn,
} from '../helpers/migration-pair.js'

const FULL = process.env.SKYMESH_FAULTS === 'full'
const T0 = Date.now()
const trace = (what: string) => {
  if (process.env.SKYMESH_FAULTS_TRACE) console.error(`[${((Date.now() - T0) / 1000).toFixed(1)}s] ${what}`)
}
const MiB = 1024 * 1024

/**
 * kill: kill -9 of the destination agent; cut: every connection reset; silence: nothing gets through;
 * cut-data: only the direct data connections (TLS, src/transfer/direct.ts) reset, libp2p stays up.
 */
type Fault = 'kill' | 'cut' | 'silence' | 'cut-data'
/**
 * offer: the destination is gone when the migration starts; precopy: during the rounds; stopcopy: the
 * VM is paused for the final round; handover: as the source journals the handover and sends COMMIT
 * (the fault lands just before or just after the commit); committed: right after the destination
 * journaled the commit; postcopy: while the pages are pushed after the handover.
 */
type Stage = 'offer' | 'precopy' | 'stopcopy' | 'handover' | 'committed' | 'postcopy'

interface StageSetup {
  vm: object
  /** Let the workload fill its hot set first. */
  warmMs: number
  migrate: object
}

const SETUPS: Record<Stage, StageSetup> = {
  offer: {
    vm: { memoryMiB: 32, diskMiB: 64, workload: { dirtyMiBps: 8, hotSetMiB: 8 } },
    warmMs: 300,
    migrate: { mode: 'precopy' },
  },
  // ~48 MiB at 4 MiB/s: round 0 alone lasts about 12 s
  precopy: {
    vm: { memoryMiB: 64, diskMiB: 64, workload: { dirtyMiBps: 32, hotSetMiB: 48, diskWriteMiBps: 1 } },
    warmMs: 1500,
    migrate: { mode: 'precopy', bandwidthMiBps: 4, compression: 'off' },
  },
  // The hot set is dirtied faster than the link carries it: the rounds stop shrinking, and the final
  // (paused) round carries most of the hot set, about 2 s at 8 MiB/s
  stopcopy: {
    vm: { memoryMiB: 64, diskMiB: 64, workload: { dirtyMiBps: 64, hotSetMiB: 16 } },
    warmMs: 800,
    // no auto-converge: a throttled guest would make the final round too short to catch
    migrate: { mode: 'precopy', bandwidthMiBps: 8, compression: 'off', autoConverge: false },
  },
  handover: {
    vm: { memoryMiB: 32, diskMiB: 64, workload: { dirtyMiBps: 8, hotSetMiB: 8 } },
    warmMs: 500,
    migrate: { mode: 'precopy' },
  },
  committed: {
    vm: { memoryMiB: 32, diskMiB: 64, workload: { dirtyMiBps: 8, hotSetMiB: 8 } },
    warmMs: 500,
    migrate: { mode: 'precopy' },
  },
  // The pages go after the handover: ~40 MiB at 4 MiB/s is about 10 s of post-copy
  postcopy: {
    vm: { memoryMiB: 64, diskMiB: 64, workload: { dirtyMiBps: 32, hotSetMiB: 40 } },
    warmMs: 1500,
    migrate: { mode: 'postcopy', bandwidthMiBps: 4, compression: 'off' },
  },
}

let pair: MigrationPair | undefined

afterEach(async () => {
  trace('closing')
  await pair?.close()
  trace('closed')
  pair = undefined
})

after(async () => {
  await pair?.close()
})

/** Starts the migration and brings it to `stage`; returns its id (undefined: refused at once). */
async function reach(p: MigrationPair, stage: Stage, vmId: string, fault: () => Promise<void>) {
  const { a } = p
  const body = { to: p.b.peerId, ...SETUPS[stage].migrate }
  if (stage === 'offer') {
    // The destination is gone (or unreachable) as the offer goes out
    await fault()
    const r = await a.request('POST', `/v1/vms/${vmId}/migrate`, body)
    if (r.status === 400) {
      assert.match(r.body.error.message, /not a live host/)
      return undefined
    }
    assert.equal(r.status, 202, JSON.stringify(r.body))
    return r.body.id as string
  }
  const mark = a.output().length
  const markB = p.b.output().length
  const r = await a.request('POST', `/v1/vms/${vmId}/migrate`, body)
  assert.equal(r.status, 202, JSON.stringify(r.body))
  const id = r.body.id as string
  if (stage === 'handover') {
    await logLine(a, /"phase":"handover"/, mark)
  } else if (stage === 'committed') {
    await logLine(p.b, /VM arrived/, markB)
  } else {
    const v = await migrationWhen(a, id, (m) =>
      stage === 'precopy'
        ? m.phase === 'precopy' && m.bytesSent > 2 * MiB
        : stage === 'stopcopy'
          ? m.phase === 'stopcopy'
          : m.phase === 'postcopy' && m.pagesSent > 256,
    )
    assert.equal(v.phase, stage, `the migration did not stop in ${stage}: ${JSON.stringify(v)}`)
    if (stage === 'stopcopy') assert.equal((await vmOn(a, vmId)).state, 'paused')
  }
  await fault()
  return id
}

/** The VM runs at `agent`: its digest moves. */
async function runsOn(agent: RunningAgent, vmId: string) {
  const d1 = (await agent.request('GET', `/v1/vms/${vmId}/digest`)).body.combined
  await waitFor(`VM ${vmId} to run`, async () => {
    const d = await agent.request('GET', `/v1/vms/${vmId}/digest`)
    return d.status === 200 && d.body.combined !== d1
  })
}

/** The destination holds nothing of the VM: no record, no directory, no reservation. */
async function nothingLeftOn(agent: RunningAgent, vmId: string) {
  assert.equal(await vmOn(agent, vmId), undefined, 'a record of the VM is left on the destination')
  await waitFor('the incoming copy to be discarded', async () => !vmDirExists(agent, vmId), 10_000)
  const node = await agent.request('GET', '/v1/node')
  const held = (await agent.request('GET', '/v1/vms')).body.vms as { memoryMiB: number; state: string }[]
  const live = held
    .filter((v) => ['running', 'paused', 'starting'].includes(v.state))
    .reduce((s, v) => s + v.memoryMiB, 0)
  assert.equal(node.body.used.memoryMiB, live, 'a reservation is left on the destination')
}

/** Pauses the VM, migrates it from `src` to `dst` with no limit, and checks the bytes arrived. */
async function retry(src: RunningAgent, dst: RunningAgent, vmId: string, epoch: number) {
  assert.equal((await src.request('POST', `/v1/vms/${vmId}/pause`)).status, 200)
  const before = (await src.request('GET', `/v1/vms/${vmId}/digest`)).body
  // The mesh may still be settling after the fault: a refusal for "not live" is retried
  const started = await waitFor('the retry to start', async () => {
    const r = await src.request('POST', `/v1/vms/${vmId}/migrate`, { to: dst.peerId })
    return r.status === 202 ? r : undefined
  })
  const done = await migrationEnd(src, started.body.id)
  assert.equal(done.phase, 'done', `retry: ${JSON.stringify(done.error)}`)
  const there = await vmOn(dst, vmId)
  assert.equal(there.epoch, epoch + 1)
  assert.equal(there.state, 'paused')
  const afterDigest = (await dst.request('GET', `/v1/vms/${vmId}/digest`)).body
  assert.equal(afterDigest.memory, before.memory)
  assert.equal(afterDigest.disk, before.disk)
  assert.equal(await vmOn(src, vmId), undefined)
}

/** Waits until the VM's record is on exactly one of the two hosts; returns which and the record. */
async function settled(p: MigrationPair, vmId: string, timeoutMs = 90_000) {
  return waitFor(
    'the VM to be on exactly one host',
    async () => {
      const [onA, onB] = await Promise.all([vmOn(p.a, vmId), vmOn(p.b, vmId)])
      if (onA && onB) {
        // Both records may exist for a moment (the source waits for the status protocol), but never
        // two running copies
        assert.ok(
          !(onA.state === 'running' && onB.state === 'running'),
          `VM runs on both hosts: ${JSON.stringify([onA, onB])}`,
        )
        return undefined
      }
      // A paused VM may still wait for the outcome of its handover (the VMs here ran before)
      const done = (r: any) => r && !r.migration && r.state !== 'paused'
      if (done(onA)) return { host: 'a' as const, rec: onA }
      if (done(onB)) return { host: 'b' as const, rec: onB }
      return undefined
    },
    timeoutMs,
  )
}

async function destinationFault(fault: Fault, stage: Stage) {
  trace(`${fault} ${stage}: start`)
  const p = await startPair()
  pair = p
  trace('pair up')
  const setup = SETUPS[stage]
  const vm = await createVm(p.a, { name: `${fault}-${stage}`, vcpus: 1, ...setup.vm })
  await sleep(setup.warmMs)
  const id = await reach(p, stage, vm.id, async () => {
    if (fault === 'kill') await p.kill('b')
    else if (fault === 'cut') p.cut()
    else if (fault === 'cut-data') {
      const m = (await p.a.request('GET', '/v1/migrations')).body.migrations.find(
        (x: any) => x.vmId === vm.id,
      )
      assert.equal(m?.channel, 'direct-sealed', `data did not go direct: ${JSON.stringify(m)}`)
      p.cutData()
    } else p.freeze()
  })
  if (fault === 'silence') {
    // No reset ever arrives: each side must give up on its own (stall timeouts), the source
    // resuming its VM and the destination discarding its copy, while the link is still silent
    const end = await migrationEnd(p.a, id!, 120_000)
    trace(`source gave up: ${end.phase} ${end.error?.code}`)
    assert.equal(end.phase, 'failed')
    assert.equal((await vmOn(p.a, vm.id)).state, 'running')
    await waitFor(
      'the destination to give up',
      async () => {
        const r = await p.b.request('GET', '/v1/migrations')
        const m = (r.body.migrations as any[]).find((x) => x.vmId === vm.id)
        return m && ['failed', 'cancelled'].includes(m.phase)
      },
      120_000,
    )
    trace('destination gave up')
    await nothingLeftOn(p.b, vm.id)
    p.cut() // the connections the partition left behind
  }
  trace('fault injected')
  // Bring the destination back (the same data dir: the same identity), or the link. Before the
  // handover the source has already given up; after it, it waits (VM paused) to learn the outcome.
  if (fault === 'kill') await p.restart('b')
  else if (fault === 'cut-data') p.healData()
  else {
    if (fault === 'silence') p.thaw()
    await p.disconnected()
    p.heal()
  }
  await p.connected()
  trace('reconnected')
  if (id) {
    const end = await migrationEnd(p.a, id)
    trace(`migration ended ${end.phase} ${end.error?.code}`)
    if (['offer', 'precopy', 'stopcopy'].includes(stage)) assert.equal(end.phase, 'failed')
    if (stage === 'postcopy') assert.equal(end.error?.code, 'POSTCOPY_LOST', JSON.stringify(end))
  }
  const where = await settled(p, vm.id)
  trace(`settled on ${where.host}`)
  if (['offer', 'precopy', 'stopcopy'].includes(stage) || (stage === 'handover' && where.host === 'a')) {
    // Before the commit: the source keeps it, running; the destination kept nothing
    assert.equal(where.host, 'a', `the VM moved although the migration failed before the handover`)
    assert.equal(where.rec.epoch, 1)
    assert.equal(where.rec.state, 'running')
    await runsOn(p.a, vm.id)
    await nothingLeftOn(p.b, vm.id)
    trace('checked')
    await retry(p.a, p.b, vm.id, 1)
    trace('retried')
    return
  }
  // After the commit the VM is the destination's (epoch 2), and the source dropped its copy
  assert.equal(where.host, 'b', `committed, yet the VM stayed at the source: ${JSON.stringify(where)}`)
  assert.equal(where.rec.epoch, 2)
  assert.equal(where.rec.host, p.b.peerId)
  if (stage === 'postcopy' || fault === 'kill') {
    // Post-copy cannot survive the loss of either side or the link (README "What post-copy cannot
    // survive"), and a destination host killed after the commit takes the VM's memory with it: the VM
    // is crashed there, its disk kept, and nowhere else
    assert.equal(where.rec.state, 'crashed')
    assert.ok(vmDirExists(p.b, vm.id), 'the crashed VM keeps its disk')
    assert.equal((await p.b.request('POST', `/v1/vms/${vm.id}/resume`)).status, 409)
    return
  }
  // The link was cut after the commit: it runs at the destination, and can move back
  assert.equal(where.rec.state, 'running')
  await runsOn(p.b, vm.id)
  await retry(p.b, p.a, vm.id, 2)
}

async function sourceKill(stage: 'precopy' | 'handover' | 'postcopy') {
  const p = await startPair()
  pair = p
  const setup = SETUPS[stage]
  const vm = await createVm(p.a, { name: `source-${stage}`, vcpus: 1, ...setup.vm })
  await sleep(setup.warmMs)
  await reach(p, stage, vm.id, () => p.kill('a'))
  // The destination notices at once (its streams die)
  const inbound = await waitFor('the destination to end its side', async () => {
    const r = await p.b.request('GET', '/v1/migrations')
    const m = (r.body.migrations as any[]).find((x) => x.vmId === vm.id)
    return m && ['done', 'failed', 'cancelled'].includes(m.phase) ? m : undefined
  })
  await p.restart('a')
  const where = await settled(p, vm.id)
  if (stage === 'precopy') {
    // The VM lived in the killed agent: it is crashed at the source, and nowhere else
    assert.equal(inbound.phase, 'failed')
    assert.equal(where.host, 'a')
    assert.equal(where.rec.state, 'crashed')
    assert.equal(where.rec.epoch, 1)
    await nothingLeftOn(p.b, vm.id)
    return
  }
  if (where.host === 'a') {
    // Died before COMMIT reached the destination: the journal's in-doubt handover resolves "aborted"
    assert.equal(stage, 'handover')
    assert.equal(inbound.phase, 'failed')
    assert.equal(where.rec.state, 'crashed')
    assert.equal(where.rec.epoch, 1)
    await nothingLeftOn(p.b, vm.id)
    return
  }
  // The destination committed: the restarted source asked it (journal) and dropped its record
  assert.equal(where.rec.epoch, 2)
  if (stage === 'postcopy') {
    assert.equal(inbound.error?.code, 'POSTCOPY_LOST')
    assert.equal(where.rec.state, 'crashed')
  } else {
    assert.equal(where.rec.state, 'running')
    await runsOn(p.b, vm.id)
  }
  await waitFor('the source journal to close', async () => {
    const r = await p.a.request('GET', `/v1/vms/${vm.id}`)
    return r.status === 404
  })
}

const QUICK: [Fault, Stage][] = [
  ['kill', 'precopy'],
  ['cut-data', 'precopy'],
  ['cut', 'stopcopy'],
  ['kill', 'postcopy'],
]
const ALL: [Fault, Stage][] = [
  ...(['kill', 'cut'] as const).flatMap((f) =>
    (['offer', 'precopy', 'stopcopy', 'handover', 'committed', 'postcopy'] as const).map(
      (s) => [f, s] as [Fault, Stage],
    ),
  ),
  // A partition without resets: the stall timeouts (30 s) decide, so only before the handover
  ['silence', 'precopy'],
  ['cut-data', 'stopcopy'],
]

describe('live migration: destination faults', () => {
  for (const [fault, stage] of FULL ? ALL : QUICK) {
    const what = {
      kill: 'kill -9 of the destination',
      cut: 'link cut',
      silence: 'silent link',
      'cut-data': 'direct data connection cut',
    }[fault]
    it(`${what} at ${stage}`, async () => {
      await destinationFault(fault, stage)
    })
  }
})

describe('live migration: source killed', () => {
  for (const stage of FULL ? (['precopy', 'handover', 'postcopy'] as const) : (['handover'] as const)) {
    it(`kill -9 of the source at ${stage}, then restart: the journal resolves it`, async () => {
      await sourceKill(stage)
    })
  }
})
