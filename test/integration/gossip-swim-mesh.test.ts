// Five real libp2p hosts in-process on 127.0.0.1 running SWIM with fast settings: they learn the
// whole mesh from one seed each, drop bad input and keep working, refute a false suspicion, see a
// graceful leave as `left` and an abrupt stop as suspect then dead.
import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import pino from 'pino'
import { memberToWire, SWIM_PROTOCOL, Swim, type SwimInit } from '../../src/gossip/swim/index.js'
import type { DropReason, MemberStatus } from '../../src/gossip/types.js'
import { createHost, type Host } from '../../src/node/p2p.js'
import { pb } from '../../src/proto/index.js'

const FAST: SwimInit = {
  probeIntervalMs: 200,
  probeTimeoutMs: 100,
  leavePropagateMs: 3000,
}

const logger = pino({ level: process.env.SWIM_TEST_LOG ?? 'silent' })

interface TestNode {
  host: Host
  swim: Swim
  id: string
  drops: Map<DropReason, number>
  events: { type: string; peerId: string }[]
  stopped: boolean
}

async function makeNode(): Promise<TestNode> {
  const host = await createHost({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
  })
  const drops = new Map<DropReason, number>()
  const swim = new Swim(
    { host, logger, self: { site: 'test', addrs: () => host.getMultiaddrs().map(String) } },
    { ...FAST, onDrop: (r) => drops.set(r, (drops.get(r) ?? 0) + 1) },
  )
  const node: TestNode = { host, swim, id: host.peerId.toString(), drops, events: [], stopped: false }
  for (const type of ['member:alive', 'member:suspect', 'member:dead', 'member:left'] as const) {
    swim.addEventListener(type, (e) => node.events.push({ type, peerId: e.detail.peerId }))
  }
  await swim.start()
  return node
}

async function stopNode(n: TestNode): Promise<void> {
  if (n.stopped) return
  n.stopped = true
  await n.swim.stop()
  await n.host.stop()
}

/** Who sees whom, for failure messages. */
function describeViews(nodes: TestNode[]): string {
  const short = (id: string) => id.slice(-6)
  return nodes
    .map(
      (n) =>
        `${short(n.id)}${n.stopped ? ' (stopped)' : ''}: ` +
        n.swim
          .members()
          .map((m) => `${short(m.peerId)}=${m.status}@${m.incarnation % 100_000}`)
          .join(' '),
    )
    .join('\n')
}

