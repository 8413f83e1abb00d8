// Follow-the-sun: which site a VM prefers at a given time of day.
import type { PlacementConfig, SiteRule } from './types.js'

const HOUR = 3_600_000

export function hourOfDay(now: number): number {
  return Math.floor((((now % (24 * HOUR)) + 24 * HOUR) % (24 * HOUR)) / HOUR)
}

/** The site of the first rule covering `now` (UTC), or undefined when none does. */
export function preferredSite(rules: readonly SiteRule[] | undefined, now: number): string | undefined {
  if (!rules || rules.length === 0) return undefined
  const h = hourOfDay(now)
  for (const r of rules) {
    const inside = r.fromHour <= r.toHour ? h >= r.fromHour && h < r.toHour : h >= r.fromHour || h < r.toHour
    if (inside) return r.site
  }
  return undefined
}

/**
 * The gain (share of a host's capacity freed) a move from site `from` to site `to` must promise: none
 * more than usual inside a site; across sites crossSiteMinGain at the default link bandwidth, scaled by
 * how much slower (or faster) the measured link is, between minGain and 1.
 */
export function requiredGain(
  from: string,
  to: string,
  cfg: Pick<PlacementConfig, 'minGain' | 'crossSiteMinGain' | 'crossSiteBandwidthBps' | 'siteBandwidthBps'>,
): number {
  if (from === to) return 0
  const measured = cfg.siteBandwidthBps?.[`${from}>${to}`]
  const bw = measured !== undefined && measured > 0 ? measured : cfg.crossSiteBandwidthBps
  const extra = Math.max(0, cfg.crossSiteMinGain - cfg.minGain) * (cfg.crossSiteBandwidthBps / bw)
  return Math.min(1, cfg.minGain + extra)
}
