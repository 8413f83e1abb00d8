// Suspicion timeouts (pure), after hashicorp memberlist's suspicion.go and Lifeguard: a suspect
// gets `max` to refute, shrinking toward `min` as independent confirmations arrive, so a
// suspicion many members share is acted on quickly while a lone (maybe unhealthy) accuser waits.

/** memberlist suspicionTimeout: suspicionMult * max(1, log10(n)) * probeInterval. */
export function suspicionMinTimeoutMs(suspicionMult: number, n: number, probeIntervalMs: number): number {
  const nodeScale = Math.max(1, Math.log10(Math.max(1, n)))
  return Math.floor((suspicionMult * Math.floor(nodeScale * 1000) * probeIntervalMs) / 1000)
}

/** Expected confirmations before the timeout reaches `min`: suspicionMult - 2, or 0 in a tiny mesh. */
export function suspicionConfirmations(suspicionMult: number, n: number): number {
  const k = suspicionMult - 2
  return n - 2 < k ? 0 : Math.max(0, k)
}

/** memberlist remainingSuspicionTime without the elapsed part: the total timeout after `c` of `k`. */
export function suspicionTimeoutMs(c: number, k: number, minMs: number, maxMs: number): number {
  if (k < 1) return minMs
  const frac = Math.log(c + 1) / Math.log(k + 1)
  const raw = maxMs - frac * (maxMs - minMs)
  return Math.max(minMs, Math.floor(raw))
}

export class Suspicion {
  readonly start: number
  readonly k: number
  readonly minMs: number
  readonly maxMs: number
  private readonly seen = new Set<string>()
  private n = 0
  /** When the suspect is declared dead unless it refutes first. */
  deadline: number

  constructor(opts: { start: number; k: number; minMs: number; maxMs: number; from?: string }) {
    this.start = opts.start
    this.k = opts.k
    this.minMs = opts.minMs
    this.maxMs = Math.max(opts.minMs, opts.maxMs)
    // The first accuser is not a confirmation (memberlist counts it separately).
    if (opts.from !== undefined) this.seen.add(opts.from)
    this.deadline = this.start + (this.k < 1 ? this.minMs : this.maxMs)
  }

  /** Independent confirmations counted so far. */
  get confirmations(): number {
    return this.n
  }

  /** Count `from` as a confirmation; true when new (the timeout shrank and the claim is worth re-gossiping). */
  confirm(from: string): boolean {
    if (this.n >= this.k || this.seen.has(from)) return false
    this.seen.add(from)
    this.n++
    this.deadline = this.start + suspicionTimeoutMs(this.n, this.k, this.minMs, this.maxMs)
    return true
  }
}
