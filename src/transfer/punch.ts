// A skymesh-level TCP hole punch for the direct sealed data channel (direct.ts, sealed.ts), between two hosts
// that each sit behind a NAT and so only have a relayed libp2p connection.
//
// Why not libp2p's DCUtR: js-libp2p's TCP dialer connects from a fresh ephemeral port (Node has no
// SO_REUSEPORT for client sockets), so the NAT mapping the relay observes is never one a punching
// dial can reuse (see test/cluster/nat-punch.test.ts). Here each side picks a FIXED local port for
// the attempt and connects from it, so an endpoint-independent NAT (Linux MASQUERADE keeps the
// source port when it is free) maps it to <public ip>:<that port>, which the other side aims at.
//
// The exchange (over a libp2p stream, relayed, mesh-key protected):
//   1. each side learns its public IP from a reachable host ("what is my address": the remote
//      address of that host's connection from us, PunchObserved);
//   2. the initiator sends PunchOffer { attempt id, its ip, its port, a fresh 32-byte key and
//      identity }, the responder answers PunchOffer { attempt id, its ip, its port };
//   3. both connect to each other from their fixed ports, again and again until a bounded deadline
//      (TCP simultaneous open: each side's SYN opens its own NAT for the other's);
//   4. the connected socket carries the sealed channel with the per-attempt key: the initiator is
//      its client, the responder its server. Only the holder of the key (sent only on the protected
//      stream) completes the handshake, so a stray connection to the port gets nothing.
// A failure (no connection by the deadline, a refused handshake) is a PunchError: the caller falls
// back to libp2p streams over the relay and says why.
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { pb } from '../proto/index.js'
import { DATA_READ_BUFFER, MAX_FRAME_BYTES } from './constants.js'
import { LinkError, ProtocolError } from './errors.js'
import { SealedFramed } from './sealed.js'
import type { MigrationHost } from './types.js'
import { Framed } from './wire.js'

const KEY_BYTES = 32
/** How long both sides of a migration try to punch before the data goes over the relay. */
export const PUNCH_TIMEOUT_MS = 10_000
const MAX_ID = 64
/** Parallel punched connections one attempt may ask for (offer.port + up to 7 more_ports). */
export const MAX_PUNCH_STREAMS = 8

/** A public address: where the other side's SYNs must go. */
export interface PunchEndpoint {
  ip: string
  port: number
  /** Further fixed ports, one per extra parallel punched connection (same order on both sides). */
  morePorts?: number[]
}

/** Every port of an endpoint, the first one first. */
export function punchPorts(e: PunchEndpoint): number[] {
  return [e.port, ...(e.morePorts ?? [])]
}

/** What the initiator sends: its endpoint and the attempt's secret. */
export interface PunchInvite extends PunchEndpoint {
  attemptId: string
  key: Uint8Array
  identity: string
}

/** The punch did not give a connection (timeout, refused, handshake failed). */
export class PunchError extends LinkError {
  override name = 'PunchError'
}

/** A fresh attempt: id, pre-shared key and identity (never reused across attempts). */
export function newPunchSecret(): { attemptId: string; key: Buffer; identity: string } {
  return {
    attemptId: randomBytes(12).toString('hex'),
    key: randomBytes(KEY_BYTES),
    identity: randomBytes(16).toString('hex'),
  }
}

/**
 * A local TCP port free right now, for this attempt's fixed-port connects. (Another process may
 * take it before we bind it: the connect then fails with EADDRINUSE and the attempt falls back.)
 */
export async function pickPunchPort(host = '0.0.0.0'): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, host, () => resolve())
  })
  const addr = server.address()
  await new Promise<void>((resolve) => server.close(() => resolve()))
  if (!addr || typeof addr === 'string') throw new PunchError('no free local port for a punch')
  return addr.port
}

