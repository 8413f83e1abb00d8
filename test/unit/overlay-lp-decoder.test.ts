// The overlay transport's synchronous length-prefix decoder: messages split and merged across chunks
// in every way, multi-byte prefixes, and a length over the limit.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { LpDecoder, MessageTooLargeError } from '../../src/overlay/lp-decoder.js'
import { pb } from '../../src/proto/index.js'

function encode(msgs: Uint8Array[]): Uint8Array {
  return Buffer.concat(
    msgs.map((m) => pb.OverlayBatch.encodeDelimited({ frames: [{ network: 'n', data: m }] }).finish()),
  )
}

const payloads = [1, 127, 128, 300, 20_000].map((n, i) => new Uint8Array(n).fill(i + 1))

describe('LpDecoder', () => {
  it('cuts messages however the bytes are chunked', () => {
    const wire = encode(payloads)
    for (const step of [1, 2, 3, 7, 129, 4096, wire.length]) {
      const d = new LpDecoder(1 << 20)
      const got: Uint8Array[] = []
      for (let i = 0; i < wire.length; i += step) got.push(...d.push(wire.subarray(i, i + step)))
      assert.equal(got.length, payloads.length, `step ${step}`)
      for (const [i, m] of got.entries())
        assert.deepEqual(new Uint8Array(pb.OverlayBatch.decode(m).frames[0]?.data ?? []), payloads[i])
    }
  })

  it('takes a list of chunks (a Uint8ArrayList) too', () => {
    const wire = encode(payloads.slice(0, 2))
    const d = new LpDecoder(1 << 20)
    assert.equal(d.push({ subarray: () => wire }).length, 2)
  })

  it('a message in one chunk is a view of it, not a copy', () => {
    const wire = encode([payloads[3] ?? new Uint8Array()])
    const [m] = new LpDecoder(1 << 20).push(wire)
    assert.equal(m?.buffer, wire.buffer)
  })

  it('refuses a length over the limit, and a prefix longer than 5 bytes', () => {
    assert.throws(() => new LpDecoder(100).push(encode([new Uint8Array(200)])), MessageTooLargeError)
    assert.throws(
      () => new LpDecoder(100).push(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0x01)),
      MessageTooLargeError,
    )
  })
})
