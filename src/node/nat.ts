// How this host reaches each peer: directly, through a relay (circuit relay v2, for hosts behind NAT)
// or over a direct connection that hole punching (DCUtR) made out of a relayed one. Bulk transfer
// asks here for a direct connection first (BulkLinkAdvisor) and is told when it can only have a
// relayed one, or refused when the relay's limits cannot carry the VM.
// Hole punching between two NATed hosts does not happen with js-libp2p, over TCP or QUIC (both dial
// from another socket than the one they listen on, so observed addresses are useless and DCUtR has
// nothing to dial; see README and test/cluster/nat-punch.test.ts): `hole-punched` comes from DCUtR's
// unilateral upgrade (one side public).
import type { Connection, IdentifyResult, PeerId } from '@libp2p/interface'
import { isPrivate } from '@libp2p/utils'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import type { BulkLink, BulkLinkAdvisor } from '../transfer/index.js'
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
  /** What the operator said (`nat.reachability`), and whether AutoNAT runs. */
  configured?: 'auto' | 'public' | 'private'
  autonat?: boolean
}

/** What AutoNAT found (GET /v1/node `nat`, `skymesh status`). */
export interface NatStatus {
  /** `nat.reachability` from the configuration: `auto` lets AutoNAT decide. */
  configured: 'auto' | 'public' | 'private'
  /**
   * AutoNAT's result: `reachable` (peers dialled one of our public addresses back), `unreachable`
   * (they tried and failed), `unknown` (nothing checked: AutoNAT checks public addresses only), `off`.
   */
  autonat: 'reachable' | 'unreachable' | 'unknown' | 'off'
  /** One sentence: why that result. */
  reason: string
  /** Addresses AutoNAT confirmed, and those it found unreachable. */
  confirmed: string[]
  unreachable: string[]
  /** How peers see us (identify's observed address, per peer; newest first, at most 16). */
  observed: { addr: string; by: string }[]
  /** Our circuit-relay addresses (reservations on relays), when we listen through relays. */
  relayed: string[]
}

/** One address as libp2p's address manager keeps it (its `NodeAddress`, the fields we read). */
export interface NatAddress {
  multiaddr: Multiaddr
  verified: boolean
  expires: number
  lastVerified?: number
  type: string
}

const MAX_OBSERVED = 16

/** AutoNAT's verdict from the address manager's view of our addresses (pure, for tests). */
export function autonatVerdict(
  addrs: readonly NatAddress[],
  now: number,
): Pick<NatStatus, 'autonat' | 'reason' | 'confirmed' | 'unreachable'> {
  const network = addrs.filter(
    (a) => !a.multiaddr.getComponents().some((c) => c.name === 'p2p-circuit') && a.type !== 'announce',
  )
  const checkable = network.filter((a) => !isPrivate(a.multiaddr))
  const confirmed = checkable.filter((a) => a.verified && a.expires > now)
  const unreachable = checkable.filter((a) => !a.verified && a.expires > now)
  const str = (xs: NatAddress[]) => [...new Set(xs.map((a) => a.multiaddr.toString()))]
  if (confirmed.length > 0) {
    return {
      autonat: 'reachable',
      reason: 'peers dialled this host back on a public address',
      confirmed: str(confirmed),
      unreachable: str(unreachable),
    }
  }
  if (unreachable.length > 0) {
    return {
      autonat: 'unreachable',
      reason: 'peers tried to dial this host back on its public addresses and failed',
      confirmed: [],
      unreachable: str(unreachable),
    }
  }
  return {
    autonat: 'unknown',
    reason:
      checkable.length === 0
        ? 'no public address to check: AutoNAT verifies public addresses only, and libp2p ignores observed TCP addresses (dials use ephemeral ports)'
        : 'not checked yet (AutoNAT asks peers that support it, after start-up)',
    confirmed: [],
    unreachable: [],
  }
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
  /** How each peer saw us (identify), newest first. */
  private readonly observed = new Map<string, string>()
  private readonly onIdentify = (evt: CustomEvent<IdentifyResult>) => {
    const { observedAddr, peerId } = evt.detail
    if (!observedAddr) return
    const by = peerId.toString()
    this.observed.delete(by)
    this.observed.set(by, observedAddr.toString())
    while (this.observed.size > MAX_OBSERVED) {
      const oldest = this.observed.keys().next().value
      if (oldest === undefined) break
      this.observed.delete(oldest)
    }
  }

  constructor(private readonly init: NatLinksInit) {}

  start(): void {
    this.init.host.addEventListener('connection:open', this.onOpen)
    this.init.host.addEventListener('peer:disconnect', this.onDisconnect)
    this.init.host.addEventListener('peer:identify', this.onIdentify)
  }

  stop(): void {
    this.init.host.removeEventListener('connection:open', this.onOpen)
    this.init.host.removeEventListener('peer:disconnect', this.onDisconnect)
    this.init.host.removeEventListener('peer:identify', this.onIdentify)
  }

  /** Whether this host is reachable, as AutoNAT found it, with the addresses peers see. */
  status(now = Date.now()): NatStatus {
    const { host } = this.init
    const autonat = this.init.autonat ?? false
    const verdict = autonat
      ? autonatVerdict(host.services.addresses?.withMetadata() ?? [], now)
      : {
          autonat: 'off' as const,
          reason: 'AutoNAT is off (nat.autonat: false)',
          confirmed: [],
          unreachable: [],
        }
    return {
      configured: this.init.configured ?? 'auto',
      ...verdict,
      observed: [...this.observed.entries()].reverse().map(([by, addr]) => ({ addr, by })),
      relayed: host
        .getMultiaddrs()
        .map(String)
        .filter((a) => a.includes('/p2p-circuit')),
    }
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
    const bounds = [
      limits?.bytes !== undefined ? `${mib(limits.bytes)}` : undefined,
      limits?.seconds !== undefined ? `${limits.seconds} s` : undefined,
    ].filter(Boolean)
    return {
      kind: 'relayed',
      note: `no direct connection (direct dial and hole punching failed)${bounds.length ? `; relay limits ${bounds.join(', ')} per connection` : ''}`,
      // Too big for the relay: checked now, before any data, so the transfer tries skymesh's own hole
      // punch and, without one, fails at once with this reason instead of halfway at the relay's limit
      ...(limits?.bytes !== undefined && BigInt(bytes) > limits.bytes
        ? {
            relayTooSmall: `the relay lets that connection carry ${mib(limits.bytes)} more: not enough for this VM (up to ${mib(bytes)})`,
          }
        : {}),
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
