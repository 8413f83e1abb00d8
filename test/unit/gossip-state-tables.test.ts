import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import {
  encodeSignedHostState,
  HostTable,
  type LocationConflict,
  LocationTable,
  type OpenedHostState,
  openHostState,
  signHostState,
} from '../../src/gossip/state/index.js'
import type { VmSummaryView } from '../../src/gossip/types.js'

const vm = (id: string, epoch: number, extra: Partial<VmSummaryView> = {}): VmSummaryView => ({
  id,
  name: `name-${id}`,
  vcpus: 1,
  memoryMiB: 256,
  diskMiB: 1024,
  cpu: 0.1,
  dirtyMiBps: 0,
  state: 'running',
  epoch,
  ...extra,
})

async function opened(key: PrivateKey, version: number, vms: VmSummaryView[] = []): Promise<OpenedHostState> {
  const signed = await signHostState(key, {
    peerId: peerIdFromPrivateKey(key).toMultihash().bytes,
    version,
    site: 'dc1',
    vms: vms.map((v) => ({ ...v, memoryMib: v.memoryMiB, diskMib: v.diskMiB, dirtyMibps: v.dirtyMiBps })),
    timestampMs: 1000,
  })
  const r = await openHostState(encodeSignedHostState(signed))
  assert.ok(r.ok)
  return r.state
}

describe('HostTable', () => {
  it('keeps the newest version per host; older is stale, equal is replayed', async () => {
    const self = await generateKeyPair('Ed25519')
    const a = await generateKeyPair('Ed25519')
    const t = new HostTable({ self: peerIdFromPrivateKey(self).toString(), now: () => 42 })
    const v2 = await opened(a, 2, [vm('x', 1)])
    const r2 = t.accept(v2)
    assert.ok(r2.ok)
    assert.equal(r2.previous, undefined)
    assert.deepEqual(r2.changes, [{ vmId: 'x', current: { host: v2.peerId, epoch: 1 } }])
    assert.equal(t.get(v2.peerId)?.view.receivedAtMs, 42)
    assert.equal(t.get(v2.peerId)?.view.vms[0]?.memoryMiB, 256)

    assert.deepEqual(t.accept(await opened(a, 1, [])), { ok: false, reason: 'stale', version: 1 })
    assert.deepEqual(t.accept(v2), { ok: false, reason: 'replayed', version: 2 })
    assert.equal(t.version(v2.peerId), 2)
    assert.equal(t.locations.where('x')?.host, v2.peerId, 'a refused state changes nothing')

    const r3 = t.accept(await opened(a, 3, []))
    assert.ok(r3.ok)
    assert.equal(r3.previous?.version, 2)
    assert.equal(t.locations.where('x'), undefined)
    // The signed bytes are kept for relaying and open again.
    const again = await openHostState(t.get(v2.peerId)?.signed ?? new Uint8Array())
    assert.ok(again.ok)
    assert.equal(again.state.version, 3)
  })

  it('drops a state whose gossip sender is another peer, and our own state from the network', async () => {
    const self = await generateKeyPair('Ed25519')
    const a = await generateKeyPair('Ed25519')
    const b = await generateKeyPair('Ed25519')
    const selfId = peerIdFromPrivateKey(self).toString()
    const t = new HostTable({ self: selfId })
    const sa = await opened(a, 5)
    assert.deepEqual(t.accept(sa, { sender: peerIdFromPrivateKey(b).toString() }), {
      ok: false,
      reason: 'wrong-sender',
      version: 5,
    })
    assert.equal(t.size, 0)
    assert.equal(t.accept(sa, { sender: sa.peerId }).ok, true)
    const mine = await opened(self, 9)
    assert.deepEqual(t.accept(mine), { ok: false, reason: 'self', version: 9 })
    assert.equal(t.accept(mine, { local: true }).ok, true)
    assert.deepEqual(
      t.views().map((v) => v.peerId),
      [sa.peerId, selfId].sort(),
    )
  })
})

