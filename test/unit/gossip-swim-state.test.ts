// The pure parts of SWIM: member list rules, refutation, suspicion timeouts, broadcast queue, codec.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { decodeMessage, encodeMessage, memberFromWire } from '../../src/gossip/swim/codec.js'
import {
  BroadcastQueue,
  LocalHealth,
  MemberList,
  type MemberUpdate,
  memberToWire,
  resolveSwimConfig,
  retransmitLimit,
  Suspicion,
  suspicionConfirmations,
  suspicionMinTimeoutMs,
  suspicionTimeoutMs,
} from '../../src/gossip/swim/index.js'
import { pb } from '../../src/proto/index.js'

const ids = await Promise.all(
  Array.from({ length: 12 }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()),
)
const SELF = ids[0] as string
const A = ids[1] as string
const B = ids[2] as string
const C = ids[3] as string
const ADDR = '/ip4/127.0.0.1/tcp/4001'

const T0 = 1_000_000
const PROBE = 1000

function list(opts: { incarnation?: number; reapAfterMs?: number } = {}): MemberList {
  return new MemberList({
    self: { peerId: SELF, addrs: [ADDR], site: 'here', incarnation: opts.incarnation ?? 100 },
    probeIntervalMs: PROBE,
    suspicionMult: 4,
    suspicionMaxTimeoutMult: 6,
    reapAfterMs: opts.reapAfterMs ?? 60_000,
    now: T0,
  })
}

function upd(peerId: string, status: MemberUpdate['status'], incarnation: number): MemberUpdate {
  return { peerId, addrs: [ADDR], incarnation, status, site: 's' }
}

