// How one lane of a pull reaches its source, in the order migrations use (src/node/nat.ts,
// src/transfer/punch.ts): a direct TLS connection when a direct libp2p connection gives its address;
// the libp2p stream when the connection is direct but no TLS one can be had (the source is behind a NAT
// and dialled us); skymesh's own hole punch, several parallel connections, when only a relayed
// connection reaches the source (both behind NAT); the relay last, and only when its limit can carry
// what is left of the image: otherwise the lane fails at once with "cannot reach X directly: ..."
// instead of the relay cutting it halfway. Each answer says which link it is.
import type { Connection, PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from 'pino'
import { pb } from '../proto/index.js'
import {
  askObserved,
  decodeOffer,
  directHostOf,
  MAX_PUNCH_STREAMS,
  type MigrationHost,
  newPunchSecret,
  pickPunchPorts,
  withPorts,
} from '../transfer/index.js'
import { connectChunks, punchChunks } from './direct.js'
import type { ChunkLink } from './pull.js'
import type { ImageChannel, ImageRequestProps, ImageResponse } from './wire.js'

/** A peer whose direct (or punched) channel failed is not asked for one again for this long. */
const RETRY_AFTER_MS = 60_000

export interface LaneChannels {
  /** One or more channels to the source (several: parallel punched connections, one lane each). */
  channels: ImageChannel[]
  link: ChunkLink
  /** Why it is not direct, when it is not. */
  note?: string
}

export interface ChunkTransportInit {
  /** The connections to a peer, and streams to it (for "what is my address"). */
  getConnections?(peer?: PeerId): Connection[]
  dialProtocol: MigrationHost['dialProtocol']
  /** One request, one answer on /skymesh/images/1 (relayed connections allowed). */
  call(peer: string, req: ImageRequestProps, signal: AbortSignal): Promise<ImageResponse>
  /** A libp2p stream on /skymesh/images/1 (relayed connections allowed). */
  open(peer: string, signal: AbortSignal): Promise<ImageChannel>
  log: Logger
  /** TLS channels (direct and hole-punched) at all (default true). */
  direct: boolean
  /** Parallel hole-punched connections per lane (1..8). */
  punchStreams: number
  /** Chunk messages a channel has in flight (its read buffer). */
  inFlight: number
  /** How long a direct TLS connect may take. */
  connectTimeoutMs?: number
  /** How long a punch may take (default PUNCH_TIMEOUT_MS). */
  punchTimeoutMs?: number
  /** Called with a peer our chunks reached over a hole-punched channel. */
  onPunched?(peer: string): void
}

const mib = (n: number | bigint) => `${Math.round(Number(n) / 1048576)} MiB`

export function isRelayedConnection(c: Pick<Connection, 'remoteAddr'>): boolean {
  return c.remoteAddr.toString().includes('/p2p-circuit')
}

export class ChunkTransport {
  readonly #i: ChunkTransportInit
  readonly #noDirect = new Map<string, number>()
  readonly #noPunch = new Map<string, { until: number; why: string }>()

  constructor(init: ChunkTransportInit) {
    this.#i = init
  }

  /** The host "what is my address" is asked through (a directly connected peer answers). */
  get observedHost(): Pick<MigrationHost, 'dialProtocol' | 'getConnections'> {
    return this.#i as Pick<MigrationHost, 'dialProtocol' | 'getConnections'>
  }

  /** The channels for one lane to `peer` that still needs `bytes` of image `id`. */
  async open(peer: string, id: string, bytes: number, signal: AbortSignal): Promise<LaneChannels> {
    const conns = this.#conns(peer)
    const direct = await this.#direct(peer, id, conns, signal)
    if (direct) return { channels: [direct], link: 'direct' }
    if (conns.some((c) => !isRelayedConnection(c)))
      return { channels: [await this.#i.open(peer, signal)], link: 'direct' }
    const relayed = conns.find(isRelayedConnection)
    let why = 'no direct connection'
    if (relayed) {
      const punched = await this.#punch(peer, id, signal)
      if (Array.isArray(punched)) {
        this.#i.onPunched?.(peer)
        return {
          channels: punched,
          link: 'hole-punched',
          note: "skymesh's own TCP hole punch (sealed channel)",
        }
      }
      why = punched
    }
    const ch = await this.#i.open(peer, signal)
    // Not connected before: libp2p dialled it (direct addresses first); see what it got
    const now = this.#conns(peer)
    if (!relayed && now.some((c) => !isRelayedConnection(c))) return { channels: [ch], link: 'direct' }
    const limit = (relayed ?? now.find(isRelayedConnection))?.limits?.bytes
    if (limit !== undefined && BigInt(Math.ceil(bytes)) > limit) {
      ch.abort(new Error('over the relay limit'))
      throw new Error(
        `cannot reach ${peer} directly: ${why}; the relay lets that connection carry ${mib(limit)} more, ` +
          `the image needs ${mib(bytes)} more`,
      )
    }
    return {
      channels: [ch],
      link: 'relayed',
      note: `${why}${limit !== undefined ? `; relay limit ${mib(limit)} per connection` : ''}`,
    }
  }

  #conns(peer: string): Connection[] {
    return (this.#i.getConnections?.(peerIdFromString(peer)) ?? []).filter((c) => c.status === 'open')
  }

  /** A direct TLS channel, or undefined (disabled, relayed, refused, failed: not asked again for a while). */
  async #direct(
    peer: string,
    id: string,
    conns: Connection[],
    signal: AbortSignal,
  ): Promise<ImageChannel | undefined> {
    if (!this.#i.direct || (this.#noDirect.get(peer) ?? 0) > Date.now()) return undefined
    let host: string | undefined
    for (const conn of conns) {
      host = directHostOf(conn)
      if (host) break
    }
    if (!host) return undefined
    try {
      const res = await this.#i.call(peer, { imageId: Buffer.from(id, 'hex'), direct: { host } }, signal)
      const g = res.direct
      if (!g?.port || !g.key?.length || !g.identity) throw new Error('no grant in the answer')
      return await connectChunks(
        host,
        { port: g.port, key: Uint8Array.from(g.key), identity: g.identity },
        this.#i.inFlight,
        this.#i.connectTimeoutMs ?? 3000,
        signal,
      )
    } catch (err) {
      signal.throwIfAborted()
      this.#noDirect.set(peer, Date.now() + RETRY_AFTER_MS)
      this.#i.log.info(
        { peer, host, err: (err as Error).message },
        'no direct chunk channel; chunks over libp2p',
      )
      return undefined
    }
  }

  /** Hole-punched channels, or why there are none. */
  async #punch(peer: string, id: string, signal: AbortSignal): Promise<ImageChannel[] | string> {
    if (!this.#i.direct) return 'direct channels are off on this host'
    const no = this.#noPunch.get(peer)
    if (no && no.until > Date.now()) return no.why
    try {
      const { ip } = await askObserved(this.observedHost, signal)
      const secret = newPunchSecret()
      const localPorts = await pickPunchPorts(Math.min(MAX_PUNCH_STREAMS, Math.max(1, this.#i.punchStreams)))
      const invite = { ...secret, ...withPorts(ip, localPorts) }
      const res = await this.#i.call(peer, { imageId: Buffer.from(id, 'hex'), punch: invite }, signal)
      if (!res.punch) throw new Error('no punch answer')
      const remote = decodeOffer(pb.PunchOffer.encode(res.punch).finish(), false)
      if (remote.attemptId !== invite.attemptId) throw new Error('punch answer for another attempt')
      const channels = await punchChunks({
        invite,
        localPorts,
        remote,
        inFlight: this.#i.inFlight,
        timeoutMs: this.#i.punchTimeoutMs,
        signal,
      })
      this.#i.log.info(
        { peer, remote: `${remote.ip}:${remote.port}`, streams: channels.length },
        'hole-punched chunk channels',
      )
      return channels
    } catch (err) {
      signal.throwIfAborted()
      const why = `hole punch failed: ${(err as Error).message}`
      this.#noPunch.set(peer, { until: Date.now() + RETRY_AFTER_MS, why })
      this.#i.log.info({ peer, err: why }, 'no hole-punched chunk channel')
      return why
    }
  }
}
