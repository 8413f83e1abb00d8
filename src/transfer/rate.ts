// Rates over a sliding window, and a token bucket for the bandwidth limit.

/** Bytes per second over the last `windowMs`, from (time, bytes) samples. */
export class RateMeter {
  readonly #windowMs: number
  readonly #samples: { t: number; n: number }[] = []
  #sum = 0
  #total = 0
  readonly #start: number

  constructor(windowMs = 1000, now = performance.now()) {
    this.#windowMs = windowMs
    this.#start = now
  }

  add(bytes: number, now = performance.now()): void {
    this.#samples.push({ t: now, n: bytes })
    this.#sum += bytes
    this.#total += bytes
    this.#trim(now)
  }

  get total(): number {
    return this.#total
  }

  /** Bytes/s over the window (or since the start, when younger than the window); 0 without samples. */
  rate(now = performance.now()): number {
    this.#trim(now)
    const span = Math.min(this.#windowMs, now - this.#start)
    if (span <= 0 || this.#sum === 0) return 0
    return (this.#sum / Math.max(span, 20)) * 1000
  }

  #trim(now: number): void {
    while (this.#samples.length > 0 && this.#samples[0]!.t < now - this.#windowMs) {
      this.#sum -= this.#samples.shift()!.n
    }
  }
}

/** Exponentially weighted average of a rate or ratio: the first sample sets it. */
export class Ewma {
  #value: number | undefined
  constructor(readonly alpha = 0.3) {}
  add(v: number): void {
    if (!Number.isFinite(v)) return
    this.#value = this.#value === undefined ? v : this.#value + this.alpha * (v - this.#value)
  }
  get value(): number | undefined {
    return this.#value
  }
}

/** Limits a flow to `rateBps` with bursts of `burstBytes`; `take` waits (abortably) for tokens. */
export class TokenBucket {
  readonly #rate: number
  readonly #burst: number
  #tokens: number
  #last: number

  constructor(rateBps: number, burstBytes = Math.max(rateBps / 20, 256 * 1024)) {
    if (!(rateBps > 0)) throw new RangeError(`rate ${rateBps} must be > 0`)
    this.#rate = rateBps
    this.#burst = burstBytes
    this.#tokens = burstBytes
    this.#last = performance.now()
  }

  /** Milliseconds to wait before `bytes` may go (0 if now); takes the tokens (going into debt). */
  reserve(bytes: number, now = performance.now()): number {
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) * this.#rate) / 1000)
    this.#last = now
    this.#tokens -= bytes
    return this.#tokens >= 0 ? 0 : (-this.#tokens / this.#rate) * 1000
  }

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const ms = this.reserve(bytes)
    if (ms > 0) await sleep(ms, signal)
  }
}

/** setTimeout as a promise that an abort signal rejects; the timer does not hold the process. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason)
      return
    }
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal!.reason)
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    timer.unref()
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
