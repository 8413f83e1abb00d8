// Frames between agents: the libp2p protocol /skymesh/overlay/1. One long-lived outbound stream per
// peer carries length-prefixed OverlayBatch messages; frames queued while a write is in flight go
// out together in the next batch, so a burst costs few messages and a lone frame waits for nothing.
// The hot path avoids per-message promises: a batch is encoded with its length prefix in one buffer
// and handed to `stream.send` (awaiting only when the stream asks to drain); incoming bytes are cut
// into batches synchronously in the stream's 'message' handler (LpDecoder), not by awaited reads.
// Who sent a batch is the authenticated remote peer of the connection (noise; pnet keeps strangers
// out); what it may send is the switch's business.
import type { PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from 'pino'
import { pb } from '../proto/index.js'
import { LpDecoder } from './lp-decoder.js'

export const OVERLAY_PROTOCOL = '/skymesh/overlay/1'
/** Largest batch on the wire; a peer sending more is cut off. */
export const MAX_BATCH_BYTES = 4 * 1024 * 1024
export const MAX_BATCH_FRAMES = 4096
export const MAX_BATCH_ANNOUNCES = 1024

export interface WireFrame {
  network: string
  data: Uint8Array
  relayed: boolean
}

export interface WireAnnounce {
  vmId: string
  epoch: number
}

export interface OverlayHost {
  handle(
    protocol: string,
    handler: (stream: Stream, conn: { remotePeer: PeerId }) => void | Promise<void>,
    opts?: { maxInboundStreams?: number; maxOutboundStreams?: number; runOnLimitedConnection?: boolean },
  ): Promise<void>
  unhandle(protocol: string): Promise<void>
  dialProtocol(
    peer: PeerId,
    protocol: string,
    opts?: { signal?: AbortSignal; runOnLimitedConnection?: boolean },
  ): Promise<Stream>
}

export interface TransportInit {
  host: OverlayHost
  logger: Logger
  /** A decoded batch from `peer`; announcements first, then frames in order. */
  onBatch: (peer: string, announces: WireAnnounce[], frames: WireFrame[]) => void
  /** A batch that could not be decoded or was too large. */
  onMalformed?: (peer: string) => void
  dialTimeoutMs?: number
  /** Frames waiting per peer before more are refused (counted as unreachable by the switch). */
  maxQueue?: number
  /** After a failed dial, frames for that peer are refused this long. */
  retryAfterMs?: number
}

interface Link {
  peer: string
  frames: WireFrame[]
  queuedBytes: number
  announces: WireAnnounce[]
  stream?: Stream
  pumping: boolean
  scheduled: boolean
  downUntil: number
}

export interface TransportStats {
  batchesOut: number
  batchesIn: number
  bytesOut: number
  bytesIn: number
  dialFailures: number
  framesLost: number
}

export class OverlayTransport {
  private readonly links = new Map<string, Link>()
  private readonly inbound = new Set<Stream>()
  private started = false
  readonly stats: TransportStats = {
    batchesOut: 0,
    batchesIn: 0,
    bytesOut: 0,
    bytesIn: 0,
    dialFailures: 0,
    framesLost: 0,
  }

  constructor(private readonly init: TransportInit) {}

  async start(): Promise<void> {
    await this.init.host.handle(
      OVERLAY_PROTOCOL,
      (stream, conn) => this.serve(stream, conn.remotePeer.toString()),
      {
        maxInboundStreams: 4,
        maxOutboundStreams: 4,
        // VMs behind NAT talk through a relay when no direct connection exists.
        runOnLimitedConnection: true,
      },
    )
    this.started = true
  }

  async stop(): Promise<void> {
    this.started = false
    await this.init.host.unhandle(OVERLAY_PROTOCOL).catch(() => {})
    for (const link of this.links.values()) {
      link.frames = []
      link.stream?.abort(new Error('overlay stopping'))
    }
    for (const s of this.inbound) s.abort(new Error('overlay stopping'))
    this.links.clear()
    this.inbound.clear()
  }

  /** Queues a frame for `peer`; false if it cannot take it (peer unreachable or too far behind). */
  send(peer: string, frame: WireFrame): boolean {
    if (!this.started) return false
    const link = this.link(peer)
    if (link.downUntil > Date.now()) return false
    if (link.frames.length >= (this.init.maxQueue ?? 8192)) return false
    link.frames.push(frame)
    link.queuedBytes += frame.data.length
    this.schedule(link)
    return true
  }

  /** Frames waiting for `peer` (a sender can pace itself on it). */
  queued(peer: string): number {
    return this.links.get(peer)?.frames.length ?? 0
  }

  announce(peer: string, a: WireAnnounce): void {
    if (!this.started) return
    const link = this.link(peer)
    link.announces.push(a)
    this.schedule(link)
  }

  private link(peer: string): Link {
    let link = this.links.get(peer)
    if (!link) {
      link = {
        peer,
        frames: [],
        queuedBytes: 0,
        announces: [],
        pumping: false,
        scheduled: false,
        downUntil: 0,
      }
      this.links.set(peer, link)
    }
    return link
  }

  private schedule(link: Link): void {
    if (link.pumping || link.scheduled) return
    link.scheduled = true
    // Frames sent in the same tick leave in one batch.
    queueMicrotask(() => {
      link.scheduled = false
      void this.pump(link)
    })
  }

  private async pump(link: Link): Promise<void> {
    if (link.pumping) return
    link.pumping = true
    try {
      while (this.started && (link.frames.length || link.announces.length)) {
        const batch = this.takeBatch(link)
        if (!(await this.write(link, batch))) {
          // One more try on a fresh stream (the old one may have closed while idle).
          if (!(await this.write(link, batch))) {
            this.stats.framesLost += batch.frames.length + link.frames.length
            link.frames = []
            link.queuedBytes = 0
            link.announces = []
            link.downUntil = Date.now() + (this.init.retryAfterMs ?? 1000)
          }
        }
      }
    } finally {
      link.pumping = false
    }
  }

  private takeBatch(link: Link): { frames: WireFrame[]; announces: WireAnnounce[] } {
    let bytes = 0
    let n = 0
    const limit = MAX_BATCH_BYTES - 64 * 1024
    while (n < link.frames.length && n < MAX_BATCH_FRAMES) {
      bytes += (link.frames[n]?.data.length ?? 0) + 64
      if (bytes > limit && n > 0) break
      n++
    }
    const frames = link.frames.splice(0, n)
    for (const f of frames) link.queuedBytes -= f.data.length
    return { frames, announces: link.announces.splice(0, MAX_BATCH_ANNOUNCES) }
  }

  private async write(
    link: Link,
    batch: { frames: WireFrame[]; announces: WireAnnounce[] },
  ): Promise<boolean> {
    let dialed = true
    try {
      if (link.stream?.status !== 'open' || link.stream.writeStatus !== 'writable') {
        link.stream?.abort(new Error('overlay stream replaced'))
        link.stream = undefined
        dialed = false
        const stream = await this.init.host.dialProtocol(peerIdFromString(link.peer), OVERLAY_PROTOCOL, {
          signal: AbortSignal.timeout(this.init.dialTimeoutMs ?? 5000),
          runOnLimitedConnection: true,
        })
        dialed = true
        link.stream = stream
        // nothing comes back on this stream; a reader keeps its buffer empty
        stream.addEventListener('message', () => {})
      }
      // varint length + message in one buffer: one send, one yamux frame, one noise message
      const buf = pb.OverlayBatch.encodeDelimited({
        frames: batch.frames,
        announces: batch.announces,
      }).finish()
      if (!link.stream.send(buf)) await link.stream.onDrain({ signal: AbortSignal.timeout(30_000) })
      this.stats.batchesOut++
      this.stats.bytesOut += buf.length
      return true
    } catch (err) {
      if (!dialed) this.stats.dialFailures++
      this.init.logger.debug({ peer: link.peer, err: (err as Error).message }, 'overlay link failed')
      link.stream?.abort(err as Error)
      link.stream = undefined
      return false
    }
  }

  /** Reads one peer's stream until it closes; batches are handled as their last byte arrives. */
  private async serve(stream: Stream, peer: string): Promise<void> {
    this.inbound.add(stream)
    const decoder = new LpDecoder(MAX_BATCH_BYTES)
    const done = new Promise<void>((resolve) => {
      stream.addEventListener('close', () => resolve(), { once: true })
      stream.addEventListener('remoteCloseWrite', () => resolve(), { once: true })
    })
    stream.addEventListener('message', (evt) => {
      if (!this.started) return
      let batches: Uint8Array[]
      try {
        batches = decoder.push(evt.data)
      } catch {
        // a length over the limit: the rest of the stream cannot be trusted
        this.init.onMalformed?.(peer)
        stream.abort(new Error('overlay batch too large'))
        return
      }
      for (const buf of batches) this.onBatchBytes(peer, buf)
    })
    try {
      await done
    } finally {
      this.inbound.delete(stream)
      stream.abort(new Error('overlay stream done'))
    }
  }

  private onBatchBytes(peer: string, buf: Uint8Array): void {
    this.stats.batchesIn++
    this.stats.bytesIn += buf.length
    let batch: InstanceType<typeof pb.OverlayBatch>
    try {
      batch = pb.OverlayBatch.decode(buf)
    } catch {
      this.init.onMalformed?.(peer)
      return
    }
    if (batch.frames.length > MAX_BATCH_FRAMES || batch.announces.length > MAX_BATCH_ANNOUNCES) {
      this.init.onMalformed?.(peer)
      return
    }
    this.init.onBatch(
      peer,
      batch.announces.map((a) => ({ vmId: a.vmId ?? '', epoch: Number(a.epoch ?? 0) })),
      batch.frames.map((f) => ({
        network: f.network ?? '',
        data: f.data ?? new Uint8Array(0),
        relayed: f.relayed === true,
      })),
    )
  }
}
