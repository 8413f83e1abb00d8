import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  decodePlacementMessage,
  encodePlacementMessage,
  MAX_MESSAGE_BYTES,
  MAX_VMS_PER_MEMBER,
  PlacementCodecError,
  type PlacementMessage,
} from '../../src/placement/index.js'
import { pb } from '../../src/proto/index.js'

const event = { id: 'h1#3', leader: 'h1', kind: 'underload' as const, openedAt: 1_767_000_000_000 }
const member = {
  host: { id: 'h2', site: 'eu', capacity: { cpu: 32, mem: 131072, disk: 1000 }, state: 'up' as const },
  vms: [
    { id: 'a', host: 'h2', demand: { cpu: 1.5, mem: 2048, disk: 0 }, memoryBytes: 2 ** 31 },
    {
      id: 'b',
      host: 'h2',
      demand: { cpu: 0.25, mem: 4096, disk: 10 },
      memoryBytes: 2 ** 32,
      lastMovedAt: 1_767_000_000_500,
      constraints: {
        pin: 'h2',
        ban: ['h7', 'h9'],
        antiAffinity: 'db',
        sites: [{ site: 'us', fromHour: 18, toHour: 6 }],
      },
    },
  ],
}

describe('placement wire codec', () => {
  it('round-trips every message type', () => {
    const msgs: PlacementMessage[] = [
      { type: 'join', event, leaseMs: 10_000 },
      { type: 'joined', eventId: event.id, member },
      { type: 'busy', eventId: event.id, holder: { ...event, id: 'h5#1', leader: 'h5', kind: 'overload' } },
      { type: 'yield', eventId: 'h5#1', to: { ...event, kind: 'drain' } },
      { type: 'renew', eventId: event.id, leaseMs: 5000 },
      { type: 'renewed', eventId: event.id },
      { type: 'left', eventId: event.id },
      { type: 'release', eventId: event.id },
    ]
    for (const m of msgs) assert.deepEqual(decodePlacementMessage(encodePlacementMessage(m)), m)
  })

  it('rejects malformed, oversized and over-limit messages with a code', () => {
    const code = (bytes: Uint8Array) => {
      try {
        decodePlacementMessage(bytes)
      } catch (err) {
        assert.ok(err instanceof PlacementCodecError)
        return err.code
      }
      return 'accepted'
    }
    assert.equal(code(new Uint8Array([0xff, 0xff, 0xff])), 'malformed')
    assert.equal(code(new Uint8Array(MAX_MESSAGE_BYTES + 1)), 'oversized')
    assert.equal(
      code(pb.PlacementMessage.encode({ type: 0, eventId: 'x' }).finish()),
      'malformed',
      'join without event',
    )
    assert.equal(code(pb.PlacementMessage.encode({ type: 42 as 0, eventId: 'x' }).finish()), 'malformed')
    assert.equal(code(pb.PlacementMessage.encode({ type: 7 }).finish()), 'malformed', 'no event id')
    const many = {
      ...member,
      vms: Array.from({ length: MAX_VMS_PER_MEMBER + 1 }, (_, i) => ({ ...member.vms[0]!, id: `v${i}` })),
    }
    assert.equal(code(encodePlacementMessage({ type: 'joined', eventId: 'e', member: many })), 'malformed')
    const negative = { ...member, vms: [{ ...member.vms[0]!, demand: { cpu: -1, mem: 1, disk: 0 } }] }
    assert.equal(
      code(encodePlacementMessage({ type: 'joined', eventId: 'e', member: negative })),
      'malformed',
    )
    const badHour = {
      ...member,
      vms: [{ ...member.vms[0]!, constraints: { sites: [{ site: 'eu', fromHour: 30, toHour: 2 }] } }],
    }
    assert.equal(code(encodePlacementMessage({ type: 'joined', eventId: 'e', member: badHour })), 'malformed')
  })
})