describe('swim member list: incarnation rules', () => {
  it('adds a new member and emits alive', () => {
    const l = list()
    const r = l.apply(upd(A, 'alive', 5), T0)
    assert.equal(r.accepted, true)
    assert.equal(r.added, true)
    assert.equal(r.event?.type, 'alive')
    assert.deepEqual(r.broadcast, upd(A, 'alive', 5))
    assert.equal(l.get(A)?.status, 'alive')
    assert.equal(l.numLive(), 2)
  })

  it('alive overrides alive and suspect only at a higher incarnation', () => {
    const l = list()
    l.apply(upd(A, 'alive', 5), T0)
    assert.equal(l.apply(upd(A, 'alive', 5), T0).accepted, false)
    assert.equal(l.apply(upd(A, 'alive', 4), T0).accepted, false)
    const r = l.apply({ ...upd(A, 'alive', 6), addrs: ['/ip4/10.0.0.1/tcp/1'] }, T0)
    assert.equal(r.accepted, true)
    assert.equal(r.event, undefined, 'alive -> alive is no status change')
    assert.deepEqual(l.get(A)?.addrs, ['/ip4/10.0.0.1/tcp/1'])

    assert.equal(l.apply(upd(A, 'suspect', 6), T0).event?.type, 'suspect')
    assert.equal(l.apply(upd(A, 'alive', 6), T0).accepted, false, 'alive@i does not clear suspect@i')
    const back = l.apply(upd(A, 'alive', 7), T0 + 10)
    assert.equal(back.event?.type, 'alive')
    assert.equal(back.event?.member.statusSince, T0 + 10)
    assert.equal(l.suspicionOf(A), undefined, 'the suspicion timer is gone')
  })

  it('suspect overrides alive at the same or a higher incarnation, not a lower one', () => {
    const l = list()
    l.apply(upd(A, 'alive', 5), T0)
    assert.equal(l.apply(upd(A, 'suspect', 4), T0).accepted, false)
    assert.equal(l.get(A)?.status, 'alive')
    assert.equal(l.apply(upd(A, 'suspect', 5), T0).accepted, true)
    assert.equal(l.get(A)?.status, 'suspect')
    l.apply(upd(C, 'alive', 1), T0)
    assert.equal(l.apply(upd(C, 'suspect', 3), T0).accepted, true)
    assert.equal(l.get(C)?.incarnation, 3)
  })

  it('dead and left override alive/suspect at the same or a higher incarnation', () => {
    const l = list()
    l.apply(upd(A, 'alive', 5), T0)
    assert.equal(l.apply(upd(A, 'dead', 4), T0).accepted, false)
    assert.equal(l.apply(upd(A, 'dead', 5), T0).event?.type, 'dead')
    l.apply(upd(B, 'alive', 5), T0)
    l.apply(upd(B, 'suspect', 5), T0)
    assert.equal(l.apply(upd(B, 'left', 6), T0).event?.type, 'left')
    assert.equal(l.suspicionOf(B), undefined)
  })

  it('keeps dead members so stale alive or suspect gossip cannot revive them', () => {
    const l = list()
    l.apply(upd(A, 'alive', 5), T0)
    l.apply(upd(A, 'dead', 5), T0)
    for (const u of [upd(A, 'alive', 5), upd(A, 'alive', 3), upd(A, 'suspect', 9), upd(A, 'dead', 9)]) {
      assert.equal(l.apply(u, T0).accepted, false, `${u.status}@${u.incarnation}`)
      assert.equal(l.get(A)?.status, 'dead')
    }
    // A restarted agent comes back with a higher incarnation (Date.now() at its start).
    const r = l.apply(upd(A, 'alive', 6), T0)
    assert.equal(r.event?.type, 'alive')
  })

  it('LEFT at a higher incarnation replaces DEAD; DEAD never replaces LEFT', () => {
    const l = list()
    l.apply(upd(A, 'alive', 5), T0)
    l.apply(upd(A, 'dead', 5), T0)
    assert.equal(l.apply(upd(A, 'left', 5), T0).accepted, false)
    assert.equal(l.apply(upd(A, 'left', 6), T0).event?.type, 'left')
    assert.equal(l.apply(upd(A, 'dead', 7), T0).accepted, false)
    assert.equal(l.get(A)?.status, 'left')
  })

  it('records a dead stranger as a tombstone, reaped after reapAfterMs', () => {
    const l = list({ reapAfterMs: 5000 })
    assert.equal(l.apply(upd(A, 'dead', 5), T0).event?.type, 'dead')
    assert.equal(l.apply(upd(A, 'alive', 5), T0).accepted, false)
    assert.equal(l.numLive(), 1)
    l.tick(T0 + 4999)
    assert.equal(l.get(A)?.status, 'dead')
    l.tick(T0 + 5000)
    assert.equal(l.get(A), undefined)
  })

  it('refuses newcomers beyond maxMembers', () => {
    const l = new MemberList({
      self: { peerId: SELF, addrs: [], site: '', incarnation: 1 },
      probeIntervalMs: PROBE,
      suspicionMult: 4,
      suspicionMaxTimeoutMult: 6,
      reapAfterMs: 1000,
      maxMembers: 3,
      now: T0,
    })
    assert.equal(l.apply(upd(A, 'alive', 1), T0).accepted, true)
    assert.equal(l.addSeed(B, [], T0).accepted, true)
    assert.deepEqual(l.apply(upd(C, 'alive', 1), T0), { accepted: false, full: true })
    assert.equal(l.addSeed(C, [], T0).full, true)
    assert.equal(l.apply(upd(A, 'alive', 2), T0).accepted, true, 'known members still update')
  })

  it('a seed is a placeholder at incarnation 0 that any real record outranks', () => {
    const l = list()
    const r = l.addSeed(A, [ADDR], T0)
    assert.equal(r.added, true)
    assert.equal(r.broadcast, undefined, 'placeholders are not gossiped')
    assert.equal(l.get(A)?.incarnation, 0)
    assert.equal(l.apply(upd(A, 'alive', 1_700_000_000_000), T0).accepted, true)
    assert.equal(l.addSeed(A, [], T0).accepted, false)
    l.apply(upd(A, 'dead', 1_700_000_000_000), T0)
    assert.equal(l.addSeed(A, [ADDR], T0).accepted, false, 'a connection does not revive a dead member')
    assert.equal(l.get(A)?.status, 'dead')
    assert.equal(l.addSeed(SELF, [ADDR], T0).accepted, false)
  })
})

describe('swim member list: refutation', () => {
  it('a suspect claim about us raises our incarnation and gossips alive', () => {
    const l = list({ incarnation: 100 })
    const r = l.apply(upd(SELF, 'suspect', 100), T0, A)
    assert.equal(r.refuted, true)
    assert.equal(l.incarnation, 101)
    assert.deepEqual(r.broadcast?.status, 'alive')
    assert.equal(r.broadcast?.incarnation, 101)
    assert.equal(r.event, undefined)
  })

  it('a dead claim about us at a higher incarnation is outranked', () => {
    const l = list({ incarnation: 100 })
    const r = l.apply(upd(SELF, 'dead', 250), T0, A)
    assert.equal(r.refuted, true)
    assert.equal(l.incarnation, 251)
    assert.equal(l.selfUpdate().status, 'alive')
  })

  it('an old accusation re-gossips our alive without a new incarnation', () => {
    const l = list({ incarnation: 100 })
    const r = l.apply(upd(SELF, 'suspect', 0), T0, A)
    assert.equal(r.refuted, undefined)
    assert.equal(r.broadcast?.incarnation, 100)
    assert.equal(l.incarnation, 100)
  })

  it('alive claims about us: equal or older ignored, newer outranked', () => {
    const l = list({ incarnation: 100 })
    assert.equal(l.apply(upd(SELF, 'alive', 100), T0).accepted, false)
    assert.equal(l.apply(upd(SELF, 'alive', 120), T0).refuted, true)
    assert.equal(l.incarnation, 121)
  })

  it('leave() gossips LEFT at a higher incarnation and stops refuting', () => {
    const l = list({ incarnation: 100 })
    const u = l.leave(T0)
    assert.deepEqual([u.status, u.incarnation], ['left', 101])
    assert.equal(l.apply(upd(SELF, 'dead', 101), T0).accepted, false)
    assert.equal(l.aliveCount(), 0)
  })
})

