// Long-lived outbound SWIM streams, one per peer. Requests (PING, PING_REQ) go out length-prefixed
// and their answers come back on the same stream, matched by seq. A new yamux stream per probe cost
// a multistream-select negotiation, a peer-store write on both sides and four extra frames each
// way; a kept stream costs only the message itself. A peer that answers one request per stream
// and closes it (an older agent) still works: the channel is reopened for the next request.
import type { Libp2p, PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { Logger } from 'pino'
import type { DropReason } from '../types.js'
import { decodeMessage, type SwimMessage } from './codec.js'
import { asError, raceSignal, readErrorReason } from './util.js'

type LpStream = ReturnType<typeof lpStream>

const MAX_SILENT = 3

interface Pending {
  resolve: (answer: { msg: SwimMessage; bytes: number }) => void
  reject: (err: Error) => void
}

class Channel {
  readonly pending = new Map<number, Pending>()
  /** When the last answer arrived (ms). */
  lastAnswerAt = 0
  /** Requests in a row that timed out with no answer at all meanwhile. */
  silentTimeouts = 0
  closed = false
  constructor(
    readonly stream: Stream,
    readonly lp: LpStream,
  ) {}
}

export interface SwimChannelsInit {
  host: Pick<Libp2p, 'dialProtocol'>
  protocol: string
  maxMessageBytes: number
  logger: Logger
  /** Bounds opening a stream on an existing connection. */
  openTimeoutMs: number
  /** The service's lifetime: aborting it closes every channel. */
  signal: AbortSignal
  onDrop: (reason: DropReason) => void
}

export class SwimChannels {
  private readonly channels = new Map<string, Promise<Channel>>()
  /** The open channel behind each settled entry of `channels`. */
  private readonly current = new Map<string, Channel>()

  constructor(private readonly init: SwimChannelsInit) {}

  /** Streams opened so far (one per peer unless a channel broke). */
  opened = 0

  /** Open channels. */
  get size(): number {
    return this.channels.size
  }

  /**
   * Send one request and wait for the answer with the same seq. Rejects when the signal aborts,
   * the stream fails, or the answer does not decode (counted as a drop).
   */
  async request(
    peer: PeerId,
    seq: number,
    bytes: Uint8Array,
    signal: AbortSignal,
  ): Promise<{ msg: SwimMessage; bytes: number }> {
    const key = peer.toString()
    const ch = await raceSignal(this.channel(peer, key), signal)
    if (ch.closed) throw new Error('swim: channel closed')
    const sentAt = Date.now()
    const answer = new Promise<{ msg: SwimMessage; bytes: number }>((resolve, reject) => {
      ch.pending.set(seq, { resolve, reject })
    })
    // A rejection after we stopped waiting must not surface as unhandled.
    answer.catch(() => {})
    try {
      await ch.lp.write(bytes, { signal })
      return await raceSignal(answer, signal)
    } catch (err) {
      // Nothing came back on this channel for several requests in a row: it may be wedged, start
      // afresh. (One timeout is normal on a busy host; reopening each time would cost a
      // negotiation per slow probe, the very thing channels save.)
      if (signal.aborted && !ch.closed && ch.lastAnswerAt < sentAt && ++ch.silentTimeouts >= MAX_SILENT)
        this.discard(key, ch, asError(err))
      throw err
    } finally {
      ch.pending.delete(seq)
    }
  }

  /** Close every channel (the service stops). */
  closeAll(): void {
    for (const [key, ch] of this.current) this.discard(key, ch, new Error('swim: stopped'))
    this.channels.clear()
  }

  private channel(peer: PeerId, key: string): Promise<Channel> {
    let p = this.channels.get(key)
    if (!p) {
      p = this.open(peer, key)
      this.channels.set(key, p)
      p.catch(() => {
        if (this.channels.get(key) === p) this.channels.delete(key)
      })
    }
    return p
  }

  private async open(peer: PeerId, key: string): Promise<Channel> {
    const signal = AbortSignal.any([this.init.signal, AbortSignal.timeout(this.init.openTimeoutMs)])
    const stream = await this.init.host.dialProtocol(peer, this.init.protocol, {
      signal,
      runOnLimitedConnection: true,
    })
    const ch = new Channel(stream, lpStream(stream, { maxDataLength: this.init.maxMessageBytes }))
    this.opened++
    this.current.set(key, ch)
    void this.readLoop(key, ch)
    return ch
  }

  /** Answers until the stream ends; an undecodable answer is dropped and ends the channel. */
  private async readLoop(key: string, ch: Channel): Promise<void> {
    try {
      for (;;) {
        let raw: Uint8Array
        try {
          raw = (await ch.lp.read({ signal: this.init.signal })).subarray()
        } catch (err) {
          // The peer closed between messages (or went away): not bad input.
          const reason = readErrorReason(err)
          if (reason === 'oversized') this.init.onDrop(reason)
          throw err
        }
        const d = decodeMessage(raw)
        if (!d.ok) {
          this.init.onDrop(d.reason)
          throw new Error(`swim: ${d.reason} answer`)
        }
        ch.lastAnswerAt = Date.now()
        ch.silentTimeouts = 0
        // A late answer (its request gave up) finds no one waiting; its updates are lost, as in UDP.
        ch.pending.get(d.value.seq)?.resolve({ msg: d.value, bytes: raw.length })
      }
    } catch (err) {
      this.discard(key, ch, asError(err))
    }
  }

  private discard(key: string, ch: Channel, err: Error): void {
    if (!ch.closed) {
      ch.closed = true
      for (const p of ch.pending.values()) p.reject(err)
      ch.pending.clear()
      ch.stream.abort(err)
      this.init.logger.trace({ peer: key, err: err.message }, 'swim channel closed')
    }
    if (this.current.get(key) === ch) {
      this.current.delete(key)
      this.channels.delete(key)
    }
  }
}
