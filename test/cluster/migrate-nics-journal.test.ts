// The NICs an incoming migration holds go with its journal. The destination agent is killed (kill -9)
// while it holds the NICs of a VM migrating in (pre-copy rounds running), then restarted with the same
// data dir: nothing of the VM's addresses is left held or assigned there, the VM keeps them on the
// source, and a retry moves the VM with its IP and MAC, which then only the destination holds.
import assert from 'node:assert/strict'
import { after, describe, it } from 'node:test'
import { type RunningAgent, sleep, waitFor } from '../helpers/agent-process.js'
import {
  createVm,
  type MigrationPair,
  migrationEnd,
  migrationWhen,
  startPair,
  vmOn,
} from '../helpers/migration-pair.js'

const MiB = 1024 * 1024
let pair: MigrationPair | undefined

after(async () => {
  await pair?.close()
})

interface Nic {
  network: string
  mac: string
  ip: string
}

interface Member {
  vmId: string
  ip: string
  mac: string
  host: string
  local: boolean
}

async function red(agent: RunningAgent): Promise<{ vms: Member[]; reserved: Member[] }> {
  const r = await agent.request('GET', '/v1/networks/red')
  assert.equal(r.status, 200, JSON.stringify(r.body))
  return r.body
}

describe('migration journal: held NICs', () => {
  it('kill -9 of the destination while it holds the NICs: rolled back on restart, a retry keeps IP and MAC', async () => {
    const p = await startPair()
    pair = p
    const net = await p.a.request('POST', '/v1/networks', { name: 'red', subnet: '10.81.0.0/24' })
    assert.equal(net.status, 201, JSON.stringify(net.body))
    await waitFor('b to know red', async () => (await p.b.request('GET', '/v1/networks/red')).status === 200)
    // ~48 MiB at 4 MiB/s: the pre-copy rounds last about 12 s
    const vm = (await createVm(p.a, {
      name: 'held',
      vcpus: 1,
      memoryMiB: 64,
      diskMiB: 64,
      workload: { dirtyMiBps: 32, hotSetMiB: 48 },
      networks: ['red'],
    })) as { id: string; nics: Nic[] }
    const nic = vm.nics[0]!
    await sleep(1500)
    const started = await p.a.request('POST', `/v1/vms/${vm.id}/migrate`, {
      to: p.b.peerId,
      mode: 'precopy',
      bandwidthMiBps: 4,
      compression: 'off',
    })
    assert.equal(started.status, 202, JSON.stringify(started.body))
    const v = await migrationWhen(p.a, started.body.id, (m) => m.phase === 'precopy' && m.bytesSent > 2 * MiB)
    assert.equal(v.phase, 'precopy', JSON.stringify(v))
    // b holds the VM's address for the migration, and gives it to nobody else meanwhile
    const holding = await red(p.b)
    assert.deepEqual(
      holding.reserved.map((r) => [r.vmId, r.ip, r.mac]),
      [[vm.id, nic.ip, nic.mac]],
    )
    await p.kill('b')
    const end = await migrationEnd(p.a, started.body.id)
    assert.equal(end.phase, 'failed')
    const b = await p.restart('b')
    await p.connected()

    // rolled back: b holds nothing and has no NIC of its own for the VM; a keeps the VM with its NIC.
    // (b learnt 'red' by gossip: restarted, it knows it again once a's state reaches it.)
    await waitFor(
      'the restarted b to know red again',
      async () => (await b.request('GET', '/v1/networks/red')).status === 200,
    )
    const after = await red(b)
    assert.deepEqual(after.reserved, [], 'no address left held after the restart')
    assert.ok(!after.vms.some((m) => m.local), `b has no NIC of its own: ${JSON.stringify(after.vms)}`)
    assert.equal(await vmOn(b, vm.id), undefined)
    const onA = await vmOn(p.a, vm.id)
    assert.equal(onA.state, 'running')
    assert.deepEqual(onA.nics, vm.nics)
    // a VM made on b now gets another address than the one the migration held
    const fresh = await createVm(b, {
      name: 'fresh',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 16,
      networks: ['red'],
    })
    const freshNic = (fresh as { id: string; nics: Nic[] }).nics[0]!
    assert.notEqual(freshNic.ip, nic.ip)
    assert.notEqual(freshNic.mac, nic.mac)

    // the retry takes the VM with its IP and MAC; b's hold became the VM's own NIC
    assert.equal((await p.a.request('POST', `/v1/vms/${vm.id}/pause`)).status, 200)
    const retry = await waitFor('the retry to start', async () => {
      const r = await p.a.request('POST', `/v1/vms/${vm.id}/migrate`, { to: b.peerId })
      return r.status === 202 ? r : undefined
    })
    const done = await migrationEnd(p.a, retry.body.id)
    assert.equal(done.phase, 'done', JSON.stringify(done.error))
    assert.deepEqual((await vmOn(b, vm.id)).nics, vm.nics)
    assert.equal(await vmOn(p.a, vm.id), undefined)
    const final = await red(b)
    assert.deepEqual(final.reserved, [])
    const mine = final.vms.filter((m) => m.local).map((m) => [m.vmId, m.ip, m.mac])
    assert.deepEqual(
      mine.sort(),
      [
        [vm.id, nic.ip, nic.mac],
        [fresh.id, freshNic.ip, freshNic.mac],
      ].sort(),
    )
    // the source let go of the address: it lists the VM on b only, once, and holds nothing
    await waitFor('a to see the VM on b', async () => {
      const onAView = await red(p.a)
      const entries = onAView.vms.filter((m) => m.vmId === vm.id)
      return entries.length === 1 && entries[0]!.host === b.peerId && onAView.reserved.length === 0
    })
  })
})