describe('swim suspicion timeouts', () => {
  it('the minimum grows with log10 of the mesh size (memberlist suspicionTimeout)', () => {
    assert.equal(suspicionMinTimeoutMs(4, 1, 1000), 4000)
    assert.equal(suspicionMinTimeoutMs(4, 10, 1000), 4000)
    assert.equal(suspicionMinTimeoutMs(4, 100, 1000), 8000)
    assert.equal(suspicionMinTimeoutMs(4, 1000, 1000), 12000)
    assert.equal(suspicionMinTimeoutMs(4, 50, 1000), 6792)
    assert.ok(suspicionMinTimeoutMs(4, 200, 1000) > suspicionMinTimeoutMs(4, 50, 1000))
  })

  it('expects suspicionMult - 2 confirmations, none in a tiny mesh', () => {
    assert.equal(suspicionConfirmations(4, 3), 0)
    assert.equal(suspicionConfirmations(4, 4), 2)
    assert.equal(suspicionConfirmations(4, 100), 2)
    assert.equal(suspicionConfirmations(6, 100), 4)
  })

  it('shrinks from max toward min as independent confirmations arrive (Lifeguard)', () => {
    const s = new Suspicion({ start: 0, k: 3, minMs: 1000, maxMs: 6000, from: 'a' })
    assert.equal(s.deadline, 6000)
    assert.equal(s.confirm('a'), false, 'the accuser is not its own confirmation')
    assert.equal(s.confirm('b'), true)
    const d1 = s.deadline
    assert.equal(d1, suspicionTimeoutMs(1, 3, 1000, 6000))
    assert.ok(d1 < 6000 && d1 > 1000)
    assert.equal(s.confirm('b'), false, 'duplicates do not count')
    assert.equal(s.confirm('c'), true)
    assert.ok(s.deadline < d1)
    assert.equal(s.confirm('d'), true)
    assert.equal(s.deadline, 1000)
    assert.equal(s.confirm('e'), false, 'no more than k')
    assert.equal(new Suspicion({ start: 5, k: 0, minMs: 1000, maxMs: 6000 }).deadline, 1005)
  })

  it('a suspect becomes dead when its timer runs out; independent evidence brings it forward', () => {
    const l = list()
    for (const id of ids.slice(1, 11)) l.apply(upd(id, 'alive', 1), T0)
    assert.equal(l.numLive(), 11)
    const D = ids[4] as string
    l.apply(upd(A, 'suspect', 1), T0)
    const s0 = l.suspicionOf(A)
    assert.ok(s0)
    const min = suspicionMinTimeoutMs(4, 11, PROBE)
    assert.deepEqual([s0.k, s0.minMs, s0.maxMs, s0.deadline], [2, min, 6 * min, T0 + 6 * min])
    // Relayed gossip is not evidence: it cannot be told from the original accusation.
    assert.equal(l.apply(upd(A, 'suspect', 1), T0 + 100).accepted, false)
    assert.equal(l.suspicionOf(A)?.confirmations, 0)
    // First-hand failures (a PING_REQ about A from C, a NACK from D) confirm, each observer once.
    const c1 = l.observeFailure(A, C, T0 + 100)
    assert.equal(c1.accepted, true)
    assert.deepEqual(c1.broadcast, upd(A, 'suspect', 1), 'a confirmation is gossiped again')
    assert.equal(c1.event, undefined)
    assert.equal(l.observeFailure(A, C, T0 + 150).accepted, false)
    const d1 = l.suspicionOf(A)?.deadline ?? 0
    assert.ok(d1 < T0 + 6 * min && d1 > T0 + min)
    l.observeFailure(A, D, T0 + 200)
    assert.equal(l.suspicionOf(A)?.deadline, T0 + min)
    assert.deepEqual(l.tick(T0 + min - 1), [])
    const out = l.tick(T0 + min)
    assert.equal(out.length, 1)
    assert.equal(out[0]?.event?.type, 'dead')
    assert.deepEqual(out[0]?.broadcast, upd(A, 'dead', 1))
    assert.equal(l.get(A)?.status, 'dead')
  })

  it('evidence seen just before a suspicion starts counts toward it', () => {
    const l = list()
    for (const id of ids.slice(1, 11)) l.apply(upd(id, 'alive', 1), T0)
    const min = suspicionMinTimeoutMs(4, 11, PROBE)
    l.observeFailure(A, B, T0)
    l.observeFailure(A, C, T0 + 10)
    l.observeFailure(A, ids[4] as string, T0 - 10 * min)
    // Our own probe fails: we accuse, the two recent observations confirm.
    const r = l.suspect(A, T0 + 20)
    assert.equal(r.event?.type, 'suspect')
    assert.equal(l.suspicionOf(A)?.confirmations, 2)
    assert.equal(l.suspicionOf(A)?.deadline, T0 + 20 + min)
    // A refutation clears the suspicion; a later one starts from scratch.
    l.apply(upd(A, 'alive', 2), T0 + 30)
    l.apply(upd(A, 'suspect', 2), T0 + 40)
    assert.equal(l.suspicionOf(A)?.confirmations, 0)
    assert.equal(l.suspicionOf(A)?.deadline, T0 + 40 + 6 * min)
  })

  it('the timeout of a fresh suspicion grows with the mesh size', () => {
    const small = list()
    small.apply(upd(A, 'alive', 1), T0)
    small.apply(upd(A, 'suspect', 1), T0)
    const big = new MemberList({
      self: { peerId: SELF, addrs: [], site: '', incarnation: 1 },
      probeIntervalMs: PROBE,
      suspicionMult: 4,
      suspicionMaxTimeoutMult: 6,
      reapAfterMs: 1000,
      now: T0,
    })
    // 200 members (random-looking but valid ids are not needed by the pure list).
    for (let i = 0; i < 200; i++) big.apply(upd(`member-${i}`, 'alive', 1), T0)
    big.apply(upd('member-0', 'suspect', 1), T0)
    const a = small.suspicionOf(A)
    const b = big.suspicionOf('member-0')
    assert.ok(a && b)
    assert.equal(a.minMs, 4000)
    assert.ok(b.minMs > a.minMs)
    assert.ok(b.deadline > a.deadline)
  })
})

