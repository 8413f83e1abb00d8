import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { pino } from 'pino'
import {
  encodeSignedHostState,
  HOST_STATE_TOPIC,
  HostStateService,
  InvalidSyncResponseError,
  type Member,
  SIGNATURE_PREFIX,
  SYNC_PROTOCOL,
} from '../../src/gossip/state/index.js'
import type { DropReason, LocalHostState, VmSummaryView } from '../../src/gossip/types.js'
import { createHost, type Host } from '../../src/node/p2p.js'
import { pb } from '../../src/proto/index.js'

const logger = pino({ level: 'silent' })

interface Node {
  key: PrivateKey
  host: Host
  id: string
  local: LocalHostState
  service: HostStateService
  drops: Array<[DropReason, string]>
  members: Member[][]
}

const vm = (id: string, epoch = 1): VmSummaryView => ({
  id,
  name: id,
  vcpus: 1,
  memoryMiB: 256,
  diskMiB: 1024,
  cpu: 0.2,
  dirtyMiBps: 0,
  state: 'running',
  epoch,
})

async function startNode(
  site: string,
  extra: Partial<ConstructorParameters<typeof HostStateService>[0]> = {},
) {
  const key = await generateKeyPair('Ed25519')
  const host = await createHost({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
  const node = {
    key,
    host,
    id: host.peerId.toString(),
    local: {
      site,
      capacity: { vcpus: 8, memoryMiB: 8192, diskMiB: 100_000 },
      used: { vcpus: 0, memoryMiB: 0, diskMiB: 0 },
      cpuLoad: 0,
      vms: [],
      agentVersion: 'test',
      addrs: host.getMultiaddrs().map((a) => a.toString()),
    },
    drops: [],
    members: [],
  } as unknown as Node
  node.service = new HostStateService(
    {
      host,
      privateKey: key,
      logger,
      localState: () => node.local,
      onDrop: (reason, source) => node.drops.push([reason, source]),
      onMembers: (m) => node.members.push(m),
      ...extra,
    },
    { debounceMs: 20, syncIntervalMs: 0, syncTimeoutMs: 3000 },
  )
  await node.service.start()
  return node
}

async function connect(a: Node, b: Node): Promise<void> {
  const addr = b.host.getMultiaddrs()[0]
  assert.ok(addr)
  await a.host.dial(addr, { signal: AbortSignal.timeout(5000) })
}

async function waitFor(what: string, pred: () => boolean, timeoutMs = 8000): Promise<void> {
  const end = Date.now() + timeoutMs
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const meshPeers = (n: Node): string[] =>
  (n.host.services.pubsub as unknown as { getMeshPeers(t: string): string[] }).getMeshPeers(HOST_STATE_TOPIC)

async function stopAll(nodes: Array<Node | undefined>): Promise<void> {
  await Promise.all(
    nodes.map(async (n) => {
      if (!n) return
      await n.service.stop()
      await n.host.stop()
    }),
  )
}

/** A state for `key`'s host, as a forger or a replaying peer would build it. */
async function signedState(key: PrivateKey, peerIdOf: PrivateKey, version: number, vms: VmSummaryView[]) {
  const payload = pb.HostState.encode({
    peerId: peerIdFromPrivateKey(peerIdOf).toMultihash().bytes,
    version,
    vms: vms.map((v) => ({ id: v.id, name: v.name, epoch: v.epoch })),
  }).finish()
  const signature = await key.sign(
    new Uint8Array([...new TextEncoder().encode(SIGNATURE_PREFIX), ...payload]),
  )
  return encodeSignedHostState(pb.SignedHostState.create({ payload, signature }))
}

describe('host state over a 4-host mesh', { timeout: 60_000 }, () => {
  const nodes: Node[] = []
  let late: Node | undefined
  let rogue: Host | undefined

  before(async () => {
    for (const site of ['a', 'b', 'c', 'd']) nodes.push(await startNode(site))
    const [n0, n1, n2, n3] = nodes as [Node, Node, Node, Node]
    // chain 0 - 1 - 2 - 3
    await connect(n0, n1)
    await connect(n1, n2)
    await connect(n2, n3)
    await waitFor('gossipsub meshes', () =>
      nodes.every((n, i) => meshPeers(n).length === (i === 0 || i === nodes.length - 1 ? 1 : 2)),
    )
    // Their start-up publications went out before any connection; publish again now the mesh is up.
    for (const n of nodes) n.service.notifyChanged()
    await waitFor('every host knows every host', () => nodes.every((n) => n.service.hosts().length === 4))
  })

  after(async () => {
    await stopAll([...nodes, late])
    await rogue?.stop()
  })

  it('a state change on one host reaches every host through gossipsub', { timeout: 15_000 }, async () => {
    const [n0, , , n3] = nodes as [Node, Node, Node, Node]
    n0.local = { ...n0.local, vms: [vm('vm-1')] }
    n0.service.notifyChanged()
    await waitFor('vm-1 everywhere', () => nodes.every((n) => n.service.where('vm-1')?.host === n0.id))
    const seen = n3.service.host(n0.id)
    assert.equal(seen?.site, 'a')
    assert.equal(seen?.vms[0]?.id, 'vm-1')
    assert.ok((seen?.receivedAtMs ?? 0) >= (seen?.timestampMs ?? Infinity))

    // The VM moves from 0 to 3 with a higher epoch; the stale view of 0 does not win it back.
    n3.local = { ...n3.local, vms: [vm('vm-1', 2)] }
    n3.service.notifyChanged()
    await waitFor('vm-1 on host 3', () => nodes.every((n) => n.service.where('vm-1')?.host === n3.id))
    n0.local = { ...n0.local, vms: [] }
    n0.service.notifyChanged()
    await waitFor('host 0 newer state', () =>
      nodes.every((n) => (n.service.host(n0.id)?.vms.length ?? -1) === 0),
    )
    assert.ok(
      nodes.every((n) => n.service.where('vm-1')?.host === n3.id && n.service.where('vm-1')?.epoch === 2),
    )
    assert.ok(n0.service.stats().gossip.messagesOut >= 2)
    assert.ok(n3.service.stats().gossip.messagesIn >= 2)
  })

  it('rejects a forged state and a valid state re-published by another peer', {
    timeout: 15_000,
  }, async () => {
    const [n0, n1, n2, n3] = nodes as [Node, Node, Node, Node]
    const before = nodes.map((n) =>
      JSON.stringify([n.service.hosts().map((h) => [h.peerId, h.version]), n.service.vms()]),
    )
    const dropsOf = (n: Node, reason: DropReason) =>
      n.drops.filter(([r, s]) => r === reason && s === 'gossip').length

    // Host 3 claims to be host 0, signing with its own key.
    const forged = await signedState(n3.key, n0.key, Date.now() + 1e9, [vm('evil', 99)])
    await n3.host.services.pubsub.publish(HOST_STATE_TOPIC, forged)
    await waitFor('bad-signature drop', () => dropsOf(n2, 'bad-signature') === 1)

    // Host 3 relays a state that host 1 really signed: only host 1 may publish it on gossipsub.
    const relayed = await signedState(n1.key, n1.key, Date.now() + 1e9, [vm('relayed', 99)])
    await n3.host.services.pubsub.publish(HOST_STATE_TOPIC, relayed)
    await waitFor('wrong-sender drop', () => dropsOf(n2, 'wrong-sender') === 1)

    await new Promise((r) => setTimeout(r, 300))
    const after = nodes.map((n) =>
      JSON.stringify([n.service.hosts().map((h) => [h.peerId, h.version]), n.service.vms()]),
    )
    assert.deepEqual(after, before)
    assert.ok(nodes.every((n) => !n.service.where('evil') && !n.service.where('relayed')))
    // Rejected, so not forwarded past host 2.
    assert.equal(dropsOf(n1, 'bad-signature') + dropsOf(n0, 'bad-signature'), 0)
    assert.equal(n2.service.stats().dropsBySource.gossip['bad-signature'], 1)
    assert.equal(n2.service.stats().drops['wrong-sender'], 1)
  })

  it('a late-joining host gets every state and the members through syncWith', {
    timeout: 15_000,
  }, async () => {
    const [n0, , n2, n3] = nodes as [Node, Node, Node, Node]
    // n2 hands out members (the membership layer would).
    const member = { peerId: peerIdFromPrivateKey(n0.key).toMultihash().bytes, incarnation: 3, site: 'a' }
    ;(
      n2.service as unknown as { components: { membersProvider: () => unknown[] } }
    ).components.membersProvider = () => [member]
    late = await startNode('late')
    await connect(late, n2)
    const result = await late.service.syncWith(n2.host.peerId, { signal: AbortSignal.timeout(5000) })
    assert.equal(result.received, 4)
    assert.equal(result.accepted, 4)
    assert.deepEqual(
      late.service.hosts().map((h) => h.peerId),
      [...nodes.map((n) => n.id), late.id].sort(),
    )
    assert.equal(late.service.where('vm-1')?.host, n3.id)
    assert.equal(late.service.where('vm-1')?.epoch, 2)
    assert.equal(late.members.length, 1)
    assert.equal(late.members[0]?.[0]?.site, 'a')
    // Nothing new on a second pull.
    assert.deepEqual(await late.service.syncWith(n2.id), { received: 0, accepted: 0, members: 1 })
    // n2 saw from the digests that the newcomer has a state it lacks, and pulled it back.
    await waitFor('reverse sync', () => n2.service.host(late?.id ?? '') !== undefined)

    // markHost: a lost host's VMs stay listed as host-lost.
    late.service.markHost(n3.id, 'lost')
    assert.equal(late.service.where('vm-1')?.status, 'host-lost')
    late.service.markHost(n3.id, 'ok')

    // Its first publish (at start) reached no one; on its first topic peer it publishes again, and
    // the gossipsub mesh carries that to the hosts it is not connected to.
    // (the republish is a new version: at least the one we have now)
    const version = late.service.host(late.id)?.version ?? 0
    await waitFor('the newcomer state everywhere', () =>
      nodes.every((n) => (n.service.host(late?.id ?? '')?.version ?? -1) >= version),
    )
  })

  it('drops garbage on the sync protocol without changing anything', { timeout: 15_000 }, async () => {
    const [n0] = nodes as [Node]
    rogue = await createHost({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    const snapshot = () => JSON.stringify([n0.service.hosts(), n0.service.vms()])
    const before = snapshot()
    const n0Addr = n0.host.getMultiaddrs()[0]
    assert.ok(n0Addr)
    const syncDrops = () => n0.drops.filter(([, s]) => s === 'sync').map(([r]) => r)

    // 1. A length prefix far above 1 MiB.
    const s1 = await rogue.dialProtocol(n0Addr, SYNC_PROTOCOL, { signal: AbortSignal.timeout(3000) })
    s1.send(new Uint8Array([0xff, 0xff, 0xff, 0x7f, 1, 2, 3]))
    await expectNoAnswer(s1)
    // 2. A well-framed message that is not a SyncRequest.
    const s2 = await rogue.dialProtocol(n0Addr, SYNC_PROTOCOL, { signal: AbortSignal.timeout(3000) })
    const lp2 = lpStream(s2)
    await lp2.write(new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0x0f, 1]), { signal: AbortSignal.timeout(3000) })
    await expectNoAnswer(s2)
    await waitFor('sync drops', () => syncDrops().length === 2)
    assert.deepEqual(syncDrops(), ['oversized', 'malformed'])

    // 3. A rogue server: garbage, then a response mixing a forged state with nothing valid.
    let reply: Uint8Array = new Uint8Array([0xde, 0xad, 0xbe, 0xef])
    await rogue.handle(SYNC_PROTOCOL, async (stream) => {
      const lp = lpStream(stream)
      await lp.read({ signal: AbortSignal.timeout(3000) })
      await lp.write(reply, { signal: AbortSignal.timeout(3000) })
      await stream.close()
    })
    await assert.rejects(n0.service.syncWith(rogue.peerId), InvalidSyncResponseError)
    const forgedFor = nodes[1] as Node
    const forger = await generateKeyPair('Ed25519')
    const forged = await signedState(forger, forgedFor.key, Date.now() + 1e9, [vm('evil-sync', 50)])
    const selfSigned = await signedState(forgedFor.key, forgedFor.key, 1, [vm('old', 1)])
    const w = pb.SyncResponse.encode({
      states: [pb.SignedHostState.decode(forged), pb.SignedHostState.decode(selfSigned)],
    }).finish()
    reply = w
    const r = await n0.service.syncWith(rogue.peerId)
    assert.deepEqual(r, { received: 2, accepted: 0, members: 0 })
    assert.deepEqual(syncDrops(), ['oversized', 'malformed', 'malformed', 'bad-signature', 'stale'])
    assert.equal(snapshot(), before)
    // The service still answers real peers.
    const ok = await (nodes[1] as Node).service.syncWith(n0.id)
    assert.equal(ok.received, 0)
  })
})

/** The server must drop the stream: reading gets an error or the end, never a response. */
async function expectNoAnswer(stream: Awaited<ReturnType<Host['dialProtocol']>>): Promise<void> {
  const lp = lpStream(stream)
  await assert.rejects(
    lp.read({ signal: AbortSignal.timeout(3000) }),
    (err: Error) => err.name !== 'TimeoutError',
  )
}
