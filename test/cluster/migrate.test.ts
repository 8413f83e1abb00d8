// Live migration between real agent processes: the VM arrives with the same bytes, the mesh learns
// its new host at a higher epoch, and a destination killed mid-transfer leaves it running at the source.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  type RunningAgent,
  removeDir,
  sleep,
  startAgent,
  tempDir,
  waitFor,
} from '../helpers/agent-process.js'

let dir: string
let config: string
let a: RunningAgent
let b: RunningAgent
let c: RunningAgent
const extra: RunningAgent[] = []

before(async () => {
  dir = await tempDir()
  config = join(dir, 'agent.yaml')
  await writeFile(config, 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n  suspicionMult: 3\n')
  const args = ['--config', config, '--log-level', 'info']
  a = await startAgent({ dataDir: join(dir, 'a'), site: 'site-a', args })
  b = await startAgent({ dataDir: join(dir, 'b'), site: 'site-a', args, bootstrap: [a.addrs[0]!] })
  c = await startAgent({ dataDir: join(dir, 'c'), site: 'site-b', args, bootstrap: [a.addrs[0]!] })
  await waitFor('the mesh to form', async () => {
    const r = await a.request('GET', '/v1/cluster')
    return r.body.counts.alive === 3
  })
})

after(async () => {
  await Promise.all([a, b, c, ...extra].filter(Boolean).map((x) => x.stop()))
  await removeDir(dir)
})

async function finished(agent: RunningAgent, id: string, timeoutMs = 60_000) {
  return waitFor(
    `migration ${id} to end`,
    async () => {
      const r = await agent.request('GET', `/v1/migrations/${id}`)
      return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
    },
    timeoutMs,
  )
}

async function createVm(agent: RunningAgent, body: object) {
  const r = await agent.request('POST', '/v1/vms', body)
  assert.equal(r.status, 201, JSON.stringify(r.body))
  return r.body as { id: string; name: string }
}

describe('live migration between agents', () => {
  it('moves a paused VM byte for byte, and the mesh sees it on its new host at epoch 2', async () => {
    const vm = await createVm(a, {
      name: 'frozen',
      vcpus: 1,
      memoryMiB: 32,
      diskMiB: 64,
      workload: { dirtyMiBps: 16, hotSetMiB: 8, diskWriteMiBps: 2 },
    })
    await sleep(500)
    await a.request('POST', `/v1/vms/${vm.id}/pause`)
    const before = (await a.request('GET', `/v1/vms/${vm.id}/digest`)).body
    const started = await a.request('POST', `/v1/vms/${vm.id}/migrate`, { to: b.peerId, mode: 'precopy' })
    assert.equal(started.status, 202, JSON.stringify(started.body))
    const m = await finished(a, started.body.id)
    assert.equal(m.phase, 'done', JSON.stringify(m.error))
    assert.equal(m.epoch, 2)
    assert.equal((await a.request('GET', `/v1/vms/${vm.id}`)).status, 404)
    const there = await b.request('GET', `/v1/vms/${vm.id}`)
    assert.equal(there.status, 200)
    assert.equal(there.body.epoch, 2)
    assert.equal(there.body.host, b.peerId)
    const afterDigest = (await b.request('GET', `/v1/vms/${vm.id}/digest`)).body
    assert.equal(afterDigest.memory, before.memory)
    assert.equal(afterDigest.disk, before.disk)
    await waitFor('every agent to see the VM on b at epoch 2', async () => {
      const r = await Promise.all([a, b, c].map((x) => x.request('GET', `/v1/cluster/vms/${vm.id}`)))
      return r.every((x) => x.status === 200 && x.body.host === b.peerId && x.body.epoch === 2)
    })
  })

  it('moves a busy VM in each mode, and it keeps running at the destination', async () => {
    for (const mode of ['precopy', 'postcopy', 'auto'] as const) {
      const vm = await createVm(a, {
        name: `busy-${mode}`,
        vcpus: 1,
        memoryMiB: 32,
        diskMiB: 64,
        workload: { dirtyMiBps: 20, hotSetMiB: 8, diskWriteMiBps: 1 },
      })
      const started = await a.request('POST', `/v1/vms/${vm.id}/migrate`, { to: c.peerId, mode })
      assert.equal(started.status, 202)
      const m = await finished(a, started.body.id)
      assert.equal(m.phase, 'done', `${mode}: ${JSON.stringify(m.error)}`)
      const d1 = (await c.request('GET', `/v1/vms/${vm.id}/digest`)).body.combined
      await waitFor(`${mode}: the VM to run at c`, async () => {
        const d = await c.request('GET', `/v1/vms/${vm.id}/digest`)
        return d.body.combined !== d1
      })
      assert.equal((await c.request('GET', `/v1/vms/${vm.id}`)).body.state, 'running')
      assert.equal((await a.request('GET', `/v1/vms/${vm.id}`)).status, 404)
    }
    const metrics = (await a.request('GET', '/metrics')).body as string
    assert.match(metrics, /skymesh_migrations_total\{direction="out",outcome="done"\} [4-9]/)
    assert.match(metrics, /skymesh_migration_downtime_seconds_count\{mode="postcopy"\} [1-9]/)
  })

  it('refuses bad migrations with a reason and changes nothing', async () => {
    const vm = await createVm(a, { name: 'stay', vcpus: 1, memoryMiB: 16, diskMiB: 64 })
    const unknown = await a.request('POST', `/v1/vms/${vm.id}/migrate`, {
      to: '12D3KooWRq4tRXYBu1BVXagm6rz2g3LzX2a4bqgx1BLDVKZQdUfz',
    })
    assert.equal(unknown.status, 400)
    assert.match(unknown.body.error.message, /to:/)
    assert.equal((await a.request('POST', '/v1/vms/vm-nope/migrate', { to: b.peerId })).status, 404)
    assert.equal((await a.request('POST', `/v1/vms/${vm.id}/migrate`, { to: a.peerId })).status, 400)
    assert.equal((await a.request('GET', `/v1/vms/${vm.id}`)).body.state, 'running')
  })

  it('keeps the VM running at the source when the destination is killed mid-transfer; a retry succeeds', async () => {
    const vm = await createVm(a, {
      name: 'survivor',
      vcpus: 1,
      memoryMiB: 64,
      diskMiB: 64,
      workload: { dirtyMiBps: 32, hotSetMiB: 48 },
    })
    await sleep(1500) // let the workload fill its hot set, so there is something to send
    // Make the transfer slow enough to kill the destination in the middle of it.
    const started = await a.request('POST', `/v1/vms/${vm.id}/migrate`, {
      to: b.peerId,
      bandwidthMiBps: 2,
      compression: 'off',
    })
    assert.equal(started.status, 202)
    const under = await waitFor('the transfer to be under way', async () => {
      const r = await a.request('GET', `/v1/migrations/${started.body.id}`)
      return r.body.bytesSent > 1024 * 1024 || ['done', 'failed', 'cancelled'].includes(r.body.phase)
        ? r.body
        : undefined
    })
    assert.ok(
      ['precopy', 'offer'].includes(under.phase),
      `migration ended too soon: ${JSON.stringify(under)}`,
    )
    // Pause and delete are refused while it migrates.
    assert.equal((await a.request('DELETE', `/v1/vms/${vm.id}`)).status, 409)
    await b.kill9()
    const m = await finished(a, started.body.id)
    assert.equal(m.phase, 'failed')
    const here = await a.request('GET', `/v1/vms/${vm.id}`)
    assert.equal(here.body.state, 'running')
    assert.equal(here.body.epoch, 1)
    const d1 = (await a.request('GET', `/v1/vms/${vm.id}/digest`)).body.combined
    await waitFor('the VM to keep running at the source', async () => {
      return (await a.request('GET', `/v1/vms/${vm.id}/digest`)).body.combined !== d1
    })
    // The killed destination comes back without it.
    b = await startAgent({
      dataDir: b.dataDir,
      site: 'site-a',
      args: ['--config', config, '--log-level', 'info'],
      bootstrap: [a.addrs[0]!],
    })
    assert.equal((await b.request('GET', `/v1/vms/${vm.id}`)).status, 404)
    // And a retry to another host succeeds.
    const retry = await a.request('POST', `/v1/vms/${vm.id}/migrate`, { to: c.peerId })
    assert.equal(retry.status, 202)
    const done = await finished(a, retry.body.id)
    assert.equal(done.phase, 'done', JSON.stringify(done.error))
    assert.equal((await c.request('GET', `/v1/vms/${vm.id}`)).body.epoch, 2)
  })
})
