// Which pages a pre-copy round sends, and in what order. Pure: callers pass the dirty log as a probe.
//
// A page the guest writes again after the round sent it crosses the wire twice. The round cannot know
// the future, but writes cluster: a region of memory with a page written since the round began is
// likely written again soon. So a round walks its pages region by region and defers every region
// already holding a dirty page to the end of the round (by then many of its pages are dirty again and
// skipped: the next round sends them, once). Nothing is dropped: a deferred page is still sent in this
// round unless it is dirty by then, and a dirty page is in the dirty log the next round (or the
// stop-copy, with the guest paused) is built from.

/** Pages per region for the deferral (2 MiB of 4 KiB pages: a huge page, as guests allocate). */
export const REGION_PAGES = 512

/** The dirty log as a round sees it: true if page `i` was written since the round's set was taken. */
export type DirtyProbe = (i: number) => boolean

/**
 * The round's pages (ascending, as one stream's share of the round) in sending order: regions without
 * a dirty page at the moment the walk reaches them, in order; then the deferred regions, in order.
 * A region is judged by all its pages (`pageCount` bounds the last one), not only the listed ones.
 * Lazy, so each region is judged when its turn comes (the dirty log grows while the round runs).
 * Without a probe (a paused guest: nothing changes) the order is the given one.
 */
export function* roundOrder(
  pages: readonly number[],
  dirty: DirtyProbe | undefined,
  pageCount: number,
  regionPages = REGION_PAGES,
): Generator<number> {
  if (!dirty) {
    yield* pages
    return
  }
  const deferred: [number, number][] = []
  let start = 0
  while (start < pages.length) {
    const region = Math.floor(pages[start]! / regionPages)
    let end = start + 1
    while (end < pages.length && Math.floor(pages[end]! / regionPages) === region) end++
    let hot = false
    const last = Math.min((region + 1) * regionPages, pageCount)
    for (let p = region * regionPages; p < last && !hot; p++) hot = dirty(p)
    if (hot) deferred.push([start, end])
    else for (let k = start; k < end; k++) yield pages[k]!
    start = end
  }
  for (const [s, e] of deferred) for (let k = s; k < e; k++) yield pages[k]!
}

/** A round is "dirty-bound" when the guest dirtied at least this share of what the round sent. */
export const DIRTY_HIGH_SHARE = 0.5
/** Dirty-bound rounds in a row before the guest is slowed (QEMU's `dirty_rate_high_cnt` trigger). */
export const DIRTY_HIGH_ROUNDS = 2

/**
 * QEMU's auto-converge trigger, measured per round: when the guest dirties half of what a round sends
 * (or more) for two rounds in a row, the rounds shrink too slowly to be worth their bytes (each round
 * resends the hot set), so the guest is slowed now rather than once the rounds have stopped shrinking.
 * Counting starts over after each slow-down (the next step is judged on the slower guest).
 */
export class DirtyRateTrigger {
  #high = 0

  constructor(
    readonly share = DIRTY_HIGH_SHARE,
    readonly rounds = DIRTY_HIGH_ROUNDS,
  ) {}

  /** Records a finished round (bytes it sent, bytes dirtied meanwhile); true: slow the guest now. */
  record(sentBytes: number, dirtiedBytes: number): boolean {
    if (dirtiedBytes > 0 && dirtiedBytes >= sentBytes * this.share) this.#high++
    else this.#high = 0
    return this.#high >= this.rounds
  }

  /** The guest was slowed: the next rounds are judged afresh. */
  reset(): void {
    this.#high = 0
  }
}

/**
 * Auto-converge aims the throttled guest at writing at most this share of the link's rate: each round
 * then leaves about a quarter of what it sent, so the re-sent bytes stay near a third of the hot set.
 */
export const WRITE_LINK_TARGET = 0.25
/** Share of the hot set beyond which a dirty count says little about the rate (the log saturates). */
const MAX_DIRTY_SHARE = 0.9

/**
 * The guest's write rate (bytes/s) from the distinct bytes it dirtied in `ms`. A dirty log counts a page
 * once however often it is written, so over a long round it saturates at the hot set and says little
 * of the rate. A guest writing w bytes/s at random over a hot set of `hotBytes` has dirtied
 * hot·(1 - e^(-w·t/hot)) distinct bytes after t; inverted, w = -hot·ln(1 - dirty/hot)/t (the share
 * capped at MAX_DIRTY_SHARE). `hotBytes` 0 (unknown): the plain distinct rate, a lower bound.
 */
export function writeRateBps(dirtyBytes: number, ms: number, hotBytes: number): number {
  if (!(ms > 0) || !(dirtyBytes > 0)) return 0
  if (!(hotBytes > 0)) return (dirtyBytes / ms) * 1000
  const hot = Math.max(hotBytes, dirtyBytes)
  const share = Math.min(dirtyBytes / hot, MAX_DIRTY_SHARE)
  return ((-hot * Math.log1p(-share)) / ms) * 1000
}

export interface ThrottleInput {
  /** The guest's write rate as measured under `throttle` (see `writeRateBps`). */
  writeBps: number
  /** Measured link rate (bytes/s); 0 if unknown. */
  bandwidthBps: number
  /** The share of the guest held back now (0 = none). */
  throttle: number
  /** The throttle steps, ascending (QEMU's cpu-throttle goes 20 % + 10 % .. 99 %). */
  steps: readonly number[]
  /** Share of the link's rate the throttled guest may write (default WRITE_LINK_TARGET). */
  target?: number
}

/**
 * Predictive auto-converge: the throttle the next round needs, from one round's measurements, instead
 * of stepping up once per round after rounds failed to shrink (each such round re-sends most of the
 * hot set). The guest's unthrottled rate is writeBps / (1 - throttle); the result is the smallest step
 * that brings it to `target` of the link's rate, the highest step if none does, and the current
 * throttle when it already does (never lower: judged afresh each round, it only goes up).
 */
export function throttleFor(i: ThrottleInput): number {
  const target = i.target ?? WRITE_LINK_TARGET
  if (!(i.bandwidthBps > 0) || !(i.writeBps > 0) || i.throttle >= 1) return i.throttle
  const free = i.writeBps / (1 - i.throttle)
  const allowed = target * i.bandwidthBps
  if (free * (1 - i.throttle) <= allowed) return i.throttle
  for (const s of i.steps) if (s > i.throttle && free * (1 - s) <= allowed) return s
  return Math.max(i.throttle, ...i.steps)
}
