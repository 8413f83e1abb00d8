// SocketFramed's writes (src/transfer/direct.ts): a message given as parts goes out as its length
// prefix, the small parts and the payload's start in one full 16 KiB TLS record's worth, then the rest
// of the payload as it is; the bytes on the wire read back as the same messages. And bad input on the
// reading side (a length over the limit, an end in the middle of a message) fails with a clear error.
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'
import { describe, it } from 'node:test'
import type tls from 'node:tls'
import { SocketFramed } from '../../src/transfer/direct.js'
import { LinkError, ProtocolError } from '../../src/transfer/errors.js'

const RECORD = 16 * 1024
const MAX = 2 * 1024 * 1024

type FakeSocket = EventEmitter & { writes: Buffer[] }

function fakeSocket(): FakeSocket {
  const writes: Buffer[] = []
  return Object.assign(new EventEmitter(), {
    writes,
    setNoDelay: () => undefined,
    destroyed: false,
    writableEnded: false,
    writableNeedDrain: false,
    write: (b: Uint8Array) => {
      writes.push(Buffer.from(b))
      return true
    },
    destroy() {
      this.destroyed = true
    },
  })
}

const framedOn = (s: FakeSocket) => new SocketFramed(s as unknown as tls.TLSSocket, MAX, 64 * 1024 * 1024)

/** Delivers `bytes` to a new reader as 16 KiB chunks (TLS records), then an end. */
function reader(bytes: Buffer, end = true): SocketFramed {
  const s = fakeSocket()
  const f = framedOn(s)
  for (let off = 0; off < bytes.length; off += RECORD) s.emit('data', bytes.subarray(off, off + RECORD))
  if (end) s.emit('end')
  return f
}

const fill = (len: number, seed: number) => {
  const b = Buffer.allocUnsafe(len)
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff
  return b
}

describe('SocketFramed writes', () => {
  it('fills the first record with the payload start and reads back the same messages', async () => {
    const s = fakeSocket()
    const w = framedOn(s)
    const messages: Buffer[][] = [
      [fill(23, 1), fill(1024 * 1024, 2)],
      [fill(5, 3), fill(RECORD, 4)],
      [fill(40, 5), fill(RECORD - 44 - 1, 6)],
      [fill(12, 7)],
      [fill(3 * RECORD + 11, 8)],
      [fill(RECORD - 4, 9), fill(RECORD + 1, 10)],
    ]
    let expectedWrites = 0
    for (const parts of messages) {
      const before = s.writes.length
      await w.write(parts)
      const out = s.writes.slice(before)
      const total = parts.reduce((n, p) => n + p.length, 0)
      const last = parts[parts.length - 1]!
      if (last.length >= RECORD) {
        // A full record first (or all of it), then the payload's rest unchanged
        assert.equal(out[0]!.length, Math.min(4 + total, Math.max(RECORD, 4 + total - last.length)))
        assert.ok(out.length <= 2)
      } else {
        assert.equal(out.length, 1, 'a small message is one write')
      }
      assert.deepEqual(Buffer.concat(out), Buffer.concat([u32(total), ...parts]))
      expectedWrites += 4 + total
    }
    assert.equal(w.written, expectedWrites)
    const r = reader(Buffer.concat(s.writes))
    for (const parts of messages) {
      const m = await r.read()
      assert.ok(m)
      assert.deepEqual(Buffer.from(m), Buffer.concat(parts))
    }
    assert.equal(await r.read(), null)
  })

  it('a length over the limit is a ProtocolError', async () => {
    const r = reader(Buffer.concat([u32(MAX + 1), Buffer.alloc(100)]), false)
    await assert.rejects(
      r.read(),
      (err: Error) => err instanceof ProtocolError && /bad frame length/.test(err.message),
    )
  })

  it('an end in the middle of a message is a LinkError', async () => {
    const r = reader(Buffer.concat([u32(RECORD * 3), Buffer.alloc(RECORD + 5)]))
    await assert.rejects(
      r.read(),
      (err: Error) => err instanceof LinkError && /mid-message/.test(err.message),
    )
  })

  it('garbage after a good message fails only what follows it', async () => {
    const good = fill(RECORD * 2, 11)
    const r = reader(
      Buffer.concat([u32(good.length), good, Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2])]),
      false,
    )
    const m = await r.read()
    assert.ok(m)
    assert.deepEqual(Buffer.from(m), good)
    await assert.rejects(r.read(), ProtocolError)
  })
})

function u32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n)
  return b
}
