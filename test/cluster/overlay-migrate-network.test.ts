// A VM on a network created through the API on its host only migrates to a host that never heard of
// the network: the offer carries the network's definition, the destination joins the network, and the
// VM keeps its IP and MAC. A host that knows another network under that name refuses the offer and
// says why. The source host never publishes its state during the test (state debounce 60 s,
// heartbeat 1 h), so the destination can only learn the network from the offer.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../helpers/agent-process.js'

let dir: string
let a: RunningAgent
let b: RunningAgent

interface Nic {
  network: string
  mac: string
  ip: string
}

before(async () => {
  dir = await tempDir()
  const quiet = join(dir, 'quiet.yaml')
  await writeFile(
    quiet,
    [
      'gossip:',
      '  debounceMs: 60000',
      '  heartbeatMs: 3600000',
      '  syncIntervalMs: 0',
      'networks:',
      '  - { name: green, subnet: 10.71.0.0/24 }',
      '',
    ].join('\n'),
  )
  const plain = join(dir, 'plain.yaml')
  await writeFile(plain, ['networks:', '  - { name: green, subnet: 10.72.0.0/24 }', ''].join('\n'))
  a = await startAgent({ dataDir: join(dir, 'a'), args: ['--config', quiet] })
  b = await startAgent({ dataDir: join(dir, 'b'), args: ['--config', plain], bootstrap: [a.addrs[0]!] })
  await waitFor(
    'the mesh to form',
    async () => (await b.request('GET', '/v1/cluster')).body.counts.alive === 2,
  )
})

after(async () => {
  await Promise.all([a, b].filter(Boolean).map((x) => x.stop()))
  await removeDir(dir)
})

async function migrate(vmId: string) {
  const started = await a.request('POST', `/v1/vms/${vmId}/migrate`, { to: b.peerId, mode: 'precopy' })
  assert.equal(started.status, 202, JSON.stringify(started.body))
  return waitFor(
    'the migration to end',
    async () => {
      const r = await a.request('GET', `/v1/migrations/${started.body.id}`)
      return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
    },
    30_000,
  )
}

describe('a network travels with the migration', () => {
  it('the destination joins a network it did not know; the VM keeps its IP and MAC', async () => {
    const net = await a.request('POST', '/v1/networks', { name: 'violet', subnet: '10.73.0.0/24', mtu: 1400 })
    assert.equal(net.status, 201, JSON.stringify(net.body))
    const created = await a.request('POST', '/v1/vms', {
      name: 'wanderer',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 16,
      networks: ['violet'],
    })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    const vm = created.body as { id: string; nics: Nic[] }
    assert.equal(vm.nics.length, 1)
    assert.equal((await b.request('GET', '/v1/networks/violet')).status, 404, 'b never heard of violet')

    const m = await migrate(vm.id)
    assert.equal(m.phase, 'done', JSON.stringify(m.error))
    const moved = await b.request('GET', `/v1/vms/${vm.id}`)
    assert.equal(moved.status, 200, JSON.stringify(moved.body))
    assert.deepEqual(moved.body.nics, vm.nics, 'same network, MAC and IP on the destination')
    const listed = (await b.request('GET', '/v1/networks')).body.networks as { name: string }[]
    assert.ok(
      listed.some((n) => n.name === 'violet'),
      `b lists violet now: ${JSON.stringify(listed)}`,
    )
    const there = await b.request('GET', '/v1/networks/violet')
    assert.equal(there.body.subnet, '10.73.0.0/24')
    assert.equal(there.body.mtu, 1400)
    assert.equal(there.body.createdAt, net.body.createdAt, 'the definition a made, not a new one')
    assert.deepEqual(there.body.reserved, [], 'no address left held')
    assert.deepEqual(
      there.body.vms.map((v: { vmId: string; ip: string; mac: string; local: boolean }) => [
        v.vmId,
        v.ip,
        v.mac,
        v.local,
      ]),
      [[vm.id, vm.nics[0]!.ip, vm.nics[0]!.mac, true]],
    )
    const nics = await b.request('GET', `/v1/vms/${vm.id}/nics`)
    assert.equal(nics.body.nics.length, 1, 'the NIC is plugged in on the destination')
    // a new VM on b can use the network now, and gets another address
    const other = await b.request('POST', '/v1/vms', {
      name: 'local',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 16,
      networks: ['violet'],
    })
    assert.equal(other.status, 201, JSON.stringify(other.body))
    assert.notEqual(other.body.nics[0].ip, vm.nics[0]!.ip)
    assert.notEqual(other.body.nics[0].mac, vm.nics[0]!.mac)
  })

  it('another network under the same name refuses the migration with the reason; the VM stays', async () => {
    const created = await a.request('POST', '/v1/vms', {
      name: 'homebody',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 16,
      networks: ['green'],
    })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    const m = await migrate(created.body.id)
    assert.equal(m.phase, 'failed')
    assert.match(
      JSON.stringify(m.error),
      /network 'green' here is 10\.72\.0\.0\/24 \(MTU 1500\), the VM's is 10\.71\.0\.0\/24/,
    )
    const still = await a.request('GET', `/v1/vms/${created.body.id}`)
    assert.equal(still.body.state, 'running')
    assert.deepEqual(still.body.nics, created.body.nics)
    assert.equal((await b.request('GET', `/v1/vms/${created.body.id}`)).status, 404)
    assert.equal((await b.request('GET', '/v1/networks/green')).body.subnet, '10.72.0.0/24')
  })
})
