// Hosts behind NAT (network namespaces, see netns.ts): a public relay host and two hosts, each in
// its own site behind a NAT router that refuses inbound connections. The NATed hosts reach each
// other only through the relay (circuit relay v2; hole punching cannot open TCP through these NATs,
// but a `hole-punched` connection would count too), the mesh converges, a VM migrates between the
// NATed hosts and says it ran over the relay (or skymesh's own punch), and once the NATs take random
// ports (no punch gets through) one too big for the relay's limits is refused at once with the reason. GET /v1/sites shows the three sites with their hosts and measured round trips.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { sitesTables } from '../../src/cli/commands/sites.js'
import { type RunningAgent, waitFor } from '../helpers/agent-process.js'
import {
  migrateAndWait,
  movePausedVm,
  type NatTopology,
  peerOf,
  randomizeNatPorts,
  startNatTopology,
  TEST_GOSSIP,
  waitConnected,
} from '../helpers/nat-topology.js'
import { netnsUnavailable } from '../helpers/netns.js'

const why = await netnsUnavailable()
if (why) console.log(`# nat: running no namespace tests here: ${why}`)

const GOSSIP = `${TEST_GOSSIP}  heartbeatMs: 2000\n`
const RELAY_LIMIT_MIB = 256
const RELAY_CONFIG = `${GOSSIP}bootstrapIntervalSec: 1\nnat:\n  reachability: public\nrelay:\n  dataLimitMiB: ${RELAY_LIMIT_MIB}\n  durationLimitSec: 600\n`
const NATED_CONFIG = `${GOSSIP}bootstrapIntervalSec: 1\nnat:\n  reachability: private\n  directTimeoutMs: 2000\n`

type Host = { peerId: string; site: string; status: string }