async function waitFor(
  what: string,
  pred: () => boolean,
  timeoutMs: number,
  nodes: TestNode[] = [],
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!pred()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${describeViews(nodes)}`)
    }
    await new Promise((r) => setTimeout(r, 50))
  }
}

function statusAt(n: TestNode, peerId: string): MemberStatus | undefined {
  return n.swim.member(peerId)?.status
}

/** One raw exchange on the SWIM protocol from a host that is not a member. */
async function rawStream(from: Host, to: TestNode) {
  await from.peerStore.merge(to.host.peerId, { multiaddrs: to.host.getMultiaddrs() })
  return from.dialProtocol(to.host.peerId, SWIM_PROTOCOL, { signal: AbortSignal.timeout(5000) })
}

describe('swim over real libp2p hosts', { timeout: 120_000 }, () => {
  const nodes: TestNode[] = []
  let outsider: Host | undefined
  const live = () => nodes.filter((n) => !n.stopped)

  before(async () => {
    for (let i = 0; i < 5; i++) nodes.push(await makeNode())
  })

  after(async () => {
    await Promise.all(nodes.map(stopNode))
    await outsider?.stop()
  })

  it('learns every member from one seed each', { timeout: 20_000 }, async () => {
    const seed = nodes[0] as TestNode
    for (const n of nodes.slice(1)) n.swim.addSeed(seed.host.peerId, seed.host.getMultiaddrs())
    await waitFor(
      'all five to see five alive members',
      () => nodes.every((n) => n.swim.aliveCount() === 5 && n.swim.members().length === 5),
      15_000,
      nodes,
    )
    for (const n of nodes) {
      for (const m of nodes) {
        const view = n.swim.member(m.id)
        assert.equal(view?.status, 'alive')
        assert.equal(view?.self, n === m)
        assert.equal(view?.site, 'test')
        assert.ok((view?.incarnation ?? 0) > 0, `${n.id} holds a real incarnation for ${m.id}`)
        assert.ok((view?.addrs.length ?? 0) > 0, `${n.id} holds addresses for ${m.id}`)
      }
      const s = n.swim.stats()
      assert.ok(s.messagesIn.ping > 0 && s.messagesOut.ack > 0, `${n.id} answered pings`)
    }
  })

  it('probes and gossip reuse one long-lived stream per peer', { timeout: 20_000 }, async () => {
    const before = nodes.map((n) => n.swim.stats())
    // Twenty probe intervals: each member gets probed about four times, and pushes go out on top.
    await new Promise((r) => setTimeout(r, 20 * (FAST.probeIntervalMs ?? 200)))
    let pings = 0
    let opened = 0
    nodes.forEach((n, i) => {
      const s = n.swim.stats()
      pings += s.messagesOut.ping - (before[i]?.messagesOut.ping ?? 0)
      opened += s.streamsOpened - (before[i]?.streamsOpened ?? 0)
    })
    assert.ok(pings >= 40, `${pings} pings sent`)
    // A stream per exchange (the old way) opens as many streams as pings; a channel breaks only
    // when its connection does or after several silent timeouts in a row.
    assert.ok(opened * 4 <= pings, `${opened} streams opened for ${pings} pings`)
    const n = nodes[1] as TestNode
    for (const m of nodes) {
      if (m === n) continue
      const open = n.host
        .getConnections(m.host.peerId)
        .flatMap((c) => c.streams)
        .filter((s) => s.protocol === SWIM_PROTOCOL && s.direction === 'outbound' && s.status === 'open')
      assert.ok(open.length <= 2, `${open.length} outbound SWIM streams open to one peer`)
    }
  })

  it('drops garbage, oversized and over-count messages, counts them, and keeps working', {
    timeout: 20_000,
  }, async () => {
    const target = nodes[0] as TestNode
    outsider = await createHost({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    const before = (r: DropReason) => target.drops.get(r) ?? 0
    const malformed0 = before('malformed')
    const oversized0 = before('oversized')
    const tooMany0 = before('too-many-items')

    // Garbage inside a valid frame.
    const s1 = await rawStream(outsider, target)
    await lpStream(s1).write(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02]))
    // A frame that announces 100 KiB (the limit is 64 KiB).
    const s2 = await rawStream(outsider, target)
    try {
      await lpStream(s2).write(new Uint8Array(100 * 1024), { signal: AbortSignal.timeout(5000) })
    } catch {
      // the receiver may reset the stream before the whole frame is out
    }
    // 33 updates (the limit is 32).
    const someone = memberToWire({
      peerId: target.id,
      addrs: [],
      incarnation: 1,
      status: 'alive',
      site: '',
    })
    const s3 = await rawStream(outsider, target)
    await lpStream(s3).write(
      pb.SwimMessage.encode({
        type: pb.SwimMessage.Type.PING,
        seq: 1,
        updates: Array(33).fill(someone),
      }).finish(),
    )
    await waitFor(
      'the three drops to be counted',
      () =>
        before('malformed') > malformed0 &&
        before('oversized') > oversized0 &&
        before('too-many-items') > tooMany0,
      10_000,
    )
    for (const s of [s1, s2, s3]) s.abort(new Error('done'))

    // A PING with one bad update and one good one: the bad one is dropped alone, the PING answered.
    const stranger = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
    const good = memberToWire({
      peerId: stranger.toString(),
      addrs: [],
      incarnation: 7,
      status: 'dead',
      site: 'x',
    })
    const bad = { ...good, peerId: new Uint8Array([1, 2, 3, 4]) }
    const malformed1 = before('malformed')
    const s4 = await rawStream(outsider, target)
    const lp = lpStream(s4, { maxDataLength: 64 * 1024 })
    const signal = AbortSignal.timeout(5000)
    await lp.write(
      pb.SwimMessage.encode({ type: pb.SwimMessage.Type.PING, seq: 42, updates: [bad, good] }).finish(),
      {
        signal,
      },
    )
    const ack = pb.SwimMessage.decode((await lp.read({ signal })).subarray())
    await s4.close()
    assert.equal(ack.type, pb.SwimMessage.Type.ACK)
    assert.equal(ack.seq, 42)
    assert.ok((ack.updates?.length ?? 0) >= 1, 'the ACK piggybacks at least the responder itself')
    assert.equal(before('malformed'), malformed1 + 1)
    assert.equal(target.swim.member(stranger.toString())?.status, 'dead')

    // The mesh still works: a few rounds later everyone sees the five members alive.
    await new Promise((r) => setTimeout(r, 1000))
    await waitFor('five alive everywhere', () => nodes.every((n) => n.swim.aliveCount() === 5), 10_000, nodes)
  })

  it('a falsely suspected member refutes at a higher incarnation', { timeout: 20_000 }, async () => {
    const accuser = nodes[0] as TestNode
    const victim = nodes[1] as TestNode
    const inc = victim.swim.incarnation
    const seen = nodes.map((n) => n.events.length)
    const record = victim.swim
      .snapshot()
      .find((m) => m.status === pb.MemberStatus.ALIVE && m.incarnation === inc)
    assert.ok(record)
    accuser.swim.mergeMembers([{ ...record, status: pb.MemberStatus.SUSPECT }])
    assert.equal(statusAt(accuser, victim.id), 'suspect')
    await waitFor(
      'everyone to see the victim alive at a higher incarnation',
      () =>
        victim.swim.incarnation > inc &&
        nodes.every(
          (n) => statusAt(n, victim.id) === 'alive' && (n.swim.member(victim.id)?.incarnation ?? 0) > inc,
        ),
      10_000,
      nodes,
    )
    assert.ok(victim.swim.stats().refutations >= 1, 'the victim counted a refutation')
    const since = (n: TestNode) =>
      n.events.slice(seen[nodes.indexOf(n)]).filter((e) => e.peerId === victim.id)
    assert.ok(
      since(accuser).some((e) => e.type === 'member:alive'),
      'the accuser saw it come back',
    )
  })

  it('a graceful leave is seen as left, not dead', { timeout: 30_000 }, async () => {
    const leaver = nodes[3] as TestNode
    const inc = leaver.swim.incarnation
    await leaver.swim.leave()
    await stopNode(leaver)
    await waitFor(
      'the others to see it left',
      () => live().every((n) => statusAt(n, leaver.id) === 'left'),
      10_000,
      nodes,
    )
    // Longer than a suspicion timeout: a late suspicion must not turn LEFT into DEAD.
    await new Promise((r) => setTimeout(r, 2000))
    for (const n of live()) {
      const view = n.swim.member(leaver.id)
      assert.equal(view?.status, 'left')
      assert.ok((view?.incarnation ?? 0) > inc)
      assert.ok(n.events.some((e) => e.type === 'member:left' && e.peerId === leaver.id))
    }
    await waitFor(
      'four alive at the others',
      () => live().every((n) => n.swim.aliveCount() === 4),
      10_000,
      nodes,
    )
  })

  it('an abruptly stopped host is suspected, then declared dead by every other member', {
    timeout: 40_000,
  }, async () => {
    const victim = nodes[4] as TestNode
    const stoppedAt = Date.now()
    victim.stopped = true
    await victim.host.stop()
    await victim.swim.stop()
    const others = live()
    assert.equal(others.length, 3)
    await waitFor(
      'every other member to declare it dead',
      () => others.every((n) => statusAt(n, victim.id) === 'dead'),
      30_000,
    )
    for (const n of others) {
      const mine = n.events.filter((e) => e.peerId === victim.id).map((e) => e.type)
      const dead = mine.lastIndexOf('member:dead')
      assert.ok(dead >= 0)
      assert.ok(
        mine.slice(0, dead).includes('member:suspect'),
        `suspect before dead at ${n.id}: ${mine.join(',')}`,
      )
      assert.ok((n.swim.member(victim.id)?.statusSince ?? 0) >= stoppedAt)
    }
    await waitFor(
      'three alive at the others',
      () => others.every((n) => n.swim.aliveCount() === 3),
      10_000,
      nodes,
    )
  })
})
