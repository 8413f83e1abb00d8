// Framing of /skymesh/images/1: length-prefixed protobuf messages (lpStream, as the gossip sync and
// transfer protocols), each at most MAX_MESSAGE_BYTES, decoded with clear errors. The same messages
// also travel over a direct TLS connection (direct.ts): an ImageChannel works over either framer.
import type { Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import { pb } from '../proto/index.js'
import { MAX_MESSAGE_BYTES } from './constants.js'

export type ImageRequest = ReturnType<typeof pb.ImageRequest.decode>
export type ImageResponse = ReturnType<typeof pb.ImageResponse.decode>
export type ImageRequestProps = Parameters<typeof pb.ImageRequest.encode>[0]
export type ImageResponseProps = Parameters<typeof pb.ImageResponse.encode>[0]

/** A malformed or oversized message from a peer. */
export class ImageProtocolError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ImageProtocolError'
  }
}

/** Length-prefixed messages both ways: a libp2p stream (lpStream) or a TLS socket (SocketFramed). */
export interface MessageFramer {
  write(bytes: Uint8Array, signal?: AbortSignal): Promise<void>
  /** The next message, or null at a clean end. */
  read(signal?: AbortSignal): Promise<Uint8Array | null>
  close(): Promise<void>
  abort(err: Error): void
}

/** A libp2p stream as a MessageFramer. */
function streamFramer(stream: Stream): MessageFramer {
  const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES, maxBufferSize: 3 * MAX_MESSAGE_BYTES })
  return {
    write: (bytes, signal) => lp.write(bytes, { signal }),
    read: async (signal) => {
      const buf = await lp.read({ signal })
      return buf === null ? null : buf.subarray()
    },
    close: async () => {
      try {
        await stream.close({ signal: AbortSignal.timeout(2000) })
      } catch {
        stream.abort(new Error('close failed'))
      }
    },
    abort: (err) => stream.abort(err),
  }
}

export class ImageChannel {
  readonly #f: MessageFramer
  /** Over a direct TLS connection (not a libp2p stream). */
  readonly direct: boolean

  constructor(stream: Stream)
  constructor(framer: MessageFramer, direct: true)
  constructor(from: Stream | MessageFramer, direct?: true) {
    this.direct = direct === true
    this.#f = direct ? (from as MessageFramer) : streamFramer(from as Stream)
  }

  async sendRequest(req: ImageRequestProps, signal?: AbortSignal): Promise<void> {
    await this.#f.write(pb.ImageRequest.encode(req).finish(), signal)
  }

  async sendResponse(res: ImageResponseProps, signal?: AbortSignal): Promise<void> {
    await this.#f.write(pb.ImageResponse.encode(res).finish(), signal)
  }

  /** The next request, or null when the peer ended the stream. */
  async nextRequest(signal?: AbortSignal): Promise<ImageRequest | null> {
    let bytes: Uint8Array | null
    try {
      bytes = await this.#read(signal)
    } catch (err) {
      if ((err as Error).name === 'UnexpectedEOFError') return null
      throw err
    }
    if (bytes === null) return null
    try {
      return pb.ImageRequest.decode(bytes)
    } catch (err) {
      throw new ImageProtocolError(`malformed request: ${(err as Error).message}`)
    }
  }

  async readRequest(signal?: AbortSignal): Promise<ImageRequest> {
    const bytes = await this.#read(signal)
    if (bytes === null) throw new ImageProtocolError('stream ended before a request')
    try {
      return pb.ImageRequest.decode(bytes)
    } catch (err) {
      throw new ImageProtocolError(`malformed request: ${(err as Error).message}`)
    }
  }

  async readResponse(signal?: AbortSignal): Promise<ImageResponse> {
    const bytes = await this.#read(signal)
    if (bytes === null) {
      // A TCP connection that ends is a peer gone (killed, restarted), not one that lies: try it again later.
      if (this.direct) throw new Error('direct connection ended before a response')
      throw new ImageProtocolError('stream ended before a response')
    }
    try {
      return pb.ImageResponse.decode(bytes)
    } catch (err) {
      throw new ImageProtocolError(`malformed response: ${(err as Error).message}`)
    }
  }

  async #read(signal?: AbortSignal): Promise<Uint8Array | null> {
    try {
      return await this.#f.read(signal)
    } catch (err) {
      const e = err as Error
      // lpStream's length errors, and SocketFramed's ProtocolError (bad length, past the window)
      if (/InvalidDataLength|InvalidMessageLength/.test(e.name) || e.name === 'ProtocolError')
        throw new ImageProtocolError(`bad frame: ${e.message}`)
      throw err
    }
  }

  async close(): Promise<void> {
    await this.#f.close()
  }

  abort(err: Error): void {
    try {
      this.#f.abort(err)
    } catch {
      // already gone
    }
  }
}
