// The NICs a migration offer carries (MigrationVmSpec.nics): they survive the wire, the destination's
// overlay checks them (a bad one is refused with its reason and changes nothing), and a VM whose NICs
// gossip has not brought yet arrives with the offered ones.
import assert from 'node:assert/strict'
import { beforeEach, describe, it } from 'node:test'
import pino from 'pino'
import { Registry } from 'prom-client'
import { decodeHostOverlay, encodeHostOverlay } from '../../src/overlay/codec.js'
import { OverlayService } from '../../src/overlay/service.js'
import { pb } from '../../src/proto/index.js'
import { validateOffer } from '../../src/transfer/destination.js'
import { MAX_OFFER_NICS } from '../../src/transfer/nics.js'
import type { MigrationNic } from '../../src/transfer/types.js'
import { decodeControl } from '../../src/transfer/wire.js'
import { FakeOverlayGossip, noNetworkHost } from '../helpers/overlay-fakes.js'

let gossip: FakeOverlayGossip
let svc: OverlayService

beforeEach(async () => {
  gossip = new FakeOverlayGossip()
  svc = new OverlayService({
    self: 'self',
    host: noNetworkHost,
    gossip,
    logger: pino({ level: 'silent' }),
    metrics: new Registry(),
    networks: [
      { name: 'red', subnet: '10.1.0.0/24' },
      { name: 'blue', subnet: '10.2.0.0/24' },
    ],
    store: { load: async () => undefined, save: async () => {} },
  })
  await svc.start()
})

const nic = (over: Partial<MigrationNic> = {}): MigrationNic => ({
  network: 'red',
  mac: '02:00:00:00:00:07',
  ip: '10.1.0.7',
  ...over,
})

describe('offered NICs: the wire', () => {
  it('ride in the offer spec and come out as plain NICs; more than the cap are cut to cap + 1', () => {
    const offer = (nics: object[]) =>
      pb.MigrationControl.encode({
        offer: {
          migrationId: 'm1',
          spec: { id: 'vm-1', name: 'one', vcpus: 1, memoryMib: 1, diskMib: 1, nics },
          epoch: 3,
          pageSize: 4096,
          pageCount: 256,
          blockSize: 4096,
          blockCount: 256,
          streams: 1,
        },
      }).finish()
    const two = [
      { network: 'red', mac: '02:00:00:00:00:07', ip: '10.1.0.7', attach: '' },
      { network: 'blue', mac: '02:00:00:00:00:08', ip: '10.2.0.8', attach: 'tap' },
    ]
    const valid = validateOffer(decodeControl(offer(two)).offer)
    assert.deepEqual(valid.nics, [
      { network: 'red', mac: '02:00:00:00:00:07', ip: '10.1.0.7' },
      { network: 'blue', mac: '02:00:00:00:00:08', ip: '10.2.0.8', attach: 'tap' },
    ])
    assert.deepEqual(validateOffer(decodeControl(offer([])).offer).nics, [])
    const many = Array.from({ length: 40 }, (_, i) => ({ network: 'red', mac: '', ip: `10.1.0.${i + 2}` }))
    const cut = validateOffer(decodeControl(offer(many)).offer).nics
    assert.equal(cut.length, MAX_OFFER_NICS + 1)
    assert.throws(() => svc.checkOffered('vm-1', cut), /nics: at most 16 NICs, got 17/)
  })
})

