// A VM that migrates before the destination heard its NICs through gossip keeps them: they travel in
// the migration offer. The source host never publishes its new state during the test (state debounce
// 60 s, heartbeat 1 h), so the destination can only learn the VM's NICs from the offer.
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
  const network = ['networks:', '  - { name: red, subnet: 10.60.0.0/24 }']
  const quiet = join(dir, 'quiet.yaml')
  await writeFile(
    quiet,
    ['gossip:', '  debounceMs: 60000', '  heartbeatMs: 3600000', '  syncIntervalMs: 0', ...network, ''].join(
      '\n',
    ),
  )
  const plain = join(dir, 'plain.yaml')
  await writeFile(plain, [...network, ''].join('\n'))
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

describe('NICs travel with the migration', () => {
  it('a VM migrated before gossip spread its NIC keeps its MAC, IP and metadata', async () => {
    const created = await a.request('POST', '/v1/vms', {
      name: 'early',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 16,
      networks: ['red'],
    })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    const vm = created.body as { id: string; nics: Nic[] }
    assert.equal(vm.nics.length, 1)
    // the race this test is about: the destination does not know the VM's NIC
    const red = await b.request('GET', '/v1/networks/red')
    assert.equal(red.status, 200, JSON.stringify(red.body))
    assert.equal(red.body.vms.length, 0, 'the destination heard nothing of the VM yet')

    const started = await a.request('POST', `/v1/vms/${vm.id}/migrate`, { to: b.peerId, mode: 'precopy' })
    assert.equal(started.status, 202, JSON.stringify(started.body))
    const m = await waitFor(
      'the migration to end',
      async () => {
        const r = await a.request('GET', `/v1/migrations/${started.body.id}`)
        return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
      },
      30_000,
    )
    assert.equal(m.phase, 'done', JSON.stringify(m.error))

    const moved = await b.request('GET', `/v1/vms/${vm.id}`)
    assert.equal(moved.status, 200, JSON.stringify(moved.body))
    assert.deepEqual(moved.body.nics, vm.nics, 'same network, MAC and IP on the destination')
    const md = await b.request('GET', `/v1/vms/${vm.id}/metadata`)
    assert.equal(md.status, 200, JSON.stringify(md.body))
    assert.equal(md.body.mac, vm.nics[0]?.mac)
    assert.equal(md.body.ip, vm.nics[0]?.ip)
    assert.equal(md.body.name, 'early')
    const nics = await b.request('GET', `/v1/vms/${vm.id}/nics`)
    assert.equal(nics.status, 200, JSON.stringify(nics.body))
    assert.equal(nics.body.nics.length, 1, 'the NIC is plugged in on the destination')
    assert.equal((await a.request('GET', `/v1/vms/${vm.id}`)).status, 404, 'gone from the source')
  })
})
