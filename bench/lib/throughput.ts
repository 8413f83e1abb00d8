// Loopback throughput of the transports the migration engine could use: raw TCP (node:net), TLS
// (node:tls, a self-signed certificate made in-process) and libp2p (tcp + noise + yamux, the agent's
// host) with one or several streams, over one or several connections; and the migration engine's
// direct data channel (src/transfer/direct.ts: TLS 1.2 PSK connections carrying the engine's frames of
// 1 MiB payload, written as parts, each acknowledged, the engine's DataSender keeping its 8 MiB window),
// over one or several connections.
//
// Every transfer is the same: an 8-byte big-endian length, then that many bytes; the receiver answers
// one byte once it has them all, and the sender's clock runs from its first write to that byte.
import '../../src/node/polyfill.js'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import tls from 'node:tls'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Connection, Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { pino } from 'pino'
import { createHost, type Host } from '../../src/node/p2p.js'
import { pb } from '../../src/proto/index.js'
import { DataSender } from '../../src/transfer/data-sender.js'
import { connectDirect, DIRECT_CIPHERS, DirectListener } from '../../src/transfer/direct.js'
import { encodeFrameParts } from '../../src/transfer/frame.js'
import type { RecordEngine } from '../../src/transfer/record-cipher.js'
import type { SealedFramed } from '../../src/transfer/sealed.js'
import { selfSignedCert } from './tls-cert.js'

export const THROUGHPUT_PROTOCOL = '/skymesh/bench/throughput/1.0.0'
const ACK = new Uint8Array([0x6b])
const HEADER = 8

export interface ReceiverInfo {
  tcpPort: number
  tlsPort: number
  multiaddrs: string[]
  /** The receiver's certificate (PEM), for the sender to trust. */
  ca: string
  /** The direct data channel's grant (port, hex key, identity). */
  direct: { port: number; key: string; identity: string }
  /** A plain message sink over the sealed channel (no frames, no acks): its grant. */
  sealed: { port: number; key: string; identity: string }
  /** A plain byte sink over the direct channel's TLS (1.2, PSK suites): port and hex key. */
  psk: { port: number; key: string }
}

export interface Receivers {
  info: ReceiverInfo
  close(): Promise<void>
}

/** Counts a transfer's bytes; true once the header's length has arrived (header included). */
class Counter {
  #header = Buffer.alloc(HEADER)
  #headerGot = 0
  #expected = -1
  #got = 0

