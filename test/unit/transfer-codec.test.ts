import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { pb } from '../../src/proto/index.js'
import { compressPayload, decompressPayload } from '../../src/transfer/compress.js'
import { FRAME_PAYLOAD_BYTES, HASH_BYTES, MAX_RUNS } from '../../src/transfer/constants.js'
import { contentHash, DedupTable, hashKey } from '../../src/transfer/dedup.js'
import { ProtocolError } from '../../src/transfer/errors.js'
import {
  encodeFrame,
  encodeFrameParts,
  FrameBuilder,
  type Geometry,
  parseFrame,
} from '../../src/transfer/frame.js'
import { decodeControl } from '../../src/transfer/wire.js'

const g: Geometry = { pageSize: 4096, pageCount: 1024, blockSize: 65536, blockCount: 64, dedup: true }
const page = (v: number) => Buffer.alloc(4096, v)

describe('data frame codec', () => {
  it('frames written as parts (payload not copied) decode as the protobuf encoding does', () => {
    const geo = { ...g, pageCount: 1 << 20 }
    // Payload lengths around the varint boundaries of the payload field's length
    for (const pages of [0, 1, 31, 32, 33, 256]) {
      for (const extra of [0, 127, 128]) {
        const payload = Buffer.alloc(pages * 4096 + extra, 9)
        const runs =
          pages > 0 ? [{ space: 'memory' as const, kind: 'data' as const, first: 7, count: pages }] : []
        const fields = { seq: 3, round: 1, runs, payload, codec: 'none' as const, rawLength: pages * 4096 }
        const parts = encodeFrameParts(fields)
        if (payload.length > 0) assert.equal(parts[1], payload, 'the payload itself, not a copy')
        const whole = pb.DataFrame.decode(Buffer.concat(parts))
        const ref = pb.DataFrame.decode(
          pb.DataFrame.encode({
            seq: 3,
            round: 1,
            runs: whole.runs,
            payload,
            rawLength: pages * 4096,
          }).finish(),
        )
        assert.deepEqual(Buffer.from(whole.payload), Buffer.from(ref.payload))
        assert.equal(whole.seq, 3)
        assert.equal(whole.rawLength, pages * 4096)
        if (extra === 0) {
          const f = parseFrame(Buffer.concat(parts), geo)
          assert.equal(f.payload.length, payload.length)
          assert.deepEqual(f.runs, runs)
        } else {
          // Runs that do not cover the payload are refused as before
          assert.throws(() => parseFrame(Buffer.concat(parts), geo), ProtocolError)
        }
      }
    }
  })

  it('round-trips data, zero runs and references, merging consecutive units', () => {
    const b = new FrameBuilder()
    const h = contentHash(page(1))
    b.addData('memory', 10, page(1), h)
    b.addData('memory', 11, page(2), contentHash(page(2)))
    b.addZero('memory', 12)
    b.addZero('memory', 13)
    b.addRef('memory', 20, h)
    b.addData('disk', 3, Buffer.alloc(65536, 7))
    const { runs, payload, units } = b.take()
    assert.equal(units, 6)
    assert.deepEqual(
      runs.map((r) => [r.space, r.kind, r.first, r.count, r.hashes?.length ?? 0]),
      [
        ['memory', 'data', 10, 2, 2 * HASH_BYTES],
        ['memory', 'zero', 12, 2, 0],
        ['memory', 'ref', 20, 1, HASH_BYTES],
        ['disk', 'data', 3, 1, 0],
      ],
    )
    const bytes = encodeFrame({ seq: 4, round: 2, runs, payload, codec: 'none', rawLength: payload.length })
    const f = parseFrame(bytes, g)
    assert.equal(f.seq, 4)
    assert.equal(f.round, 2)
    assert.equal(f.rawLength, 2 * 4096 + 65536)
    assert.deepEqual(Buffer.from(f.payload), Buffer.from(payload))
    assert.deepEqual(Buffer.from(f.runs[2]!.hashes!), Buffer.from(h))
    assert.ok(b.empty)
  })

  it('round-trips an lz4 frame and checks the declared size before expanding', async () => {
    const raw = Buffer.concat([page(3), page(3), page(4)])
    const c = await compressPayload(raw)
    assert.ok(c.length < raw.length / 4)
    const runs = [{ space: 'memory' as const, kind: 'data' as const, first: 0, count: 3 }]
    const f = parseFrame(
      encodeFrame({ seq: 0, round: 0, runs, payload: c, codec: 'lz4', rawLength: raw.length }),
      g,
    )
    assert.equal(f.codec, 'lz4')
    assert.deepEqual(Buffer.from(await decompressPayload(f.payload, f.rawLength, FRAME_PAYLOAD_BYTES)), raw)
    // A size prefix that lies, a bomb, and corrupt bytes
    await assert.rejects(decompressPayload(c, raw.length - 1, FRAME_PAYLOAD_BYTES), ProtocolError)
    await assert.rejects(decompressPayload(c, FRAME_PAYLOAD_BYTES * 4, FRAME_PAYLOAD_BYTES), ProtocolError)
    const bad = Buffer.from(c)
    bad.fill(0xee, 4)
    await assert.rejects(decompressPayload(bad, raw.length, FRAME_PAYLOAD_BYTES), ProtocolError)
    await assert.rejects(decompressPayload(c.subarray(0, 2), raw.length, FRAME_PAYLOAD_BYTES), ProtocolError)
  })

  it('rejects garbage, truncation, out-of-range runs, over-counts and length mismatches', () => {
    const ok = encodeFrame({
      seq: 0,
      round: 0,
      runs: [{ space: 'memory', kind: 'data', first: 0, count: 1 }],
      payload: page(9),
      codec: 'none',
      rawLength: 4096,
    })
    assert.throws(() => parseFrame(ok.subarray(0, ok.length - 100), g), ProtocolError)
    assert.throws(() => parseFrame(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0x0f]), g), ProtocolError)
    const frame = (m: Parameters<typeof pb.DataFrame.encode>[0]) => pb.DataFrame.encode(m).finish()
    // past the end of memory
    assert.throws(() => parseFrame(frame({ runs: [{ kind: 1, first: 1020, count: 5 }] }), g), /outside/)
    // zero count
    assert.throws(() => parseFrame(frame({ runs: [{ kind: 1, first: 0, count: 0 }] }), g), /outside/)
    // unknown space / kind / codec
    assert.throws(
      () => parseFrame(frame({ runs: [{ space: 7 as unknown as 0, kind: 1, first: 0, count: 1 }] }), g),
      /space/,
    )
    assert.throws(
      () => parseFrame(frame({ runs: [{ kind: 9 as unknown as 0, first: 0, count: 1 }] }), g),
      /kind/,
    )
    assert.throws(() => parseFrame(frame({ codec: 5 as unknown as 0 }), g), /codec/)
    // too many runs
    const many = Array.from({ length: MAX_RUNS + 1 }, (_, i) => ({ kind: 1, first: i % 1024, count: 1 }))
    assert.throws(() => parseFrame(frame({ runs: many }), g), /runs/)
    // payload shorter than the runs say, and a declared length that lies
    assert.throws(
      () => parseFrame(frame({ runs: [{ first: 0, count: 2 }], payload: page(1), rawLength: 8192 }), g),
      /payload/,
    )
    assert.throws(
      () => parseFrame(frame({ runs: [{ first: 0, count: 1 }], payload: page(1), rawLength: 100 }), g),
      /carry/,
    )
    // references without hashes, hashes of the wrong size, hashes when dedup is off
    assert.throws(() => parseFrame(frame({ runs: [{ kind: 2, first: 0, count: 1 }] }), g), /reference/)
    assert.throws(
      () => parseFrame(frame({ runs: [{ kind: 2, first: 0, count: 2, hashes: new Uint8Array(16) }] }), g),
      /hashes/,
    )
    const withHash = frame({ runs: [{ kind: 2, first: 0, count: 1, hashes: new Uint8Array(16) }] })
    assert.throws(() => parseFrame(withHash, { ...g, dedup: false }), /dedup/)
    // oversized frame
    assert.throws(() => parseFrame(new Uint8Array(4 * 1024 * 1024), g), /bytes/)
  })

  it('limits the frame builder to the payload and run budget', () => {
    const b = new FrameBuilder(3 * 4096, 4)
    for (let i = 0; i < 3; i++) {
      assert.ok(b.fits(4096))
      b.addData('memory', i * 2, page(i))
    }
    assert.equal(b.fits(4096), false)
    const b2 = new FrameBuilder(1 << 20, 2)
    b2.addZero('memory', 0)
    b2.addZero('memory', 5)
    assert.equal(b2.fits(0), false)
  })
})

