// The direct data channel: a migration's data units over TCP connections of their own, sealed with
// AES-128-GCM (sealed.ts), instead of libp2p streams (noise + yamux run in JS on the event loop).
//
// Per migration: the source says in its offer the IP it reaches the destination at (a direct libp2p
// connection only); the destination listens on that address (ephemeral port, or the configured one),
// makes a fresh random 32-byte pre-shared key and identity, and sends both in its accept, on the
// noise-protected control stream. The source opens N connections and proves it holds that key in the
// sealed handshake (so does the destination): only the mesh peer the destination answered can join,
// and each connection is bound to this migration by its identity. Then the usual DataHello (migration
// id, reservation id, stream index) is checked against the identity's migration. Control stays on
// libp2p. If any connection fails within the timeout (a firewall, an address that is not the
// destination's), the source closes them all and uses libp2p streams, and its view says
// `channel: libp2p` with the reason. (The qemu tunnel, qemu/direct-tunnel.ts, pipes QEMU's own stream
// through TLS-PSK with `DIRECT_CIPHERS`.)
import { randomBytes } from 'node:crypto'
import net, { isIP } from 'node:net'
import { networkInterfaces } from 'node:os'
import type { Logger } from 'pino'
import { DATA_READ_BUFFER, MAX_FRAME_BYTES } from './constants.js'
import { LinkError } from './errors.js'
import type { RecordEngine } from './record-cipher.js'
import { SealedFramed } from './sealed.js'

/** TLS 1.2 PSK suites with AES-GCM (AES-NI) of the qemu tunnel; node's default cipher list has no PSK suite. */
export const DIRECT_CIPHERS = 'PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384'
const KEY_BYTES = 32

export interface DirectChannelOptions {
  /** How accepted connections hand out messages (see `SealedOptions.messages`). */
  messages?: 'owned' | 'leased'
}

/**
 * What carried a migration's data: libp2p streams, the engine's sealed direct connections, or (qemu
 * driver) QEMU's own stream through the TLS-PSK tunnel.
 */
export type DataChannelKind = 'libp2p' | 'direct-sealed' | 'direct-tls'

export interface DirectInit {
  /** Offer and accept direct data channels (default true). */
  enabled?: boolean
  /** Port the destination listens on (default 0: an ephemeral one per listening address). */
  port?: number
  /** Port the destination tells sources to connect to (a forwarded port); default the bound one. */
  announcePort?: number
  /** How long the source waits for all its direct connections before it uses libp2p (default 3000). */
  connectTimeoutMs?: number
}

export interface DirectGrant {
  port: number
  key: Uint8Array
  identity: string
}

/** The destination's side: sealed-channel listeners (one per address, shared by the migrations it accepts). */
export class DirectListener {
  readonly #init: Required<Pick<DirectInit, 'port'>> & DirectInit
  readonly #log: Logger
  readonly #servers = new Map<string, { server: net.Server; port: number; refs: number }>()
  readonly #grants = new Map<string, { key: Buffer; migrationId: string }>()
  readonly #onConnection: (framed: SealedFramed, migrationId: string) => void
  readonly #framed: DirectChannelOptions

  /** `framed`: how accepted connections hand out messages (the migration service leases them). */
  constructor(
    init: DirectInit,
    log: Logger,
    onConnection: (framed: SealedFramed, migrationId: string) => void,
    framed: DirectChannelOptions = {},
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
      // Paused: the sealed channel takes the socket over before anything is read (sealed.ts)
      const server = net.createServer({ pauseOnConnect: true }, (socket) => void this.#accepted(socket))
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

  async #accepted(socket: net.Socket): Promise<void> {
    socket.on('error', () => undefined)
    let opened: { framed: SealedFramed; identity: string }
    try {
      opened = await SealedFramed.server(socket, {
        maxMessage: MAX_FRAME_BYTES,
        maxBuffer: DATA_READ_BUFFER,
        ...this.#framed,
        lookup: (identity) => this.#grants.get(identity)?.key ?? null,
      })
    } catch (err) {
      // A stray connection, a peer without the key, a grant released meanwhile: nothing to hand on
      this.#log.debug({ err: (err as Error).message }, 'direct data connection refused')
      return
    }
    const g = this.#grants.get(opened.identity)
    if (!g) {
      opened.framed.abort(new LinkError('the grant was released during the handshake'))
      return
    }
    this.#onConnection(opened.framed, g.migrationId)
  }

  close(): void {
    for (const s of this.#servers.values()) s.server.close()
    this.#servers.clear()
    this.#grants.clear()
  }
}

/**
 * The source's side: `n` sealed connections to `host:port`, all or none (within `timeoutMs`); the
 * caller sends each one's DataHello. Throws (after closing any it opened) if one cannot be made.
 * `read`: what the caller reads back (default: a migration's acks; image chunks need more).
 */
export async function connectDirect(
  host: string,
  grant: DirectGrant,
  n: number,
  timeoutMs: number,
  signal: AbortSignal,
  read: { maxMessage?: number; maxBuffer?: number; engine?: RecordEngine } = {},
): Promise<SealedFramed[]> {
  const t = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])
  const sockets: net.Socket[] = []
  const one = async (): Promise<SealedFramed> => {
    const socket = net.connect({ host, port: grant.port, noDelay: true })
    sockets.push(socket)
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(new LinkError(`no direct connection within ${timeoutMs} ms`))
      if (t.aborted) onAbort()
      t.addEventListener('abort', onAbort, { once: true })
      socket.once('connect', () => {
        t.removeEventListener('abort', onAbort)
        socket.off('error', reject)
        resolve()
      })
      socket.once('error', (err) => {
        t.removeEventListener('abort', onAbort)
        reject(err)
      })
    })
    return await SealedFramed.client(socket, {
      key: grant.key,
      identity: grant.identity,
      maxMessage: read.maxMessage ?? 64,
      maxBuffer: read.maxBuffer ?? DATA_READ_BUFFER,
      handshakeTimeoutMs: timeoutMs,
      signal: t,
      ...(read.engine ? { engine: read.engine } : {}),
    })
  }
  const opened = await Promise.allSettled(Array.from({ length: n }, one))
  const failed = opened.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (!failed) return opened.map((r) => (r as PromiseFulfilledResult<SealedFramed>).value)
  for (const r of opened)
    if (r.status === 'fulfilled') r.value.abort(new LinkError('another direct connection failed'))
  for (const s of sockets) s.destroy()
  signal.throwIfAborted()
  const err = failed.reason as Error
  if (t.aborted) throw new LinkError(`no direct connection within ${timeoutMs} ms`)
  throw err instanceof LinkError ? err : new LinkError(`direct connection: ${err.message}`)
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
