// Byte tunnels between QEMU's unix sockets and libp2p streams. Each QEMU connection (the migration
// stream, each multifd channel, the block mirror's NBD client) becomes one libp2p stream, piped
// byte for byte. Backpressure both ways: a full stream pauses the socket until it drains, a full
// socket pauses the stream (yamux then stops granting window to the sender).

import { rm } from 'node:fs/promises'
import { createServer, type Server, Socket } from 'node:net'
import type { Stream } from '@libp2p/interface'
import { pipeSockets } from './direct-tunnel.js'

/** Read buffer of a tunnel stream: above yamux's largest stream window. */
export const TUNNEL_READ_BUFFER = 32 * 1024 * 1024

/**
 * Bytes a tunnel may have in flight (sent, not yet taken by the remote agent) per direction.
 * yamux grants window on receipt and grows it to 16 MiB per stream; with the JS noise+yamux path
 * at ~50 MB/s that is ~300 ms of backlog per stream that QEMU's writes to its local socket never
 * see, so QEMU overestimates the bandwidth and stops the guest with far too much left. A small
 * window makes QEMU's socket block at the tunnel's real rate.
 */
export const TUNNEL_WINDOW = 1024 * 1024

/** Caps the receive window a yamux stream grants its sender (no-op for other stream kinds). */
export function capStreamWindow(stream: Stream, bytes = TUNNEL_WINDOW): void {
  const s = stream as unknown as { maxStreamWindowSize?: unknown; recvWindow?: unknown }
  if (typeof s.maxStreamWindowSize === 'number')
    s.maxStreamWindowSize = Math.min(s.maxStreamWindowSize, bytes)
  if (typeof s.recvWindow === 'number') s.recvWindow = Math.min(s.recvWindow, bytes)
}

/** Bytes carried by a tunnel, both directions. */
export interface TunnelCounters {
  out: number
  in: number
}

/**
 * Pipes `socket` and `stream` until both directions ended (resolves) or either side failed
 * (rejects; both are torn down). Half-closes are passed through.
 */
export function pipeSocketStream(socket: Socket, stream: Stream, counters: TunnelCounters): Promise<void> {
  // A migration stream may be quiet for long stretches (an NBD connection between writes).
  stream.inactivityTimeout = 0
  capStreamWindow(stream)
  // While paused, yamux stops granting window, but up to its largest stream window (16 MiB by
  // default) may already be on the way: room for that, so a pause never overflows the buffer.
  stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, TUNNEL_READ_BUFFER)
  return new Promise((resolve, reject) => {
    let settled = false
    let socketEnded = false
    let streamEnded = false
    const finish = (err?: Error) => {
      if (settled) return
      settled = true
      stream.removeEventListener('message', onMessage)
      if (err) {
        socket.destroy()
        stream.abort(err)
        reject(err)
      } else {
        socket.end()
        resolve()
      }
    }
    const maybeDone = () => {
      if (socketEnded && streamEnded) finish()
    }
    // socket -> stream
    socket.on('data', (chunk: Buffer) => {
      counters.out += chunk.length
      try {
        if (!stream.send(chunk)) {
          socket.pause()
          stream.onDrain().then(
            () => socket.resume(),
            (e: unknown) => finish(e instanceof Error ? e : new Error(String(e))),
          )
        }
      } catch (e) {
        finish(e instanceof Error ? e : new Error(String(e)))
      }
    })
    socket.on('end', () => {
      socketEnded = true
      stream.close().then(maybeDone, (e: unknown) => finish(e instanceof Error ? e : new Error(String(e))))
    })
    socket.on('error', (e) => finish(e))
    socket.on('close', () => {
      if (!socketEnded) finish(new Error('the local QEMU socket closed'))
    })
    // stream -> socket
    // Paused from a microtask: `resume()` delivers the buffered data (here) before it tells yamux to
    // grant window again, so a pause from inside the delivery would be undone at once.
    let pausing = false
    const pauseIfFull = () => {
      pausing = false
      if (settled || !socket.writableNeedDrain || stream.readStatus !== 'readable') return
      stream.pause()
      socket.once('drain', () => {
        if (stream.readStatus === 'paused') stream.resume()
      })
    }
    const onMessage = (evt: { data: { subarray(): Uint8Array } }) => {
      const data = evt.data.subarray()
      counters.in += data.length
      if (!socket.write(data) && !pausing) {
        pausing = true
        queueMicrotask(pauseIfFull)
      }
    }
    stream.addEventListener('message', onMessage)
    // 'end': the remote closed its side AND every byte it sent was delivered here (a paused stream
    // may still hold some when the remote's close arrives)
    stream.addEventListener('end', () => {
      streamEnded = true
      socket.end()
      maybeDone()
    })
    stream.addEventListener('close', (evt) => {
      const e = (evt as { error?: Error }).error
      if (e) finish(e)
      else {
        streamEnded = true
        maybeDone()
      }
    })
  })
}

/**
 * A unix socket the local QEMU connects to; each connection is tunnelled through what `open()` gives:
 * a libp2p stream or a direct TLS socket (direct-tunnel.ts). Errors of a tunnel go to `onError` (the
 * migration fails on them).
 */
export class TunnelListener {
  readonly counters: TunnelCounters = { out: 0, in: 0 }
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  readonly #pipes: Promise<void>[] = []
  #lastOpen: Promise<void> = Promise.resolve()

  private constructor(
    readonly path: string,
    server: Server,
  ) {
    this.#server = server
  }

  static async listen(
    path: string,
    open: () => Promise<Stream | Socket>,
    onError: (err: Error) => void,
  ): Promise<TunnelListener> {
    await rm(path, { force: true })
    let self: TunnelListener | undefined
    const server = createServer({ allowHalfOpen: true }, (socket) => {
      if (!self) {
        socket.destroy()
        return
      }
      const l = self
      l.#sockets.add(socket)
      socket.pause()
      // Tunnels open one after the other, in QEMU's connection order: QEMU 7.2's incoming side takes
      // its first connection as the main migration channel and the next ones as multifd channels, so
      // the destination must see them in the same order (concurrent handshakes could swap them)
      const opened = l.#lastOpen.then(open)
      l.#lastOpen = opened.then(
        () => undefined,
        () => undefined,
      )
      const p = opened
        .then((remote) => {
          if (remote instanceof Socket) return pipeSockets(socket, remote, l.counters)
          socket.resume()
          return pipeSocketStream(socket, remote, l.counters)
        })
        .catch((err: unknown) => {
          socket.destroy()
          onError(err instanceof Error ? err : new Error(String(err)))
        })
        .finally(() => l.#sockets.delete(socket))
      l.#pipes.push(p)
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => {
        server.off('error', reject)
        resolve()
      })
    })
    self = new TunnelListener(path, server)
    return self
  }

  /** Connections tunnelled so far. */
  get connections(): number {
    return this.#pipes.length
  }

  /** Stops accepting, tears down every open tunnel, removes the socket file. */
  async close(): Promise<void> {
    await new Promise<void>((r) => this.#server.close(() => r()))
    for (const s of this.#sockets) s.destroy()
    await Promise.allSettled(this.#pipes)
    await rm(this.path, { force: true })
  }
}
