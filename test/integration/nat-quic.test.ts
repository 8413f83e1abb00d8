// QUIC beside TCP, and the mesh key on it (quic-gate.ts): QUIC skips libp2p's pnet protector, so a
// host admits a QUIC connection only from a peer that proved the mesh key on a protected (TCP)
// connection. A keyless peer that dials a member's QUIC address completes the QUIC handshake and
// is then closed: it opens no stream, sees no gossip, and the member keeps no connection to it.
// In-process libp2p hosts on 127.0.0.1.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Multiaddr } from '@multiformats/multiaddr'
import { createHost, type Host } from '../../src/node/p2p.js'
import { isQuic } from '../../src/node/quic-gate.js'
import { waitFor } from '../helpers/agent-process.js'

const TOPIC = 'skymesh-test/quic-gate'
const SINK = '/skymesh-test/sink/1.0.0'

function meshKey(): Uint8Array {
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${randomBytes(32).toString('hex')}\n`)
}

const LISTEN = ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/udp/0/quic-v1']

describe('QUIC transport: only peers that proved the mesh key get in', () => {
  const key = meshKey()
  let a: Host
  let b: Host
  let stranger: Host
  let outsider: Host
  const got: string[] = []
  const sunk: string[] = []

  before(async () => {
    const host = async (psk: Uint8Array | undefined) =>
      createHost({ privateKey: await generateKeyPair('Ed25519'), listen: LISTEN, psk, dialTimeoutMs: 3000 })
    a = await host(key)
    b = await host(key)
    stranger = await host(undefined) // no mesh key at all
    outsider = await host(meshKey()) // another mesh's key
    await a.handle(SINK, async (stream) => {
      for await (const chunk of stream) {
        sunk.push(`${stream.id}:${new TextDecoder().decode(chunk.subarray())}`)
        break
      }
      stream.abort(new Error('done'))
    })
    for (const h of [a, b, stranger, outsider]) h.services.pubsub.subscribe(TOPIC)
    for (const h of [stranger, outsider]) {
      h.services.pubsub.addEventListener('message', (evt) => {
        got.push(new TextDecoder().decode(evt.detail.data))
      })
    }
  })

  after(async () => {
    await Promise.all([a, b, stranger, outsider].filter(Boolean).map((h) => h.stop()))
  })

  const quicAddr = (h: Host): Multiaddr => {
    const addr = h.getMultiaddrs().find(isQuic)
    assert.ok(addr, `listens on QUIC: ${h.getMultiaddrs().join(', ')}`)
    return addr
  }
  const tcpAddr = (h: Host): Multiaddr => h.getMultiaddrs().find((m) => m.toString().includes('/tcp/'))!

  it('a peer without the mesh key is refused over QUIC: no connection, no stream, no gossip', async () => {
    for (const peer of [stranger, outsider]) {
      // The QUIC handshake itself completes (TLS proves identities, not the mesh key), so the dialer
      // may hold a connection for a moment: the member's gate closes it before anything runs on it.
      const conn = await peer.dial(quicAddr(a), { signal: AbortSignal.timeout(5000) }).catch(() => undefined)
      if (conn)
        await waitFor('the member closes the QUIC connection', async () => conn.status !== 'open', 5000)
      await assert.rejects(
        peer.dialProtocol(quicAddr(a), SINK, { signal: AbortSignal.timeout(5000) }),
        'no protocol runs for it',
      )
    }
    await a.services.pubsub.publish(TOPIC, new TextEncoder().encode('members only'))
    await new Promise((r) => setTimeout(r, 1500))
    assert.deepEqual(got, [], 'nothing published by the member reached a keyless peer')
    for (const peer of [stranger, outsider]) {
      assert.equal(a.getConnections(peer.peerId).length, 0, 'the member keeps no connection to it')
      assert.equal(peer.getConnections(a.peerId).length, 0)
    }
    const gate = a.services.meshKeyGate
    assert.ok(gate)
    assert.ok(gate.refused.inbound >= 2, `refused ${JSON.stringify(gate.refused)}`)
    assert.equal(gate.hasProved(stranger.peerId), false)
  })

  it('a member that has not proved the key yet is not let in over QUIC either', async () => {
    // The dialer's own gate refuses to start it: b has never met a over a protected connection.
    await assert.rejects(b.dial(quicAddr(a), { signal: AbortSignal.timeout(5000) }))
    assert.equal(a.getConnections(b.peerId).length, 0)
  })

  it('after a protected TCP connection, the member is let in over QUIC, and streams run on it', async () => {
    const tcp = await b.dial(tcpAddr(a), { signal: AbortSignal.timeout(5000) })
    assert.ok(!isQuic(tcp.remoteAddr))
    await waitFor('a sees b proved', async () => a.services.meshKeyGate?.hasProved(b.peerId) ?? false, 5000)
    const conn = await b.dial(quicAddr(a), { signal: AbortSignal.timeout(5000), force: true })
    assert.ok(isQuic(conn.remoteAddr), conn.remoteAddr.toString())
    const stream = await conn.newStream(SINK, { signal: AbortSignal.timeout(5000) })
    stream.send(new TextEncoder().encode('over quic'))
    await waitFor('the member got the bytes', async () => sunk.some((s) => s.endsWith(':over quic')), 5000)
    assert.equal(sunk.length, 1, `only b's stream reached the sink: ${sunk.join(', ')}`)
    const inbound = a.getConnections(b.peerId).find((c) => isQuic(c.remoteAddr))
    assert.ok(inbound, 'a holds the QUIC connection from b')
    // Why DCUtR cannot punch with this transport: @chainsafe/libp2p-quic dials from its own client
    // socket (an ephemeral UDP port that accepts no connections), not from the listening socket, so
    // the address a peer observes is not one that anybody can connect to (README, across clouds).
    const port = (m: Multiaddr) => m.getComponents().find((c) => c.name === 'udp')?.value
    assert.notEqual(port(inbound.remoteAddr), port(quicAddr(b)), 'b dialled from its listening port')
  })
})
