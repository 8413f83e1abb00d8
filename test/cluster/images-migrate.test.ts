// Migrating a VM whose disk is a copy-on-write layer over an image: the base's blocks never cross the
// wire. The destination, which lacks the image, fetches it from the mesh by its id first (a pull like
// any other, verified chunk by chunk), builds the VM's disk as a layer over its own copy, and the
// migration carries only the source's layer; the way back finds the image there already. A source
// whose holding gossip has not told yet (a host that just restarted, here one that publishes its state
// only every minute) is asked for the image itself: it holds it, or it could not run the VM.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../helpers/agent-process.js'

const BASE_MIB = 64
const MiB = 1024 * 1024
let dir: string
let a: RunningAgent
let b: RunningAgent

before(async () => {
  dir = await tempDir('skymesh-images-migrate-')
  const config = join(dir, 'agent.yaml')
  await writeFile(config, 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n')
  const args = ['--config', config, '--log-level', 'info']
  a = await startAgent({ dataDir: join(dir, 'a'), site: 'one', args })
  b = await startAgent({ dataDir: join(dir, 'b'), site: 'one', args, bootstrap: [a.addrs[0]!] })
  await waitFor(
    'the mesh',
    async () => (await a.request('GET', '/v1/cluster')).body.counts.alive === 2,
    30_000,
  )
})

after(async () => {
  await Promise.all([a, b].filter(Boolean).map((x) => x.stop()))
  await removeDir(dir)
})

async function migrate(from: RunningAgent, vm: string, to: RunningAgent) {
  const started = await from.request('POST', `/v1/vms/${vm}/migrate`, { to: to.peerId, mode: 'precopy' })
  assert.equal(started.status, 202, JSON.stringify(started.body))
  return waitFor(
    'the migration to end',
    async () => {
      const r = await from.request('GET', `/v1/migrations/${started.body.id}`)
      return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
    },
    90_000,
  )
}

describe('migrating a VM over a base image', () => {
  it('sends only the layer the VM wrote; the destination fetches the base by hash and uses its own copy', async () => {
    const file = join(dir, 'base.img')
    await writeFile(file, randomBytes(BASE_MIB * MiB))
    const img = await a.request('POST', '/v1/images', { path: file, name: 'base' })
    assert.equal(img.status, 201, JSON.stringify(img.body))
    const image = img.body.id as string
    await waitFor(
      'gossip to say a holds the image',
      async () =>
        ((await b.request('GET', '/v1/cluster')).body.hosts as { peerId: string }[]).length === 2 &&
        ((await a.request('GET', `/v1/images/${image}`)).body.holders ?? []).includes(a.peerId),
    )
    assert.equal((await b.request('GET', `/v1/images/${image}`)).status, 404, 'b starts without the image')

    // The guest writes a 4 MiB hot set of its disk (its own layer); memory stays zero.
    const made = await a.request('POST', '/v1/vms', {
      name: 'cow',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 96,
      image,
      workload: { dirtyMiBps: 0, hotSetMiB: 4, diskWriteMiBps: 16, cpu: 0 },
    })
    assert.equal(made.status, 201, JSON.stringify(made.body))
    const vm = made.body.id as string
    await new Promise((r) => setTimeout(r, 1500))
    assert.equal((await a.request('POST', `/v1/vms/${vm}/pause`)).status, 200)
    const before = (await a.request('GET', `/v1/vms/${vm}/digest`)).body

    const m = await migrate(a, vm, b)
    assert.equal(m.phase, 'done', JSON.stringify(m.error))
    // At most the 4 MiB layer plus framing: a small fraction of the 64 MiB base.
    assert.ok(m.wireBytes < 0.15 * BASE_MIB * MiB, `wire bytes ${m.wireBytes} (blocks ${m.blocksSent})`)
    assert.ok(m.blocksSent <= 4 * 16 + 1, `blocks sent ${m.blocksSent}`)

    // b fetched the image by its id (verified), and the VM's disk there is a layer over it.
    const there = await b.request('GET', `/v1/images/${image}`)
    assert.equal(there.status, 200)
    assert.equal(there.body.complete, true)
    assert.equal((await b.request('POST', `/v1/images/${image}/verify`, {})).body.ok, true)
    const rec = (await b.request('GET', `/v1/vms/${vm}`)).body
    assert.equal(rec.image, image)
    const after = (await b.request('GET', `/v1/vms/${vm}/digest`)).body
    assert.equal(after.disk, before.disk)
    assert.equal(after.memory, before.memory)
    // The image is in use by the VM on b: it cannot be removed there.
    assert.equal((await b.request('DELETE', `/v1/images/${image}`)).status, 409)

    // And back: a still holds the image, so again only the layer moves.
    const back = await migrate(b, vm, a)
    assert.equal(back.phase, 'done', JSON.stringify(back.error))
    assert.ok(back.wireBytes < 0.15 * BASE_MIB * MiB, `wire bytes back ${back.wireBytes}`)
    assert.equal((await a.request('GET', `/v1/vms/${vm}/digest`)).body.disk, before.disk)
    assert.equal((await a.request('DELETE', `/v1/vms/${vm}`)).status, 204)
  })

  it('the destination fetches the base from the source even before gossip says the source holds it', async () => {
    // q publishes its state once a minute: nobody learns from gossip that it holds the image
    const quiet = join(dir, 'quiet.yaml')
    await writeFile(
      quiet,
      'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n  debounceMs: 60000\n  heartbeatMs: 3600000\n  syncIntervalMs: 0\n',
    )
    const q = await startAgent({
      dataDir: join(dir, 'q'),
      site: 'one',
      args: ['--config', quiet, '--log-level', 'info'],
      bootstrap: [a.addrs[0]!],
    })
    try {
      await waitFor(
        'q in the mesh',
        async () => (await q.request('GET', '/v1/cluster')).body.counts.alive === 3,
        30_000,
      )
      const file = join(dir, 'quiet-base.img')
      await writeFile(file, randomBytes(16 * MiB))
      const img = await q.request('POST', '/v1/images', { path: file, name: 'quiet-base' })
      assert.equal(img.status, 201, JSON.stringify(img.body))
      const image = img.body.id as string
      const made = await q.request('POST', '/v1/vms', {
        name: 'quiet-cow',
        vcpus: 1,
        memoryMiB: 16,
        diskMiB: 32,
        image,
      })
      assert.equal(made.status, 201, JSON.stringify(made.body))
      const vm = made.body.id as string
      // what this test is about: b does not know that q holds the image
      const seen = await b.request('GET', `/v1/images/${image}`)
      assert.ok(
        seen.status === 404 || !(seen.body.holders ?? []).includes(q.peerId),
        JSON.stringify(seen.body),
      )

      const m = await migrate(q, vm, b)
      assert.equal(m.phase, 'done', JSON.stringify(m.error))
      // b fetched the base from q (not a full disk copy) and the disk there is a layer over it
      const there = await b.request('GET', `/v1/images/${image}`)
      assert.equal(there.status, 200, JSON.stringify(there.body))
      assert.equal(there.body.complete, true)
      assert.equal((await b.request('GET', `/v1/vms/${vm}`)).body.image, image)
      assert.ok(m.wireBytes < 0.25 * 16 * MiB, `wire bytes ${m.wireBytes}: the base crossed in the migration`)
      assert.equal((await b.request('DELETE', `/v1/vms/${vm}`)).status, 204)
    } finally {
      await q.stop()
    }
  })
})
