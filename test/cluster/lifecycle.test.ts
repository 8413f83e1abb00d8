// A clean restart keeps the peer id and resumes the VMs with unchanged memory and disk; a kill -9
// leaves them listed as crashed.
import assert from 'node:assert/strict'
import { after, describe, it } from 'node:test'
import { type RunningAgent, removeDir, sleep, startAgent, waitFor } from '../helpers/agent-process.js'

const dirs: string[] = []
const live: RunningAgent[] = []
after(async () => {
  await Promise.all(live.map((a) => a.stop()))
  await Promise.all(dirs.map(removeDir))
})

async function start(dataDir?: string): Promise<RunningAgent> {
  const a = await startAgent({ dataDir })
  live.push(a)
  if (!dirs.includes(a.dataDir)) dirs.push(a.dataDir)
  return a
}

async function stop(a: RunningAgent): Promise<number | null> {
  live.splice(live.indexOf(a), 1)
  return a.stop()
}

describe('agent restart', () => {
  it('keeps its peer id and resumes VMs with the same digest after a clean stop', async () => {
    const first = await start()
    const busy = await first.request('POST', '/v1/vms', {
      name: 'busy',
      vcpus: 1,
      memoryMiB: 32,
      diskMiB: 64,
      workload: { dirtyMiBps: 8, hotSetMiB: 8, diskWriteMiBps: 1 },
    })
    assert.equal(busy.status, 201, JSON.stringify(busy.body))
    const quiet = await first.request('POST', '/v1/vms', {
      name: 'quiet',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 64,
    })
    assert.equal(quiet.status, 201)
    // The workload really writes: the digest moves while the VM runs.
    const d1 = await first.request('GET', `/v1/vms/${busy.body.id}/digest`)
    await waitFor('the busy VM to change', async () => {
      const d = await first.request('GET', `/v1/vms/${busy.body.id}/digest`)
      return d.body.combined !== d1.body.combined
    })
    // Freeze it so its digest can be compared across the restart.
    assert.equal((await first.request('POST', `/v1/vms/${busy.body.id}/pause`)).body.state, 'paused')
    const before = (await first.request('GET', `/v1/vms/${busy.body.id}/digest`)).body
    const quietBefore = (await first.request('GET', `/v1/vms/${quiet.body.id}/digest`)).body
    assert.equal(await stop(first), 0, first.output())

    const second = await start(first.dataDir)
    assert.equal(second.peerId, first.peerId)
    const list = (await second.request('GET', '/v1/vms')).body.vms as { id: string; state: string }[]
    assert.deepEqual(
      list.map((v) => [v.id, v.state]).sort(),
      [
        [busy.body.id, 'paused'],
        [quiet.body.id, 'running'],
      ].sort(),
    )
    const after = (await second.request('GET', `/v1/vms/${busy.body.id}/digest`)).body
    assert.equal(after.memory, before.memory)
    assert.equal(after.disk, before.disk)
    assert.equal(
      (await second.request('GET', `/v1/vms/${quiet.body.id}/digest`)).body.combined,
      quietBefore.combined,
    )
    // And it runs again once resumed.
    assert.equal((await second.request('POST', `/v1/vms/${busy.body.id}/resume`)).body.state, 'running')
    await waitFor('the resumed VM to write again', async () => {
      const d = await second.request('GET', `/v1/vms/${busy.body.id}/digest`)
      return d.body.combined !== after.combined
    })
    await stop(second)
  })

  it('lists VMs as crashed after kill -9, and frees their memory', async () => {
    const first = await start()
    const vm = await first.request('POST', '/v1/vms', {
      name: 'doomed',
      vcpus: 1,
      memoryMiB: 32,
      diskMiB: 64,
    })
    assert.equal(vm.status, 201)
    await sleep(200)
    await first.kill9()
    live.splice(live.indexOf(first), 1)

    const second = await start(first.dataDir)
    assert.equal(second.peerId, first.peerId)
    const shown = await second.request('GET', `/v1/vms/${vm.body.id}`)
    assert.equal(shown.status, 200)
    assert.equal(shown.body.state, 'crashed')
    assert.equal(shown.body.name, 'doomed')
    const node = (await second.request('GET', '/v1/node')).body
    assert.equal(node.used.memoryMiB, 0)
    // A crashed VM has no memory to digest, and can be removed.
    assert.equal((await second.request('GET', `/v1/vms/${vm.body.id}/digest`)).status, 409)
    assert.equal((await second.request('DELETE', `/v1/vms/${vm.body.id}`)).status, 204)
    assert.equal((await second.request('GET', `/v1/vms/${vm.body.id}`)).status, 404)
    await stop(second)
  })
})
