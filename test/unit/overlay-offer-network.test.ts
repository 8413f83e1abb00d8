// A migration offer carries the definition of each NIC's network: a destination that does not know the
// network joins it when the VM arrives (the VM keeps its IP and MAC), one that knows another network
// under that name refuses the offer with the reason. The offered NICs are held from the reservation to
// the commit: no new VM and no other offer gets their MAC or IP meanwhile, and the hold goes when the
// migration fails.
import assert from 'node:assert/strict'
import { beforeEach, describe, it } from 'node:test'
import pino from 'pino'
import { Registry } from 'prom-client'
import { decodeHostOverlay } from '../../src/overlay/codec.js'
import { type OverlayGossip, OverlayService } from '../../src/overlay/service.js'
import type { OverlaySnapshot } from '../../src/overlay/types.js'
import { pb } from '../../src/proto/index.js'
import { validateOffer } from '../../src/transfer/destination.js'
import { nicsToOffer } from '../../src/transfer/nics.js'
import type { MigrationNic } from '../../src/transfer/types.js'
import { decodeControl } from '../../src/transfer/wire.js'

class QuietGossip implements OverlayGossip {
  changed = 0
  hosts() {
    return []
  }
  where(_vmId: string) {
    return undefined
  }
  subscribe(_fn: () => void) {
    return () => {}
  }
  notifyChanged() {
    this.changed++
  }
}

const fakeHost = {
  handle: async () => {},
  unhandle: async () => {},
  dialProtocol: async () => {
    throw new Error('no network in this test')
  },
}

let svc: OverlayService
let saved: OverlaySnapshot | undefined

beforeEach(async () => {
  saved = undefined
  svc = new OverlayService({
    self: 'self',
    host: fakeHost,
    gossip: new QuietGossip(),
    logger: pino({ level: 'silent' }),
    metrics: new Registry(),
    networks: [{ name: 'red', subnet: '10.1.0.0/24' }],
    store: {
      load: async () => undefined,
      save: async (s) => {
        saved = s
      },
    },
  })
  await svc.start()
})

const purple = { subnet: '10.9.0.0/24', mtu: 1400, createdMs: 1_700_000_000_000, creator: 'peer-a' }
const onPurple = (over: Partial<MigrationNic> = {}): MigrationNic => ({
  network: 'purple',
  mac: '02:00:00:00:00:21',
  ip: '10.9.0.21',
  networkDef: purple,
  ...over,
})

describe('offered networks: the wire', () => {
  it("a NIC's network definition survives the offer", () => {
    const bytes = pb.MigrationControl.encode({
      offer: {
        migrationId: 'm1',
        spec: {
          id: 'vm-1',
          name: 'one',
          vcpus: 1,
          memoryMib: 1,
          diskMib: 1,
          nics: nicsToOffer([onPurple()]),
        },
        epoch: 1,
        pageSize: 4096,
        pageCount: 256,
        blockSize: 4096,
        blockCount: 256,
        streams: 1,
      },
    }).finish()
    assert.deepEqual(validateOffer(decodeControl(bytes).offer).nics, [onPurple()])
  })
})