/** `n` distinct free local ports (1..MAX_PUNCH_STREAMS): one per parallel punched connection. */
export async function pickPunchPorts(n: number, host = '0.0.0.0'): Promise<number[]> {
  const want = Math.max(1, Math.min(MAX_PUNCH_STREAMS, Math.floor(n)))
  const ports: number[] = []
  while (ports.length < want) {
    const p = await pickPunchPort(host)
    if (!ports.includes(p)) ports.push(p)
  }
  return ports
}

/** An endpoint with the given ports (the first is `port`, the rest `morePorts`). */
export function withPorts(ip: string, ports: number[]): PunchEndpoint {
  return { ip, port: ports[0]!, ...(ports.length > 1 ? { morePorts: ports.slice(1) } : {}) }
}

/** The "what is my address" answer of a reachable host, from its connection's remote address. */
export function observedFrom(remote: string | { toString(): string }): PunchEndpoint | undefined {
  const s = remote.toString()
  if (s.includes('/p2p-circuit')) return undefined
  const m = /^\/ip4\/([^/]+)\/(?:tcp|udp)\/(\d+)/.exec(s)
  if (m) return { ip: m[1]!, port: Number(m[2]) }
  // A plain socket's remoteAddress (IPv4, maybe mapped into IPv6)
  const ip = s.replace(/^::ffff:/, '')
  return net.isIPv4(ip) ? { ip, port: 0 } : undefined
}

export function encodeObserved(e: PunchEndpoint): Uint8Array {
  return pb.PunchObserved.encode({ ip: e.ip, port: e.port }).finish()
}

export function decodeObserved(bytes: Uint8Array): PunchEndpoint {
  const m = pb.PunchObserved.decode(bytes)
  if (!net.isIPv4(m.ip) || m.port > 65535) throw new ProtocolError('bad observed address')
  return { ip: m.ip, port: m.port }
}

/** The initiator's offer (with the secret) or the responder's answer (without). */
export function encodeOffer(o: PunchEndpoint & { attemptId: string; key?: Uint8Array; identity?: string }) {
  return pb.PunchOffer.encode({
    attemptId: o.attemptId,
    ip: o.ip,
    port: o.port,
    key: o.key ?? new Uint8Array(0),
    identity: o.identity ?? '',
    morePorts: o.morePorts ?? [],
  }).finish()
}

/** Decodes and checks an offer; `invite`: it must carry the secret (the responder's view). */
export function decodeOffer(bytes: Uint8Array, invite: true): PunchInvite
export function decodeOffer(bytes: Uint8Array, invite: false): PunchEndpoint & { attemptId: string }
export function decodeOffer(bytes: Uint8Array, invite: boolean): PunchEndpoint & Partial<PunchInvite> {
  const m = pb.PunchOffer.decode(bytes)
  if (!m.attemptId || m.attemptId.length > MAX_ID) throw new ProtocolError('bad punch attempt id')
  if (!net.isIPv4(m.ip)) throw new ProtocolError(`bad punch address: ${m.ip.slice(0, 64)}`)
  const ports = [m.port, ...(m.morePorts ?? [])]
  if (ports.length > MAX_PUNCH_STREAMS) throw new ProtocolError(`more than ${MAX_PUNCH_STREAMS} punch ports`)
  for (const p of ports)
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new ProtocolError('bad punch port')
  if (new Set(ports).size !== ports.length) throw new ProtocolError('repeated punch port')
  if (invite && (m.key.length !== KEY_BYTES || !m.identity || m.identity.length > MAX_ID))
    throw new ProtocolError('bad punch secret')
  const at = { attemptId: m.attemptId, ...withPorts(m.ip, ports) }
  return invite ? { ...at, key: m.key, identity: m.identity } : at
}

export interface PunchTcpOptions {
  /** The fixed local port both sides agreed on for our end (what we told the peer). */
  localPort: number
  /** The peer's public endpoint. */
  remote: PunchEndpoint
  /** Give up after this long (default 10 s). */
  timeoutMs?: number
  /** Pause between attempts after one fails at once (refused, reset), default 200 ms. */
  retryMs?: number
  signal?: AbortSignal
}

