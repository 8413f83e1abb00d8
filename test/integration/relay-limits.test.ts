// The relay (circuit relay v2 on an agent's host, p2p.ts) serves only peers of the mesh and within
// its limits: a host behind it (reachable only through `/p2p-circuit`) is reached by a mesh member;
// a peer with another mesh key cannot even reach the relay, so it can neither reserve nor relay; a
// relayed connection is reset once it has carried the data limit, and once it has lasted the time
// limit. In-process libp2p hosts on 127.0.0.1.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Connection } from '@libp2p/interface'
import { createHost, type Host } from '../../src/node/p2p.js'
import { waitFor } from '../helpers/agent-process.js'

const SINK = '/skymesh-test/sink/1.0.0'
const DATA_LIMIT = 256 * 1024
const DURATION_LIMIT_MS = 2000

function meshKey(): Uint8Array {
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${randomBytes(32).toString('hex')}\n`)
}

describe('the relay serves mesh peers only, within its limits', () => {
  const key = meshKey()
  let relay: Host
  let hidden: Host
  let member: Host
  let outsider: Host
  let received = 0

  before(async () => {
    const host = async (psk: Uint8Array, listen: string[], relayLimits?: boolean) =>
      createHost({
        privateKey: await generateKeyPair('Ed25519'),
        listen,
        psk,
        dialTimeoutMs: 2000,
        nat: {
          listenViaRelay: listen.includes('/p2p-circuit'),
          relay: relayLimits
            ? { maxReservations: 4, dataLimitBytes: BigInt(DATA_LIMIT), durationLimitMs: DURATION_LIMIT_MS }
            : undefined,
        },
      })
    relay = await host(key, ['/ip4/127.0.0.1/tcp/0'], true)
    hidden = await host(key, ['/p2p-circuit'])
    member = await host(key, [])
    outsider = await host(meshKey(), [])
    await hidden.handle(
      SINK,
      async (stream) => {
        for await (const chunk of stream) received += chunk.byteLength
      },
      { runOnLimitedConnection: true },
    )
    await hidden.dial(relay.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(5000) })
    await waitFor(
      'the hidden host holds a reservation on the relay',
      async () => hidden.getMultiaddrs().some((a) => a.toString().includes('/p2p-circuit')),
      20_000,
    )
  })

  after(async () => {
    await Promise.all([member, outsider, hidden, relay].filter(Boolean).map((h) => h.stop()))
  })

  const circuitAddr = () => hidden.getMultiaddrs().find((a) => a.toString().includes('/p2p-circuit'))!

  it('a peer with another mesh key gets nothing from the relay', async () => {
    await assert.rejects(outsider.dial(relay.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(4000) }))
    await assert.rejects(outsider.dial(circuitAddr(), { signal: AbortSignal.timeout(4000) }))
    assert.equal(hidden.getConnections(outsider.peerId).length, 0)
    assert.equal(relay.getConnections(outsider.peerId).length, 0)
  })

  it('a mesh member reaches the hidden host through the relay; the relay resets it at its data limit', async () => {
    const conn: Connection = await member.dial(circuitAddr(), { signal: AbortSignal.timeout(10_000) })
    assert.ok(conn.remoteAddr.toString().includes('/p2p-circuit'), conn.remoteAddr.toString())
    // What the relay still lets this connection carry (the handshakes already used a little).
    const left = conn.limits?.bytes ?? 0n
    assert.ok(left > 0n && left <= BigInt(DATA_LIMIT), `relay limit left: ${left}`)
    const stream = await conn.newStream(SINK, {
      runOnLimitedConnection: true,
      signal: AbortSignal.timeout(5000),
    })
    const chunk = new Uint8Array(16 * 1024)
    // The first chunk opens the stream at the other end; then as much as the link takes.
    stream.send(chunk)
    let sent = chunk.byteLength
    await waitFor('the first bytes through the relay', async () => received > 0, 10_000)
    try {
      while (sent < 4 * DATA_LIMIT && conn.status === 'open') {
        if (!stream.send(chunk)) await stream.onDrain({ signal: AbortSignal.timeout(5000) })
        sent += chunk.byteLength
      }
    } catch {
      // the relay reset the connection under us
    }
    await waitFor('the relay to reset the relayed connection', async () => conn.status !== 'open', 20_000)
    assert.ok(received > 0, 'nothing arrived through the relay')
    assert.ok(received <= DATA_LIMIT, `${received} bytes got through a ${DATA_LIMIT}-byte limit`)
  })

  it('the relay resets a relayed connection at its time limit', async () => {
    const opened = Date.now()
    const conn = await member.dial(circuitAddr(), { signal: AbortSignal.timeout(10_000), force: true })
    assert.ok(conn.remoteAddr.toString().includes('/p2p-circuit'))
    await waitFor('the relay to end the idle relayed connection', async () => conn.status !== 'open', 30_000)
    assert.ok(Date.now() - opened >= DURATION_LIMIT_MS / 2, `closed after ${Date.now() - opened} ms`)
    // The relay itself stays open to mesh members.
    assert.ok(member.getConnections(relay.peerId).some((c) => c.status === 'open'))
  })
})
