// The sealed direct channel (src/transfer/sealed.ts) over real loopback sockets: the handshake lets
// only holders of the grant key in, messages arrive intact, and every kind of bad input — a wrong or
// unknown key, garbage, silence, a record altered, replayed, reordered, cut or too long, a peer past
// its window — fails with a clear error and hands nothing unauthenticated to the reader.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import { after, describe, it } from 'node:test'
import { LinkError, ProtocolError } from '../../src/transfer/errors.js'
import { adoptSocket, SealedFramed, type SealedOptions } from '../../src/transfer/sealed.js'

const KEY = randomBytes(32)
const IDENTITY = 'a1b2c3d4'
const LIMITS = { maxMessage: 2 * 1024 * 1024, maxBuffer: 64 * 1024 * 1024 }

const servers: net.Server[] = []
const sockets = new Set<net.Socket>()
after(() => {
  for (const s of servers) s.close()
  for (const s of sockets) s.destroy()
})
/** Tracks a server's connections, so that the file ends with none left open. */
function track(server: net.Server): net.Server {
  servers.push(server)
  server.on('connection', (s: net.Socket) => sockets.add(s))
  return server
}

interface Listener {
  port: number
  /** Each accepted connection's handshake, in order. */
  next(): Promise<SealedFramed>
}

/** A sealed server on 127.0.0.1 (as DirectListener makes one: paused until the channel adopts). */
async function listen(o: Partial<SealedOptions> & { lookup?: (id: string) => Uint8Array | null } = {}) {
  const results: Promise<SealedFramed>[] = []
  const waiters: ((p: Promise<SealedFramed>) => void)[] = []
  const server = net.createServer({ pauseOnConnect: true }, (socket) => {
    const p = SealedFramed.server(socket, {
      ...LIMITS,
      lookup: (id) => (id === IDENTITY ? KEY : null),
      ...o,
    }).then((r) => r.framed)
    p.catch(() => undefined)
    const w = waiters.shift()
    if (w) w(p)
    else results.push(p)
  })
  track(server)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const l: Listener = {
    port: (server.address() as net.AddressInfo).port,
    next: () => {
      const p = results.shift()
      return p ?? new Promise<Promise<SealedFramed>>((r) => waiters.push(r)).then((x) => x)
    },
  }
  return l
}

async function dial(
  port: number,
  o: Partial<{ key: Uint8Array; identity: string }> = {},
): Promise<SealedFramed> {
  const socket = net.connect({ port, host: '127.0.0.1' })
  sockets.add(socket)
  await once(socket, 'connect')
  return await SealedFramed.client(socket, { ...LIMITS, key: KEY, identity: IDENTITY, ...o })
}

const fill = (len: number, seed: number) => {
  const b = Buffer.allocUnsafe(len)
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff
  return b
}

/**
 * A man in the middle that passes the handshake (the client's two plain messages) at once, then holds
 * the client's records until it ends and sends `edit(records)` (each a whole record: length prefix,
 * ciphertext, tag) to the server instead.
 */
async function editingRelay(targetPort: number, edit: (records: Buffer[]) => Buffer[]): Promise<number> {
  const server = net.createServer((client) => {
    const upstream = net.connect({ port: targetPort, host: '127.0.0.1' })
    sockets.add(upstream)
    upstream.on('error', () => client.destroy())
    client.on('error', () => upstream.destroy())
    upstream.pipe(client)
    let pending = Buffer.alloc(0)
    let plainLeft = 2
    const records: Buffer[] = []
    client.on('data', (c: Buffer) => {
      pending = Buffer.concat([pending, c])
      while (pending.length >= 4) {
        const len = pending.readUInt32BE(0)
        const whole = 4 + len + (plainLeft > 0 ? 0 : 16)
        if (pending.length < whole) break
        const msg = pending.subarray(0, whole)
        pending = pending.subarray(whole)
        if (plainLeft > 0) {
          plainLeft--
          upstream.write(msg)
        } else records.push(Buffer.from(msg))
      }
    })
    client.on('end', () => {
      for (const r of edit(records)) upstream.write(r)
      if (pending.length > 0) upstream.write(pending)
      upstream.end()
    })
  })
  track(server)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return (server.address() as net.AddressInfo).port
}