/**
 * TCP simultaneous open: connects from `localPort` to `remote` again and again until one connects
 * or the deadline passes. A connect that is merely unanswered is left running (the kernel resends
 * its SYN): the peer's SYN, once it reaches us through our NAT's mapping, completes it.
 */
export async function punchTcp(o: PunchTcpOptions): Promise<net.Socket> {
  const timeoutMs = o.timeoutMs ?? 10_000
  const retryMs = o.retryMs ?? 200
  const deadline = AbortSignal.any([AbortSignal.timeout(timeoutMs), ...(o.signal ? [o.signal] : [])])
  let attempts = 0
  let lastError = 'no answer'
  while (!deadline.aborted) {
    attempts++
    const socket = net.connect({ host: o.remote.ip, port: o.remote.port, localPort: o.localPort })
    let onAbort: (() => void) | undefined
    const result = await new Promise<'ok' | 'error' | 'aborted'>((resolve) => {
      onAbort = () => resolve('aborted')
      socket.once('connect', () => resolve('ok'))
      socket.once('error', (err: NodeJS.ErrnoException) => {
        lastError = err.code ?? err.message
        resolve('error')
      })
      deadline.addEventListener('abort', onAbort, { once: true })
    })
    // One listener per attempt would pile up on the deadline (dozens of attempts)
    if (onAbort) deadline.removeEventListener('abort', onAbort)
    if (result === 'ok') {
      socket.removeAllListeners('error')
      return socket
    }
    socket.destroy()
    if (result === 'aborted') break
    await new Promise((r) => setTimeout(r, retryMs))
  }
  o.signal?.throwIfAborted()
  throw new PunchError(
    `no hole-punched connection to ${o.remote.ip}:${o.remote.port} from port ${o.localPort} within ${timeoutMs} ms (${attempts} attempts, last: ${lastError})`,
  )
}

/**
 * The sealed channel (sealed.ts) over a punched socket: the initiator is the client, the responder
 * the server. Rejects with a PunchError if the handshake fails or takes longer than `timeoutMs` (the
 * socket is destroyed).
 */
export async function sealPunched(
  socket: net.Socket,
  o: {
    role: 'initiator' | 'responder'
    key: Uint8Array
    identity: string
    timeoutMs?: number
    maxMessage?: number
    maxBuffer?: number
  },
): Promise<SealedFramed> {
  const common = {
    maxMessage: o.maxMessage ?? MAX_FRAME_BYTES,
    maxBuffer: o.maxBuffer ?? DATA_READ_BUFFER,
    handshakeTimeoutMs: o.timeoutMs ?? 10_000,
  }
  try {
    if (o.role === 'initiator')
      return await SealedFramed.client(socket, { ...common, key: o.key, identity: o.identity })
    const { framed } = await SealedFramed.server(socket, {
      ...common,
      lookup: (identity) => (identity === o.identity ? o.key : null),
    })
    return framed
  } catch (err) {
    socket.destroy()
    throw new PunchError(`hole-punched channel: ${(err as Error).message}`)
  }
}

export interface PunchDirectOptions extends PunchTcpOptions {
  role: 'initiator' | 'responder'
  key: Uint8Array
  identity: string
  /** Largest message the channel accepts from the peer (default: a data frame). */
  maxMessage?: number
  /** Most bytes the peer may have sent and we not read yet (default: a migration's data window). */
  maxBuffer?: number
}

/**
 * The whole punch after the exchange: simultaneous open, then the sealed handshake. Returns the same framed
 * channel as the direct listener (direct.ts); throws a PunchError when there is none.
 */
export async function punchDirect(o: PunchDirectOptions): Promise<SealedFramed> {
  const socket = await punchTcp(o)
  return await sealPunched(socket, o)
}

