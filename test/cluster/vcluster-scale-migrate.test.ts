// A scale hands new contexts while one of the cluster's VMs has just moved: the creating host (c) still
// places the VM on its old host (a), because the new host (b) does not publish its state during the
// test (state debounce 60 s, heartbeat 1 h). a passes the new context on to b, where the VM runs now:
// its metadata (169.254.169.254) shows the new peers, and a serves nothing for it any more.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../helpers/agent-process.js'

interface Vm {
  index: number
  name: string
  id: string
  host: string
}

let dir: string
let a: RunningAgent
let b: RunningAgent
let c: RunningAgent

before(async () => {
  dir = await tempDir('skymesh-vscale-')
  const lan = ['networks:', '  - { name: lan, subnet: 10.46.0.0/24 }']
  const plain = join(dir, 'plain.yaml')
  await writeFile(plain, [...lan, ''].join('\n'))
  const quiet = join(dir, 'quiet.yaml')
  await writeFile(
    quiet,
    ['gossip:', '  debounceMs: 60000', '  heartbeatMs: 3600000', '  syncIntervalMs: 0', ...lan, ''].join(
      '\n',
    ),
  )
  c = await startAgent({ dataDir: join(dir, 'c'), args: ['--config', plain] })
  a = await startAgent({
    dataDir: join(dir, 'a'),
    args: ['--config', plain],
    site: 'west',
    bootstrap: [c.addrs[0]!],
  })
  b = await startAgent({ dataDir: join(dir, 'b'), args: ['--config', quiet], bootstrap: [c.addrs[0]!] })
  await waitFor(
    'the mesh to form',
    async () =>
      (await Promise.all([a, b, c].map((x) => x.request('GET', '/v1/cluster')))).every(
        (r) => r.body.counts.alive === 3,
      ),
    30_000,
  )
})

after(async () => {
  await Promise.all([a, b, c].filter(Boolean).map((x) => x.stop()))
  await removeDir(dir)
})

async function settled(name: string) {
  return waitFor(
    `virtual cluster ${name} to settle`,
    async () => {
      const v = (await c.request('GET', `/v1/vclusters/${name}`)).body
      return v.state === 'creating' || v.state === 'scaling' ? undefined : v
    },
    60_000,
  )
}

describe('a scale while a VM of the cluster moves', () => {
  it('the moved VM gets the new context on its new host', async () => {
    const file = join(dir, 'base.img')
    await writeFile(file, randomBytes(1024 * 1024))
    const image = await c.request('POST', '/v1/images', { path: file, name: 'base' })
    assert.equal(image.status, 201, JSON.stringify(image.body))
    const created = await c.request('POST', '/v1/vclusters', {
      name: 'sc',
      image: image.body.id,
      count: 2,
      memoryMiB: 16,
      network: 'lan',
      site: 'west',
    })
    assert.equal(created.status, 202, JSON.stringify(created.body))
    const up = await settled('sc')
    assert.equal(up.state, 'running', JSON.stringify(up))
    const head = (up.vms as Vm[]).find((v) => v.index === 0)!
    assert.equal(head.host, a.peerId, 'site west is a alone')
    const before = await a.request('GET', `/v1/vms/${head.id}/metadata`)
    assert.equal(before.status, 200, JSON.stringify(before.body))
    assert.equal(before.body.peers.length, 1)

    const started = await a.request('POST', `/v1/vms/${head.id}/migrate`, { to: b.peerId })
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
    const moved = await b.request('GET', `/v1/vms/${head.id}/metadata`)
    assert.equal(moved.status, 200, JSON.stringify(moved.body))
    assert.equal(moved.body.peers.length, 1, 'the context came along')
    // what this test is about: the creating host has not heard of the move
    const view = (await c.request('GET', '/v1/vclusters/sc')).body
    assert.equal(view.vms.find((v: Vm) => v.id === head.id).host, a.peerId, 'c still places it on a')

    const scaled = await c.request('POST', '/v1/vclusters/sc/scale', { count: 3 })
    assert.equal(scaled.status, 202, JSON.stringify(scaled.body))
    const three = await settled('sc')
    assert.equal(three.state, 'running', JSON.stringify(three))
    assert.equal(three.vms.length, 3)

    // a passed the new context on to b: the VM sees its two peers there
    const after = await waitFor('the new context on b', async () => {
      const r = await b.request('GET', `/v1/vms/${head.id}/metadata`)
      return r.status === 200 && r.body.peers.length === 2 ? r.body : undefined
    })
    assert.deepEqual(
      after.peers.map((p: { name: string }) => p.name).sort(),
      ['sc-1', 'sc-2'],
      JSON.stringify(after),
    )
    const ctx = await b.request('GET', `/v1/vclusters/sc/context?vm=${head.name}`)
    assert.equal(ctx.status, 200, JSON.stringify(ctx.body))
    assert.equal(ctx.body.vm.host, b.peerId)
    assert.equal(ctx.body.revision, 2, 'the second handing of contexts')
    // a keeps nothing for a VM that left it
    const old = await a.request('GET', `/v1/vclusters/sc/context?vm=${head.name}`)
    assert.equal(old.status, 404, JSON.stringify(old.body))
  })
})
