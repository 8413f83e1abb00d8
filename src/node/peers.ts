// Who we are connected to: the hello exchange (/skymesh/hello/1.0.0) right after a connection opens
// tells each agent the other's site, version and driver, and one ping measures latency. After that
// the latency comes from SWIM's probe round trips (`latency`): periodic pings of every peer would
// duplicate the failure detector's traffic (N-1 streams per agent per round).
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { Logger } from 'pino'
import { type HelloMessage, pb } from '../proto/index.js'
import type { ConnectionKind } from './nat.js'
import type { Host } from './p2p.js'
import type { PeerInfo } from './types.js'

export const HELLO_PROTOCOL = '/skymesh/hello/1.0.0'
const MAX_HELLO_BYTES = 4096

interface PeerDetails {
  site?: string
  version?: string
  driver?: string
  latencyMs?: number
}

export interface PeerTrackerInit {
  host: Host
  logger: Logger
  /** Our own hello, built fresh each time it is sent. */
  hello: () => HelloMessage
  /** Latest round trip to a peer measured elsewhere (SWIM probes), preferred over our own ping. */
  latency?: (peerId: string) => number | undefined
  /** How the connection to a peer runs (direct, relayed, hole-punched; nat.ts). */
  connection?: (peerId: string) => ConnectionKind | undefined
  /** Ping every connected peer this often; 0 (the default) pings each peer once, after hello. */
  pingIntervalMs?: number
  timeoutMs?: number
}

export class PeerTracker {
  private readonly details = new Map<string, PeerDetails>()
  private pingTimer?: NodeJS.Timeout
  private readonly onConnect = (evt: CustomEvent<PeerId>) => {
    const conn = this.init.host.getConnections(evt.detail).find((c) => c.direction === 'outbound')
    if (conn) void this.sayHello(conn)
  }
  private readonly onDisconnect = (evt: CustomEvent<PeerId>) => {
    this.details.delete(evt.detail.toString())
  }

  constructor(private readonly init: PeerTrackerInit) {}

  async start(): Promise<void> {
    const { host } = this.init
    await host.handle(HELLO_PROTOCOL, (stream, conn) => this.answerHello(stream, conn), {
      runOnLimitedConnection: true,
    })
    host.addEventListener('peer:connect', this.onConnect)
    host.addEventListener('peer:disconnect', this.onDisconnect)
    const every = this.init.pingIntervalMs ?? 0
    if (every > 0) {
      this.pingTimer = setInterval(() => void this.pingAll(), every)
      this.pingTimer.unref()
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.pingTimer)
    this.init.host.removeEventListener('peer:connect', this.onConnect)
    this.init.host.removeEventListener('peer:disconnect', this.onDisconnect)
    await this.init.host.unhandle(HELLO_PROTOCOL)
  }

  /** The peers with at least one open connection. */
  list(): PeerInfo[] {
    const byPeer = new Map<string, Connection[]>()
    for (const conn of this.init.host.getConnections()) {
      if (conn.status !== 'open') continue
      const id = conn.remotePeer.toString()
      byPeer.set(id, [...(byPeer.get(id) ?? []), conn])
    }
    return [...byPeer.entries()]
      .map(([peerId, conns]) => {
        const first = conns.reduce((a, b) => (a.timeline.open <= b.timeline.open ? a : b))
        const d = this.details.get(peerId) ?? {}
        return {
          peerId,
          addrs: conns.map((c) => c.remoteAddr.toString()),
          direction: first.direction,
          site: d.site,
          version: d.version,
          driver: d.driver,
          latencyMs: this.init.latency?.(peerId) ?? d.latencyMs,
          connection: this.init.connection?.(peerId),
          connectedAt: new Date(first.timeline.open).toISOString(),
        }
      })
      .sort((a, b) => a.peerId.localeCompare(b.peerId))
  }

  private record(peer: PeerId, hello: HelloMessage): void {
    const prev = this.details.get(peer.toString()) ?? {}
    this.details.set(peer.toString(), {
      ...prev,
      site: hello.site ?? undefined,
      version: hello.version ?? undefined,
      driver: hello.driver ?? undefined,
    })
  }

  private async sayHello(conn: Connection): Promise<void> {
    const signal = AbortSignal.timeout(this.init.timeoutMs ?? 5000)
    try {
      const stream = await conn.newStream(HELLO_PROTOCOL, { signal, runOnLimitedConnection: true })
      const lp = lpStream(stream, { maxDataLength: MAX_HELLO_BYTES })
      await lp.write(pb.Hello.encode(this.init.hello()).finish(), { signal })
      const reply = pb.Hello.decode((await lp.read({ signal })).subarray())
      this.record(conn.remotePeer, reply)
      await stream.close({ signal })
      // A first latency figure now; the periodic pings keep it fresh.
      await this.pingOne(conn.remotePeer)
    } catch (err) {
      this.init.logger.debug(
        { peer: conn.remotePeer.toString(), err: (err as Error).message },
        'hello failed',
      )
    }
  }

  private async answerHello(stream: Stream, conn: Connection): Promise<void> {
    const signal = AbortSignal.timeout(this.init.timeoutMs ?? 5000)
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_HELLO_BYTES })
      const hello = pb.Hello.decode((await lp.read({ signal })).subarray())
      this.record(conn.remotePeer, hello)
      await lp.write(pb.Hello.encode(this.init.hello()).finish(), { signal })
      await stream.close({ signal })
    } catch (err) {
      // A garbage or oversized hello: drop the stream, keep the connection's other traffic.
      this.init.logger.debug({ peer: conn.remotePeer.toString(), err: (err as Error).message }, 'bad hello')
      stream.abort(err as Error)
    }
  }

  private async pingAll(): Promise<void> {
    await Promise.all(this.init.host.getPeers().map((peer) => this.pingOne(peer)))
  }

  private async pingOne(peer: PeerId): Promise<void> {
    try {
      const ms = await this.init.host.services.ping.ping(peer, {
        signal: AbortSignal.timeout(this.init.timeoutMs ?? 5000),
      })
      const d = this.details.get(peer.toString())
      if (d) d.latencyMs = ms
      else this.details.set(peer.toString(), { latencyMs: ms })
    } catch {
      // a failed ping is not news here; failure detection is the gossip layer's job
    }
  }
}
