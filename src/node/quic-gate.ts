// The mesh key on QUIC. A TCP or relayed connection passes through the pre-shared key protector
// (@libp2p/pnet) before anything else, so a peer without the mesh key gets nothing over it. QUIC
// brings its own TLS and multiplexing, and libp2p upgrades it with `skipProtection`: pnet never runs.
// So a QUIC connection is let through only to a peer that has already proved the key: one that
// completed a protected (TCP or relayed) connection with this host. Hole punching always starts from
// a relayed, protected connection, so the peers it joins are proved; a stranger's QUIC handshake
// completes at the transport level and is then closed before identify, gossip or any protocol runs.
import type { ConnectionGater, MultiaddrConnection, PeerId } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'

/** Peers remembered as proved (a mesh has far fewer hosts; the oldest are forgotten first). */
const MAX_PROVED = 65_536

export function isQuic(addr: Multiaddr): boolean {
  return addr.getComponents().some((c) => c.name === 'quic-v1' || c.name === 'quic')
}

/**
 * A connection that runs over QUIC itself, so without the protector. A relayed connection whose hop
 * to the relay is QUIC (`/udp/N/quic-v1/p2p/R/p2p-circuit/...`) is upgraded with pnet end to end.
 */
export function isBareQuic(addr: Multiaddr): boolean {
  const names = addr.getComponents().map((c) => c.name)
  return names.some((n) => n === 'quic-v1' || n === 'quic') && !names.includes('p2p-circuit')
}

export class MeshKeyGate {
  /** Peers that completed a pnet-protected connection with us (so they hold the mesh key). */
  private readonly proved = new Set<string>()
  /** QUIC connections refused, by direction (GET /v1/node and tests). */
  readonly refused = { inbound: 0, outbound: 0 }

  /** `enforced`: a mesh key is configured (an open mesh lets every peer in on every transport). */
  constructor(private readonly enforced: boolean) {}

  hasProved(peer: PeerId | string): boolean {
    return this.proved.has(peer.toString())
  }

  /** The connection gater libp2p consults at each step of an upgrade. */
  gater(): ConnectionGater {
    return {
      // Do not even start a QUIC handshake with a peer that has not proved the key (the dial
      // queue then tries the peer's next address, e.g. TCP, which proves it).
      denyDialMultiaddr: (ma: Multiaddr) => {
        if (!this.enforced || !isBareQuic(ma)) return false
        const peer = ma.getComponents().find((c) => c.name === 'p2p')?.value
        return peer !== undefined && !this.proved.has(peer)
      },
      denyInboundEncryptedConnection: (peer, conn) => this.deny(peer, conn, 'inbound'),
      denyOutboundEncryptedConnection: (peer, conn) => this.deny(peer, conn, 'outbound'),
      // Called once protector, encryption and muxer are in place: over anything but QUIC, the
      // protector has checked the key by now.
      denyInboundUpgradedConnection: (peer, conn) => this.deny(peer, conn, 'inbound'),
      denyOutboundUpgradedConnection: (peer, conn) => this.deny(peer, conn, 'outbound'),
    }
  }

  private deny(peer: PeerId, conn: MultiaddrConnection, direction: 'inbound' | 'outbound'): boolean {
    if (!this.enforced) return false
    const id = peer.toString()
    if (!isBareQuic(conn.remoteAddr)) {
      // Encrypted-stage calls come after pnet too (the protector runs before encryption).
      this.remember(id)
      return false
    }
    if (this.proved.has(id)) return false
    this.refused[direction]++
    return true
  }

  private remember(id: string): void {
    this.proved.delete(id)
    this.proved.add(id)
    if (this.proved.size > MAX_PROVED) {
      const oldest = this.proved.values().next().value
      if (oldest !== undefined) this.proved.delete(oldest)
    }
  }
}