export interface PunchChannelsOptions extends Omit<PunchDirectOptions, 'localPort' | 'remote'> {
  /** Our fixed local ports, one per connection (what we told the peer). */
  localPorts: number[]
  /** The peer's public endpoint; it must have as many ports as `localPorts` (same order). */
  remote: PunchEndpoint
}

/**
 * Several punched sealed connections at once, one per port pair (k-th local port to the peer's k-th
 * port): bulk data over parallel TCP connections when one cannot fill the link. One promise per
 * connection, so the responder can hand each one on as it comes; `punchAll` for all-or-none.
 */
export function punchChannels(o: PunchChannelsOptions): Promise<SealedFramed>[] {
  const remotePorts = punchPorts(o.remote)
  if (remotePorts.length !== o.localPorts.length) {
    const err = new PunchError(
      `the peer punches ${remotePorts.length} connection(s), we asked for ${o.localPorts.length}`,
    )
    return o.localPorts.map(() => Promise.reject(err))
  }
  return o.localPorts.map((localPort, k) =>
    punchDirect({ ...o, localPort, remote: { ip: o.remote.ip, port: remotePorts[k]! } }),
  )
}

/** All of `punchChannels` or none: on any failure the others are closed and a PunchError thrown. */
export async function punchAll(o: PunchChannelsOptions): Promise<SealedFramed[]> {
  // The first failure stops the others at once (no point punching the rest for the full timeout)
  const stop = new AbortController()
  let first: Error | undefined
  const all = await Promise.allSettled(
    punchChannels({ ...o, signal: AbortSignal.any([stop.signal, ...(o.signal ? [o.signal] : [])]) }).map(
      (p) =>
        p.catch((err: Error) => {
          first ??= err
          stop.abort()
          throw err
        }),
    ),
  )
  if (!first) return all.map((r) => (r as PromiseFulfilledResult<SealedFramed>).value)
  for (const r of all)
    if (r.status === 'fulfilled') r.value.abort(new Error('another punched connection failed'))
  o.signal?.throwIfAborted()
  throw first instanceof PunchError ? first : new PunchError(first.message)
}

/** "What is my address": a host answers with the remote address of the asker's connection. */
export const OBSERVED_PROTOCOL = '/skymesh/observed-addr/1.0.0'

/** Answers one "what is my address" on `stream` (only on a direct connection: a relay hides it). */
export async function serveObserved(stream: Stream, conn: Connection, signal: AbortSignal): Promise<void> {
  const f = new Framed(stream, 256)
  try {
    const seen = observedFrom(conn.remoteAddr)
    if (seen) await f.write(encodeObserved(seen), signal)
  } finally {
    await f.close()
  }
}

/**
 * Our public IP as a directly connected (not relayed) peer sees it; throws a PunchError when no
 * such peer answers.
 */
export async function askObserved(
  host: Pick<MigrationHost, 'dialProtocol' | 'getConnections'>,
  signal: AbortSignal,
): Promise<{ ip: string; by: PeerId }> {
  const direct = (host.getConnections?.() ?? []).filter(
    (c) => c.status === 'open' && c.limits === undefined && observedFrom(c.remoteAddr) !== undefined,
  )
  let last = 'no directly connected peer to ask'
  for (const c of direct.slice(0, 3)) {
    try {
      const stream = await host.dialProtocol(c.remotePeer, OBSERVED_PROTOCOL, { signal })
      const f = new Framed(stream, 256)
      try {
        const bytes = await f.read(signal)
        if (bytes === null) throw new LinkError('no answer')
        return { ip: decodeObserved(bytes).ip, by: c.remotePeer }
      } finally {
        await f.close()
      }
    } catch (err) {
      signal.throwIfAborted()
      last = (err as Error).message
    }
  }
  throw new PunchError(`cannot learn our public address: ${last}`)
}
