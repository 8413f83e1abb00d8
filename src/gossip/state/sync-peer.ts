// Which connected peer the periodic anti-entropy asks: SWIM's site preference (site-pick.ts), so
// most exchanges stay inside our site and a few cross the slow links between sites. A peer whose
// site is not known (not a SWIM member yet) counts as remote; a host alone in its site still syncs
// across; preference 1 is a uniform pick.
import { pickSiteWeighted } from '../swim/site-pick.js'

export interface SyncPeerSites {
  /** Our own site ('' if none). */
  self: string
  /** A peer's site, if known. */
  of: (peerId: string) => string | undefined
  /** Same-site peers are this many times likelier to be picked (>= 1). */
  preference: number
}

export function pickSyncPeer<P extends { toString(): string }>(
  peers: readonly P[],
  sites: SyncPeerSites | undefined,
  random: () => number,
): P | undefined {
  if (peers.length === 0) return undefined
  if (!sites) return peers[Math.floor(random() * peers.length)]
  const tagged = peers.map((peer) => ({ peer, site: sites.of(peer.toString()) ?? '' }))
  return pickSiteWeighted(tagged, 1, sites.self, sites.preference, random)[0]?.peer
}