describe('sealed channel: the handshake', () => {
  it('moves messages both ways intact: parts joined, large, empty and small ones', async () => {
    const l = await listen()
    const client = await dial(l.port)
    const server = await l.next()
    assert.equal(server.identity, IDENTITY)
    const big = fill(1024 * 1024 + 37, 1)
    await client.write([fill(23, 2), big])
    await client.write(new Uint8Array(0))
    await client.write(fill(5, 3))
    assert.deepEqual(Buffer.from((await server.read())!), Buffer.concat([fill(23, 2), big]))
    assert.equal((await server.read())!.length, 0)
    assert.deepEqual(Buffer.from((await server.read())!), fill(5, 3))
    await server.write(fill(9, 4))
    assert.deepEqual(Buffer.from((await client.read())!), fill(9, 4))
    // Framing and tags are counted in what was written
    assert.equal(client.written, 3 * (4 + 16) + 23 + big.length + 5)
    await client.close()
    assert.equal(await server.read(), null, 'a clean end at a record boundary')
    await server.close()
  })

  it('refuses a client with the wrong key, on both ends', async () => {
    const l = await listen()
    await assert.rejects(dial(l.port, { key: randomBytes(32) }), (err: Error) => {
      assert.ok(err instanceof ProtocolError, err.message)
      assert.match(err.message, /does not hold the grant key/)
      return true
    })
    await assert.rejects(l.next(), (err: Error) => err instanceof LinkError || err instanceof ProtocolError)
  })

  it('refuses an unknown identity', async () => {
    const l = await listen()
    await assert.rejects(dial(l.port, { identity: 'ffff' }), LinkError)
    await assert.rejects(l.next(), /unknown or expired grant/)
  })

  it('drops a client that speaks something else (garbage instead of a hello)', async () => {
    const l = await listen()
    const raw = net.connect({ port: l.port, host: '127.0.0.1' })
    await once(raw, 'connect')
    raw.on('error', () => undefined)
    raw.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n')
    await assert.rejects(l.next(), /not a skymesh data channel/)
    await once(raw, 'close')
  })

  it('drops a client that says nothing within the handshake timeout', async () => {
    const l = await listen({ handshakeTimeoutMs: 150 })
    const raw = net.connect({ port: l.port, host: '127.0.0.1' })
    raw.on('error', () => undefined)
    await once(raw, 'connect')
    await assert.rejects(l.next(), /no sealed handshake within 150 ms/)
    await once(raw, 'close')
  })
})

