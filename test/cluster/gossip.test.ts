// Gossip across real agent processes: 10 agents converge on one view of hosts and VMs, a killed agent
// is detected by every other, a restart with the same identity rejoins, and a forged state is refused.
import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { HOST_STATE_TOPIC } from '../../src/gossip/index.js'
import { createHost, type Host } from '../../src/node/p2p.js'
import { pb } from '../../src/proto/index.js'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../helpers/agent-process.js'

const N = 10
const agents: RunningAgent[] = []
let configDir: string
let rogue: Host | undefined

// Fast failure detection so the test is short; the defaults are memberlist's LAN profile.
const GOSSIP_CONFIG =
  'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n  suspicionMult: 3\n  heartbeatMs: 5000\n'

before(async () => {
  configDir = await tempDir()
  await writeFile(join(configDir, 'agent.yaml'), GOSSIP_CONFIG)
  const args = ['--config', join(configDir, 'agent.yaml'), '--log-level', 'info']
  agents.push(await startAgent({ site: 'site-a', args }))
  const seed = agents[0]!.addrs[0]!
  // Start the rest two at a time: 2 cores.
  for (let i = 1; i < N; i += 2) {
    const batch = [i, i + 1].filter((j) => j < N)
    agents.push(
      ...(await Promise.all(
        batch.map((j) => startAgent({ site: j % 2 ? 'site-b' : 'site-a', args, bootstrap: [seed] })),
      )),
    )
  }
})

after(async () => {
  await rogue?.stop()
  await Promise.all(agents.map((a) => a.stop()))
  await Promise.all([...agents.map((a) => a.dataDir), configDir].map(removeDir))
})

interface ClusterHost {
  peerId: string
  status: string
  site: string
  vmCount: number
  stateVersion?: number
}

async function cluster(a: RunningAgent): Promise<{ hosts: ClusterHost[]; counts: Record<string, number> }> {
  const res = await a.request('GET', '/v1/cluster')
  assert.equal(res.status, 200)
  return res.body
}

function live(): RunningAgent[] {
  return agents.filter((a) => a.proc.exitCode === null && a.proc.signalCode === null)
}