describe('offered NICs: the destination checks them', () => {
  it('accepts well-formed NICs on known networks when gossip knows nothing of the VM', () => {
    const got = svc.checkOffered('vm-1', [
      nic(),
      nic({ network: 'blue', mac: '02:00:00:00:00:08', ip: '10.2.0.8', attach: 'tap' }),
    ])
    assert.deepEqual(got, [
      { vmId: 'vm-1', network: 'red', mac: '02:00:00:00:00:07', ip: '10.1.0.7' },
      { vmId: 'vm-1', network: 'blue', mac: '02:00:00:00:00:08', ip: '10.2.0.8', attach: 'tap' },
    ])
    assert.deepEqual(svc.checkOffered('vm-1', []), [])
  })

  it('refuses a malformed NIC with its reason, and changes nothing', () => {
    const cases: [MigrationNic[], RegExp][] = [
      [[nic({ network: 'green' })], /nics\[0\]: no network "green" known here/],
      [
        [nic(), nic({ mac: '02:00:00:00:00:08', ip: '10.1.0.8' })],
        /nics\[1\]: network 'red' is listed twice/,
      ],
      [[nic({ mac: 'not-a-mac' })], /nics\[0\]: expected a unicast MAC/],
      [[nic({ mac: '02:00:00:00:00:0G' })], /nics\[0\]: expected a unicast MAC/],
      [[nic({ mac: '03:00:00:00:00:07' })], /nics\[0\]: expected a unicast MAC/], // group bit
      [[nic({ mac: '00:00:00:00:00:00' })], /nics\[0\]: expected a unicast MAC/],
      [[nic({ ip: '10.9.0.7' })], /nics\[0\]: expected a host address of 10\.1\.0\.0\/24, got "10\.9\.0\.7"/],
      [[nic({ ip: '10.1.0.0' })], /host address/], // the network's own
      [[nic({ ip: '10.1.0.255' })], /host address/], // broadcast
      [[nic({ ip: '10.1.0.1' })], /host address/], // kept for a gateway
      [[nic({ ip: '10.1.0.07' })], /host address/], // not canonical
      [[nic({ ip: '' })], /host address/],
      [[nic({ attach: 'bridge' })], /nics\[0\]: attach: expected 'tap' or nothing, got "bridge"/],
    ]
    const before = svc.announcement()
    const changed = gossip.changed
    for (const [nics, reason] of cases) {
      assert.throws(
        () => svc.checkOffered('vm-1', nics),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, 'BAD_REQUEST')
          assert.match(err.message, reason)
          return true
        },
      )
    }
    assert.deepEqual(svc.announcement(), before, 'nothing announced')
    assert.deepEqual(svc.nicsOf('vm-1'), [])
    assert.equal(gossip.changed, changed)
    assert.equal(svc.portCount(), 0)
  })

  it('refuses a MAC or an IP another VM holds, here or elsewhere in the mesh', () => {
    const mine = svc.allocate('vm-local', ['red'])
    svc.attach('vm-local', mine, () => true)
    assert.throws(
      () => svc.checkOffered('vm-1', [nic({ mac: mine[0]!.mac })]),
      /MAC .* belongs to VM vm-local/,
    )
    gossip.publish(
      'peer-1',
      encodeHostOverlay({
        networks: [],
        nics: [{ vmId: 'vm-other', network: 'red', mac: '02:00:00:00:00:55', ip: '10.1.0.55' }],
      }),
    )
    assert.throws(
      () => svc.checkOffered('vm-1', [nic({ ip: '10.1.0.55' })]),
      /IP 10\.1\.0\.55 on 'red' belongs to VM vm-other/,
    )
    // the same address on another network is someone else's business
    assert.equal(svc.checkOffered('vm-1', [nic({ network: 'blue', ip: '10.2.0.55' })]).length, 1)
  })

  it('where gossip knows the VM, the offer must say the same', () => {
    const known = { vmId: 'vm-1', network: 'red', mac: '02:00:00:00:00:07', ip: '10.1.0.7' }
    gossip.publish('peer-1', encodeHostOverlay({ networks: [], nics: [known] }))
    assert.equal(svc.checkOffered('vm-1', [nic()]).length, 1)
    assert.throws(
      () => svc.checkOffered('vm-1', [nic({ mac: '02:00:00:00:00:09' })]),
      /gossip says VM vm-1 has 02:00:00:00:00:07 10\.1\.0\.7 on 'red', the offer 02:00:00:00:00:09/,
    )
    assert.throws(() => svc.checkOffered('vm-1', [nic({ ip: '10.1.0.9' })]), /gossip says/)
    assert.throws(
      () => svc.checkOffered('vm-1', [nic({ network: 'blue', mac: '02:00:00:00:00:07', ip: '10.2.0.7' })]),
      /gossip says VM vm-1 has no NIC on 'blue'/,
    )
    gossip.publish(
      'peer-1',
      encodeHostOverlay({
        networks: [],
        nics: [known, { ...known, network: 'blue', mac: '02:00:00:00:00:08', ip: '10.2.0.8' }],
      }),
    )
    assert.throws(
      () => svc.checkOffered('vm-1', [nic()]),
      /nics: gossip says VM vm-1 has 2 NIC\(s\), the offer 1/,
    )
  })
})

describe('offered NICs: arrival', () => {
  it('a VM gossip has not announced arrives with the offered NICs, plugged in and announced', () => {
    const offered = svc.checkOffered('vm-1', [nic()])
    const got = svc.arrived('vm-1', 2, 'peer-1', () => true, undefined, offered)
    assert.deepEqual(got, [{ vmId: 'vm-1', network: 'red', mac: '02:00:00:00:00:07', ip: '10.1.0.7' }])
    assert.ok(svc.endpoint('vm-1', 'red'), 'plugged in here')
    assert.deepEqual(svc.nicsOf('vm-1'), got)
    assert.deepEqual(decodeHostOverlay(svc.announcement()).nics, got, 'announced by this host now')
    assert.equal(svc.switch.stats.announced, 1, 'gratuitous ARP')
  })

  it('without offered NICs and without gossip, nothing is plugged (as before)', () => {
    assert.deepEqual(
      svc.arrived('vm-1', 2, 'peer-1', () => true),
      [],
    )
    assert.equal(svc.portCount(), 0)
  })
})