describe('hosts behind NAT reach each other through a relay', { skip: why }, () => {
  let n: NatTopology
  let mesh: NatTopology['mesh']
  let relay: RunningAgent
  let east: RunningAgent
  let west: RunningAgent

  before(async () => {
    n = await startNatTopology({
      prefix: 'skymesh-nat-',
      relayConfig: RELAY_CONFIG,
      natedConfig: NATED_CONFIG,
    })
    ;({ mesh, relay, east, west } = n)
  })

  after(async () => {
    await n?.stop()
  })

  it('the NAT refuses a direct connection into its site', async () => {
    const eastHost = mesh.hostsOf('east')[0]!
    const westHost = mesh.hostsOf('west')[0]!
    const port = Number(east.addrs.find((a) => a.includes(`/ip4/${eastHost.ip}/tcp/`))?.split('/')[4])
    assert.ok(port > 0, `east listens on ${east.addrs.join(', ')}`)
    const probe = `const s=require('net').connect(${port},'${eastHost.ip}');s.on('connect',()=>{console.log('open');process.exit(0)});s.on('error',e=>{console.log(e.code);process.exit(0)});setTimeout(()=>{console.log('timeout');process.exit(0)},3000)`
    const out = await mesh.exec(westHost.ns, process.execPath, ['-e', probe])
    assert.notEqual(out.trim(), 'open', 'west opened a TCP connection straight into the NATed east site')
  })

  it('every host sees the other two alive, across the NATs', async () => {
    for (const a of [relay, east, west]) {
      await waitFor(
        `${a.peerId} sees 3 alive hosts`,
        async () => {
          const r = await a.request('GET', '/v1/cluster')
          return (r.body.hosts as Host[]).filter((h) => h.status === 'alive').length === 3
        },
        60_000,
      )
    }
  })

  it('the NATed hosts are connected through the relay, the relay directly', async () => {
    // Relayed; `hole-punched` once bulk data got skymesh's own punched channel (not yet here)
    await waitConnected(east, west, ['relayed', 'hole-punched'], 30_000)
    const e = await peerOf(east, west.peerId)
    if (e?.connection === 'relayed') {
      assert.ok(
        e.addrs.some((a) => a.includes('/p2p-circuit')),
        `relayed connection addrs: ${e.addrs.join(', ')}`,
      )
    }
    assert.equal((await peerOf(east, relay.peerId))?.connection, 'direct')
    assert.equal((await peerOf(relay, east.peerId))?.connection, 'direct')
  })

  it('GET /v1/node: the AutoNAT result and the addresses peers see each host at', async (t) => {
    const behind = mesh.routerIp('east')
    const nat = await waitFor(
      'east learns that peers see it at its NAT address',
      async () => {
        const n = (await east.request('GET', '/v1/node')).body.nat
        return n?.observed?.some((o: { addr: string }) => o.addr.startsWith(`/ip4/${behind}/tcp/`))
          ? n
          : undefined
      },
      30_000,
    )
    t.diagnostic(`east: ${JSON.stringify(nat)}`)
    assert.equal(nat.configured, 'private')
    // 10.x addresses only: AutoNAT has nothing public to check, and says so.
    assert.equal(nat.autonat, 'unknown')
    assert.match(nat.reason, /public addresses only/)
    assert.ok(
      nat.relayed.some((a: string) => a.includes('/p2p-circuit')),
      `east listens through the relay: ${nat.relayed.join(', ')}`,
    )
    const pubIp = mesh.hostsOf('pub')[0]!.ip
    const relayNat = (await relay.request('GET', '/v1/node')).body.nat
    assert.equal(relayNat.configured, 'public')
    assert.deepEqual(relayNat.relayed, [])
    assert.ok(
      relayNat.observed.some((o: { addr: string }) => o.addr.startsWith(`/ip4/${pubIp}/tcp/`)),
      `peers see the relay at its own address: ${JSON.stringify(relayNat.observed)}`,
    )
  })

  it('gossip converges: a VM created behind one NAT is seen behind the other', async () => {
    const r = await east.request('POST', '/v1/vms', {
      name: 'natvm',
      vcpus: 1,
      memoryMiB: 32,
      diskMiB: 64,
      workload: { dirtyMiBps: 2, hotSetMiB: 8 },
    })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    const id = r.body.id as string
    await waitFor(
      'west sees the VM on east',
      async () => (await west.request('GET', `/v1/cluster/vms/${id}`)).body.host === east.peerId,
      30_000,
    )
  })

  it('a VM migrates between the NATed hosts over the relay (or a punch of its own), and says so', async () => {
    const id = (await east.request('GET', '/v1/vms')).body.vms.find(
      (v: { name: string }) => v.name === 'natvm',
    ).id
    const m = await movePausedVm(east, west, id)
    assert.ok(['relayed', 'hole-punched'].includes(m.link), `link ${m.link}`)
    if (m.link === 'relayed') assert.match(m.linkNote, /no direct connection/)
  })

  it("without a punch, refuses at once a migration the relay's limits cannot carry, says why, keeps the VM", async () => {
    // These NATs keep source ports, so skymesh's own punch would carry it (nat-punch-migrate.test.ts):
    // make them pick random ports, as NATs no punch gets through do
    await randomizeNatPorts(mesh, 'east')
    await randomizeNatPorts(mesh, 'west')
    const kind = (await peerOf(east, west.peerId))?.connection
    assert.ok(kind === 'relayed' || kind === 'hole-punched', `connection ${kind}`)
    const r = await east.request('POST', '/v1/vms', {
      name: 'bigvm',
      vcpus: 1,
      memoryMiB: RELAY_LIMIT_MIB + 64,
      diskMiB: 64,
    })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    const m = await migrateAndWait(east, west, r.body.id, {}, 60_000)
    assert.equal(m.phase, 'failed')
    assert.equal(m.error.code, 'LINK')
    // the relay's limit less what the connection already carried (gossip, the first migration)
    assert.match(
      m.error.message,
      new RegExp(
        `cannot reach ${west.peerId} directly: .*the relay lets that connection carry \\d+ MiB more`,
      ),
    )
    assert.equal(m.bytesSent ?? 0, 0, 'nothing was sent over the relay')
    assert.equal((await east.request('GET', `/v1/vms/${r.body.id}`)).body.state, 'running')
    assert.equal((await west.request('GET', `/v1/vms/${r.body.id}`)).status, 404)
  })

  it('GET /v1/sites: three sites, their hosts, round trips measured from east', async (t) => {
    const view = await waitFor(
      'east measured round trips to the other sites',
      async () => {
        const r = await east.request('GET', '/v1/sites')
        const links = r.body.links as { from: string; to: string; rttMs?: number }[]
        const ok = ['pub', 'west'].every((to) =>
          links.some((l) => l.from === 'east' && l.to === to && l.rttMs),
        )
        return ok ? r.body : undefined
      },
      30_000,
    )
    for (const line of sitesTables(view).trimEnd().split('\n')) t.diagnostic(line)
    assert.deepEqual(
      view.sites.map((s: { name: string }) => s.name),
      ['east', 'pub', 'west'],
    )
    const hostsOf = (name: string) => view.sites.find((s: { name: string }) => s.name === name).hosts
    assert.deepEqual(hostsOf('east'), [east.peerId])
    assert.deepEqual(hostsOf('pub'), [relay.peerId])
    const toWest = view.links.find((l: { from: string; to: string }) => l.from === 'east' && l.to === 'west')
    assert.ok(toWest.bandwidthMiBps > 0, `east->west bandwidth from the migration: ${JSON.stringify(toWest)}`)
    // West learns east's own report through gossip (signed by east).
    await waitFor(
      "west sees east's measurements",
      async () => {
        const r = await west.request('GET', '/v1/sites')
        return (r.body.links as { from: string; to: string }[]).some(
          (l) => l.from === 'east' && l.to === 'west',
        )
      },
      30_000,
    )
  })
})