describe('swim broadcast queue', () => {
  it('retransmits retransmitMult * ceil(log10(n+1)) times', () => {
    assert.equal(retransmitLimit(4, 1), 4)
    assert.equal(retransmitLimit(4, 9), 4)
    assert.equal(retransmitLimit(4, 10), 8)
    assert.equal(retransmitLimit(4, 100), 12)
    for (const n of [5, 50]) {
      const q = new BroadcastQueue<string>({ retransmitMult: 4, maxQueued: 100 })
      q.enqueue('a', 'a1', 10)
      let sent = 0
      while (q.take(n, { maxItems: 32, maxBytes: 1000 }).length > 0) sent++
      assert.equal(sent, retransmitLimit(4, n))
      assert.equal(q.size, 0)
    }
  })

  it('a newer update about the same member replaces the queued one (and its count)', () => {
    const q = new BroadcastQueue<string>({ retransmitMult: 1, maxQueued: 100 })
    q.enqueue('a', 'a-old', 10)
    q.enqueue('b', 'b', 10)
    q.take(100, { maxItems: 32, maxBytes: 1000 })
    assert.equal(q.transmits('a'), 1)
    q.enqueue('a', 'a-new', 10)
    assert.equal(q.size, 2)
    assert.equal(q.transmits('a'), 0)
    assert.deepEqual(q.take(100, { maxItems: 1, maxBytes: 1000 }), ['a-new'])
  })

  it('sends the least-sent first, newest first among equals, within item and byte bounds', () => {
    const q = new BroadcastQueue<string>({ retransmitMult: 4, maxQueued: 100 })
    q.enqueue('a', 'a', 100)
    q.enqueue('b', 'b', 100)
    assert.deepEqual(q.take(5, { maxItems: 1, maxBytes: 1000 }), ['b'])
    q.enqueue('c', 'c', 100)
    assert.deepEqual(q.take(5, { maxItems: 32, maxBytes: 1000 }), ['c', 'a', 'b'])
    assert.deepEqual(q.take(5, { maxItems: 32, maxBytes: 150 }), ['c'], 'byte budget')
    for (let i = 0; i < 40; i++) q.enqueue(`m${i}`, `m${i}`, 1)
    assert.equal(q.take(5, { maxItems: 32, maxBytes: 10_000 }).length, 32)
  })

  it('an undelivered transmission is given back, unless a newer update replaced it', () => {
    const q = new BroadcastQueue<string>({ retransmitMult: 1, maxQueued: 100 })
    q.enqueue('a', 'a1', 1)
    assert.deepEqual(q.take(5, { maxItems: 32, maxBytes: 100 }), ['a1'])
    assert.equal(q.isPending('a', 5), false, 'limit 1 reached')
    assert.equal(q.pending(5), 0)
    q.restore('a', 'a1')
    assert.equal(q.isPending('a', 5), true)
    assert.deepEqual(q.take(5, { maxItems: 32, maxBytes: 100 }), ['a1'])
    q.enqueue('a', 'a2', 1)
    q.restore('a', 'a1')
    assert.equal(q.transmits('a'), 0)
    assert.deepEqual(q.take(5, { maxItems: 32, maxBytes: 100 }), ['a2'])
    assert.deepEqual(q.take(5, { maxItems: 32, maxBytes: 100 }), [])
    assert.equal(q.size, 0)
  })

  it('is bounded: beyond maxQueued the most-sent entries go', () => {
    const q = new BroadcastQueue<string>({ retransmitMult: 4, maxQueued: 3 })
    q.enqueue('a', 'a', 1)
    q.take(5, { maxItems: 1, maxBytes: 10 })
    q.enqueue('b', 'b', 1)
    q.enqueue('c', 'c', 1)
    q.enqueue('d', 'd', 1)
    assert.equal(q.size, 3)
    assert.equal(q.has('a'), false)
  })
})

