// The overlay service without a network: networks (validation, mesh-wide merge), NIC allocation,
// the gossiped announcement, the mesh view that feeds the switch, persistence, migration hand-off.
import assert from 'node:assert/strict'
import { beforeEach, describe, it } from 'node:test'
import pino from 'pino'
import { Registry } from 'prom-client'
import { decodeHostOverlay, encodeHostOverlay } from '../../src/overlay/codec.js'
import { OverlayService } from '../../src/overlay/service.js'
import type { OverlaySnapshot } from '../../src/overlay/types.js'
import { pb } from '../../src/proto/index.js'
import { FakeOverlayGossip, noNetworkHost } from '../helpers/overlay-fakes.js'

/** Persistence is chained behind earlier writes: let it run. */
const settled = () => new Promise((r) => setTimeout(r, 10))

let gossip: FakeOverlayGossip
let saved: OverlaySnapshot | undefined
let svc: OverlayService

async function make(
  init: { snapshot?: OverlaySnapshot; networks?: { name: string; subnet: string }[] } = {},
) {
  saved = init.snapshot
  const s = new OverlayService({
    self: 'self',
    host: noNetworkHost,
    gossip,
    logger: pino({ level: 'silent' }),
    metrics: new Registry(),
    networks: init.networks,
    store: {
      load: async () => saved,
      save: async (snap) => {
        saved = structuredClone(snap)
      },
    },
  })
  await s.start()
  return s
}

beforeEach(async () => {
  gossip = new FakeOverlayGossip()
  svc = await make({ networks: [{ name: 'red', subnet: '10.1.0.0/24' }] })
})

describe('overlay service: networks', () => {
  it('has the config networks and creates more; refuses bad or duplicate ones', () => {
    assert.deepEqual(
      svc.listNetworks().map((n) => n.name),
      ['red'],
    )
    const n = svc.createNetwork({ name: 'blue', subnet: '10.2.0.0/16', mtu: 9000 })
    assert.equal(n.subnet, '10.2.0.0/16')
    assert.equal(gossip.changed, 1)
    assert.throws(() => svc.createNetwork({ name: 'blue', subnet: '10.3.0.0/24' }), { code: 'NAME_TAKEN' })
    assert.throws(() => svc.createNetwork({ name: 'bad name', subnet: '10.3.0.0/24' }), /name: expected/)
    assert.throws(() => svc.createNetwork({ name: 'x', subnet: '10.3.0.1/24' }), /subnet: .*host bits/)
    assert.throws(() => svc.createNetwork({ name: 'x', subnet: '10.3.0.0/24', mtu: 100 }), /mtu: expected/)
    assert.deepEqual(
      svc.listNetworks().map((n) => n.name),
      ['blue', 'red'],
    )
  })

  it('learns networks from other hosts; on a name clash the older creation wins everywhere', async () => {
    svc.createNetwork({ name: 'green', subnet: '10.5.0.0/24' })
    gossip.publish(
      'peer-1',
      encodeHostOverlay({
        networks: [
          { name: 'green', subnet: '10.6.0.0/24', mtu: 1500, createdMs: 1, creator: 'peer-1' },
          { name: 'violet', subnet: '10.7.0.0/24', mtu: 1400, createdMs: 5, creator: 'peer-1' },
        ],
        nics: [],
      }),
    )
    const byName = Object.fromEntries(svc.listNetworks().map((n) => [n.name, n]))
    assert.equal(byName.violet?.mtu, 1400)
    assert.equal(byName.green?.subnet, '10.6.0.0/24', 'created earlier elsewhere')
    assert.equal(svc.switch.mtu('violet'), 1400)
  })
})

