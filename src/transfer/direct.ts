// The direct data channel: a migration's data units over TCP connections protected by node:tls
// instead of libp2p streams (noise + yamux run in JS on the event loop; node:tls runs AES-GCM in C++).
//
// Per migration: the source says in its offer the IP it reaches the destination at (a direct libp2p
// connection only); the destination listens on that address (ephemeral port, or the configured one),
// makes a fresh random 32-byte pre-shared key and identity, and sends both in its accept, on the
// noise-protected control stream. The source opens N TLS 1.2 connections with that PSK
// (PSK-AES128-GCM-SHA256, AES-NI; node 20.20 also negotiates TLS 1.3 with a PSK, but it measured no
// faster on loopback, and the images' and qemu tunnel's clients pin 1.2): the handshake completes only
// if both hold the key, so only the mesh peer the destination answered can join, and each connection
// is bound to this migration by its identity. Then the usual DataHello (migration id, reservation id,
// stream index) is checked against the identity's migration. Control stays on libp2p. If any
// connection fails within the timeout (a firewall, an address that is not the destination's), the
// source closes them all and uses libp2p streams, and its view says `channel: libp2p` with the reason.
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { isIP } from 'node:net'
import { networkInterfaces } from 'node:os'
import tls from 'node:tls'
import type { Logger } from 'pino'
import { DATA_READ_BUFFER, MAX_FRAME_BYTES } from './constants.js'
import { LinkError, ProtocolError } from './errors.js'
import type { FrameChannel } from './wire.js'

/** TLS 1.2 PSK suites with AES-GCM (AES-NI); node's default cipher list has no PSK suite. */
export const DIRECT_CIPHERS = 'PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384'
const KEY_BYTES = 32
const HEADER = 4
/** A message part at least this large is written on its own instead of copied next to its header. */
const SEPARATE_WRITE_BYTES = 16 * 1024
/** A TLS record's most plaintext (16 KiB). */
const RECORD_BYTES = 16 * 1024
/** Leased messages: ones at least this large are assembled in reused buffers (see `SocketFramedOptions`). */
const LEASE_MIN_BYTES = 64 * 1024
/** Reused buffers one connection keeps (each `maxDataLength` long; only when that is <= 4 MiB). */
const LEASE_POOL = 8
const LEASE_MAX_DATA = 4 * 1024 * 1024

export interface SocketFramedOptions {
  /**
   * 'leased': a message `read()` returns is valid only until the next `read()` (or close): its bytes
   * may then be reused for a later message. A large message arrives as 16 KiB TLS records and has to be
   * assembled in a buffer of its own; a fresh 1 MiB buffer costs more than its copy (glibc maps and
   * unmaps it: page faults on every use, ~1.5 ms per MiB here, as much as decrypting it), a reused one
   * does not. For readers that are done with a message before they ask for the next, as the
   * destination's data loop is (it applies a frame, acknowledges it, then reads). Default 'owned'.
   */
  messages?: 'owned' | 'leased'
}

export type DataChannelKind = 'libp2p' | 'direct-tls'

export interface DirectInit {
  /** Offer and accept direct data channels (default true). */
  enabled?: boolean
  /** Port the destination listens on (default 0: an ephemeral one per listening address). */
  port?: number
  /** Port the destination tells sources to connect to (a forwarded port); default the bound one. */
  announcePort?: number
  /** How long the source waits for all its TLS connections before it uses libp2p (default 3000). */
  connectTimeoutMs?: number
}

export interface DirectGrant {
  port: number
  key: Uint8Array
  identity: string
}

/**
 * A length-prefixed (4-byte big-endian) message channel over a TLS socket, with the same contract as
 * `Framed`: garbage (a length over the limit, more buffered than the window allows) is a
 * ProtocolError, a reset or an end in the middle of a message a LinkError.
 */
export class SocketFramed implements FrameChannel {
  readonly socket: tls.TLSSocket
  readonly #maxData: number
  readonly #maxBuffer: number
  /** The length prefix being read, and the message being assembled (null: none). */
  readonly #header = Buffer.alloc(HEADER)
  #headerGot = 0
  #message: Buffer | null = null
  #got = 0
  readonly #messages: Uint8Array[] = []
  /** Per queued message: the pool buffer it lives in (leased mode), or undefined. */
  readonly #owners: (Buffer | undefined)[] = []
  /** Leased mode: free pool buffers, how many exist, and the one under the message last read. */
  readonly #free: Buffer[] | undefined
  #pooled = 0
  #lent: Buffer | undefined
  /** The pool buffer of the message being assembled, if any. */
  #messageOwner: Buffer | undefined
  #queued = 0
  #ended = false
  #error: Error | null = null
  /** Waiters (a read and a write waiting for 'drain' may wait at once): all re-check on any event. */
  readonly #wakers = new Set<() => void>()
  #wrote = 0

