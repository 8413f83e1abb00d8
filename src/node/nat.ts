// How this host reaches each peer: directly, through a relay (circuit relay v2, for hosts behind NAT)
// or over a direct connection that hole punching (DCUtR) made out of a relayed one. Bulk transfer
// asks here for a direct connection first (BulkLinkAdvisor) and is told when it can only have a
// relayed one, or refused when the relay's limits cannot carry the VM.
import type { Connection, PeerId } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import { type BulkLink, type BulkLinkAdvisor, LinkError } from '../transfer/index.js'
import type { Host } from './p2p.js'

export type ConnectionKind = 'direct' | 'relayed' | 'hole-punched'

export function isRelayed(conn: Pick<Connection, 'remoteAddr'>): boolean {
  return conn.remoteAddr.getComponents().some((c) => c.name === 'p2p-circuit')
}

export interface NatLinksInit {
  host: Host
  logger: Logger
  /** How long bulk transfer tries for a direct connection before it settles for a relayed one. */
  directTimeoutMs: number
}

const POLL_MS = 200

export class NatLinks implements BulkLinkAdvisor {
  /** Peers whose direct connection opened while a relayed one was up: hole punching made it. */
  private readonly punched = new Set<string>()
  private readonly onOpen = (evt: CustomEvent<Connection>) => {
    const conn = evt.detail
    if (isRelayed(conn)) return
    const peer = conn.remotePeer
    const relayedToo = this.init.host.getConnections(peer).some((c) => c !== conn && isRelayed(c))
    if (relayedToo) {
      this.punched.add(peer.toString())
      this.init.logger.info(
        { peer: peer.toString() },
        'direct connection to a peer we reached through a relay',
      )
    }
  }
  private readonly onDisconnect = (evt: CustomEvent<PeerId>) => {
    this.punched.delete(evt.detail.toString())
  }

  constructor(private readonly init: NatLinksInit) {}

  start(): void {
    this.init.host.addEventListener('connection:open', this.onOpen)
    this.init.host.addEventListener('peer:disconnect', this.onDisconnect)
  }

  stop(): void {
    this.init.host.removeEventListener('connection:open', this.onOpen)
    this.init.host.removeEventListener('peer:disconnect', this.onDisconnect)
  }

  /** How we are connected to `peer` now (undefined: not connected). A direct connection wins. */
  kind(peer: PeerId | string): ConnectionKind | undefined {
    const conns = this.open(peer)
    if (conns.length === 0) return undefined
    if (conns.some((c) => !isRelayed(c))) {
      return this.punched.has(peer.toString()) ? 'hole-punched' : 'direct'
    }
    return 'relayed'
  }

  async prepare(peer: PeerId, bytes: number, opts: { signal: AbortSignal }): Promise<BulkLink> {
    const { host } = this.init
    if (this.open(peer).length === 0) {
      // Not connected: let libp2p dial (direct addresses first, relayed ones last).
      await host.dial(peer, { signal: opts.signal }).catch(() => undefined)
    }
    let kind = this.kind(peer)
    if (kind === 'relayed') {
      kind = await this.tryDirect(peer, opts.signal)
    }
    if (kind === undefined) return { kind: 'direct' } // the offer's own dial reports the failure
    if (kind !== 'relayed') return { kind }
    const limits = this.open(peer).find(isRelayed)?.limits
    const mib = (n: number | bigint) => `${Math.round(Number(n) / 1048576)} MiB`
    if (limits?.bytes !== undefined && BigInt(bytes) > limits.bytes) {
      throw new LinkError(
        `only a relayed connection reaches ${peer.toString()} (no direct connection, hole punching failed) and ` +
          `the relay lets that connection carry ${mib(limits.bytes)} more: not enough for this VM (up to ${mib(bytes)})`,
      )
    }
    const bounds = [
      limits?.bytes !== undefined ? `${mib(limits.bytes)}` : undefined,
      limits?.seconds !== undefined ? `${limits.seconds} s` : undefined,
    ].filter(Boolean)
    return {
      kind: 'relayed',
      note: `no direct connection (direct dial and hole punching failed)${bounds.length ? `; relay limits ${bounds.join(', ')} per connection` : ''}`,
    }
  }

  /** Dials the peer's direct addresses and gives hole punching time; the kind at the end. */
  private async tryDirect(peer: PeerId, signal: AbortSignal): Promise<ConnectionKind | undefined> {
    const { host, directTimeoutMs } = this.init
    const deadline = AbortSignal.any([signal, AbortSignal.timeout(Math.max(1, directTimeoutMs))])
    const stored = await host.peerStore.get(peer).catch(() => undefined)
    const direct = (stored?.addresses ?? [])
      .map((a) => a.multiaddr)
      .filter((a) => !a.getComponents().some((c) => c.name === 'p2p-circuit'))
    for (const addr of direct) {
      if (deadline.aborted || this.kind(peer) !== 'relayed') break
      const target = addr.getComponents().some((c) => c.name === 'p2p')
        ? addr
        : addr.encapsulate(multiaddr(`/p2p/${peer.toString()}`))
      try {
        await host.dial(target, { signal: deadline, force: true })
      } catch {
        // unreachable from here (the usual case behind NAT); DCUtR may still punch through
      }
    }
    while (!deadline.aborted && this.kind(peer) === 'relayed') {
      await new Promise((r) => setTimeout(r, POLL_MS))
    }
    return this.kind(peer)
  }

  private open(peer: PeerId | string): Connection[] {
    const id = peer.toString()
    return this.init.host
      .getConnections()
      .filter((c) => c.status === 'open' && c.remotePeer.toString() === id)
  }
}
