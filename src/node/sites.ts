// Sites: what this host measured to each site (SWIM round trips, migration bandwidth), encoded into
// its signed host state, and the mesh-wide view built from every host's own report (GET /v1/sites).
// A host reports only links that start at itself: the report travels inside its own signed state,
// so nobody can speak for another host; a report whose sender claims another site counts for that
// sender's (claimed) site only, bounded to MAX_LINKS entries.
import { pb } from '../proto/index.js'

export const MAX_LINKS = 64
const MAX_SITES_BYTES = 8 * 1024
/** Weight of a new bandwidth sample in the moving average. */
const BANDWIDTH_ALPHA = 0.3

export interface SiteLinkReport {
  site: string
  rttMs?: number
  rttSamples: number
  bandwidthMiBps?: number
  bandwidthSamples: number
}

export interface SitesView {
  self: { peerId: string; site: string }
  sites: { name: string; hosts: string[]; alive: number }[]
  /** Directed: measured by hosts of `from` towards hosts of `to` (from === to: inside one site). */
  links: {
    from: string
    to: string
    rttMs?: number
    bandwidthMiBps?: number
    /** Hosts of `from` whose report includes `to`. */
    reporters: number
  }[]
}

export interface SiteMeterInit {
  /** The site of a peer (from gossip), undefined when unknown. */
  siteOf: (peerId: string) => string | undefined
  /** Peers with a round trip measured now (SWIM), in ms. */
  rtts: () => Iterable<[peerId: string, rttMs: number]>
}

/** This host's own measurements, per remote site. */
export class SiteMeter {
  private readonly bandwidth = new Map<string, { mibps: number; samples: number }>()

  constructor(private readonly init: SiteMeterInit) {}

  /** A transfer to or from `peer` moved data at `mibps` (a finished migration). */
  recordBandwidth(peer: string, mibps: number): void {
    const site = this.init.siteOf(peer)
    if (!site || !(mibps > 0) || !Number.isFinite(mibps)) return
    const prev = this.bandwidth.get(site)
    this.bandwidth.set(
      site,
      prev
        ? { mibps: prev.mibps + BANDWIDTH_ALPHA * (mibps - prev.mibps), samples: prev.samples + 1 }
        : { mibps, samples: 1 },
    )
  }

  report(): SiteLinkReport[] {
    const rtts = new Map<string, number[]>()
    for (const [peer, ms] of this.init.rtts()) {
      const site = this.init.siteOf(peer)
      if (!site || !(ms >= 0) || !Number.isFinite(ms)) continue
      rtts.set(site, [...(rtts.get(site) ?? []), ms])
    }
    const sites = new Set([...rtts.keys(), ...this.bandwidth.keys()])
    return [...sites]
      .sort()
      .slice(0, MAX_LINKS)
      .map((site) => {
        const r = rtts.get(site) ?? []
        const b = this.bandwidth.get(site)
        return {
          site,
          rttMs: r.length ? median(r) : undefined,
          rttSamples: r.length,
          bandwidthMiBps: b?.mibps,
          bandwidthSamples: b?.samples ?? 0,
        }
      })
  }

  /** The report as gossiped (field `sites` of the host state); undefined when there is nothing yet. */
  encode(): Uint8Array | undefined {
    const links = this.report()
    if (links.length === 0) return undefined
    return pb.SiteLinks.encode({
      links: links.map((l) => ({
        site: l.site,
        rttUs: l.rttMs === undefined ? 0 : clampU32(Math.round(l.rttMs * 1000)),
        rttSamples: l.rttSamples,
        bandwidthKibps: l.bandwidthMiBps === undefined ? 0 : clampU32(Math.round(l.bandwidthMiBps * 1024)),
        bandwidthSamples: l.bandwidthSamples,
      })),
    }).finish()
  }
}

/** A peer's gossiped report; malformed or oversized input gives an empty list. */
export function decodeSiteLinks(bytes: Uint8Array | undefined): SiteLinkReport[] {
  if (!bytes?.length || bytes.length > MAX_SITES_BYTES) return []
  try {
    const m = pb.SiteLinks.decode(bytes)
    return (m.links ?? []).slice(0, MAX_LINKS).flatMap((l) =>
      l.site && /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(l.site)
        ? [
            {
              site: l.site,
              rttMs: l.rttUs ? l.rttUs / 1000 : undefined,
              rttSamples: l.rttSamples ?? 0,
              bandwidthMiBps: l.bandwidthKibps ? l.bandwidthKibps / 1024 : undefined,
              bandwidthSamples: l.bandwidthSamples ?? 0,
            },
          ]
        : [],
    )
  } catch {
    return []
  }
}

export interface SiteHost {
  peerId: string
  site: string
  alive: boolean
  /** Its own gossiped report (ours: fresh from the meter). */
  links: SiteLinkReport[]
}

/** Sites, their hosts, and per directed site pair the median of what the hosts of `from` reported. */
export function buildSitesView(self: { peerId: string; site: string }, hosts: SiteHost[]): SitesView {
  const bySite = new Map<string, SiteHost[]>()
  for (const h of hosts) {
    if (!h.site) continue
    bySite.set(h.site, [...(bySite.get(h.site) ?? []), h])
  }
  const pairs = new Map<
    string,
    { from: string; to: string; rtts: number[]; bws: number[]; reporters: number }
  >()
  for (const h of hosts) {
    if (!h.site) continue
    for (const l of h.links) {
      const key = `${h.site}\u0000${l.site}`
      const p = pairs.get(key) ?? { from: h.site, to: l.site, rtts: [], bws: [], reporters: 0 }
      p.reporters += 1
      if (l.rttMs !== undefined) p.rtts.push(l.rttMs)
      if (l.bandwidthMiBps !== undefined) p.bws.push(l.bandwidthMiBps)
      pairs.set(key, p)
    }
  }
  return {
    self,
    sites: [...bySite.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, hs]) => ({
        name,
        hosts: hs.map((h) => h.peerId).sort(),
        alive: hs.filter((h) => h.alive).length,
      })),
    links: [...pairs.values()]
      .sort((a, b) => a.from.localeCompare(b.from) || a.to.localeCompare(b.to))
      .map((p) => ({
        from: p.from,
        to: p.to,
        rttMs: p.rtts.length ? round3(median(p.rtts)) : undefined,
        bandwidthMiBps: p.bws.length ? round3(median(p.bws)) : undefined,
        reporters: p.reporters,
      })),
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000
}

function clampU32(x: number): number {
  return Math.max(0, Math.min(0xffffffff, x))
}