describe('swim codec and health', () => {
  it('round-trips a member and drops bad peer ids or too many addresses alone', () => {
    const u: MemberUpdate = {
      peerId: A,
      addrs: [ADDR],
      incarnation: 1_700_000_000_123,
      status: 'suspect',
      site: 'x',
    }
    const wire = pb.Member.decode(pb.Member.encode(memberToWire(u)).finish())
    assert.deepEqual(memberFromWire(wire), { ok: true, value: u })
    assert.deepEqual(memberFromWire({ ...memberToWire(u), peerId: new Uint8Array([1, 2, 3]) }), {
      ok: false,
      reason: 'malformed',
    })
    const nine = Array.from({ length: 9 }, () => memberToWire(u).addrs?.[0] as Uint8Array)
    assert.deepEqual(memberFromWire({ ...memberToWire(u), addrs: nine }), {
      ok: false,
      reason: 'too-many-items',
    })
    assert.deepEqual(memberFromWire(Object.assign(memberToWire(u), { status: 9 })), {
      ok: false,
      reason: 'malformed',
    })
    const zero = pb.Member.decode(pb.Member.encode({ peerId: memberToWire(u).peerId }).finish())
    assert.equal(memberFromWire(zero).ok && memberFromWire(zero).ok, true)
  })

  it('drops garbage and over-count messages', () => {
    assert.deepEqual(decodeMessage(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff])), {
      ok: false,
      reason: 'malformed',
    })
    assert.deepEqual(decodeMessage(new Uint8Array(70 * 1024)), { ok: false, reason: 'oversized' })
    const m = memberToWire(upd(A, 'alive', 1))
    const many = encodeMessage({ type: pb.SwimMessage.Type.PING, seq: 1, updates: Array(33).fill(m) })
    assert.deepEqual(decodeMessage(many), { ok: false, reason: 'too-many-items' })
    const bad = encodeMessage({ type: 7, seq: 1, updates: [] })
    assert.deepEqual(decodeMessage(bad), { ok: false, reason: 'malformed' })
    const ok = decodeMessage(encodeMessage({ type: pb.SwimMessage.Type.PING_REQ, seq: 9, updates: [m] }))
    assert.equal(ok.ok, true)
  })

  it('local health stays within 0..max and scales timeouts by LHM + 1', () => {
    const h = new LocalHealth(8)
    h.apply(-1)
    assert.equal(h.value, 0)
    assert.equal(h.scale(500), 500)
    h.apply(20)
    assert.equal(h.value, 8)
    assert.equal(h.scale(500), 4500)
  })

  it('validates its config', () => {
    assert.equal(resolveSwimConfig().probeIntervalMs, 1000)
    assert.throws(() => resolveSwimConfig({ probeTimeoutMs: 2000 }), /probeTimeoutMs/)
    assert.throws(() => resolveSwimConfig({ gossipNodes: -1 }), /gossipNodes/)
  })
})
