// The workload's CPU "work" runs on the agent's own thread, so a shared token bucket caps how much of
// that thread all synthetic VMs of one driver may take, whatever their specs ask for.

export class CpuBudget {
  readonly share: number
  readonly #burstMs: number
  #tokens: number
  #last: number

  /** `share` of one thread (0..1), with bursts of at most `burstMs` of busy time. */
  constructor(share: number, burstMs: number) {
    this.share = Math.min(Math.max(share, 0), 1)
    this.#burstMs = burstMs
    this.#tokens = 0
    this.#last = performance.now()
  }

  /** Grants up to `ms` of busy time now. */
  take(ms: number): number {
    const now = performance.now()
    this.#tokens = Math.min(this.#burstMs, this.#tokens + (now - this.#last) * this.share)
    this.#last = now
    const granted = Math.max(0, Math.min(ms, this.#tokens))
    this.#tokens -= granted
    return granted
  }
}
