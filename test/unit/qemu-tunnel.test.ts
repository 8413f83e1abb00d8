// The byte tunnel between QEMU's unix sockets and libp2p streams (src/transfer/qemu/tunnel.ts):
// every byte arrives in order both ways, half-closes pass through (after the last byte), and a
// slow reader holds the writer back instead of losing or reordering data.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { createConnection, createServer, type Socket } from 'node:net'
import { after, describe, it } from 'node:test'
import { streamPair } from '@libp2p/utils'
import { pipeSocketStream, TunnelListener } from '../../src/transfer/qemu/tunnel.js'

const dir = mkdtempSync('/tmp/skq-tun-')
after(() => rmSync(dir, { recursive: true, force: true }))

function connect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection({ path, allowHalfOpen: true })
    s.once('connect', () => resolve(s))
    s.once('error', reject)
  })
}

function readAll(s: Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = []
    s.on('data', (d: Buffer) => parts.push(d))
    s.once('end', () => resolve(Buffer.concat(parts)))
    s.once('error', reject)
  })
}

describe('qemu tunnel', { timeout: 60_000 }, () => {
  it('carries 4 MiB each way in order through a stream, with a slow reader at the far end', async () => {
    const [outbound, inbound] = await streamPair()
    // The far end (the destination QEMU): reads slowly, echoes a digest, sends its own bytes
    const farPath = `${dir}/far.sock`
    const fromFar = randomBytes(4 * 1024 * 1024)
    let farGot = ''
    const far = createServer({ allowHalfOpen: true }, (s) => {
      const h = createHash('sha256')
      s.pause()
      const tick = setInterval(() => s.resume(), 5)
      s.on('data', (d: Buffer) => {
        h.update(d)
        s.pause()
      })
      s.once('end', () => {
        clearInterval(tick)
        farGot = h.digest('hex')
        s.end(fromFar)
      })
    })
    await new Promise<void>((r) => far.listen(farPath, r))
    const farPipe = connect(farPath).then((s) => pipeSocketStream(s, inbound, { out: 0, in: 0 }))

    // The near end (the source QEMU) connects to the listener; its connection goes through `outbound`
    const counters = { open: 0 }
    const listener = await TunnelListener.listen(
      `${dir}/near.sock`,
      async () => {
        counters.open++
        return outbound
      },
      (err) => assert.fail(err),
    )
    const toFar = randomBytes(4 * 1024 * 1024)
    const near = await connect(listener.path)
    const back = readAll(near)
    near.end(toFar)
    const got = await back
    await farPipe
    assert.equal(farGot, createHash('sha256').update(toFar).digest('hex'))
    assert.equal(got.length, fromFar.length)
    assert.ok(got.equals(fromFar))
    assert.equal(counters.open, 1)
    assert.equal(listener.counters.out, toFar.length)
    assert.equal(listener.counters.in, fromFar.length)
    await listener.close()
    far.close()
  })
})
