// Pure decisions of the engine: when pre-copy stops, when auto mode switches to post-copy, whether to
// compress or hash, and the ETA. No I/O and no clock: callers pass what they measured.

export type Mode = 'precopy' | 'postcopy' | 'auto'

export interface RoundInput {
  mode: Mode
  /** The round that just finished (0 = the full copy). */
  round: number
  /** Bytes dirtied while it ran (what the next round, or the stop-copy, would send). */
  remainingBytes: number
  /** The remaining bytes after each finished round, oldest first (this one last). */
  history: readonly number[]
  /** Measured end-to-end rate (acknowledged bytes/s); 0 if unknown. */
  bandwidthBps: number
  downtimeMs: number
  maxRounds: number
  /**
   * Fixed cost of a round, ms (ack latency, framing; see `fitRoundCost`): the stop-copy pays it, and
   * the verify/commit round trips about as much again. 0 or absent: only the bytes count.
   */
  roundFixedMs?: number
  /**
   * Share of `downtimeMs` the predicted pause must fit (default 1). Below 1 leaves a margin for what
   * the prediction misses (a loaded host's scheduling, the stop-copy's acks, the switchover's trip).
   */
  aim?: number
}

export type RoundDecision =
  | { action: 'round' }
  | { action: 'stop'; reason: 'converged' | 'max-rounds' | 'no-progress' }
  | { action: 'postcopy'; reason: 'not-converging' | 'max-rounds' }

/** A round "shrinks" when it leaves less than this share of what the round before left. */
export const SHRINK_FACTOR = 0.9
/** Rounds in a row that do not shrink before pre-copy gives up converging. */
export const STALL_ROUNDS = 2

/** Bytes/s estimate of the time to send `bytes`; Infinity when the rate is unknown. */
export function sendTimeMs(bytes: number, bps: number): number {
  if (bytes <= 0) return 0
  return bps > 0 ? (bytes / bps) * 1000 : Number.POSITIVE_INFINITY
}

/** After a pre-copy round: another round, stop-and-copy, or (auto) switch to post-copy. */
export function decideNextRound(i: RoundInput): RoundDecision {
  if (predictedDowntimeMs(i) <= i.downtimeMs * (i.aim ?? 1)) return { action: 'stop', reason: 'converged' }
  if (i.round + 1 >= i.maxRounds) {
    return i.mode === 'auto'
      ? { action: 'postcopy', reason: 'max-rounds' }
      : { action: 'stop', reason: 'max-rounds' }
  }
  if (stalled(i.history)) {
    return i.mode === 'auto'
      ? { action: 'postcopy', reason: 'not-converging' }
      : { action: 'stop', reason: 'no-progress' }
  }
  return { action: 'round' }
}

/**
 * The pause a stop-copy now would cost: the rest at the measured rate, plus the last round's fixed cost
 * and the handover's round trips (twice the fixed cost, counted for at most half the target, so a slow
 * round trip alone never keeps pre-copy from converging).
 */
export function predictedDowntimeMs(
  i: Pick<RoundInput, 'remainingBytes' | 'bandwidthBps' | 'downtimeMs' | 'roundFixedMs'>,
): number {
  const send = sendTimeMs(i.remainingBytes, i.bandwidthBps)
  const fixed = Math.min(2 * Math.max(0, i.roundFixedMs ?? 0), i.downtimeMs / 2)
  return send + fixed
}

/**
 * Round time = fixed + bytes / rate, fitted (least squares) over finished rounds: a big round's
 * bytes/ms overrates what a small stop-copy round achieves, since every round also waits for its last
 * acknowledgements. Fewer than two rounds of clearly different sizes: no fixed part.
 */
export function fitRoundCost(rounds: readonly { bytes: number; ms: number }[]): {
  fixedMs: number
  bps: number
} {
  const r = rounds.filter((x) => x.ms > 0)
  if (r.length === 0) return { fixedMs: 0, bps: 0 }
  const n = r.length
  const mx = r.reduce((a, x) => a + x.bytes, 0) / n
  const my = r.reduce((a, x) => a + x.ms, 0) / n
  let sxx = 0
  let sxy = 0
  for (const x of r) {
    sxx += (x.bytes - mx) ** 2
    sxy += (x.bytes - mx) * (x.ms - my)
  }
  const biggest = r.reduce((a, x) => (x.bytes > a.bytes ? x : a))
  const plain = { fixedMs: 0, bps: (biggest.bytes / biggest.ms) * 1000 }
  // Sizes too alike (or noise making the slope useless): the plain rate of the biggest round
  if (n < 2 || sxx <= 0 || Math.sqrt(sxx / n) < 0.25 * mx) return plain
  const slope = sxy / sxx
  if (!(slope > 0)) return plain
  const fixedMs = my - slope * mx
  if (fixedMs <= 0) return plain
  return { fixedMs, bps: 1000 / slope }
}

/** True when the last STALL_ROUNDS rounds each left at least SHRINK_FACTOR of the one before. */
export function stalled(history: readonly number[]): boolean {
  if (history.length < STALL_ROUNDS + 1) return false
  for (let k = history.length - STALL_ROUNDS; k < history.length; k++) {
    if (history[k]! < history[k - 1]! * SHRINK_FACTOR) return false
  }
  return true
}

/**
 * Compress when sending compressed is faster than sending raw: per byte, codec time plus the
 * compressed bytes' link time must beat the raw bytes' link time, i.e. codec·(1 - ratio) > link.
 * Unknown link rate: compress if the codec shrinks the data (it cannot hurt a link we know nothing of
 * much); unknown codec figures: do not.
 */
export function shouldCompress(
  linkBps: number | undefined,
  codecBps: number | undefined,
  ratio: number | undefined,
): boolean {
  if (codecBps === undefined || ratio === undefined) return false
  if (ratio >= 0.95) return false
  if (!linkBps) return true
  return codecBps * (1 - ratio) > linkBps
}

/** Hash pages for dedup when hashing is much faster than the link (hashing is paid for every page). */
export function shouldHash(
  linkBps: number | undefined,
  hashBps: number | undefined,
  hitRatio: number | undefined,
): boolean {
  if (!linkBps || !hashBps) return false
  // Without hits, hashing only costs: keep it to links far slower than the hash
  const factor = (hitRatio ?? 0) > 0.05 ? 2 : 8
  return hashBps > factor * linkBps
}

export interface EtaInput {
  phase: string
  /** Bytes still to send in the current round (or push). */
  roundRemainingBytes: number
  /** Bytes the guest dirties per second (pre-copy only). */
  dirtyBps: number
  bandwidthBps: number
  downtimeMs: number
}

/**
 * Milliseconds until done, or undefined when the rates are unknown. Pre-copy: the rest of this round,
 * then rounds that shrink by dirty/bandwidth each (a geometric series), then the stop-copy; bounded when
 * the guest dirties as fast as the link.
 */
export function estimateEtaMs(i: EtaInput): number | undefined {
  if (i.phase === 'done' || i.phase === 'failed' || i.phase === 'cancelled') return 0
  if (!(i.bandwidthBps > 0)) return undefined
  const rest = (i.roundRemainingBytes / i.bandwidthBps) * 1000
  if (i.phase !== 'precopy') return rest
  const q = i.dirtyBps / i.bandwidthBps
  // Time of this round's remainder dirties q·rest worth of pages, and so on: rest·q/(1-q)
  const tail = q < 0.9 ? (rest * q) / (1 - q) : rest * 9
  return rest + tail + i.downtimeMs
}
