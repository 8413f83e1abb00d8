// A VM migrates between two hosts behind two different NATs (network namespaces, netns.ts): their
// libp2p connection is relayed (DCUtR cannot punch, see nat-punch.test.ts), so the source asks
// skymesh's own hole punch (src/transfer/punch.ts) for the data channel: both learn their public
// address from the relay ("what is my address"), swap it and a fixed port over the relayed control
// stream, connect by TCP simultaneous open and run TLS-PSK over it. The migration says so.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, tempDir, waitFor } from '../helpers/agent-process.js'
import { NetnsMesh, netnsUnavailable } from '../helpers/netns.js'

const why = await netnsUnavailable()
if (why) console.log(`# nat-punch-migrate: running no namespace tests here: ${why}`)

const GOSSIP = 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 200\n  suspicionMult: 4\n'
const RELAY_CONFIG = `${GOSSIP}bootstrapIntervalSec: 1\nnat:\n  reachability: public\nrelay: true\ncapacity:\n  memoryMiB: 4096\n`
const NATED_CONFIG = `${GOSSIP}bootstrapIntervalSec: 1\nnat:\n  reachability: private\n  directTimeoutMs: 1000\n`

type Peer = { peerId: string; connection?: string }

describe('a VM migrates between two NATed hosts over a hole-punched TLS channel', { skip: why }, () => {
  let mesh: NetnsMesh
  let dir: string
  let relay: RunningAgent
  let east: RunningAgent
  let west: RunningAgent

  before(async () => {
    dir = await tempDir('skymesh-punchmig-')
    await writeFile(join(dir, 'relay.yaml'), RELAY_CONFIG)
    await writeFile(join(dir, 'nated.yaml'), NATED_CONFIG)
    mesh = await NetnsMesh.create([
      { name: 'pub', hosts: 1 },
      { name: 'east', hosts: 1, nat: true },
      { name: 'west', hosts: 1, nat: true },
    ])
    const pubHost = mesh.hostsOf('pub')[0]!
    relay = await mesh.startAgent(pubHost, {
      dataDir: join(dir, 'relay'),
      args: ['--config', join(dir, 'relay.yaml')],
    })
    const bootstrap = relay.addrs.filter((a) => a.includes(`/ip4/${pubHost.ip}/`)).slice(0, 1)
    const args = ['--config', join(dir, 'nated.yaml')]
    east = await mesh.startAgent(mesh.hostsOf('east')[0]!, { dataDir: join(dir, 'east'), bootstrap, args })
    west = await mesh.startAgent(mesh.hostsOf('west')[0]!, { dataDir: join(dir, 'west'), bootstrap, args })
  })

  after(async () => {
    await Promise.all([relay, east, west].filter(Boolean).map((a) => a.stop().catch(() => undefined)))
    await mesh?.destroy()
    if (dir) await removeDir(dir)
  })

  it('east -> west and back: link hole-punched, data over TLS-PSK, same VM', async (t) => {
    const kindOf = async (a: RunningAgent, peer: string) =>
      ((await a.request('GET', '/v1/peers')).body.peers as Peer[]).find((p) => p.peerId === peer)
    await waitFor(
      'east and west connected through the relay',
      async () =>
        (await kindOf(east, west.peerId))?.connection === 'relayed' &&
        (await kindOf(west, east.peerId))?.connection === 'relayed',
      60_000,
    )
    const r = await east.request('POST', '/v1/vms', {
      name: 'punchy',
      vcpus: 1,
      memoryMiB: 32,
      diskMiB: 64,
      workload: { dirtyMiBps: 2, hotSetMiB: 8 },
    })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    const id = r.body.id as string
    const migrate = async (from: RunningAgent, to: RunningAgent) => {
      await waitFor(
        'the destination knows the VM',
        async () => (await to.request('GET', `/v1/cluster/vms/${id}`)).body.host === from.peerId,
        30_000,
      )
      await from.request('POST', `/v1/vms/${id}/pause`)
      const paused = (await from.request('GET', `/v1/vms/${id}/digest`)).body
      const started = await from.request('POST', `/v1/vms/${id}/migrate`, { to: to.peerId, mode: 'precopy' })
      assert.equal(started.status, 202, JSON.stringify(started.body))
      const m = await waitFor(
        'the migration to end',
        async () => {
          const x = await from.request('GET', `/v1/migrations/${started.body.id}`)
          return ['done', 'failed', 'cancelled'].includes(x.body.phase) ? x.body : undefined
        },
        90_000,
      )
      t.diagnostic(`link ${m.link} (${m.linkNote}); channel ${m.channel} (${m.channelNote}); ${m.totalMs} ms`)
      assert.equal(m.phase, 'done', JSON.stringify(m))
      assert.equal(m.link, 'hole-punched', JSON.stringify(m))
      assert.equal(m.channel, 'direct-tls', JSON.stringify(m))
      assert.match(String(m.channelNote), /^hole-punched to /)
      assert.equal((await to.request('GET', `/v1/vms/${id}/digest`)).body.combined, paused.combined)
      assert.equal((await from.request('GET', `/v1/vms/${id}`)).status, 404)
      await to.request('POST', `/v1/vms/${id}/resume`)
    }
    await migrate(east, west)
    await migrate(west, east)
    // Each shows the other as hole-punched (for bulk data; libp2p control stays on the relay)
    assert.equal((await kindOf(east, west.peerId))?.connection, 'hole-punched')
    assert.equal((await kindOf(west, east.peerId))?.connection, 'hole-punched')
  })
})
