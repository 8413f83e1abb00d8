// Hosts that can only be reached through a relay, on loopback (no root needed): two agents listen on
// `/p2p-circuit` alone (no direct address at all), a third is their relay. They form one mesh, the
// pair is connected `relayed`, and a VM migrates between them over the relay and says so. The same
// behind real NAT routers: nat.test.ts.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../helpers/agent-process.js'
import { migrateAndWait, peerOf, TEST_GOSSIP, waitConnected } from '../helpers/nat-topology.js'

const GOSSIP = TEST_GOSSIP

type Host = { status: string }

describe('agents reachable only through a relay (loopback)', () => {
  let dir: string
  let relay: RunningAgent
  let a: RunningAgent
  let b: RunningAgent

  before(async () => {
    dir = await tempDir('skymesh-relay-')
    await writeFile(join(dir, 'relay.yaml'), `${GOSSIP}nat:\n  reachability: public\nrelay: true\n`)
    await writeFile(
      join(dir, 'hidden.yaml'),
      `${GOSSIP}bootstrapIntervalSec: 1\nnat:\n  directTimeoutMs: 500\n`,
    )
    relay = await startAgent({
      dataDir: join(dir, 'relay'),
      site: 'pub',
      args: ['--config', join(dir, 'relay.yaml'), '--log-level', 'info'],
    })
    const opts = (name: string) => ({
      dataDir: join(dir, name),
      site: name,
      listen: '/p2p-circuit',
      bootstrap: [relay.addrs[0]!],
      args: ['--config', join(dir, 'hidden.yaml'), '--log-level', 'info'],
    })
    a = await startAgent(opts('a'))
    b = await startAgent(opts('b'))
  })

  after(async () => {
    await Promise.all([relay, a, b].filter(Boolean).map((x) => x.stop().catch(() => undefined)))
    if (dir) await removeDir(dir)
  })

  it('forms one mesh, the hidden pair connected through the relay', async () => {
    for (const x of [relay, a, b]) {
      await waitFor(
        `${x.peerId} sees 3 alive hosts`,
        async () =>
          ((await x.request('GET', '/v1/cluster')).body.hosts as Host[]).filter((h) => h.status === 'alive')
            .length === 3,
        60_000,
      )
    }
    await waitConnected(a, b, ['relayed'], 30_000)
    assert.equal((await peerOf(a, relay.peerId))?.connection, 'direct')
  })

  it('a VM migrates from a to b over the relay', async () => {
    const r = await a.request('POST', '/v1/vms', { name: 'hidden', vcpus: 1, memoryMiB: 32, diskMiB: 64 })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    const id = r.body.id as string
    const digest = (await a.request('GET', `/v1/vms/${id}/digest`)).body
    await a.request('POST', `/v1/vms/${id}/pause`)
    const paused = (await a.request('GET', `/v1/vms/${id}/digest`)).body
    assert.ok(digest.combined)
    const m = await migrateAndWait(a, b, id)
    assert.equal(m.phase, 'done', JSON.stringify(m))
    // Over the relay, or over skymesh's own hole punch (on loopback nothing stands in its way)
    assert.ok(['relayed', 'hole-punched'].includes(m.link), JSON.stringify(m))
    if (m.link === 'relayed') assert.match(m.linkNote, /no direct connection/)
    assert.equal((await b.request('GET', `/v1/vms/${id}/digest`)).body.combined, paused.combined)
  })
})
