// The source end of one data stream: sends frames within a window of unacknowledged bytes (the
// destination acknowledges each frame once applied, so a slow destination slows the source instead of
// overflowing its read buffer), under an optional shared bandwidth limit.
import { pb } from '../proto/index.js'
import { MAX_FRAME_BYTES, MAX_WINDOW_BYTES } from './constants.js'
import { LinkError, ProtocolError } from './errors.js'
import { partsLength } from './frame.js'
import type { TokenBucket } from './rate.js'
import type { FrameChannel } from './wire.js'

export interface DataSenderInit {
  window: number
  stallTimeoutMs: number
  bucket?: TokenBucket
  /** Called with the wire bytes of each acknowledged frame. */
  onAck: (bytes: number) => void
  signal: AbortSignal
}

export class DataSender {
  readonly framed: FrameChannel
  readonly #init: DataSenderInit
  readonly #window: number
  readonly #inflight: { seq: number; bytes: number; acked?: (() => void) | undefined }[] = []
  #inflightBytes = 0
  #seq = 0
  #error: Error | null = null
  #wake: (() => void) | null = null
  readonly acks: Promise<void>

  /** `framed`: a libp2p data stream (`new Framed(stream, 64, MAX_WINDOW_BYTES)`) or a direct connection. */
  constructor(framed: FrameChannel, init: DataSenderInit) {
    this.framed = framed
    this.#init = init
    this.#window = Math.min(init.window, MAX_WINDOW_BYTES)
    this.acks = this.#readAcks().catch((err: unknown) => this.#fail(err as Error))
  }

  get nextSeq(): number {
    return this.#seq
  }

  get inflightBytes(): number {
    return this.#inflightBytes
  }

  /** Sends the DataHello that binds this stream to a migration. */
  async hello(migrationId: string, reservationId: string, streamIndex: number): Promise<void> {
    const bytes = pb.DataHello.encode({ migrationId, reservationId, streamIndex }).finish()
    await this.framed.write(bytes, this.#init.signal)
  }

  /** Sends one encoded frame (its seq must be `nextSeq`; parts: see `encodeFrameParts`), waiting for credit first. */
  async send(frame: Uint8Array | readonly Uint8Array[], acked?: () => void): Promise<void> {
    const length = frame instanceof Uint8Array ? frame.length : partsLength(frame)
    if (length > MAX_FRAME_BYTES) throw new RangeError(`frame of ${length} bytes`)
    await this.#waitUntil(() => this.#inflightBytes === 0 || this.#inflightBytes + length <= this.#window)
    await this.#init.bucket?.take(length, this.#init.signal)
    this.#inflight.push({ seq: this.#seq++, bytes: length, acked })
    this.#inflightBytes += length
    await this.#writeOrStall(frame)
  }

  /**
   * A write blocked by the stream's own backpressure (a silent link: nothing acknowledged, nothing
   * reset) never reaches the credit wait above, so it gets the same bound. One watchdog per sender
   * (not a timer per frame: those showed in the sender's profile at ~1000 frames a second).
   */
  async #writeOrStall(frame: Uint8Array | readonly Uint8Array[]): Promise<void> {
    this.#writeStarted = performance.now()
    this.#watchdog ??= this.#startWatchdog()
    // A promise per write that only the watchdog settles: racing one long-lived promise instead would
    // add a reaction to it per frame, kept until the sender dies (a leak as long as the migration)
    const stalled = new Promise<never>((_, reject) => {
      this.#onStall = reject
    })
    try {
      await Promise.race([this.framed.write(frame, this.#init.signal), stalled])
    } finally {
      this.#writeStarted = undefined
      this.#onStall = undefined
    }
  }

  /** When the write in progress began (undefined: none is), and how to fail it. */
  #writeStarted: number | undefined
  #onStall: ((err: Error) => void) | undefined
  #watchdog: NodeJS.Timeout | undefined

  #startWatchdog(): NodeJS.Timeout {
    const { stallTimeoutMs } = this.#init
    const t = setInterval(
      () => {
        const started = this.#writeStarted
        if (started !== undefined && performance.now() - started >= stallTimeoutMs)
          this.#onStall?.(new LinkError(`a data stream accepted nothing for ${stallTimeoutMs} ms`))
      },
      Math.max(10, Math.min(1000, stallTimeoutMs / 4)),
    )
    t.unref()
    return t
  }

  #stopWatchdog(): void {
    if (this.#watchdog) clearInterval(this.#watchdog)
  }

  /** Resolves when every frame sent so far is acknowledged. */
  async flush(): Promise<void> {
    await this.#waitUntil(() => this.#inflightBytes === 0)
  }

  /** Resolves when at most `bytes` are unacknowledged. */
  async drainTo(bytes: number): Promise<void> {
    await this.#waitUntil(() => this.#inflightBytes <= bytes)
  }

  async close(): Promise<void> {
    this.#stopWatchdog()
    await this.framed.close()
  }

  abort(err: Error): void {
    this.#fail(err)
    this.framed.abort(err)
  }

  async #waitUntil(ready: () => boolean): Promise<void> {
    const { signal, stallTimeoutMs } = this.#init
    while (true) {
      signal.throwIfAborted()
      if (this.#error) throw this.#error
      if (ready()) return
      let timer: NodeJS.Timeout | undefined
      let onAbort: (() => void) | undefined
      try {
        await new Promise<void>((resolve, reject) => {
          this.#wake = resolve
          timer = setTimeout(
            () => reject(new LinkError(`no acknowledgement for ${stallTimeoutMs} ms on a data stream`)),
            stallTimeoutMs,
          )
          timer.unref()
          onAbort = () => reject(signal.reason)
          signal.addEventListener('abort', onAbort, { once: true })
        })
      } finally {
        clearTimeout(timer)
        if (onAbort) signal.removeEventListener('abort', onAbort)
        this.#wake = null
      }
    }
  }

  async #readAcks(): Promise<void> {
    while (true) {
      const bytes = await this.framed.read(this.#init.signal)
      if (bytes === null) {
        if (this.#inflightBytes > 0 || !this.#closing) throw new LinkError('a data stream ended')
        return
      }
      let ack: InstanceType<typeof pb.DataAck>
      try {
        ack = pb.DataAck.decode(bytes)
      } catch {
        throw new ProtocolError('undecodable data acknowledgement')
      }
      const head = this.#inflight[0]
      if (!head || ack.seq !== head.seq || ack.bytes !== head.bytes) {
        throw new ProtocolError(`unexpected acknowledgement of frame ${ack.seq}`)
      }
      this.#inflight.shift()
      this.#inflightBytes -= head.bytes
      // Applied at the other end: every byte of it left this host, its buffers may be reused
      head.acked?.()
      this.#init.onAck(head.bytes)
      this.#wake?.()
    }
  }

  #closing = false

  /** Marks the stream as finishing: its end is then not an error. */
  finishing(): void {
    this.#closing = true
  }

  #fail(err: Error): void {
    if (this.#error) return
    this.#error = err
    this.#stopWatchdog()
    this.#wake?.()
  }
}