describe('LocationTable', () => {
  it('moves a VM to a higher epoch and never back to a lower one', () => {
    const t = new LocationTable()
    t.applyHost('A', [], [vm('v', 1)], 0)
    assert.deepEqual(t.applyHost('B', [], [vm('v', 2)], 0), [
      { vmId: 'v', previous: { host: 'A', epoch: 1 }, current: { host: 'B', epoch: 2 } },
    ])
    // A's next state still lists it (it has not caught up yet): a lower epoch changes nothing.
    assert.deepEqual(t.applyHost('A', [vm('v', 1)], [vm('v', 1, { cpu: 0.9 })], 0), [])
    assert.equal(t.where('v')?.host, 'B')
    assert.equal(t.where('v')?.epoch, 2)
    assert.equal(t.conflicts, 0)
  })

  it('at equal epoch keeps the current location and counts the conflict once', () => {
    const seen: LocationConflict[] = []
    const t = new LocationTable({ onConflict: (c) => seen.push(c) })
    t.applyHost('A', [], [vm('v', 3)], 0)
    assert.deepEqual(t.applyHost('B', [], [vm('v', 3)], 0), [])
    t.applyHost('B', [vm('v', 3)], [vm('v', 3)], 0)
    assert.equal(t.where('v')?.host, 'A')
    assert.equal(t.conflicts, 1)
    assert.deepEqual(seen, [{ vmId: 'v', epoch: 3, host: 'A', claimant: 'B' }])
  })

  it('refreshes the summary when the same host lists the VM again', () => {
    const t = new LocationTable()
    t.applyHost('A', [], [vm('v', 1, { cpu: 0.1 })], 0)
    t.applyHost('A', [vm('v', 1)], [vm('v', 1, { cpu: 0.7, state: 'paused' })], 0)
    assert.equal(t.where('v')?.vm.cpu, 0.7)
    assert.equal(t.where('v')?.vm.state, 'paused')
  })

  it('removes a VM only when the host it is on stops listing it', () => {
    const t = new LocationTable()
    t.applyHost('A', [], [vm('v', 1), vm('w', 1)], 0)
    t.applyHost('B', [], [vm('v', 2)], 0)
    // A drops both: v had moved on to B (unaffected), w was on A (gone).
    const changes = t.applyHost('A', [vm('v', 1), vm('w', 1)], [], 0)
    assert.deepEqual(changes, [{ vmId: 'w', previous: { host: 'A', epoch: 1 } }])
    assert.equal(t.where('v')?.host, 'B')
    assert.equal(t.where('w'), undefined)
    assert.deepEqual(
      t.list().map((l) => l.vmId),
      ['v'],
    )
  })

  it('a late lower-epoch state does not bring back a VM that moved on and went away', () => {
    const t = new LocationTable()
    t.applyHost('A', [], [vm('v', 1)], 0)
    t.applyHost('B', [], [vm('v', 2)], 0)
    t.applyHost('B', [vm('v', 2)], [], 0) // deleted on B
    assert.equal(t.where('v'), undefined)
    // A late state of A (or another host at B's epoch) claims it: refused.
    assert.deepEqual(t.applyHost('A', [vm('v', 1)], [vm('v', 1)], 1), [])
    assert.deepEqual(t.applyHost('C', [], [vm('v', 2)], 1), [])
    assert.equal(t.where('v'), undefined)
    // A real newer move is taken.
    assert.equal(t.applyHost('C', [], [vm('v', 3)], 2).length, 1)
    assert.equal(t.where('v')?.host, 'C')
  })

  it('forgets tombstones after their TTL', () => {
    const t = new LocationTable({ tombstoneTtlMs: 10 })
    t.applyHost('B', [], [vm('v', 2)], 0)
    t.applyHost('B', [vm('v', 2)], [], 0)
    t.prune(5)
    assert.deepEqual(t.applyHost('A', [], [vm('v', 1)], 5), [])
    t.prune(100)
    assert.equal(t.applyHost('A', [], [vm('v', 1)], 100).length, 1)
  })

  it('marks the VMs of a lost or departed host instead of dropping them', () => {
    const t = new LocationTable()
    t.applyHost('A', [], [vm('v', 1)], 0)
    t.applyHost('B', [], [vm('w', 1)], 0)
    t.markHost('A', 'lost')
    assert.equal(t.where('v')?.status, 'host-lost')
    assert.equal(t.where('w')?.status, 'ok')
    t.markHost('B', 'left')
    assert.deepEqual(
      t.list().map((l) => [l.vmId, l.status]),
      [
        ['v', 'host-lost'],
        ['w', 'host-left'],
      ],
    )
    t.markHost('A', 'ok')
    assert.equal(t.where('v')?.status, 'ok')
    // A VM that moves off a lost host shows the new host's status.
    t.markHost('A', 'lost')
    t.applyHost('B', [vm('w', 1)], [vm('w', 1), vm('v', 2)], 0)
    assert.equal(t.where('v')?.host, 'B')
    assert.equal(t.where('v')?.status, 'host-left')
  })
})
