// One host's upload link, emulated (images.linkMiBps, for tests and benchmarks on loopback): every chunk
// any stream of this host sends takes its slot on one shared clock, and is sent when its slot ends —
// when a real link of that rate would have delivered its last byte. So concurrent streams share the
// rate (one source serving N hosts at once gives each 1/N), and a chunk forwarded down a pipeline
// reaches the next host one chunk-time later, as over a real store-and-forward hop.

export class LinkClock {
  readonly #bytesPerMs: number
  #free = 0

  /** `bytesPerSecond` <= 0: no limit. */
  constructor(bytesPerSecond: number) {
    this.#bytesPerMs = bytesPerSecond / 1000
  }

  get limited(): boolean {
    return this.#bytesPerMs > 0
  }

  /** Waits until `bytes` would have crossed the link after everything sent before them. */
  async send(bytes: number, signal?: AbortSignal): Promise<void> {
    if (this.#bytesPerMs <= 0) return
    const now = performance.now()
    this.#free = Math.max(now, this.#free) + bytes / this.#bytesPerMs
    const wait = this.#free - now
    if (wait < 1) return
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t)
        signal?.removeEventListener('abort', done)
        resolve()
      }
      const t = setTimeout(done, wait)
      signal?.addEventListener('abort', done, { once: true })
    })
  }
}
