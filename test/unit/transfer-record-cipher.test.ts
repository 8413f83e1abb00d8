// The sealed channel's two record engines (src/transfer/record-cipher.ts): skymesh's native AES-GCM
// addon and node:crypto put the same bytes on the wire, so each opens what the other sealed; each
// refuses a record altered by one bit; the addon's reused send buffers never hand a record out twice
// or change one the socket still holds; and a sealed connection works with a different engine at
// each end (an agent built without a compiler talks to one built with it).
import assert from 'node:assert/strict'
import { createCipheriv, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { loadNativeGcm, NATIVE_GCM_PATH, nativeGcm, nativeGcmState } from '../../src/transfer/native-gcm.js'
import {
  type RecordEngine,
  recordOpener,
  recordSealer,
  type SealedRecord,
} from '../../src/transfer/record-cipher.js'
import { SealedFramed } from '../../src/transfer/sealed.js'

const state = nativeGcmState()
// CI builds with SKYMESH_NATIVE=require: there a missing addon is a failure, not a skip
const skip =
  state.loaded || process.env.SKYMESH_NATIVE === 'require'
    ? false
    : `no native addon: ${state.loaded ? '' : state.reason}`
const ENGINES: RecordEngine[] = ['openssl', 'node:crypto']
const KEY16 = randomBytes(16)
const OPTS = { cipher: 'aes-128-gcm' } as const

const head = (len: number) => {
  const h = Buffer.allocUnsafe(4)
  h.writeUInt32BE(len, 0)
  return h
}
const nonce = (seq: number) => {
  const n = Buffer.alloc(12)
  n.writeUInt32BE(seq, 8)
  return n
}
const bytes = (len: number, seed: number) => {
  const b = Buffer.allocUnsafe(len)
  for (let i = 0; i < len; i++) b[i] = (i * 131 + seed) & 0xff
  return b
}
/** A sealed record's bytes: the length prefix, the ciphertext, the tag. */
const joined = (r: SealedRecord) => Buffer.concat(r.buffers)

/** Opens a whole record (as joined) with `engine`, fed in pieces of `step` bytes; null if refused. */
function openWith(engine: RecordEngine, record: Buffer, seq: number, step = 100_000): Buffer | null {
  const opener = recordOpener(KEY16, { ...OPTS, engine })
  const len = record.readUInt32BE(0)
  opener.begin(nonce(seq), record.subarray(0, 4))
  const out = Buffer.alloc(len)
  for (let at = 0; at < len; at += step)
    opener.update(record.subarray(4 + at, 4 + Math.min(len, at + step)), out, at)
  return opener.open(record.subarray(4 + len)) ? out : null
}

describe('loading the addon', () => {
  it('says why it is not used: turned off, not built, not the addon, an addon that seals wrong', () => {
    const off = loadNativeGcm({ SKYMESH_NATIVE_GCM: 'off' })
    assert.deepEqual(off, { loaded: false, reason: 'SKYMESH_NATIVE_GCM=off' })
    const missing = loadNativeGcm({}, '/nonexistent/gcm.node')
    assert.ok(!missing.loaded && /not built .*npm run build:native/.test(missing.reason))
    const dir = mkdtempSync(join(tmpdir(), 'skymesh-gcm-'))
    try {
      const other = join(dir, 'other.cjs')
      writeFileSync(other, 'module.exports = { hello: 1 }')
      const notOurs = loadNativeGcm({}, other)
      assert.ok(!notOurs.loaded && /is not skymesh's gcm addon/.test(notOurs.reason))
      // Looks like the addon, but its ciphertext is wrong: refused before any record uses it
      const wrong = join(dir, 'wrong.cjs')
      writeFileSync(
        wrong,
        `module.exports = { create: () => ({}), begin() {}, update(_c, i, o) { o.set(i) }, seal(_c, t) { t.fill(0) }, open: () => true }`,
      )
      const bad = loadNativeGcm({}, wrong)
      assert.ok(!bad.loaded && /seals differently from node:crypto/.test(bad.reason))
      const broken = join(dir, 'broken.cjs')
      writeFileSync(broken, 'throw new Error("undefined symbol: EVP_whatever")')
      const thrown = loadNativeGcm({}, broken)
      assert.ok(!thrown.loaded && /could not load .*undefined symbol/.test(thrown.reason))
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('record engines', { skip }, () => {
  it('the addon loaded from the build', () => {
    assert.equal(state.loaded, true, state.loaded ? '' : state.reason)
    assert.match(NATIVE_GCM_PATH, /native\/build\/Release\/gcm\.node$/)
  })

  it('seal the same bytes as node:crypto alone, for records of every size and split', () => {
    for (const len of [0, 1, 15, 16, 17, 4096, 65_535, 65_536, 300_001, 1024 * 1024]) {
      const body = bytes(len, len & 0xff)
      // Reference: node's cipher, by hand, over the whole body at once
      const c = createCipheriv('aes-128-gcm', KEY16, nonce(7))
      c.setAAD(head(len))
      const expected = Buffer.concat([head(len), c.update(body), c.final(), c.getAuthTag()])
      const parts =
        len > 2 ? [body.subarray(0, 1), body.subarray(1, len >> 1), body.subarray(len >> 1)] : [body]
      for (const engine of ENGINES) {
        const r = recordSealer(KEY16, { ...OPTS, engine }).seal(nonce(7), head(len), parts, len)
        assert.deepEqual(joined(r), expected, `${engine}, ${len} bytes`)
      }
    }
  })

  it('each opens what the other sealed, and refuses it with one bit flipped', () => {
    const body = bytes(700_000, 3)
    for (const from of ENGINES)
      for (const to of ENGINES) {
        const record = joined(
          recordSealer(KEY16, { ...OPTS, engine: from }).seal(
            nonce(1),
            head(body.length),
            [body],
            body.length,
          ),
        )
        assert.deepEqual(openWith(to, record, 1, 65_536 + 3), body, `${from} -> ${to}`)
        // The ciphertext's first, middle and last bytes, and the tag's last (the prefix: the next test)
        for (const at of [4, 4 + 350_000, 4 + body.length - 1, record.length - 1]) {
          const bad = Buffer.from(record)
          bad[at] = bad[at]! ^ 0x10
          assert.equal(openWith(to, bad, 1), null, `${from} -> ${to}, byte ${at} flipped`)
        }
        assert.equal(openWith(to, record, 2), null, `${from} -> ${to}: another record number`)
      }
  })

  it('a wrong AAD (the length prefix) fails the tag', () => {
    const body = bytes(1000, 9)
    const record = joined(recordSealer(KEY16, OPTS).seal(nonce(1), head(body.length), [body], body.length))
    for (const engine of ENGINES) {
      const opener = recordOpener(KEY16, { ...OPTS, engine })
      opener.begin(nonce(1), head(999))
      opener.update(record.subarray(4, 4 + body.length), Buffer.alloc(body.length), 0)
      assert.equal(opener.open(record.subarray(4 + body.length)), false, engine)
    }
  })

  it('reused send buffers: a record stays intact until released, then its buffer is reused', () => {
    const sealer = recordSealer(KEY16, { ...OPTS, engine: 'openssl' })
    const held: { r: SealedRecord; copy: Buffer }[] = []
    // Six pooled buffers held at once, then one more: it gets a fresh buffer of its own
    for (let i = 0; i < 7; i++) {
      const body = bytes(1024 * 1024, i)
      const r = sealer.seal(nonce(i), head(body.length), [body], body.length)
      held.push({ r, copy: Buffer.from(joined(r)) })
    }
    assert.equal(new Set(held.map((h) => h.r.buffers[0]!.buffer)).size, 7, 'no buffer handed out twice')
    assert.equal(held[6]!.r.release, undefined, 'past the pool: not a pooled buffer')
    for (const [i, h] of held.entries()) {
      assert.deepEqual(joined(h.r), h.copy, `record ${i} unchanged while held`)
      assert.deepEqual(openWith('node:crypto', h.copy, i), bytes(1024 * 1024, i))
    }
    const first = held[0]!.r
    first.release!()
    const next = sealer.seal(nonce(9), head(70_000), [bytes(70_000, 9)], 70_000)
    assert.equal(next.buffers[0]!.buffer, first.buffers[0]!.buffer, 'a released buffer is reused')
    assert.deepEqual(openWith('node:crypto', joined(next), 9), bytes(70_000, 9))
    // Small records take fresh buffers (no release to call)
    assert.equal(sealer.seal(nonce(10), head(100), [bytes(100, 1)], 100).release, undefined)
  })

  it('bad arguments to the addon throw instead of touching memory', () => {
    const gcm = nativeGcm()!
    assert.throws(() => gcm.create(Buffer.alloc(20), true), /not 16 or 32 bytes/)
    const ctx = gcm.create(KEY16, true)
    assert.throws(() => gcm.begin(ctx, Buffer.alloc(8), Buffer.alloc(0)), /IV is not 12 bytes/)
    gcm.begin(ctx, Buffer.alloc(12), Buffer.alloc(0))
    assert.throws(() => gcm.update(ctx, Buffer.alloc(100), Buffer.alloc(99)), /output is shorter/)
    assert.throws(() => gcm.update(ctx, 'abc' as unknown as Uint8Array, Buffer.alloc(3)), /Uint8Arrays/)
    assert.throws(() => gcm.open(ctx, Buffer.alloc(16)), /decrypting context/)
    assert.throws(() => gcm.seal({} as never, Buffer.alloc(16)), /gcm.seal/)
  })
})

describe('a sealed connection with a different engine at each end', { skip }, () => {
  const closers: (() => void)[] = []
  after(() => {
    for (const c of closers) c()
  })

  async function pair(client: RecordEngine, server: RecordEngine) {
    const key = randomBytes(32)
    const limits = { maxMessage: 2 * 1024 * 1024, maxBuffer: 64 * 1024 * 1024 }
    let accepted: Promise<SealedFramed> | undefined
    const srv = net.createServer({ pauseOnConnect: true }, (s) => {
      accepted = SealedFramed.server(s, { ...limits, engine: server, lookup: () => key }).then(
        (r) => r.framed,
      )
    })
    srv.listen(0, '127.0.0.1')
    await once(srv, 'listening')
    closers.push(() => srv.close())
    const socket = net.connect({ port: (srv.address() as net.AddressInfo).port, host: '127.0.0.1' })
    closers.push(() => socket.destroy())
    await once(socket, 'connect')
    const c = await SealedFramed.client(socket, { ...limits, engine: client, key, identity: 'x1' })
    while (!accepted) await new Promise((r) => setImmediate(r))
    return { c, s: await accepted }
  }

  for (const [a, b] of [
    ['openssl', 'node:crypto'],
    ['node:crypto', 'openssl'],
    ['openssl', 'openssl'],
  ] as const)
    it(`${a} client, ${b} server: 64 MiB of 1 MiB frames both ways, in order and intact`, async () => {
      const { c, s } = await pair(a, b)
      const frames = 64
      const send = async (from: SealedFramed) => {
        // The writer runs ahead of the reader: pooled send buffers are in the socket while more are sealed
        for (let i = 0; i < frames; i++) await from.write([bytes(512, i), bytes(1024 * 1024 - 512, i + 1)])
      }
      const receive = async (to: SealedFramed) => {
        for (let i = 0; i < frames; i++) {
          const m = Buffer.from((await to.read())!)
          assert.deepEqual(m, Buffer.concat([bytes(512, i), bytes(1024 * 1024 - 512, i + 1)]), `frame ${i}`)
          if (i % 8 === 0) await new Promise((r) => setTimeout(r, 5))
        }
      }
      await Promise.all([send(c), receive(s), send(s), receive(c)])
      await c.close()
      assert.equal(await s.read(), null)
      await s.close()
    })
})