describe('dedup table', () => {
  it('tracks content by unit and forgets overwritten units', () => {
    const t = new DedupTable(2)
    const k1 = hashKey(contentHash(page(1)))
    const k2 = hashKey(contentHash(page(2)))
    assert.ok(t.register(5, k1))
    assert.equal(t.lookup(k1), 5)
    assert.ok(t.register(6, k2))
    // full: a new unit cannot register, an existing one can change
    assert.equal(t.register(7, k1), false)
    assert.ok(t.register(6, k1))
    assert.equal(t.lookup(k2), undefined)
    assert.equal(t.lookup(k1), 6)
    t.forget(6)
    assert.equal(t.lookup(k1), undefined)
    assert.equal(t.size, 1)
  })
})

describe('control messages', () => {
  it('rejects garbage, empty messages and over-long fetches', () => {
    assert.throws(() => decodeControl(Uint8Array.from([0x0a, 0xff, 0xff])), ProtocolError)
    assert.throws(() => decodeControl(new Uint8Array(0)), /empty/)
    const fetch = pb.MigrationControl.encode({
      fetch: { pages: Array.from({ length: 5000 }, (_, i) => i) },
    }).finish()
    assert.throws(() => decodeControl(fetch), /fetch/)
    const ok = decodeControl(pb.MigrationControl.encode({ commit: { epoch: 7 } }).finish())
    assert.equal(ok.msg, 'commit')
    assert.equal(ok.commit?.epoch, 7)
  })
})

describe('frame size budget', () => {
  it('keeps a frame full of references (and a full payload) under the decoder limit', () => {
    const big: Geometry = { ...g, pageCount: 1 << 20 }
    const b = new FrameBuilder()
    let i = 0
    // References and data pages alternating: the worst mix for the encoded size
    while (b.fits(4096)) {
      if (i % 2 === 0) b.addRef('memory', i, contentHash(page(i % 7)))
      else b.addData('memory', i, page(i % 5))
      i++
    }
    const { runs, payload } = b.take()
    const bytes = encodeFrame({ seq: 0, round: 0, runs, payload, codec: 'none', rawLength: payload.length })
    const parsed = parseFrame(bytes, big)
    assert.ok(parsed.runs.length > 0 && i > 256)
  })

  it('stops a frame of references only at the hash budget', () => {
    const b = new FrameBuilder()
    let i = 0
    while (b.fits(4096)) b.addRef('memory', i++, contentHash(page(i % 3)))
    assert.equal(i, 16384)
    const { runs, payload } = b.take()
    const bytes = encodeFrame({ seq: 0, round: 0, runs, payload, codec: 'none', rawLength: 0 })
    parseFrame(bytes, { ...g, pageCount: 1 << 20 })
  })
})