  constructor(
    socket: tls.TLSSocket,
    maxDataLength: number,
    maxBufferSize: number,
    options: SocketFramedOptions = {},
  ) {
    this.socket = socket
    this.#maxData = maxDataLength
    this.#maxBuffer = maxBufferSize
    if (options.messages === 'leased' && maxDataLength <= LEASE_MAX_DATA) this.#free = []
    socket.setNoDelay(true)
    socket.on('data', (c: Buffer) => this.#onData(c))
    socket.on('end', () => {
      if (this.#partial > 0) this.#fail(new LinkError('a direct data connection ended mid-message'))
      this.#ended = true
      this.#wakeAll()
    })
    socket.on('error', (err) => this.#fail(new LinkError(`direct data connection: ${err.message}`)))
    // A writer waiting for room re-checks on every 'drain' (one listener for the connection's life)
    socket.on('drain', () => this.#wakeAll())
    socket.on('close', () => {
      if (!this.#ended) this.#fail(new LinkError('a direct data connection closed'))
      this.#wakeAll()
    })
  }

  get written(): number {
    return this.#wrote
  }

  #wakeAll(): void {
    for (const w of this.#wakers) w()
  }

  #fail(err: Error): void {
    if (this.#error) return
    this.#error = err
    this.#wakeAll()
  }

  #onData(c: Buffer): void {
    if (this.#error) return
    const had = this.#messages.length
    let off = 0
    while (off < c.length) {
      if (this.#message === null) {
        const take = Math.min(HEADER - this.#headerGot, c.length - off)
        c.copy(this.#header, this.#headerGot, off, off + take)
        this.#headerGot += take
        off += take
        if (this.#headerGot < HEADER) break
        this.#headerGot = 0
        const len = this.#header.readUInt32BE(0)
        if (len > this.#maxData) {
          this.#fail(new ProtocolError(`bad frame length: ${len} bytes`))
          this.socket.destroy()
          return
        }
        if (c.length - off >= len) {
          // All of it in this chunk: a view, no copy
          this.#push(c.subarray(off, off + len))
          off += len
          continue
        }
        // Spread over chunks (TLS records are <= 16 KiB): copied into place as they come, so the
        // records are garbage at once instead of kept for a concat
        this.#message = this.#buffer(len)
        this.#got = 0
      }
      const take = Math.min(this.#message.length - this.#got, c.length - off)
      // TypedArray set: a plain memcpy (Buffer#copy checks its arguments in JS first)
      this.#message.set(take === c.length ? c : c.subarray(off, off + take), this.#got)
      this.#got += take
      off += take
      if (this.#got === this.#message.length) {
        this.#push(this.#message, this.#messageOwner)
        this.#message = null
        this.#messageOwner = undefined
      }
    }
    // The sender keeps a window of unacknowledged bytes: more than that waiting here breaks the protocol
    if (this.#queued + this.#partial > this.#maxBuffer) {
      this.#fail(new ProtocolError('the peer sent past its window'))
      this.socket.destroy()
      return
    }
    // A reader waits for whole messages: most chunks (TLS records) only add to one
    if (this.#messages.length > had) this.#wakeAll()
  }

  /** Bytes of a message (and its length prefix) that arrived but not all of it yet. */
  get #partial(): number {
    return this.#headerGot + (this.#message ? HEADER + this.#got : 0)
  }

  #push(msg: Uint8Array, owner?: Buffer): void {
    this.#messages.push(msg)
    this.#owners.push(owner)
    this.#queued += msg.length
  }

  /** A buffer of `len` bytes for a message to be assembled in: a pool buffer's start when leased. */
  #buffer(len: number): Buffer {
    const free = this.#free
    if (!free || len < LEASE_MIN_BYTES) return Buffer.allocUnsafe(len)
    let owner = free.pop()
    if (!owner && this.#pooled < LEASE_POOL) {
      owner = Buffer.allocUnsafeSlow(this.#maxData)
      this.#pooled++
    }
    if (!owner) return Buffer.allocUnsafe(len)
    this.#messageOwner = owner
    return owner.subarray(0, len)
  }

  async write(message: Uint8Array | readonly Uint8Array[], signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted()
    if (this.#error) throw this.#error
    if (this.socket.destroyed || this.socket.writableEnded)
      throw new LinkError('a direct data connection closed')
    const parts = message instanceof Uint8Array ? [message] : message
    let length = 0
    for (const p of parts) length += p.length
    // Not a writev: node's TLS socket copies a multi-buffer write into one new buffer before it
    // encrypts. So the small parts (our length prefix, a frame's protobuf head) go in one write and a
    // large last part (a frame's payload) in another, as it is. The first write is topped up with the
    // payload's start to a full TLS record (16 KiB): a tiny record of its own would cost a syscall, a
    // TCP segment and a wake-up of the reader for a few bytes.
    const last = parts[parts.length - 1]
    const big = last !== undefined && last.length >= SEPARATE_WRITE_BYTES ? last : undefined
    const small = HEADER + length - (big?.length ?? 0)
    const topUp = big ? Math.min(big.length, Math.max(0, RECORD_BYTES - small)) : 0
    const head = Buffer.allocUnsafe(small + topUp)
    head.writeUInt32BE(length, 0)
    let off = HEADER
    for (const p of big ? parts.slice(0, -1) : parts) {
      head.set(p, off)
      off += p.length
    }
    let ok = true
    if (big) {
      head.set(big.subarray(0, topUp), off)
      ok = this.socket.write(head)
      if (topUp < big.length) ok = this.socket.write(big.subarray(topUp))
    } else ok = this.socket.write(head)
    this.#wrote += HEADER + length
    if (ok) return
    // Drained before the next message: a write queued behind a busy socket is buffered by node and
    // later sent with its neighbours as one writev, which node's TLS copies into one buffer first
    // (measured: memmove per byte doubled at the sender when frames were written ahead)
    await this.#until(() => !this.socket.writableNeedDrain, signal)
  }

  async read(signal?: AbortSignal): Promise<Uint8Array | null> {
    // Leased: the caller is done with the message it read before
    if (this.#lent) {
      this.#free?.push(this.#lent)
      this.#lent = undefined
    }
    while (true) {
      const m = this.#messages.shift()
      if (m) {
        this.#lent = this.#owners.shift()
        this.#queued -= m.length
        return m
      }
      if (this.#error) throw this.#error
      if (this.#ended) return null
      await this.#until(() => this.#messages.length > 0 || this.#error !== null || this.#ended, signal)
    }
  }

  /** Waits for `ready` (re-checked on every data, drain, end or error event of the socket). */
  async #until(ready: () => boolean, signal: AbortSignal | undefined): Promise<void> {
    while (!ready()) {
      signal?.throwIfAborted()
      if (this.#error) throw this.#error
      let wake: (() => void) | undefined
      await new Promise<void>((resolve) => {
        wake = () => resolve()
        this.#wakers.add(wake)
        signal?.addEventListener('abort', wake, { once: true })
      })
      if (wake) {
        this.#wakers.delete(wake)
        signal?.removeEventListener('abort', wake)
      }
    }
    signal?.throwIfAborted()
  }

  async close(): Promise<void> {
    if (this.socket.destroyed) return
    this.socket.end()
    const t = setTimeout(() => this.socket.destroy(), 2000)
    t.unref()
    try {
      if (!this.socket.destroyed) await once(this.socket, 'close')
    } catch {
      // destroyed with an error: closed all the same
    } finally {
      clearTimeout(t)
    }
  }

  abort(err: Error): void {
    this.#fail(err)
    this.socket.destroy()
  }
}

/** The destination's side: TLS-PSK listeners (one per address, shared by the migrations it accepts). */
export class DirectListener {
  readonly #init: Required<Pick<DirectInit, 'port'>> & DirectInit
  readonly #log: Logger
  readonly #servers = new Map<string, { server: tls.Server; port: number; refs: number }>()
  readonly #grants = new Map<string, { key: Buffer; migrationId: string }>()
  readonly #identities = new WeakMap<tls.TLSSocket, string>()
  readonly #onConnection: (framed: SocketFramed, migrationId: string) => void
  readonly #framed: SocketFramedOptions

  /** `framed`: how accepted connections hand out messages (the migration service leases them). */
  constructor(
    init: DirectInit,
    log: Logger,
    onConnection: (framed: SocketFramed, migrationId: string) => void,
    framed: SocketFramedOptions = {},
  ) {
    this.#init = { ...init, port: init.port ?? 0 }
    this.#log = log
    this.#onConnection = onConnection
    this.#framed = framed
  }

  /**
   * Listens on `host` (the address the source reached us at; it must be one of ours) for migration
   * `migrationId`; returns what the source needs and a release (stop accepting for it). Throws if
   * this host cannot listen there (then the accept offers no direct channel).
   */
  async grant(host: string, migrationId: string): Promise<DirectGrant & { release(): void }> {
    if (!isIP(host)) throw new Error(`not an IP address: ${host}`)
    // A peer names the address; only one of this host's own unicast addresses may be listened on
    // (never 0.0.0.0 or ::, which would open the listener on every interface)
    if (!isOwnAddress(host)) throw new Error(`not an address of this host: ${host}`)
    let s = this.#servers.get(host)
    if (!s) {
      const server = tls.createServer(
        {
          ciphers: DIRECT_CIPHERS,
          minVersion: 'TLSv1.2',
          maxVersion: 'TLSv1.2',
          handshakeTimeout: 10_000,
          pskCallback: (socket, identity) => {
            const g = this.#grants.get(identity)
            if (!g) return null
            this.#identities.set(socket, identity)
            return g.key
          },
        },
        (socket) => this.#accepted(socket),
      )
      server.on('tlsClientError', () => undefined)
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(this.#init.port, host, () => {
          server.off('error', reject)
          resolve()
        })
      })
      server.on('error', (err) => this.#log.warn({ err: err.message }, 'direct data listener'))
      const addr = server.address()
      if (!addr || typeof addr === 'string') {
        server.close()
        throw new Error('direct data listener without a port')
      }
      // Another grant may have opened it meanwhile
      const again = this.#servers.get(host)
      if (again) server.close()
      else this.#servers.set(host, { server, port: addr.port, refs: 0 })
      s = this.#servers.get(host)!
    }
    s.refs++
    const identity = randomBytes(16).toString('hex')
    const key = randomBytes(KEY_BYTES)
    this.#grants.set(identity, { key, migrationId })
    let released = false
    return {
      port: this.#init.announcePort || s.port,
      key,
      identity,
      release: () => {
        if (released) return
        released = true
        this.#grants.delete(identity)
        const cur = this.#servers.get(host)
        if (cur && --cur.refs <= 0) {
          this.#servers.delete(host)
          cur.server.close()
        }
      },
    }
  }

  #accepted(socket: tls.TLSSocket): void {
    const identity = this.#identities.get(socket)
    const g = identity === undefined ? undefined : this.#grants.get(identity)
    if (!g) {
      socket.destroy()
      return
    }
    this.#onConnection(
      new SocketFramed(socket, MAX_FRAME_BYTES, DATA_READ_BUFFER, this.#framed),
      g.migrationId,
    )
  }

  close(): void {
    for (const s of this.#servers.values()) s.server.close()
    this.#servers.clear()
    this.#grants.clear()
  }
}

/**
 * The source's side: `n` TLS-PSK connections to `host:port`, all or none (within `timeoutMs`); the
 * caller sends each one's DataHello. Throws (after closing any it opened) if one cannot be made.
 * `read`: what the caller reads back (default: a migration's acks; image chunks need more).
 */
export async function connectDirect(
  host: string,
  grant: DirectGrant,
  n: number,
  timeoutMs: number,
  signal: AbortSignal,
  read: { maxMessage?: number; maxBuffer?: number } = {},
): Promise<SocketFramed[]> {
  const sockets: tls.TLSSocket[] = []
  const key = Buffer.from(grant.key)
  const one = () =>
    new Promise<tls.TLSSocket>((resolve, reject) => {
      const socket = tls.connect({
        host,
        port: grant.port,
        ciphers: DIRECT_CIPHERS,
        minVersion: 'TLSv1.2',
        maxVersion: 'TLSv1.2',
        pskCallback: () => ({ psk: key, identity: grant.identity }),
        // No certificate: the PSK authenticates both ends
        checkServerIdentity: () => undefined,
      })
      sockets.push(socket)
      socket.once('secureConnect', () => {
        socket.off('error', reject)
        resolve(socket)
      })
      socket.once('error', reject)
    })
  const t = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])
  let onAbort: (() => void) | undefined
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(new LinkError(`no direct connection within ${timeoutMs} ms`))
    t.addEventListener('abort', onAbort, { once: true })
  })
  aborted.catch(() => undefined)
  try {
    const all = await Promise.race([Promise.all(Array.from({ length: n }, one)), aborted])
    return all.map((s) => new SocketFramed(s, read.maxMessage ?? 64, read.maxBuffer ?? DATA_READ_BUFFER))
  } catch (err) {
    for (const s of sockets) s.destroy()
    signal.throwIfAborted()
    throw err instanceof LinkError ? err : new LinkError(`direct connection: ${(err as Error).message}`)
  } finally {
    if (onAbort) t.removeEventListener('abort', onAbort)
  }
}

/** Whether `ip` is configured on one of this host's interfaces (the unspecified addresses are not). */
export function isOwnAddress(ip: string): boolean {
  const wanted = ip.toLowerCase()
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.address.toLowerCase() === wanted) return true
  }
  return false
}

/** The IP address of a libp2p connection's remote end, if it is a direct TCP one (not a relay). */
export function directHostOf(conn: {
  direct?: boolean
  remoteAddr: { toString(): string }
  status?: string
}): string | undefined {
  if (conn.direct === false || (conn.status !== undefined && conn.status !== 'open')) return undefined
  const s = conn.remoteAddr.toString()
  if (s.includes('/p2p-circuit')) return undefined
  const m = /^\/(ip4|ip6)\/([^/]+)\/tcp\/\d+/.exec(s)
  return m ? m[2] : undefined
}
