// Length-prefixed protobuf messages on libp2p streams, with size limits and clean errors: garbage is a
// ProtocolError, a stream that ends or resets is a LinkError.
import type { Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import { pb } from '../proto/index.js'
import { HASH_BYTES, MAX_CONTROL_BYTES, MAX_FETCH_PAGES, MAX_QUERY_HASHES } from './constants.js'
import { asMigrationError, LinkError, MigrationError, ProtocolError } from './errors.js'
import type { MigrationControlMsg } from './pb-types.js'

export type ControlKind = NonNullable<InstanceType<typeof pb.MigrationControl>['msg']>
export type Control = InstanceType<typeof pb.MigrationControl>

/**
 * A framed, bidirectional message channel: a libp2p stream (`Framed`) or a direct TLS connection
 * (`SocketFramed`, direct.ts). The data path sees only this.
 */
export interface FrameChannel {
  /** Bytes written so far (payload plus framing). */
  readonly written: number
  /** One message; given as parts, they are sent back to back as one message (no copy where possible). */
  write(bytes: Uint8Array | readonly Uint8Array[], signal?: AbortSignal): Promise<void>
  /** The next message, or null at a clean end. */
  read(signal?: AbortSignal): Promise<Uint8Array | null>
  close(): Promise<void>
  abort(err: Error): void
}

/** A framed, bidirectional message stream. */
export class Framed implements FrameChannel {
  readonly stream: Stream
  readonly #lp: ReturnType<typeof lpStream>
  #wrote = 0

  constructor(stream: Stream, maxDataLength: number, maxBufferSize?: number) {
    this.stream = stream
    this.#lp = lpStream(stream, { maxDataLength, ...(maxBufferSize ? { maxBufferSize } : {}) })
  }

  /** Bytes written so far (payload plus length prefixes). */
  get written(): number {
    return this.#wrote
  }

  async write(message: Uint8Array | readonly Uint8Array[], signal?: AbortSignal): Promise<void> {
    // noise copies every byte anyway: a concat costs little here
    const bytes = message instanceof Uint8Array ? message : Buffer.concat(message)
    try {
      await this.#lp.write(bytes, { signal })
      this.#wrote += bytes.length + varintLength(bytes.length)
    } catch (err) {
      throw signal?.aborted ? signal.reason : asLinkError(err)
    }
  }

  /** The next message, or null at a clean end of stream. */
  async read(signal?: AbortSignal): Promise<Uint8Array | null> {
    try {
      const buf = await this.#lp.read({ signal })
      return buf === null ? null : buf.subarray()
    } catch (err) {
      if (signal?.aborted) throw signal.reason
      const name = err instanceof Error ? err.name : ''
      if (/InvalidDataLength|InvalidMessageLength/.test(name)) {
        throw new ProtocolError(`bad frame length: ${(err as Error).message}`)
      }
      throw asLinkError(err)
    }
  }

  async close(): Promise<void> {
    try {
      await this.stream.close({ signal: AbortSignal.timeout(2000) })
    } catch {
      this.stream.abort(new Error('close failed'))
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

function asLinkError(err: unknown): Error {
  const m = asMigrationError(err, 'LINK')
  return m.code === 'INTERNAL' ? new LinkError(m.message) : m
}

function varintLength(n: number): number {
  let len = 1
  while (n >= 0x80) {
    n = Math.floor(n / 128)
    len++
  }
  return len
}

/** The control stream: MigrationControl messages, each checked for its kind by the caller. */
export class ControlChannel {
  readonly framed: Framed

  constructor(stream: Stream) {
    this.framed = new Framed(stream, MAX_CONTROL_BYTES)
  }

  get written(): number {
    return this.framed.written
  }

  async send(msg: MigrationControlMsg, signal?: AbortSignal): Promise<void> {
    await this.framed.write(pb.MigrationControl.encode(msg).finish(), signal)
  }

  #pumping = false
  readonly #queue: Control[] = []
  #pumpError: Error | undefined
  #wake: (() => void) | undefined
  #accept: readonly ControlKind[] | null = null

  /**
   * Reads continuously from now on, so garbage or a dead stream is noticed at once even while nobody
   * waits for a message: `onError` gets the first failure, and so does any message that arrives while
   * `accepting` is null (nothing expected) or of a kind not in it.
   */
  pump(signal: AbortSignal, onError: (err: Error) => void): void {
    if (this.#pumping) return
    this.#pumping = true
    const fail = (err: Error) => {
      if (this.#pumpError) return
      this.#pumpError = err
      this.#wake?.()
      onError(err)
    }
    void (async () => {
      while (true) {
        const m = await this.#recvRaw(signal)
        if (m.msg === 'abort') throw abortError(m)
        if (this.#accept === null || !this.#accept.includes(m.msg!)) {
          throw new ProtocolError(`unexpected ${m.msg} message`)
        }
        this.#queue.push(m)
        this.#wake?.()
      }
    })().catch((err: unknown) => fail(err instanceof Error ? err : new Error(String(err))))
  }

  /** Kinds that may arrive now (pump mode; the owner sets it per step); null: none. */
  accepting(kinds: readonly ControlKind[] | null): void {
    this.#accept = kinds
  }

  async #recvRaw(signal?: AbortSignal): Promise<Control> {
    const bytes = await this.framed.read(signal)
    if (bytes === null) throw new LinkError('the control stream ended')
    return decodeControl(bytes)
  }

  /** The next message, which must be one of `kinds`; an end of stream is a LinkError, garbage a ProtocolError. */
  async expect<K extends ControlKind>(
    kinds: readonly K[],
    signal?: AbortSignal,
  ): Promise<Control & { msg: K }> {
    let m: Control
    if (this.#pumping) {
      // Messages of other accepted kinds stay queued for their own expect
      const want = (q: Control) => (kinds as readonly string[]).includes(q.msg ?? '')
      while (!this.#queue.some(want)) {
        if (this.#pumpError) throw this.#pumpError
        signal?.throwIfAborted()
        let onAbort: (() => void) | undefined
        await new Promise<void>((resolve) => {
          this.#wake = resolve
          onAbort = resolve
          signal?.addEventListener('abort', onAbort, { once: true })
        })
        if (onAbort) signal?.removeEventListener('abort', onAbort)
        this.#wake = undefined
      }
      m = this.#queue.splice(this.#queue.findIndex(want), 1)[0]!
    } else {
      m = await this.#recvRaw(signal)
      if (m.msg === 'abort') throw abortError(m)
    }
    if (!m.msg || !(kinds as readonly string[]).includes(m.msg)) {
      throw new ProtocolError(`expected ${kinds.join('|')}, got ${m.msg ?? 'an empty message'}`)
    }
    return m as Control & { msg: K }
  }
}

function abortError(m: Control): LinkError {
  return new LinkError(`the peer aborted: ${m.abort?.code ?? ''} ${m.abort?.message ?? ''}`.trim())
}

export function decodeControl(bytes: Uint8Array): Control {
  if (bytes.length > MAX_CONTROL_BYTES) throw new ProtocolError(`control message of ${bytes.length} bytes`)
  let m: Control
  try {
    m = pb.MigrationControl.decode(bytes)
  } catch (err) {
    throw new ProtocolError(
      `undecodable control message: ${err instanceof Error ? err.message : String(err)}`,
    )
  }
  if (!m.msg) throw new ProtocolError('empty control message')
  if ((m.fetch?.pages?.length ?? 0) > MAX_FETCH_PAGES)
    throw new ProtocolError('fetch of more than 4096 pages')
  if (m.contentQuery) {
    const n = m.contentQuery.hashes?.length ?? 0
    if (n === 0 || n % HASH_BYTES !== 0 || n > MAX_QUERY_HASHES * HASH_BYTES)
      throw new ProtocolError(`content query of ${n} bytes`)
  }
  return m
}

/** Runs `fn` with a signal that also aborts after `ms`; the timeout is a TIMEOUT MigrationError. */
export async function withTimeout<T>(
  ms: number,
  what: string,
  signal: AbortSignal,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const t = new AbortController()
  const timer = setTimeout(
    () => t.abort(new MigrationError('TIMEOUT', `${what} timed out after ${ms} ms`)),
    ms,
  )
  timer.unref()
  try {
    return await fn(AbortSignal.any([signal, t.signal]))
  } catch (err) {
    if (t.signal.aborted && !signal.aborted) throw t.signal.reason
    throw err
  } finally {
    clearTimeout(timer)
  }
}
