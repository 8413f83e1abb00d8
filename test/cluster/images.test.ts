// Images between real agent processes: an image added on one host is pushed to all the others down a
// pipeline chain and every host holds it with the same chunk hashes; a host killed mid-push is routed
// around and resumes later from the chunks it kept; a corrupted chunk from one source is refused and
// fetched from another holder. Links are capped (images.linkMiBps) so a push lasts long enough to cut.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  type RunningAgent,
  removeDir,
  runCli,
  startAgent,
  tempDir,
  waitFor,
} from '../helpers/agent-process.js'

let dir: string
const agents = new Map<string, RunningAgent>()
let config: string
let args: string[]
const IMAGE_MIB = 24

interface PushHost {
  peerId: string
  parent?: string
  state: string
  have: number
  total: number
  badChunks: number
}
interface Push {
  id: string
  image: string
  state: string
  hosts: PushHost[]
}

const agent = (name: string) => agents.get(name)!

before(async () => {
  dir = await tempDir('skymesh-images-')
  config = join(dir, 'agent.yaml')
  await writeFile(
    config,
    [
      'gossip:',
      '  probeIntervalMs: 300',
      '  probeTimeoutMs: 150',
      '  suspicionMult: 3',
      'images:',
      '  linkMiBps: 8',
      '',
    ].join('\n'),
  )
  args = ['--config', config, '--log-level', 'info']
  agents.set('a', await startAgent({ dataDir: join(dir, 'a'), site: 'one', args }))
  for (const n of ['b', 'c', 'd']) {
    agents.set(
      n,
      await startAgent({ dataDir: join(dir, n), site: 'one', args, bootstrap: [agent('a').addrs[0]!] }),
    )
  }
  await waitFor(
    'the mesh to form',
    async () => (await agent('a').request('GET', '/v1/cluster')).body.counts.alive === 4,
    30_000,
  )
})

after(async () => {
  for (const [name, x] of agents) {
    if (process.env.SKYMESH_TEST_DEBUG)
      await writeFile(`${process.env.SKYMESH_TEST_DEBUG}-${name}.log`, x.output())
  }
  await Promise.all([...agents.values()].map((x) => x.stop()))
  await removeDir(dir)
})

async function push(from: RunningAgent, image: string, to: 'all' | string[], fanout = 1): Promise<Push> {
  const r = await from.request('POST', `/v1/images/${image}/distribute`, { to, fanout })
  assert.equal(r.status, 202, JSON.stringify(r.body))
  return r.body as Push
}

async function pushView(from: RunningAgent, image: string): Promise<Push> {
  return (await from.request('GET', `/v1/images/${image}/distribute`)).body as Push
}

async function finished(from: RunningAgent, image: string): Promise<Push> {
  return waitFor(
    'the push to end',
    async () => {
      const v = await pushView(from, image)
      return v.state !== 'running' ? v : undefined
    },
    90_000,
  )
}

