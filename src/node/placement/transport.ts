// The libp2p protocol /skymesh/placement/1: placement messages (proto/placement.proto), one
// length-prefixed message each, at most MAX_MESSAGE_BYTES. One long-lived outbound stream per peer keeps
// a leader's messages in order (a join before its release). The sender is the authenticated remote peer
// of the connection; only mesh members are heard, anything else is dropped and counted.
import type { PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import type { Logger } from 'pino'
import {
  decodePlacementMessage,
  encodePlacementMessage,
  MAX_MESSAGE_BYTES,
  PlacementCodecError,
  type PlacementMessage,
} from '../../placement/index.js'

export const PLACEMENT_PROTOCOL = '/skymesh/placement/1'

export type DropReason = 'malformed' | 'oversized' | 'foreign'

export interface PlacementHost {
  handle(
    protocol: string,
    handler: (stream: Stream, conn: { remotePeer: PeerId }) => void | Promise<void>,
    opts?: { maxInboundStreams?: number; maxOutboundStreams?: number },
  ): Promise<void>
  unhandle(protocol: string): Promise<void>
  dialProtocol(peer: PeerId, protocol: string, opts?: { signal?: AbortSignal }): Promise<Stream>
}

export interface PlacementTransportInit {
  host: PlacementHost
  logger: Logger
  /** Whether a peer is a member of the mesh (alive or suspect in gossip). */
  isMember: (peer: string) => boolean
  onMessage: (from: string, msg: PlacementMessage) => void
  onDrop: (from: string, reason: DropReason) => void
  dialTimeoutMs?: number
}

interface Link {
  lp?: ReturnType<typeof lpStream>
  stream?: Stream
  chain: Promise<void>
}

export class PlacementTransport {
  private readonly links = new Map<string, Link>()
  private readonly inbound = new Set<Stream>()
  private started = false

  constructor(private readonly init: PlacementTransportInit) {}

  async start(): Promise<void> {
    await this.init.host.handle(
      PLACEMENT_PROTOCOL,
      (stream, conn) => this.serve(stream, conn.remotePeer.toString()),
      { maxInboundStreams: 8, maxOutboundStreams: 8 },
    )
    this.started = true
  }

  async stop(): Promise<void> {
    this.started = false
    await this.init.host.unhandle(PLACEMENT_PROTOCOL).catch(() => {})
    for (const l of this.links.values()) l.stream?.abort(new Error('placement stopping'))
    for (const s of this.inbound) s.abort(new Error('placement stopping'))
    this.links.clear()
    this.inbound.clear()
  }

  /** Queues a message for `peer`, after the ones already queued for it. Lost if the peer is unreachable. */
  send(peer: string, msg: PlacementMessage): void {
    if (!this.started) return
    let link = this.links.get(peer)
    if (!link) {
      link = { chain: Promise.resolve() }
      this.links.set(peer, link)
    }
    const l = link
    const bytes = encodePlacementMessage(msg)
    l.chain = l.chain.then(async () => {
      // One retry on a fresh stream: the old one may have closed while idle.
      if (!(await this.write(peer, l, bytes))) await this.write(peer, l, bytes)
    })
  }

  private async write(peer: string, l: Link, bytes: Uint8Array): Promise<boolean> {
    if (!this.started) return true
    try {
      if (!l.lp) {
        const stream = await this.init.host.dialProtocol(peerIdFromString(peer), PLACEMENT_PROTOCOL, {
          signal: AbortSignal.timeout(this.init.dialTimeoutMs ?? 5000),
        })
        l.stream = stream
        l.lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
      }
      await l.lp.write(bytes)
      return true
    } catch (err) {
      this.init.logger.debug({ peer, err: (err as Error).message }, 'placement message not sent')
      l.stream?.abort(err as Error)
      l.stream = undefined
      l.lp = undefined
      return false
    }
  }

  private async serve(stream: Stream, peer: string): Promise<void> {
    if (!this.init.isMember(peer)) {
      this.init.onDrop(peer, 'foreign')
      stream.abort(new Error('not a mesh member'))
      return
    }
    this.inbound.add(stream)
    const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
    try {
      while (this.started) {
        const buf = (await lp.read()).subarray()
        if (!this.init.isMember(peer)) {
          this.init.onDrop(peer, 'foreign')
          continue
        }
        let msg: PlacementMessage
        try {
          msg = decodePlacementMessage(buf)
        } catch (err) {
          this.init.onDrop(peer, err instanceof PlacementCodecError ? err.code : 'malformed')
          continue
        }
        this.init.onMessage(peer, msg)
      }
    } catch (err) {
      const name = (err as Error).name ?? ''
      if (/InvalidDataLength|InvalidMessageLength/.test(name)) this.init.onDrop(peer, 'oversized')
    } finally {
      this.inbound.delete(stream)
      stream.abort(new Error('placement stream done'))
    }
  }
}
