// QEMU tunnels over direct TLS-PSK connections (src/transfer/qemu/direct-tunnel.ts): the kind byte
// reaches the destination, bytes cross both ways in order (backpressure included), a half-close
// passes through, and a client without the key gets no tunnel.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { createServer, connect as netConnect, type Socket } from 'node:net'
import { describe, it } from 'node:test'
import type tls from 'node:tls'
import { connectTunnel, pipeSockets, QemuDirectListener } from '../../src/transfer/qemu/direct-tunnel.js'

/** A local TCP pair standing in for a QEMU unix socket (the agent's end, QEMU's end). */
async function socketPair(): Promise<[Socket, Socket]> {
  const server = createServer({ allowHalfOpen: true })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as { port: number }).port
  const accepted = new Promise<Socket>((r) => server.once('connection', r))
  const a = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true })
  const b = await accepted
  server.close()
  return [a, b]
}

function readAll(s: Socket): Promise<Buffer> {
  const chunks: Buffer[] = []
  s.on('data', (c: Buffer) => chunks.push(c))
  return new Promise((r) => s.once('end', () => r(Buffer.concat(chunks))))
}

describe('QEMU direct tunnels (TLS-PSK)', () => {
  it('carries the kind byte and 8 MiB each way, in order, with the half-close', async () => {
    const [dstAgent, dstQemu] = await socketPair()
    const [srcQemu, srcAgent] = await socketPair()
    const dstCounters = { out: 0, in: 0 }
    const srcCounters = { out: 0, in: 0 }
    let kindSeen = -1
    let dstPipe: Promise<void> | undefined
    const listener = await QemuDirectListener.listen('127.0.0.1', (socket, kind, head) => {
      kindSeen = kind
      dstAgent.pause()
      dstPipe = pipeSockets(dstAgent, socket, dstCounters, head)
    })
    try {
      const remote = await connectTunnel('127.0.0.1', listener.grant, 2, 3000, new AbortController().signal)
      srcAgent.pause()
      const srcPipe = pipeSockets(srcAgent, remote, srcCounters)
      const up = randomBytes(8 << 20)
      const down = randomBytes(8 << 20)
      const atDst = readAll(dstQemu)
      const atSrc = readAll(srcQemu)
      srcQemu.end(up)
      dstQemu.end(down)
      assert.ok((await atDst).equals(up), 'source -> destination bytes intact')
      assert.ok((await atSrc).equals(down), 'destination -> source bytes intact')
      await srcPipe
      await dstPipe
      assert.equal(kindSeen, 2)
      assert.equal(srcCounters.out, up.length)
      assert.equal(srcCounters.in, down.length)
      assert.equal(dstCounters.in, up.length)
      assert.equal(dstCounters.out, down.length)
    } finally {
      listener.close()
    }
  })

  it('gives a client without the key no tunnel', async () => {
    let tunnels = 0
    const listener = await QemuDirectListener.listen('127.0.0.1', (s: tls.TLSSocket) => {
      tunnels++
      s.destroy()
    })
    try {
      const wrong = { ...listener.grant, key: randomBytes(32) }
      await assert.rejects(connectTunnel('127.0.0.1', wrong, 1, 3000, new AbortController().signal))
      assert.equal(tunnels, 0)
    } finally {
      listener.close()
    }
  })

  it('refuses to listen on something that is not an IP address', async () => {
    await assert.rejects(
      QemuDirectListener.listen('example.org', () => undefined),
      /not an IP/,
    )
  })
})
