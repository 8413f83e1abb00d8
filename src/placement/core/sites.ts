// Follow-the-sun: which site a VM prefers at a given time of day.
import type { SiteRule } from './types.js'

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
