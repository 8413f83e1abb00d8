// QEMU tunnels over the direct data channel (../direct.ts): instead of a libp2p stream (noise +
// yamux in JS), each QEMU connection rides its own TCP connection protected by node:tls (TLS 1.2,
// PSK-AES128-GCM-SHA256, AES-GCM in OpenSSL). The destination listens, per migration, on the address
// the source reached it at, with a fresh key and identity that travel only in the accept on the
// noise-protected control stream; so only that peer, for that migration, can open a tunnel. After the
// handshake the source sends one byte (the QemuTunnelKind: migration stream or NBD), then raw bytes.
import { randomBytes } from 'node:crypto'
import { isIP, type Socket } from 'node:net'
import tls from 'node:tls'
import { DIRECT_CIPHERS, type DirectGrant, isOwnAddress } from '../direct.js'
import { LinkError } from '../errors.js'
import type { TunnelCounters } from './tunnel.js'

const KEY_BYTES = 32

/**
 * TLS options both ends share: PSK only, no certificate; half-open, so a QEMU that shuts down its
 * sending side still gets what the other side has to say (as with a unix socket).
 */
const TLS_COMMON = {
  ciphers: DIRECT_CIPHERS,
  minVersion: 'TLSv1.2',
  maxVersion: 'TLSv1.2',
  allowHalfOpen: true,
} as const

/** The destination's listener of one migration's direct tunnels. */
export class QemuDirectListener {
  readonly grant: DirectGrant
  readonly #server: tls.Server

  private constructor(server: tls.Server, grant: DirectGrant) {
    this.#server = server
    this.grant = grant
  }

  /**
   * Listens on `host` (an address of this host: where the source reached it), ephemeral port; each
   * authenticated connection goes to `onTunnel` with its kind byte and any bytes that came with it.
   * Throws if this host cannot listen there.
   */
  static async listen(
    host: string,
    onTunnel: (socket: tls.TLSSocket, kind: number, head: Buffer) => void,
  ): Promise<QemuDirectListener> {
    if (!isIP(host)) throw new Error(`not an IP address: ${host}`)
    // the source names the address: only one of this host's own (never 0.0.0.0 or ::)
    if (!isOwnAddress(host)) throw new Error(`not an address of this host: ${host}`)
    const key = randomBytes(KEY_BYTES)
    const identity = randomBytes(16).toString('hex')
    let self: QemuDirectListener | undefined
    const server = tls.createServer(
      {
        ...TLS_COMMON,
        handshakeTimeout: 10_000,
        pskCallback: (_socket, id) => (id === identity ? key : null),
      },
      (socket) => {
        if (!self) {
          socket.destroy()
          return
        }
        socket.setNoDelay(true)
        // The kind byte; a connection that says nothing within 10 s is dropped
        const t = setTimeout(() => socket.destroy(), 10_000)
        t.unref()
        socket.once('data', (chunk: Buffer) => {
          clearTimeout(t)
          socket.pause()
          onTunnel(socket, chunk[0]!, chunk.subarray(1))
        })
        socket.on('error', () => undefined)
      },
    )
    server.on('tlsClientError', () => undefined)
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    server.on('error', () => undefined)
    const addr = server.address()
    if (!addr || typeof addr === 'string') {
      server.close()
      throw new Error('direct tunnel listener without a port')
    }
    self = new QemuDirectListener(server, { port: addr.port, key, identity })
    return self
  }

  /**
   * Stops accepting. Open tunnels carry on until QEMU closes them: after a post-copy handover the
   * guest's last pages still come through them.
   */
  close(): void {
    this.#server.close()
  }
}

/** The source's side: one TLS-PSK connection to `host` for a tunnel of `kind` (its first byte sent). */
export function connectTunnel(
  host: string,
  grant: DirectGrant,
  kind: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<tls.TLSSocket> {
  const key = Buffer.from(grant.key)
  return new Promise<tls.TLSSocket>((resolve, reject) => {
    const socket = tls.connect({
      ...TLS_COMMON,
      host,
      port: grant.port,
      pskCallback: () => ({ psk: key, identity: grant.identity }),
      // No certificate: the PSK authenticates both ends
      checkServerIdentity: () => undefined,
    })
    const fail = (err: Error) => {
      clearTimeout(t)
      signal.removeEventListener('abort', onAbort)
      socket.destroy()
      reject(err instanceof LinkError ? err : new LinkError(`direct tunnel: ${err.message}`))
    }
    const onAbort = () => fail(signal.reason instanceof Error ? signal.reason : new Error('aborted'))
    const t = setTimeout(() => fail(new LinkError(`no direct tunnel within ${timeoutMs} ms`)), timeoutMs)
    signal.addEventListener('abort', onAbort, { once: true })
    socket.once('error', fail)
    socket.once('secureConnect', () => {
      clearTimeout(t)
      signal.removeEventListener('abort', onAbort)
      socket.off('error', fail)
      socket.setNoDelay(true)
      socket.write(Buffer.from([kind]))
      resolve(socket)
    })
  })
}

/**
 * Pipes the local QEMU socket and a remote tunnel socket until both directions ended (resolves) or
 * either side failed or closed early (rejects; both destroyed). Backpressure both ways: a full
 * write side pauses the other's reads until it drains, so no tunnel holds more than a socket
 * buffer and QEMU's own socket blocks at the tunnel's real rate. `head`: bytes read from `remote`
 * before the pipe (after its kind byte).
 */
export function pipeSockets(
  local: Socket,
  remote: Socket,
  counters: TunnelCounters,
  head?: Buffer,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false
    let localEnded = false
    let remoteEnded = false
    const finish = (err?: Error) => {
      if (settled) return
      settled = true
      if (err) {
        local.destroy()
        remote.destroy()
        reject(err)
      } else resolve()
    }
    const pump = (from: Socket, to: Socket, count: (n: number) => void) => {
      from.on('data', (chunk: Buffer) => {
        count(chunk.length)
        if (!to.write(chunk)) {
          from.pause()
          to.once('drain', () => from.resume())
        }
      })
    }
    pump(local, remote, (n) => {
      counters.out += n
    })
    pump(remote, local, (n) => {
      counters.in += n
    })
    local.on('end', () => {
      localEnded = true
      remote.end()
      if (remoteEnded) finish()
    })
    remote.on('end', () => {
      remoteEnded = true
      local.end()
      if (localEnded) finish()
    })
    local.on('error', (e) => finish(e))
    remote.on('error', (e) => finish(new LinkError(`direct tunnel: ${e.message}`)))
    local.on('close', () => {
      if (!localEnded) finish(new Error('the local QEMU socket closed'))
    })
    remote.on('close', () => {
      if (!remoteEnded) finish(new LinkError('a direct tunnel closed'))
    })
    if (head && head.length > 0) {
      counters.in += head.length
      local.write(head)
    }
    local.resume()
    remote.resume()
  })
}
