// The chunk data path over a direct TLS connection instead of a libp2p stream. libp2p's noise + yamux
// run in JS and cost CPU per TCP segment; on a small machine where every host of a pipeline receives,
// verifies and forwards at once, that CPU is what limits the push (bench:propagate). node:tls runs
// AES-GCM in C++ and hands over whole records, so the same bytes cost a fraction.
//
// The client asks the server on /skymesh/images/1 (noise-authenticated, mesh members only) for a grant:
// the server listens on the IP the client reached it at (the TLS-PSK listener live migrations use,
// src/transfer/direct.ts), with a fresh 32-byte key and identity for that one connection, and answers
// them; the client connects with TLS 1.2 PSK and sends its chunk requests there. Any failure (relayed
// connection, an address that is not the server's, a firewall) and the client uses the libp2p stream.
import tls from 'node:tls'
import type { Logger } from 'pino'
import { DIRECT_CIPHERS, type DirectGrant, DirectListener, SocketFramed } from '../transfer/index.js'
import { MAX_MESSAGE_BYTES } from './constants.js'
import { ImageChannel } from './wire.js'

/** A grant not used within this time is withdrawn. */
const GRANT_TTL_MS = 15_000

/** The server's side: grants direct connections and hands each accepted one to `onChannel`. */
export class DirectChunks {
  readonly #listener: DirectListener
  readonly #grants = new Map<string, { release(): void; timer: NodeJS.Timeout; peer: string }>()

  constructor(log: Logger, onChannel: (ch: ImageChannel, peer: string) => void) {
    this.#listener = new DirectListener({ port: 0 }, log, (framed, label) => {
      const g = this.#grants.get(label)
      if (!g) {
        framed.abort(new Error('grant withdrawn'))
        return
      }
      // One connection per grant: stop accepting for it (the connection lives on).
      this.#withdraw(label)
      onChannel(new ImageChannel(framed, true), g.peer)
    })
  }

  /** Listens on `host` (one of our addresses) for one connection of `peer`; throws if it cannot. */
  async grant(host: string, peer: string): Promise<DirectGrant> {
    const label = `image-${Math.random().toString(36).slice(2)}-${Date.now()}`
    const g = await this.#listener.grant(host, label)
    const timer = setTimeout(() => this.#withdraw(label), GRANT_TTL_MS)
    timer.unref()
    this.#grants.set(label, { release: g.release, timer, peer })
    return { port: g.port, key: g.key, identity: g.identity }
  }

  #withdraw(label: string): void {
    const g = this.#grants.get(label)
    if (!g) return
    this.#grants.delete(label)
    clearTimeout(g.timer)
    g.release()
  }

  close(): void {
    for (const label of [...this.#grants.keys()]) this.#withdraw(label)
    this.#listener.close()
  }
}

/**
 * The client's side: one TLS-PSK connection to `host:grant.port` as an ImageChannel whose reads take
 * up to `inFlight` chunk messages (what the client asked and has not read yet).
 */
export function connectChunks(
  host: string,
  grant: DirectGrant,
  inFlight: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<ImageChannel> {
  return new Promise((resolve, reject) => {
    const key = Buffer.from(grant.key)
    const socket = tls.connect({
      host,
      port: grant.port,
      ciphers: DIRECT_CIPHERS,
      minVersion: 'TLSv1.2',
      maxVersion: 'TLSv1.2',
      pskCallback: () => ({ psk: key, identity: grant.identity }),
      // No certificate: the PSK, handed over the authenticated libp2p stream, authenticates both ends
      checkServerIdentity: () => undefined,
    })
    const fail = (err: Error) => {
      cleanup()
      socket.destroy()
      reject(err)
    }
    const onError = (err: Error) => fail(new Error(`direct chunk connection: ${err.message}`))
    const onAbort = () => fail(new Error('direct chunk connection: aborted'))
    const timer = setTimeout(
      () => fail(new Error(`no direct chunk connection within ${timeoutMs} ms`)),
      timeoutMs,
    )
    const cleanup = () => {
      clearTimeout(timer)
      socket.off('error', onError)
      signal.removeEventListener('abort', onAbort)
    }
    socket.once('error', onError)
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('secureConnect', () => {
      cleanup()
      const framed = new SocketFramed(socket, MAX_MESSAGE_BYTES, (inFlight + 1) * MAX_MESSAGE_BYTES)
      resolve(new ImageChannel(framed, true))
    })
  })
}
