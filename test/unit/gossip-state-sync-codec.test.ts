import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import protobuf from 'protobufjs/minimal.js'
import { MAX_SYNC_ITEMS } from '../../src/gossip/state/index.js'
import {
  decodeSyncRequest,
  decodeSyncResponse,
  encodeSyncRequest,
  encodeSyncResponse,
} from '../../src/gossip/state/sync-codec.js'
import { pb } from '../../src/proto/index.js'

const id = (n: number) => new Uint8Array([0, 36, 8, 1, 18, 32, ...new Uint8Array(32).fill(n)])

describe('anti-entropy codec', () => {
  it('round-trips a request, keeping the highest version per host', () => {
    const bytes = encodeSyncRequest(
      [
        { peerIdBytes: id(1), version: 1_700_000_000_000 },
        { peerIdBytes: id(2), version: 5 },
        { peerIdBytes: id(2), version: 3 },
      ],
      true,
    )
    const r = decodeSyncRequest(bytes)
    assert.ok(r.ok)
    assert.equal(r.wantMembers, true)
    assert.deepEqual([...r.have.values()], [1_700_000_000_000, 5])
  })

  it('refuses a request with too many digests before decoding it, and garbage', () => {
    const w = protobuf.Writer.create()
    for (let i = 0; i <= MAX_SYNC_ITEMS; i++) w.uint32(10).bytes(new Uint8Array([10, 1, 1]))
    assert.deepEqual(decodeSyncRequest(w.finish()), { ok: false, reason: 'too-many-items' })
    assert.deepEqual(decodeSyncRequest(new Uint8Array([0xff, 0xff, 0xff])), {
      ok: false,
      reason: 'malformed',
    })
  })

  it('writes states as received and members, within the byte budget', () => {
    const states = [1, 2, 3].map((n) =>
      pb.SignedHostState.encode({
        payload: new Uint8Array(90).fill(n),
        signature: new Uint8Array(4),
      }).finish(),
    )
    const members = [{ peerId: id(9), incarnation: 4, site: 'x' }]
    const all = encodeSyncResponse(states, members, 1 << 20)
    assert.equal(all.states, 3)
    assert.equal(all.members, 1)
    const r = decodeSyncResponse(all.bytes)
    assert.ok(r.ok)
    assert.deepEqual(
      r.states.map((s) => Buffer.from(s)),
      states.map((s) => Buffer.from(s)),
    )
    assert.equal(r.members[0]?.site, 'x')
    // The generated type is compatible with the SyncResponse message.
    assert.equal(pb.SyncResponse.decode(all.bytes).states.length, 3)

    const some = encodeSyncResponse(states, members, 250)
    assert.ok(some.bytes.length <= 250)
    assert.equal(some.leftOut, states.length - some.states)
    assert.ok(some.states < 3)
  })

  it('refuses a response with too many items; drops members with too many addrs', () => {
    const w = protobuf.Writer.create()
    for (let i = 0; i <= MAX_SYNC_ITEMS; i++) w.uint32(10).bytes(new Uint8Array(0))
    assert.deepEqual(decodeSyncResponse(w.finish()), { ok: false, reason: 'too-many-items' })
    const bad = encodeSyncResponse(
      [],
      [{ peerId: id(1), addrs: Array.from({ length: 9 }, () => new Uint8Array(1)) }],
      1000,
    )
    const r = decodeSyncResponse(bad.bytes)
    assert.ok(r.ok)
    assert.equal(r.members.length, 0)
    assert.equal(r.badMembers, 1)
    assert.deepEqual(decodeSyncResponse(new Uint8Array([0x0a, 0x05, 1])), { ok: false, reason: 'malformed' })
  })
})
