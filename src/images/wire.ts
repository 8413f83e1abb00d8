// Framing of /skymesh/images/1: length-prefixed protobuf messages (lpStream, as the gossip sync and
// transfer protocols), each at most MAX_MESSAGE_BYTES, decoded with clear errors.
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

export class ImageChannel {
  readonly #lp: ReturnType<typeof lpStream>

  constructor(readonly stream: Stream) {
    this.#lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES, maxBufferSize: 3 * MAX_MESSAGE_BYTES })
  }

  async sendRequest(req: ImageRequestProps, signal?: AbortSignal): Promise<void> {
    await this.#lp.write(pb.ImageRequest.encode(req).finish(), { signal })
  }

  async sendResponse(res: ImageResponseProps, signal?: AbortSignal): Promise<void> {
    await this.#lp.write(pb.ImageResponse.encode(res).finish(), { signal })
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
    if (bytes === null) throw new ImageProtocolError('stream ended before a response')
    try {
      return pb.ImageResponse.decode(bytes)
    } catch (err) {
      throw new ImageProtocolError(`malformed response: ${(err as Error).message}`)
    }
  }

  async #read(signal?: AbortSignal): Promise<Uint8Array | null> {
    try {
      const buf = await this.#lp.read({ signal })
      return buf === null ? null : buf.subarray()
    } catch (err) {
      const name = (err as Error).name
      if (/InvalidDataLength|InvalidMessageLength/.test(name))
        throw new ImageProtocolError(`bad frame: ${(err as Error).message}`)
      throw err
    }
  }

  async close(): Promise<void> {
    try {
      await this.stream.close({ signal: AbortSignal.timeout(2000) })
    } catch {
      this.abort(new Error('close failed'))
    }
  }

  abort(err: Error): void {
    try {
      this.stream.abort(err)
    } catch {
      // already gone
    }
  }
}