describe('gossip across 10 agents', () => {
  it('converges: every agent knows every host alive, with its site and state', async () => {
    const ids = agents.map((a) => a.peerId).sort()
    // Checked on the views that converged: with 150 ms probe timeouts on 2 busy cores a member can
    // be suspected for a moment afterwards, which is SWIM working, not a divergence
    let views: Awaited<ReturnType<typeof cluster>>[] = []
    await waitFor(
      'every agent to see all 10 hosts alive with a state',
      async () => {
        views = await Promise.all(agents.map(cluster))
        return views.every((v) => {
          const alive = v.hosts.filter((h) => h.status === 'alive' && h.stateVersion !== undefined)
          return JSON.stringify(alive.map((h) => h.peerId).sort()) === JSON.stringify(ids)
        })
      },
      30_000,
    )
    const view = views[5]!
    assert.equal(view.counts.alive, N)
    const a0 = view.hosts.find((h) => h.peerId === agents[0]!.peerId)
    assert.equal(a0?.site, 'site-a')
  })

  it('spreads a new VM to every agent with the right host', async () => {
    const owner = agents[3]!
    const vm = await owner.request('POST', '/v1/vms', {
      name: 'gossiped',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 64,
    })
    assert.equal(vm.status, 201)
    await waitFor(
      'every agent to locate the VM',
      async () => {
        const found = await Promise.all(agents.map((a) => a.request('GET', `/v1/cluster/vms/${vm.body.id}`)))
        return found.every((r) => r.status === 200 && r.body.host === owner.peerId && r.body.epoch === 1)
      },
      15_000,
    )
    const byName = await agents[8]!.request('GET', '/v1/cluster/vms/gossiped')
    assert.equal(byName.body.id, vm.body.id)
    assert.equal(byName.body.status, 'ok')
  })

  it('rejects a forged host state and counts it', async () => {
    const victim = agents[1]!
    rogue = await createHost({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    rogue.services.pubsub.subscribe(HOST_STATE_TOPIC)
    await rogue.dial(multiaddr(agents[2]!.addrs[0]!), { signal: AbortSignal.timeout(5000) })
    await waitFor(
      'the rogue to join the topic',
      async () => rogue!.services.pubsub.getSubscribers(HOST_STATE_TOPIC).length > 0,
    )
    // A state claiming to be the victim's, with a VM it does not run, signed by the rogue's key.
    const forged = pb.SignedHostState.encode({
      payload: pb.HostState.encode({
        peerId: peerIdFromString(victim.peerId).toMultihash().bytes,
        version: Date.now() + 10_000_000,
        site: 'evil',
        vms: [
          {
            id: 'vm-forged',
            name: 'forged',
            vcpus: 1,
            memoryMib: 1,
            diskMib: 1,
            state: 'running',
            epoch: 99,
          },
        ],
        timestampMs: Date.now(),
      }).finish(),
      signature: new Uint8Array(64).fill(7),
    }).finish()
    await rogue.services.pubsub.publish(HOST_STATE_TOPIC, forged)
    await rogue.services.pubsub.publish(HOST_STATE_TOPIC, new Uint8Array([1, 2, 3, 4, 5]))
    await waitFor('an agent to count the forged state', async () => {
      const m = await agents[2]!.request('GET', '/metrics')
      return (
        /skymesh_gossip_dropped_total\{reason="bad-signature",source="gossip"\} [1-9]/.test(m.body) &&
        /skymesh_gossip_dropped_total\{reason="malformed",source="gossip"\} [1-9]/.test(m.body)
      )
    })
    for (const a of agents) {
      assert.equal((await a.request('GET', '/v1/cluster/vms/vm-forged')).status, 404)
      const v = (await cluster(a)).hosts.find((h) => h.peerId === victim.peerId)
      assert.notEqual(v?.site, 'evil')
    }
    await rogue.stop()
    rogue = undefined
  })

  it('detects a killed agent everywhere, shows its VMs host-lost, and lets it rejoin', async () => {
    const victim = agents[3]!
    const vmId = ((await victim.request('GET', '/v1/vms')).body.vms[0] as { id: string }).id
    await victim.kill9()
    const others = live()
    assert.equal(others.length, N - 1)
    await waitFor(
      'every other agent to declare it dead',
      async () => {
        const views = await Promise.all(others.map(cluster))
        return views.every((v) => v.hosts.find((h) => h.peerId === victim.peerId)?.status === 'dead')
      },
      30_000,
    )
    const lost = await others[0]!.request('GET', `/v1/cluster/vms/${vmId}`)
    assert.equal(lost.body.status, 'host-lost')
    assert.equal(lost.body.host, victim.peerId)

    // Same data dir, so same identity: it rejoins and is alive everywhere again.
    const again = await startAgent({
      dataDir: victim.dataDir,
      site: 'site-b',
      args: ['--config', join(configDir, 'agent.yaml'), '--log-level', 'info'],
      bootstrap: [agents[0]!.addrs[0]!],
    })
    agents[3] = again
    assert.equal(again.peerId, victim.peerId)
    await waitFor(
      'every agent to see it alive again',
      async () => {
        const views = await Promise.all(live().map(cluster))
        return views.every((v) => v.hosts.find((h) => h.peerId === again.peerId)?.status === 'alive')
      },
      30_000,
    )
    // Its VM crashed with it (kill -9): the mesh shows it back on its host, no longer host-lost.
    await waitFor('the VM to be located on its host again', async () => {
      const r = await agents[0]!.request('GET', `/v1/cluster/vms/${vmId}`)
      return r.status === 200 && r.body.status === 'ok' && r.body.state === 'crashed'
    })
  })
})