describe('offered networks: the destination', () => {
  it('a network unknown here is joined by its offered definition when the VM arrives', async () => {
    assert.throws(
      () => svc.checkOffered('vm-1', [onPurple({ networkDef: undefined })]),
      /nics\[0\]: no network "purple" known here, and the offer does not define it/,
    )
    assert.deepEqual(svc.checkOffered('vm-1', [onPurple()]), [
      { vmId: 'vm-1', network: 'purple', mac: '02:00:00:00:00:21', ip: '10.9.0.21' },
    ])
    assert.ok(!svc.listNetworks().some((n) => n.name === 'purple'), 'checking changes nothing')
    const held = svc.hold('m1', 'vm-1', [onPurple()])
    assert.equal(held[0]?.networkDef.subnet, '10.9.0.0/24')
    const nics = svc.arrived('vm-1', 2, 'peer-a', () => true, undefined, held)
    svc.unhold('m1')
    assert.deepEqual(
      nics.map((n) => [n.network, n.mac, n.ip]),
      [['purple', '02:00:00:00:00:21', '10.9.0.21']],
    )
    const net = svc.getNetwork('purple')
    assert.equal(net.subnet, '10.9.0.0/24')
    assert.equal(net.mtu, 1400)
    assert.equal(net.createdAt, new Date(purple.createdMs).toISOString(), 'the same definition as the source')
    assert.deepEqual(net.reserved, [])
    assert.deepEqual(
      net.vms.map((v) => [v.vmId, v.ip, v.local]),
      [['vm-1', '10.9.0.21', true]],
    )
    // announced and stored: the network outlives its creator's gossip here
    const ann = decodeHostOverlay(svc.announcement())
    assert.ok(ann.networks.some((n) => n.name === 'purple' && n.creator === 'peer-a'))
    await svc.stop()
    assert.ok(saved?.networks.some((n) => n.name === 'purple'))
  })

  it('another network under the same name (subnet or MTU) refuses the offer with the reason', () => {
    assert.throws(
      () => svc.checkOffered('vm-1', [onPurple({ network: 'red', ip: '10.9.0.21' })]),
      /nics\[0\]: network 'red' here is 10\.1\.0\.0\/24 \(MTU 1500\), the VM's is 10\.9\.0\.0\/24 \(MTU 1400\): another network under the same name/,
    )
    assert.throws(
      () =>
        svc.hold('m1', 'vm-1', [
          onPurple({ network: 'red', ip: '10.1.0.9', networkDef: { ...purple, subnet: '10.1.0.0/24' } }),
        ]),
      /network 'red' here is 10\.1\.0\.0\/24 \(MTU 1500\), the VM's is 10\.1\.0\.0\/24 \(MTU 1400\)/,
    )
    assert.deepEqual(svc.getNetwork('red').reserved, [], 'a refused offer holds nothing')
    // the same definition (however it was learnt) is the same network
    assert.equal(
      svc.checkOffered('vm-1', [
        onPurple({
          network: 'red',
          ip: '10.1.0.9',
          networkDef: { subnet: '10.1.0.0/24', mtu: 1500, createdMs: 0, creator: '' },
        }),
      ]).length,
      1,
    )
    assert.throws(
      () => svc.checkOffered('vm-1', [onPurple({ networkDef: { ...purple, subnet: '10.9.0.0/33' } })]),
      /nics\[0\]: network definition: subnet: /,
    )
  })

  it('held NICs are nobody else’s until the hold goes', () => {
    const red = (over: Partial<MigrationNic> = {}): MigrationNic => ({
      network: 'red',
      mac: '02:00:00:00:00:31',
      ip: '10.1.0.31',
      ...over,
    })
    svc.hold('m1', 'vm-1', [red()])
    assert.deepEqual(svc.getNetwork('red').reserved, [
      { vmId: 'vm-1', mac: '02:00:00:00:00:31', ip: '10.1.0.31', migrationId: 'm1' },
    ])
    assert.throws(
      () => svc.hold('m2', 'vm-2', [red({ mac: '02:00:00:00:00:32' })]),
      /IP 10\.1\.0\.31 on 'red' belongs to VM vm-1/,
    )
    assert.throws(() => svc.checkOffered('vm-2', [red({ ip: '10.1.0.32' })]), /MAC 02:00:00:00:00:31 belongs/)
    // a new VM's allocation steps around it, whatever its hash says
    for (let i = 0; i < 50; i++) assert.notEqual(svc.allocate(`new-${i}`, ['red'])[0]?.ip, '10.1.0.31')
    svc.unhold('m1')
    assert.deepEqual(svc.getNetwork('red').reserved, [])
    assert.equal(svc.hold('m2', 'vm-2', [red({ mac: '02:00:00:00:00:32' })]).length, 1, 'free again')
  })

  it('NICs of a committed arrival come back from the journal only where the overlay lost them', () => {
    const kept = svc.restoreNics('vm-1', [onPurple()])
    assert.equal(kept.length, 1)
    assert.deepEqual(
      svc.nicsOf('vm-1').map((n) => [n.network, n.mac, n.ip]),
      [['purple', '02:00:00:00:00:21', '10.9.0.21']],
    )
    assert.equal(svc.getNetwork('purple').subnet, '10.9.0.0/24', 'its network joined too')
    assert.deepEqual(svc.restoreNics('vm-1', [onPurple({ ip: '10.9.0.99' })]), [], 'known NICs stay')
    assert.equal(svc.nicsOf('vm-1')[0]?.ip, '10.9.0.21')
  })
})
