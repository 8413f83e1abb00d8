// SocketFramed's leased messages (src/transfer/direct.ts): a large message is assembled in a reused
// buffer, valid until the next read; owned messages (the default) are never reused.
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'
import { describe, it } from 'node:test'
import type tls from 'node:tls'
import { SocketFramed, type SocketFramedOptions } from '../../src/transfer/direct.js'

const RECORD = 16 * 1024

/** A stand-in for a TLS socket that delivers `messages` (length-prefixed) as 16 KiB records. */
function feed(options: SocketFramedOptions, messages: Buffer[]): SocketFramed {
  const socket = Object.assign(new EventEmitter(), { setNoDelay: () => undefined })
  const framed = new SocketFramed(
    socket as unknown as tls.TLSSocket,
    2 * 1024 * 1024,
    64 * 1024 * 1024,
    options,
  )
  const parts: Buffer[] = []
  for (const m of messages) {
    const h = Buffer.alloc(4)
    h.writeUInt32BE(m.length)
    parts.push(h, m)
  }
  const all = Buffer.concat(parts)
  for (let off = 0; off < all.length; off += RECORD) socket.emit('data', all.subarray(off, off + RECORD))
  socket.emit('end')
  return framed
}

const message = (fill: number, len = 1024 * 1024 + 37) => Buffer.alloc(len, fill)

describe('SocketFramed leased messages', () => {
  it('reuses the buffer of a message once the next is read, with the right bytes in each', async () => {
    const sent = [message(1), message(2), message(3), message(4, 100), message(5)]
    const f = feed({ messages: 'leased' }, sent)
    const got: Uint8Array[] = []
    for (let i = 0; i < sent.length; i++) {
      const m = await f.read()
      assert.ok(m)
      assert.deepEqual(Buffer.from(m), sent[i], `message ${i} intact when read`)
      got.push(m)
    }
    assert.equal(await f.read(), null)
    // All queued before the first read: four pool buffers for the large ones, and the small one is a
    // view of its record
    const buffers = new Set(got.map((m) => m.buffer))
    assert.equal(buffers.size, 5)
  })

  it('assembles a later message in a released buffer', async () => {
    const socket = Object.assign(new EventEmitter(), { setNoDelay: () => undefined })
    const f = new SocketFramed(socket as unknown as tls.TLSSocket, 2 * 1024 * 1024, 64 * 1024 * 1024, {
      messages: 'leased',
    })
    const send = (m: Buffer) => {
      const all = Buffer.concat([Buffer.alloc(4), m])
      all.writeUInt32BE(m.length)
      for (let off = 0; off < all.length; off += RECORD) socket.emit('data', all.subarray(off, off + RECORD))
    }
    send(message(7))
    const first = await f.read()
    assert.ok(first)
    const firstBuffer = first.buffer
    assert.equal(first[0], 7)
    // Arrives while the first is still lent: a second buffer
    send(message(8))
    const second = await f.read()
    assert.ok(second)
    assert.notEqual(second.buffer, firstBuffer)
    assert.equal(second[5], 8)
    // The first was released by that read: the third is assembled in it
    send(message(9))
    const third = await f.read()
    assert.ok(third)
    assert.equal(third.buffer, firstBuffer)
    assert.equal(third[third.length - 1], 9)
    assert.equal(second[5], 8, 'the message lent now is untouched')
  })

  it('never reuses an owned message', async () => {
    const sent = [message(1), message(2), message(3)]
    const f = feed({}, sent)
    const seen = new Set<ArrayBufferLike>()
    for (const s of sent) {
      const m = await f.read()
      assert.ok(m)
      assert.deepEqual(Buffer.from(m), s)
      seen.add(m.buffer)
    }
    assert.equal(seen.size, 3)
  })
})
