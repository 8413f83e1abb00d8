// A data connection's DataHello that arrives after the switchover (src/transfer/destination.ts): the
// hello goes over the data connection (direct TLS or hole-punched, its own path), the switchover over
// the libp2p control stream (relayed, another path). An idle VM sends no frame in between, so nothing
// orders the two: the switchover may come first. The destination waits for its data streams then,
// rather than resetting the control stream with "switchover before every data stream opened" (which
// the source saw as "commit not acknowledged and the destination did not commit": a flake of
// test/cluster/nat-punch-migrate.test.ts). Here a delay line in front of the destination's direct
// listener holds every byte from the source for a while, so the hello comes well after the switchover.
import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { createServer, type Server, Socket } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { connect, createTestNode, type TestNode } from '../../src/transfer/testing.js'
import { freePort } from '../helpers/tcp-relay.js'

const timeouts = { stepTimeoutMs: 10_000, stallTimeoutMs: 10_000, statusTimeoutMs: 5000, dialTimeoutMs: 5000 }
/** How long the delay line holds each chunk from the source (the answers go back at once). */
const HOLD_MS = 1500

/** A TCP forwarder to 127.0.0.1:target that delivers each client chunk `holdMs` after it came, in order. */
async function delayLine(target: number, holdMs: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>()
  const server: Server = createServer({ noDelay: true }, (client) => {
    const upstream = new Socket()
    sockets.add(client).add(upstream)
    const drop = () => {
      client.destroy()
      upstream.destroy()
    }
    for (const s of [client, upstream]) {
      s.on('error', drop)
      s.on('close', drop)
    }
    upstream.setNoDelay(true)
    upstream.connect(target, '127.0.0.1')
    client.on('data', (chunk) => {
      setTimeout(() => {
        if (!upstream.destroyed) upstream.write(chunk)
      }, holdMs)
    })
    upstream.on('data', (chunk) => client.write(chunk))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  const address = server.address()
  if (!address || typeof address === 'string') throw new Error('delay line has no port')
  return {
    port: address.port,
    async close() {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

describe('a data hello that comes after the switchover', { timeout: 120_000 }, () => {
  let a: TestNode
  let b: TestNode
  let line: Awaited<ReturnType<typeof delayLine>>

  before(async () => {
    const port = await freePort()
    line = await delayLine(port, HOLD_MS)
    a = await createTestNode({ timeouts, direct: { connectTimeoutMs: 10_000 } })
    b = await createTestNode({ timeouts, direct: { port, announcePort: line.port } })
    await connect(a, b)
  })

  after(async () => {
    await Promise.all([a, b].map((n) => n?.stop()))
    await line?.close()
  })

  it('an idle VM still migrates: the destination waits for its data streams', async () => {
    // Idle and never written: no frame goes out between the hellos and the switchover
    await a.createVm('late-1', { memoryMiB: 64 })
    const v = a.service.migrate('late-1', b.host.peerId, { streams: 3 })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.equal(end.channel, 'direct-sealed', end.channelNote)
    assert.equal(b.service.get(v.id)?.phase, 'done', JSON.stringify(b.service.get(v.id)?.error))
    // One host has it, and only one
    assert.ok(b.vms.has('late-1') && !a.vms.has('late-1'))
  })
})
