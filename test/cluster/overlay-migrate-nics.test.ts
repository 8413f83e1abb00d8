// A VM that migrates before the destination heard its NICs through gossip keeps them: they travel in
// the migration offer. The source host never publishes its new state during the test (state debounce
// 60 s, heartbeat 1 h), so the destination can only learn the VM's NICs from the offer.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, startAgent, tempDir } from '../helpers/agent-process.js'
import { meshFormed, writeConfig } from '../helpers/mesh-setup.js'
import { createVm, migrateAndWait } from '../helpers/vm-api.js'

let dir: string
let a: RunningAgent
let b: RunningAgent

before(async () => {
  dir = await tempDir()
  const network = ['networks:', '  - { name: red, subnet: 10.60.0.0/24 }']
  const quietGossip = ['gossip:', '  debounceMs: 60000', '  heartbeatMs: 3600000', '  syncIntervalMs: 0']
  const quiet = await writeConfig(dir, 'quiet.yaml', [...quietGossip, ...network])
  const plain = await writeConfig(dir, 'plain.yaml', network)
  a = await startAgent({ dataDir: join(dir, 'a'), args: ['--config', quiet] })
  b = await startAgent({ dataDir: join(dir, 'b'), args: ['--config', plain], bootstrap: [a.addrs[0]!] })
  await meshFormed(b, 2)
})

after(async () => {
  await Promise.all([a, b].filter(Boolean).map((x) => x.stop()))
  await removeDir(dir)
})

describe('NICs travel with the migration', () => {
  it('a VM migrated before gossip spread its NIC keeps its MAC, IP and metadata', async () => {
    const vm = await createVm(a, 'early', { networks: ['red'] })
    assert.equal(vm.nics?.length, 1)
    // the race this test is about: the destination does not know the VM's NIC
    const red = await b.request('GET', '/v1/networks/red')
    assert.equal(red.status, 200, JSON.stringify(red.body))
    assert.equal(red.body.vms.length, 0, 'the destination heard nothing of the VM yet')

    await migrateAndWait(a, vm.id, b, 30_000)

    const moved = await b.request('GET', `/v1/vms/${vm.id}`)
    assert.equal(moved.status, 200, JSON.stringify(moved.body))
    assert.deepEqual(moved.body.nics, vm.nics, 'same network, MAC and IP on the destination')
    const md = await b.request('GET', `/v1/vms/${vm.id}/metadata`)
    assert.equal(md.status, 200, JSON.stringify(md.body))
    assert.equal(md.body.mac, vm.nics?.[0]?.mac)
    assert.equal(md.body.ip, vm.nics?.[0]?.ip)
    assert.equal(md.body.name, 'early')
    const nics = await b.request('GET', `/v1/vms/${vm.id}/nics`)
    assert.equal(nics.status, 200, JSON.stringify(nics.body))
    assert.equal(nics.body.nics.length, 1, 'the NIC is plugged in on the destination')
    assert.equal((await a.request('GET', `/v1/vms/${vm.id}`)).status, 404, 'gone from the source')
  })
})