describe('overlay service: NICs', () => {
  it('allocates a MAC and an IP per network, refuses unknown or repeated networks', () => {
    const nics = svc.allocate('vm-1', ['red'])
    assert.equal(nics.length, 1)
    assert.match(nics[0]?.ip ?? '', /^10\.1\.0\.\d+$/)
    assert.throws(() => svc.allocate('vm-1', ['nope']), /networks\[0\]: no network 'nope'/)
    assert.throws(() => svc.allocate('vm-1', ['red', 'red']), /networks\[1\]: 'red' is listed twice/)
  })

  it('never hands out an address or MAC the mesh already uses', () => {
    svc.createNetwork({ name: 'tiny', subnet: '10.9.0.0/29' }) // 5 usable addresses
    const others = ['a', 'b', 'c', 'd'].map((x, i) => ({
      vmId: `vm-${x}`,
      network: 'tiny',
      mac: `02:00:00:00:00:0${i + 1}`,
      ip: `10.9.0.${i + 2}`,
    }))
    gossip.publish('peer-1', encodeHostOverlay({ networks: [], nics: others }))
    const [nic] = svc.allocate('vm-new', ['tiny'])
    assert.equal(nic?.ip, '10.9.0.6')
    svc.attach('vm-new', [nic!], () => true)
    assert.throws(() => svc.allocate('vm-more', ['tiny']), /full/)
  })

  it('attach plugs a port, persists, and announces the NIC in the gossiped state', async () => {
    const nics = svc.allocate('vm-1', ['red'])
    svc.attach('vm-1', nics, () => true)
    assert.ok(svc.endpoint('vm-1'))
    await settled()
    assert.deepEqual(saved?.nics, nics)
    assert.deepEqual(decodeHostOverlay(svc.announcement()).nics, nics)
    svc.release('vm-1')
    assert.equal(svc.endpoint('vm-1'), undefined)
    await settled()
    assert.deepEqual(saved?.nics, [])
  })

  it('a restarted service keeps its networks and NICs', async () => {
    svc.createNetwork({ name: 'blue', subnet: '10.2.0.0/24' })
    const nics = svc.allocate('vm-1', ['blue'])
    svc.attach('vm-1', nics, () => true)
    await svc.stop()
    const again = await make({ snapshot: saved })
    assert.deepEqual(again.nicsOf('vm-1'), nics)
    assert.ok(again.listNetworks().some((n) => n.name === 'blue'))
    again.plug('vm-1', () => true)
    assert.ok(again.endpoint('vm-1', 'blue'))
  })
})

describe('overlay service: mesh view', () => {
  const remote = { vmId: 'vm-r', network: 'red', mac: '02:00:00:00:00:99', ip: '10.1.0.99' }

  it('places remote NICs on the host the location table names, and follows it', () => {
    gossip.locations.set('vm-r', { host: 'peer-1', epoch: 1, name: 'r' })
    gossip.publish('peer-1', encodeHostOverlay({ networks: [], nics: [remote] }))
    assert.deepEqual(svc.switch.hostsOf('red'), ['peer-1'])
    const view = svc.getNetwork('red')
    assert.deepEqual(
      view.vms.map((v) => [v.vmId, v.host, v.ip]),
      [['vm-r', 'peer-1', '10.1.0.99']],
    )
    // moved (a higher epoch elsewhere): the MAC follows
    gossip.locations.set('vm-r', { host: 'peer-2', epoch: 2, name: 'r' })
    gossip.publish('peer-2', encodeHostOverlay({ networks: [], nics: [remote] }))
    assert.deepEqual(svc.switch.hostsOf('red'), ['peer-2'])
  })

  it('skips nonsense entries of a host’s announcement', () => {
    const bad = pb.OverlayHostState.encode({
      networks: [{ name: 'odd', subnet: 'not-a-cidr' }],
      nics: [
        { vmId: 'vm-x', network: 'red', mac: new Uint8Array(3), ip: '10.1.0.5' },
        { vmId: 'vm-y', network: 'red', mac: Uint8Array.of(1, 0, 0, 0, 0, 1), ip: '10.1.0.6' },
        { vmId: 'vm-z', network: 'red', mac: Uint8Array.of(2, 0, 0, 0, 0, 1), ip: 'nope' },
      ],
    }).finish()
    const d = decodeHostOverlay(bad)
    assert.deepEqual(d, { networks: [], nics: [] })
    assert.deepEqual(decodeHostOverlay(Uint8Array.of(0xff, 0xff, 0xff)), { networks: [], nics: [] })
  })

  it('migration: the source relays to the destination; the destination takes the VM’s NICs from the mesh', () => {
    const nics = svc.allocate('vm-1', ['red'])
    svc.attach('vm-1', nics, () => true)
    gossip.locations.set('vm-1', { host: 'self', epoch: 1, name: 'one' })
    svc.departed('vm-1', 'peer-2')
    assert.equal(svc.endpoint('vm-1'), undefined)
    assert.deepEqual(decodeHostOverlay(svc.announcement()).nics, [])

    // the other side: a second service learns vm-r from peer-1's announcement, then receives it
    gossip.locations.set('vm-r', { host: 'peer-1', epoch: 1, name: 'r' })
    gossip.publish('peer-1', encodeHostOverlay({ networks: [], nics: [remote] }))
    const got = svc.arrived('vm-r', 2, 'peer-1', () => true)
    assert.deepEqual(got, [remote])
    assert.ok(svc.endpoint('vm-r', 'red'), 'plugged in here')
    assert.equal(svc.switch.stats.announced, 1, 'gratuitous ARP')
    assert.equal(svc.arrived('vm-unknown', 2, 'peer-1', () => true).length, 0)
  })
})