  /** Adds a chunk; returns true when the transfer is complete. */
  add(chunk: { byteLength: number; subarray(start?: number, end?: number): Uint8Array }): boolean {
    if (this.#headerGot < HEADER) {
      const take = Math.min(HEADER - this.#headerGot, chunk.byteLength)
      this.#header.set(chunk.subarray(0, take), this.#headerGot)
      this.#headerGot += take
      if (this.#headerGot === HEADER) this.#expected = Number(this.#header.readBigUInt64BE(0))
      this.#got += chunk.byteLength - take
    } else {
      this.#got += chunk.byteLength
    }
    return this.#expected >= 0 && this.#got >= this.#expected
  }
}

function serveSocket(socket: net.Socket): void {
  const c = new Counter()
  socket.on('error', () => socket.destroy())
  socket.on('data', (chunk: Buffer) => {
    if (c.add(chunk)) socket.end(ACK)
  })
}

/** Starts a TCP, a TLS and a libp2p receiver on 127.0.0.1. */
export async function startReceivers(): Promise<Receivers> {
  const tcp = net.createServer(serveSocket)
  tcp.listen(0, '127.0.0.1')
  await once(tcp, 'listening')
  const { key, cert } = selfSignedCert()
  const tlsServer = tls.createServer({ key, cert }, serveSocket)
  tlsServer.listen(0, '127.0.0.1')
  await once(tlsServer, 'listening')
  // The direct channel's TLS without the engine on top (no frames, no acks): splits its cost in two
  const pskKey = randomBytes(32)
  const pskServer = tls.createServer({ ...PSK_TLS, pskCallback: () => pskKey }, serveSocket)
  pskServer.listen(0, '127.0.0.1')
  await once(pskServer, 'listening')
  const host = await createHost({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
  })
  await host.handle(
    THROUGHPUT_PROTOCOL,
    async (stream: Stream) => {
      const c = new Counter()
      try {
        for await (const chunk of stream) {
          if (c.add(chunk)) {
            stream.send(ACK)
            await stream.close()
            return
          }
        }
      } catch (err) {
        stream.abort(err instanceof Error ? err : new Error(String(err)))
      }
    },
    { maxInboundStreams: 64 },
  )
  // Messages leased, as the migration service's listener hands them to the destination's data loop
  const direct = new DirectListener({}, pino({ level: 'silent' }), (f) => void serveFramed(f), {
    messages: 'leased',
  })
  const grant = await direct.grant('127.0.0.1', 'bench')
  // The sealed channel without the engine on top: splits the engine's cost from the channel's
  const sealedSink = new DirectListener({}, pino({ level: 'silent' }), (f) => void serveSealedBytes(f), {
    messages: 'leased',
  })
  const sealedGrant = await sealedSink.grant('127.0.0.1', 'bench-bare')
  const hex = (g: { port: number; key: Uint8Array; identity: string }) => ({
    port: g.port,
    key: Buffer.from(g.key).toString('hex'),
    identity: g.identity,
  })
  return {
    info: {
      tcpPort: (tcp.address() as net.AddressInfo).port,
      tlsPort: (tlsServer.address() as net.AddressInfo).port,
      multiaddrs: host.getMultiaddrs().map(String),
      ca: cert,
      direct: hex(grant),
      sealed: hex(sealedGrant),
      psk: { port: (pskServer.address() as net.AddressInfo).port, key: pskKey.toString('hex') },
    },
    async close() {
      direct.close()
      sealedSink.close()
      tcp.close()
      tlsServer.close()
      pskServer.close()
      await host.stop()
    },
  }
}

/** The destination's part of the direct channel: acknowledge every frame (as destination.ts does). */
async function serveFramed(f: SealedFramed): Promise<void> {
  let seq = 0
  try {
    while (true) {
      const m = await f.read()
      if (m === null) break
      await f.write(pb.DataAck.encode({ seq: seq++, bytes: m.length }).finish())
    }
    await f.close()
  } catch (err) {
    f.abort(err instanceof Error ? err : new Error(String(err)))
  }
}

/** A byte sink on the sealed channel: the first message says how many bytes follow, one byte answers them. */
async function serveSealedBytes(f: SealedFramed): Promise<void> {
  try {
    const head = await f.read()
    if (head === null || head.length !== HEADER) throw new Error('no length message')
    const total = Number(Buffer.from(head).readBigUInt64BE(0))
    let got = 0
    while (got < total) {
      const m = await f.read()
      if (m === null) throw new Error('ended early')
      got += m.length
    }
    await f.write(ACK)
    await f.close()
  } catch (err) {
    f.abort(err instanceof Error ? err : new Error(String(err)))
  }
}

// ------------------------------------------------------------------ senders

/** Milliseconds to send `total` bytes as `chunk`-sized messages on one sealed connection (bare: no frames, no acks). */
export async function sealedTransfer(
  info: ReceiverInfo['sealed'],
  total: number,
  chunk: Buffer,
): Promise<number> {
  const grant = { port: info.port, key: Buffer.from(info.key, 'hex'), identity: info.identity }
  const signal = AbortSignal.timeout(600_000)
  const [f] = await connectDirect('127.0.0.1', grant, 1, 10_000, signal)
  try {
    const t = performance.now()
    await f!.write(header(total))
    let left = total
    while (left > 0) {
      const n = Math.min(left, chunk.length)
      left -= n
      await f!.write(n === chunk.length ? chunk : chunk.subarray(0, n))
    }
    const ack = await f!.read()
    if (ack === null) throw new Error('no answer from the sealed sink')
    return performance.now() - t
  } finally {
    await f!.close()
  }
}

/**
 * Milliseconds to send `total` bytes as 1 MiB frames over `conns` direct sealed connections with the
 * engine's DataSender (window, acks); the connections are made before the clock.
 */
export async function directTransfer(
  info: ReceiverInfo['direct'],
  total: number,
  conns: number,
  frame: Uint8Array,
  engine?: RecordEngine,
): Promise<number> {
  const grant = { port: info.port, key: Buffer.from(info.key, 'hex'), identity: info.identity }
  const signal = AbortSignal.timeout(600_000)
  const channels = await connectDirect('127.0.0.1', grant, conns, 10_000, signal, engine ? { engine } : {})
  const senders = channels.map(
    (c) =>
      new DataSender(c, {
        window: 8 * 1024 * 1024,
        stallTimeoutMs: 30_000,
        onAck: () => undefined,
        signal,
      }),
  )
  const frames = Math.max(1, Math.round(total / frame.length / conns))
  // The engine's frames: one DATA run of the chunk's pages, written as parts (encodeFrameParts)
  const runs = [{ space: 'memory' as const, kind: 'data' as const, first: 0, count: frame.length / 4096 }]
  try {
    const t = performance.now()
    await Promise.all(
      senders.map(async (s) => {
        for (let i = 0; i < frames; i++) {
          const seq = s.nextSeq
          await s.send(
            encodeFrameParts({ seq, round: 0, runs, payload: frame, codec: 'none', rawLength: frame.length }),
          )
        }
        await s.flush()
      }),
    )
    // Scaled to `total` (the frames may not divide it exactly)
    return ((performance.now() - t) * total) / (frames * conns * frame.length)
  } finally {
    for (const s of senders) {
      s.finishing()
      await s.close()
    }
  }
}

function header(total: number): Buffer {
  const h = Buffer.alloc(HEADER)
  h.writeBigUInt64BE(BigInt(total))
  return h
}

/** Writes `total` bytes (in `chunk`-sized writes, waiting for 'drain') and waits for the ack. */
async function pumpSocket(socket: net.Socket, total: number, chunk: Buffer): Promise<void> {
  const acked = new Promise<void>((resolve, reject) => {
    socket.once('data', () => resolve())
    socket.once('error', reject)
    socket.once('close', () => reject(new Error('the connection closed before the ack')))
  })
  acked.catch(() => undefined)
  socket.write(header(total))
  let left = total
  while (left > 0) {
    const n = Math.min(left, chunk.length)
    left -= n
    if (!socket.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
      await Promise.race([once(socket, 'drain'), acked])
    }
  }
  await acked
}

/** Milliseconds to send `total` bytes over a fresh TCP connection (connection set up before the clock). */
export async function tcpTransfer(port: number, total: number, chunk: Buffer): Promise<number> {
  const socket = net.connect({ port, host: '127.0.0.1', noDelay: true })
  await once(socket, 'connect')
  return await timedPump(socket, total, chunk)
}

/** Milliseconds `pumpSocket` takes on a connected socket, which is destroyed afterwards. */
async function timedPump(socket: net.Socket, total: number, chunk: Buffer): Promise<number> {
  try {
    const t = performance.now()
    await pumpSocket(socket, total, chunk)
    return performance.now() - t
  } finally {
    socket.destroy()
  }
}

/** The TLS settings of the direct data channel (src/transfer/direct.ts): 1.2, PSK-AES-GCM suites. */
const PSK_TLS = { ciphers: DIRECT_CIPHERS, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' } as const

/** As `tcpTransfer`, over the direct channel's TLS-PSK (handshake before the clock), bare bytes. */
export async function tlsPskTransfer(
  info: ReceiverInfo['psk'],
  total: number,
  chunk: Buffer,
): Promise<number> {
  const psk = Buffer.from(info.key, 'hex')
  const socket = tls.connect({
    port: info.port,
    host: '127.0.0.1',
    ...PSK_TLS,
    pskCallback: () => ({ psk, identity: 'bench' }),
    checkServerIdentity: () => undefined,
  })
  await once(socket, 'secureConnect')
  socket.setNoDelay(true)
  return await timedPump(socket, total, chunk)
}

export interface TlsResult {
  ms: number
  protocol: string
  cipher: string
}

/** As `tcpTransfer`, over TLS (handshake before the clock); the receiver's certificate is verified. */
export async function tlsTransfer(
  port: number,
  ca: string,
  total: number,
  chunk: Buffer,
): Promise<TlsResult> {
  const socket = tls.connect({ port, host: '127.0.0.1', ca, servername: 'localhost' })
  await once(socket, 'secureConnect')
  const protocol = socket.getProtocol() ?? '?'
  const cipher = socket.getCipher().standardName
  return { ms: await timedPump(socket, total, chunk), protocol, cipher }
}

/** Sends `total` bytes on a libp2p stream with v3 backpressure (`send()` false -> `onDrain()`). */
export async function pumpStream(
  stream: Stream,
  total: number,
  chunk: Uint8Array,
  beforeSend?: (bytes: number) => Promise<void>,
): Promise<void> {
  const acked = (async () => {
    for await (const c of stream) if (c.byteLength > 0) return
    throw new Error('the stream ended before the ack')
  })()
  acked.catch(() => undefined)
  stream.send(header(total))
  let left = total
  while (left > 0) {
    const n = Math.min(left, chunk.length)
    left -= n
    await beforeSend?.(n)
    if (!stream.send(n === chunk.length ? chunk : chunk.subarray(0, n))) {
      await Promise.race([stream.onDrain(), acked])
    }
  }
  await acked
  await stream.close().catch(() => undefined)
}

export interface Libp2pSender {
  host: Host
  stop(): Promise<void>
}

export async function startLibp2pSender(): Promise<Libp2pSender> {
  const host = await createHost({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
  })
  return { host, stop: async () => await host.stop() }
}

export interface Libp2pResult {
  ms: number
  connections: number
  streams: number
}

/**
 * Opens `n` distinct connections to `addr` (the first a normal dial, the others forced), paced: a
 * libp2p host refuses more than 5 inbound connections per second from one address by default
 * (connectionManager.inboundConnectionThreshold), and the agent's host keeps that default.
 */
export async function openConnections(sender: Libp2pSender, addr: string, n: number): Promise<Connection[]> {
  const ma = multiaddr(addr)
  const conns: Connection[] = []
  for (let k = 0; k < n; k++) {
    if (k > 0) await new Promise((r) => setTimeout(r, 300))
    conns.push(await sender.host.dial(ma, { force: k > 0, signal: AbortSignal.timeout(10_000) }))
  }
  return conns
}

/** `total` bytes split over `streams` new streams on each of `conns` (open connections). */
export async function libp2pTransfer(
  conns: Connection[],
  total: number,
  chunk: Uint8Array,
  streams: number,
): Promise<Libp2pResult> {
  const distinct = new Set(conns.map((c) => c.id)).size
  const all: Stream[] = []
  try {
    for (const c of conns) {
      for (let s = 0; s < streams; s++) all.push(await c.newStream(THROUGHPUT_PROTOCOL))
    }
    const per = Math.floor(total / all.length)
    const t = performance.now()
    await Promise.all(all.map((s, k) => pumpStream(s, k === 0 ? total - per * (all.length - 1) : per, chunk)))
    return { ms: performance.now() - t, connections: distinct, streams: all.length }
  } catch (err) {
    for (const s of all) s.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}