describe('images across agents', () => {
  let imageId = ''
  let victim = ''

  it('refuses bad input and changes nothing', async () => {
    const a = agent('a')
    let r = await a.request('POST', '/v1/images', { path: 'relative/file' })
    assert.equal(r.status, 400)
    r = await a.request('POST', '/v1/images', { path: join(dir, 'nope.img') })
    assert.equal(r.status, 400)
    assert.match(r.body.error.message, /cannot open/)
    r = await a.request('POST', `/v1/images/${'ab'.repeat(32)}/distribute`, { to: 'all' })
    assert.equal(r.status, 404)
    assert.deepEqual((await a.request('GET', '/v1/images')).body.images, [])
  })

  it('adds an image on one host and pushes it down a chain to all; a host killed mid-push is routed around', async () => {
    const file = join(dir, 'base.img')
    await writeFile(file, randomBytes(IMAGE_MIB * 1024 * 1024))
    const added = await runCli([
      'image',
      'add',
      file,
      '--name',
      'base',
      '--json',
      '--data-dir',
      agent('a').dataDir,
    ])
    assert.equal(added.code, 0, added.stderr)
    const img = JSON.parse(added.stdout)
    imageId = img.id
    assert.equal(img.chunks, IMAGE_MIB)
    assert.equal(img.complete, true)

    const started = await push(agent('a'), imageId, 'all', 1)
    assert.equal(started.hosts.length, 3)
    // The chain's first host (pulls from a): kill it once it holds some chunks but not all.
    const first = started.hosts.find((h) => h.parent === agent('a').peerId)!
    victim = [...agents.entries()].find(([, x]) => x.peerId === first.peerId)![0]
    await waitFor(
      'the first host of the chain to hold some chunks',
      async () => {
        const h = (await pushView(agent('a'), imageId)).hosts.find((x) => x.peerId === first.peerId)!
        return h.have >= 3
      },
      30_000,
    )
    await agent(victim).kill9()
    const view = await finished(agent('a'), imageId)
    assert.equal(view.state, 'partial', JSON.stringify(view))
    for (const h of view.hosts) {
      if (h.peerId === first.peerId) assert.equal(h.state, 'failed')
      else {
        assert.equal(h.state, 'done', JSON.stringify(h))
        assert.equal(h.have, IMAGE_MIB)
        // routed around: nobody's parent is the dead host any more
        assert.notEqual(h.parent, first.peerId)
      }
    }
    // Every live host holds the same image (same id = same manifest = same chunk hashes), each chunk re-hashed.
    for (const [name, x] of agents) {
      if (name === victim) continue
      const v = await x.request('POST', `/v1/images/${imageId}/verify`, {})
      assert.equal(v.status, 200, `${name}: ${JSON.stringify(v.body)}`)
      assert.deepEqual(v.body, { id: imageId, ok: true, bad: [] })
    }
    // and gossip tells every host who holds it
    await waitFor('gossip to list 3 holders', async () => {
      const other = [...agents.entries()].find(([n]) => n !== victim && n !== 'a')![1]
      const r = await other.request('GET', `/v1/images/${imageId}`)
      return r.body.holders?.length === 3
    })
  })

  it('the killed host, restarted, resumes from the chunks it kept', async () => {
    const old = agent(victim)
    const restarted = await startAgent({
      dataDir: old.dataDir,
      site: 'one',
      args,
      bootstrap: [agent('a').addrs[0]!],
    })
    agents.set(victim, restarted)
    const before = (await restarted.request('GET', `/v1/images/${imageId}`)).body
    assert.equal(before.complete, false)
    assert.ok(before.have >= 3, JSON.stringify(before))
    await waitFor(
      'the restarted host to be alive',
      async () => (await agent('a').request('GET', '/v1/cluster')).body.counts.alive === 4,
      30_000,
    )
    await push(agent('a'), imageId, [restarted.peerId])
    const view = await finished(agent('a'), imageId)
    assert.equal(view.state, 'done', JSON.stringify(view))
    assert.deepEqual((await restarted.request('POST', `/v1/images/${imageId}/verify`, {})).body.ok, true)
  })

  it('a virtual cluster comes up spread over the hosts, each VM with its context; it is scaled up and down, packed, removed', async () => {
    const a = agent('a')
    // does not fit: refused before anything starts
    let r = await a.request('POST', '/v1/vclusters', {
      name: 'huge',
      image: imageId,
      count: 4,
      memoryMiB: 1_000_000,
    })
    assert.equal(r.status, 409, JSON.stringify(r.body))
    r = await a.request('POST', '/v1/vclusters', { name: 'bad name!', image: imageId, count: 1 })
    assert.equal(r.status, 400)
    for (const x of agents.values()) assert.deepEqual((await x.request('GET', '/v1/vms')).body.vms, [])

    const cli = async (args: string[]) => {
      const r = await runCli([...args, '--json', '--data-dir', a.dataDir], { timeoutMs: 90_000 })
      assert.equal(r.code, 0, r.stderr)
      return JSON.parse(r.stdout)
    }
    const ctxFile = async (v: { id: string; host: string }) => {
      const owner = [...agents.values()].find((x) => x.peerId === v.host)!
      return JSON.parse(await readFile(join(owner.dataDir, 'vms', v.id, 'context.json'), 'utf8'))
    }
    // No live host in that site: refused, nothing started.
    r = await a.request('POST', '/v1/vclusters', { name: 'far', image: imageId, count: 1, site: 'nowhere' })
    assert.equal(r.status, 400, JSON.stringify(r.body))
    assert.match(r.body.error.message, /site/)

    const c = await cli([
      'cluster',
      'create',
      'web',
      '--image',
      imageId.slice(0, 12),
      '--count',
      '3',
      '--memory',
      '16',
      '--spread',
      '--site',
      'one',
      '--user-data',
      'role=web',
    ])
    assert.equal(c.state, 'running', JSON.stringify(c))
    assert.equal(c.vms.length, 3)
    assert.equal(new Set(c.vms.map((v: { host: string }) => v.host)).size, 3, 'spread over 3 hosts')
    assert.deepEqual(
      c.vms.map((v: { role: string }) => v.role),
      ['head', 'worker', 'worker'],
    )
    // The broker: each VM's context names it and its two peers, on the creating host and in the VM's dir.
    const ctx = (await a.request('GET', '/v1/vclusters/web/context?vm=web-1')).body
    assert.equal(ctx.vm.name, 'web-1')
    assert.equal(ctx.userData, 'role=web')
    assert.deepEqual(ctx.peers.map((p: { name: string }) => p.name).sort(), ['web-0', 'web-2'])
    for (const v of c.vms) {
      const owner = [...agents.values()].find((x) => x.peerId === v.host)!
      const vm = (await owner.request('GET', `/v1/vms/${v.id}`)).body
      assert.equal(vm.image, imageId)
      assert.equal(vm.state, 'running')
      const file = await ctxFile(v)
      assert.equal(file.vm.name, v.name)
      assert.equal(file.peers.length, 2)
      const served = (await owner.request('GET', `/v1/vclusters/web/context?vm=${v.name}`)).body
      assert.deepEqual(served, file)
    }

    // Scaled up: two more VMs, and every VM's context now names the four others.
    const up = await cli(['cluster', 'scale', 'web', '5'])
    assert.equal(up.state, 'running', JSON.stringify(up))
    assert.deepEqual(
      up.vms.map((v: { name: string }) => v.name),
      ['web-0', 'web-1', 'web-2', 'web-3', 'web-4'],
    )
    assert.equal(new Set(up.vms.map((v: { host: string }) => v.host)).size, 4, 'spread over all 4 hosts')
    for (const v of up.vms) assert.equal((await ctxFile(v)).peers.length, 4, v.name)

    // Scaled down: the last three go, the rest learn it.
    const down = await cli(['cluster', 'scale', 'web', '2'])
    assert.equal(down.state, 'running', JSON.stringify(down))
    assert.deepEqual(
      down.vms.map((v: { name: string }) => v.name),
      ['web-0', 'web-1'],
    )
    for (const v of up.vms.slice(2)) {
      const owner = [...agents.values()].find((x) => x.peerId === v.host)!
      assert.equal((await owner.request('GET', `/v1/vms/${v.id}`)).status, 404, `${v.name} removed`)
    }
    const head = await ctxFile(down.vms[0])
    assert.deepEqual(
      head.peers.map((p: { name: string }) => p.name),
      ['web-1'],
    )
    const listed = await cli(['cluster', 'ls'])
    assert.deepEqual(
      listed.vclusters.map((x: { name: string; state: string }) => [x.name, x.state]),
      [['web', 'running']],
    )
    assert.equal((await cli(['cluster', 'show', 'web'])).vms.length, 2)

    // Removed with its VMs.
    assert.equal((await a.request('DELETE', '/v1/vclusters/web')).status, 204)
    for (const x of agents.values()) assert.deepEqual((await x.request('GET', '/v1/vms')).body.vms, [])

    // Packed: as few hosts as fit (all of them fit on one).
    const packed = await cli([
      'cluster',
      'create',
      'dense',
      '--image',
      imageId.slice(0, 12),
      '--count',
      '3',
      '--memory',
      '16',
      '--pack',
    ])
    assert.equal(packed.state, 'running', JSON.stringify(packed))
    assert.equal(new Set(packed.vms.map((v: { host: string }) => v.host)).size, 1, 'packed on one host')
    assert.equal((await a.request('DELETE', '/v1/vclusters/dense')).status, 204)
    for (const x of agents.values()) assert.deepEqual((await x.request('GET', '/v1/vms')).body.vms, [])
  })

  it('a corrupted chunk from one source is refused and fetched from another holder', async () => {
    const a = agent('a')
    const d = agent(victim === 'd' ? 'c' : 'd')
    // d drops the image; a's copy of chunk 5 is damaged on disk (a serves what it has, d checks).
    assert.equal((await d.request('DELETE', `/v1/images/${imageId}`)).status, 204)
    // a picks the push's targets from its gossip view: wait until it knows d no longer holds the image
    await waitFor('a to learn that d dropped the image', async () => {
      const r = await a.request('GET', `/v1/images/${imageId}`)
      return r.status === 200 && !(r.body.holders as string[]).includes(d.peerId)
    })
    const manifestChunk = join(a.dataDir, 'images', 'chunks')
    const files = await import('node:fs/promises').then((fs) => fs.readdir(manifestChunk))
    // find the file of chunk 5 by re-hashing is costly; damage every chunk file but keep sizes: all of a is bad
    for (const f of files.slice(0, 3)) {
      const p = join(manifestChunk, f)
      const data = await readFile(p)
      data.writeUInt8(data.readUInt8(100) ^ 0xff, 100)
      await writeFile(p, data)
    }
    const verifyA = await a.request('POST', `/v1/images/${imageId}/verify`, {})
    assert.equal(verifyA.body.ok, false)
    await push(a, imageId, [d.peerId])
    const view = await finished(a, imageId)
    const h = view.hosts[0]!
    assert.equal(view.state, 'done', JSON.stringify(view))
    assert.ok(h.badChunks >= 1, JSON.stringify(h))
    const v = await d.request('POST', `/v1/images/${imageId}/verify`, {})
    assert.deepEqual(v.body, { id: imageId, ok: true, bad: [] })
  })
})