describe('sealed channel: records', () => {
  /** Sends messages a, b, c through an editing relay; returns what the server's reads give. */
  async function through(edit: (records: Buffer[]) => Buffer[]): Promise<(Buffer | Error | null)[]> {
    const l = await listen()
    const port = await editingRelay(l.port, edit)
    const client = await dial(port)
    const server = await l.next()
    await client.write(fill(70_000, 1))
    await client.write(fill(100, 2))
    await client.write(fill(3000, 3))
    await client.close()
    const got: (Buffer | Error | null)[] = []
    for (let i = 0; i < 4; i++) {
      try {
        const m = await server.read()
        got.push(m === null ? null : Buffer.from(m))
        if (m === null) break
      } catch (err) {
        got.push(err as Error)
        break
      }
    }
    return got
  }

  it('passes untouched records (the relay itself is transparent)', async () => {
    const got = await through((r) => r)
    assert.deepEqual(got, [fill(70_000, 1), fill(100, 2), fill(3000, 3), null])
  })

  it('rejects a record with one bit flipped and delivers nothing of it', async () => {
    const got = await through((r) => {
      r[1]![10]! ^= 0x01
      return r
    })
    assert.deepEqual(got[0], fill(70_000, 1))
    assert.ok(got[1] instanceof ProtocolError, String(got[1]))
    assert.match((got[1] as Error).message, /failed authentication/)
    assert.equal(got.length, 2)
  })

  it('rejects a replayed record', async () => {
    const got = await through((r) => [r[0]!, r[0]!, r[1]!, r[2]!])
    assert.deepEqual(got[0], fill(70_000, 1))
    assert.match(String(got[1]), /failed authentication/)
  })

  it('rejects records in another order', async () => {
    const got = await through((r) => [r[1]!, r[0]!, r[2]!])
    assert.match(String(got[0]), /failed authentication/)
  })

  it('rejects a length prefix over the limit before reading the body', async () => {
    const got = await through((r) => {
      r[1]!.writeUInt32BE(0xfffffff0, 0)
      return r
    })
    assert.deepEqual(got[0], fill(70_000, 1))
    assert.match(String(got[1]), /bad frame length: 4294967280 bytes/)
  })

  it('reports a connection cut in the middle of a record as a link error', async () => {
    const got = await through((r) => [r[0]!, r[1]!.subarray(0, 50)])
    assert.deepEqual(got[0], fill(70_000, 1))
    assert.ok(got[1] instanceof LinkError, String(got[1]))
    assert.match((got[1] as Error).message, /ended mid-message/)
  })

  it('fails a peer that sends past its window', async () => {
    const l = await listen({ maxBuffer: 64 * 1024 })
    const client = await dial(l.port)
    const server = await l.next()
    for (let i = 0; i < 3; i++) await client.write(fill(40_000, i))
    // The server does not read: the third message is past the window
    await assert.rejects(
      (async () => {
        await new Promise((r) => setTimeout(r, 100))
        while (true) if ((await server.read()) === null) break
      })(),
      /past its window/,
    )
    client.abort(new Error('done'))
  })

  it('leased messages: the one lent stays intact, released buffers are reused', async () => {
    const l = await listen({ messages: 'leased' })
    const client = await dial(l.port)
    const server = await l.next()
    await client.write(fill(1024 * 1024, 7))
    const first = await server.read()
    assert.ok(first)
    // More arrive while it is lent: they go to other buffers, it keeps its bytes
    for (let i = 0; i < 3; i++) await client.write(fill(1024 * 1024, 8 + i))
    await new Promise((r) => setTimeout(r, 200))
    assert.deepEqual(Buffer.from(first), fill(1024 * 1024, 7))
    const buffers = new Set<ArrayBufferLike>([first.buffer])
    for (let i = 0; i < 3; i++) {
      const m = await server.read()
      assert.ok(m)
      assert.deepEqual(Buffer.from(m), fill(1024 * 1024, 8 + i))
      buffers.add(m.buffer)
    }
    // One at a time, each read releasing the one before: the same few buffers over and over
    for (let i = 0; i < 10; i++) {
      await client.write(fill(1024 * 1024 + i, 20 + i))
      const m = await server.read()
      assert.ok(m)
      assert.deepEqual(Buffer.from(m), fill(1024 * 1024 + i, 20 + i))
      buffers.add(m.buffer)
    }
    assert.ok(buffers.size <= 5, `${buffers.size} buffers for 14 messages`)
    await client.close()
    await server.close()
  })

  it('owned messages (the default) are never reused', async () => {
    const l = await listen()
    const client = await dial(l.port)
    const server = await l.next()
    const seen = new Set<ArrayBufferLike>()
    for (let i = 0; i < 4; i++) {
      await client.write(fill(256 * 1024, i))
      const m = await server.read()
      assert.ok(m)
      seen.add(m.buffer)
    }
    assert.equal(seen.size, 4)
    await client.close()
    await server.close()
  })
})

describe('adoptSocket', () => {
  it('hands on bytes the old socket had buffered, then reads into one reused buffer', async () => {
    const server = net.createServer((s) => {
      s.write('early')
      setTimeout(() => s.end('late'), 100)
    })
    track(server)
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const old = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1' })
    await once(old, 'connect')
    await new Promise((r) => setTimeout(r, 50))
    const chunks: string[] = []
    const views = new Set<ArrayBufferLike>()
    const { socket, early } = adoptSocket(old, (c) => {
      chunks.push(c.toString())
      views.add(c.buffer)
    })
    assert.deepEqual(early.map(String), ['early'])
    assert.ok(old.destroyed)
    await once(socket, 'end')
    assert.deepEqual(chunks, ['late'])
    assert.equal(views.size, 1)
    socket.destroy()
  })
})
