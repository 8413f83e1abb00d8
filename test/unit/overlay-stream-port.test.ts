// The agent's end of QEMU's `-netdev stream` NIC, against a unix socket speaking the same framing
// (4-byte big-endian length, then the frame). The real QEMU is in test/cluster/overlay-qemu.test.ts.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { StreamPort } from '../../src/overlay/index.js'

const dir = mkdtempSync('/tmp/skysp-')
after(() => rmSync(dir, { recursive: true, force: true }))

function frameOf(n: number, fill: number): Uint8Array {
  return new Uint8Array(n).fill(fill)
}

function encode(frame: Uint8Array): Buffer {
  const h = Buffer.alloc(4)
  h.writeUInt32BE(frame.length)
  return Buffer.concat([h, frame])
}

/** A listening "QEMU": the connections it accepted and the bytes each sent it. */
async function listen(path: string): Promise<{ server: Server; conns: Socket[]; got: Buffer[] }> {
  const conns: Socket[] = []
  const got: Buffer[] = []
  const server = createServer((s) => {
    conns.push(s)
    s.on('data', (d) => got.push(d))
  })
  await new Promise<void>((r) => server.listen(path, r))
  return { server, conns, got }
}

async function until(what: string, pred: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

describe('StreamPort (QEMU -netdev stream framing)', () => {
  it('carries frames both ways, also split across reads and several per read', async () => {
    const path = join(dir, 'a.sock')
    const q = await listen(path)
    const fromGuest: Uint8Array[] = []
    const port = new StreamPort({ path, transmit: (f) => fromGuest.push(f) })
    try {
      await until('connected', () => port.connected && q.conns.length === 1)
      const s = q.conns[0]!
      const bytes = Buffer.concat([encode(frameOf(60, 1)), encode(frameOf(1514, 2)), encode(frameOf(64, 3))])
      // one frame split in the middle of its length, two in one write
      s.write(bytes.subarray(0, 2))
      await new Promise((r) => setTimeout(r, 20))
      s.write(bytes.subarray(2))
      await until('three frames', () => fromGuest.length === 3)
      assert.deepEqual(
        fromGuest.map((f) => [f.length, f[0]]),
        [
          [60, 1],
          [1514, 2],
          [64, 3],
        ],
      )
      port.deliver(frameOf(100, 9))
      await until('the guest got it', () => Buffer.concat(q.got).length === 104)
      const got = Buffer.concat(q.got)
      assert.equal(got.readUInt32BE(0), 100)
      assert.equal(got[4], 9)
      assert.equal(port.stats.rxFrames, 3)
      assert.equal(port.stats.txFrames, 1)
    } finally {
      port.close()
      q.server.close()
    }
  })

  it('drops frames while QEMU is not there, then connects when it listens', async () => {
    const path = join(dir, 'b.sock')
    const port = new StreamPort({ path, transmit: () => {} })
    try {
      port.deliver(frameOf(60, 1))
      assert.equal(port.stats.txDropped, 1)
      assert.equal(port.connected, false)
      const q = await listen(path)
      try {
        await until('connected after QEMU started', () => port.connected)
        assert.equal(port.stats.connects, 1)
      } finally {
        q.server.close()
      }
    } finally {
      port.close()
    }
  })

  it('drops a connection whose stream carries an impossible length, and reconnects', async () => {
    const path = join(dir, 'c.sock')
    const q = await listen(path)
    const errors: string[] = []
    const port = new StreamPort({ path, transmit: () => {}, onError: (e) => errors.push(e.message) })
    try {
      await until('connected', () => q.conns.length === 1)
      const bad = Buffer.alloc(4)
      bad.writeUInt32BE(1 << 30)
      q.conns[0]!.write(bad)
      await until('reconnected', () => q.conns.length === 2 && port.connected)
      assert.equal(port.stats.broken, 1)
      assert.match(errors[0] ?? '', /1073741824-byte frame/)
    } finally {
      port.close()
      q.server.close()
    }
  })
})
