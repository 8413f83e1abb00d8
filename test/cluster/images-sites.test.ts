// #10: image chunks cross each inter-site link once and are re-served inside the site. Two sites in
// network namespaces (one host in west, three in east, each site behind its own router); an image
// pushed from west to every host of east enters east's wide-area link about once — the push makes one
// east host the site's gateway and the others pull from it inside the site — counted by the router's
// interface counters (bytes, not speed).
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, tempDir, waitFor } from '../helpers/agent-process.js'
import { NetnsMesh, netnsUnavailable } from '../helpers/netns.js'

const why = await netnsUnavailable()
const IMAGE_MIB = 24
const MiB = 1024 * 1024

describe('an image pushed to another site crosses its link once', { skip: why }, () => {
  let mesh: NetnsMesh
  let dir: string
  let west: RunningAgent
  const east: RunningAgent[] = []

  before(async () => {
    dir = await tempDir('skymesh-images-sites-')
    const config = join(dir, 'agent.yaml')
    await writeFile(config, 'gossip:\n  probeIntervalMs: 500\n  probeTimeoutMs: 250\n')
    const args = ['--config', config, '--log-level', 'info']
    mesh = await NetnsMesh.create([
      { name: 'west', hosts: 1 },
      { name: 'east', hosts: 3 },
    ])
    const w = mesh.hostsOf('west')[0]!
    west = await mesh.startAgent(w, { dataDir: join(dir, 'west'), args })
    const bootstrap = west.addrs.filter((a) => a.includes(`/ip4/${w.ip}/`)).slice(0, 1)
    for (const h of mesh.hostsOf('east'))
      east.push(await mesh.startAgent(h, { dataDir: join(dir, `east${h.index}`), args, bootstrap }))
    await waitFor(
      'the mesh of 4',
      async () => (await west.request('GET', '/v1/cluster')).body.counts.alive === 4,
      60_000,
    )
  })

  after(async () => {
    await Promise.all([west, ...east].filter(Boolean).map((x) => x.stop().catch(() => undefined)))
    await mesh?.destroy()
    if (dir) await removeDir(dir)
  })

  it('the bytes entering the other site are about one copy of the image', async () => {
    const file = join(dir, 'image.img')
    await writeFile(file, randomBytes(IMAGE_MIB * MiB))
    const img = await west.request('POST', '/v1/images', { path: file, name: 'sites' })
    assert.equal(img.status, 201, JSON.stringify(img.body))
    const id = img.body.id as string

    // Only the west agent is asked while the push runs: the test's own requests stay off east's link.
    const before = await mesh.siteLinkBytes('east')
    const started = await west.request('POST', `/v1/images/${id}/distribute`, {
      to: east.map((e) => e.peerId),
    })
    assert.equal(started.status, 202, JSON.stringify(started.body))
    const view = await waitFor(
      'the push to end',
      async () => {
        const v = (await west.request('GET', `/v1/images/${id}/distribute`)).body
        return v.state !== 'running' ? v : undefined
      },
      120_000,
    )
    const afterPush = await mesh.siteLinkBytes('east')
    assert.equal(view.state, 'done', JSON.stringify(view.hosts))
    // One east host is the gateway (its parent is in west); the others pull inside east.
    const parents = (view.hosts as { peerId: string; parent?: string }[]).map((h) => h.parent)
    assert.equal(parents.filter((p) => p === west.peerId).length, 1, JSON.stringify(view.hosts))

    const entered = afterPush.in - before.in
    const size = IMAGE_MIB * MiB
    assert.ok(entered >= size, `only ${entered} bytes entered east for a ${size}-byte image`)
    assert.ok(
      entered <= 1.5 * size,
      `${(entered / size).toFixed(2)} copies of the image entered east (${entered} bytes), more than 1.5`,
    )
    for (const e of east) assert.equal((await e.request('POST', `/v1/images/${id}/verify`, {})).body.ok, true)
  })
})
