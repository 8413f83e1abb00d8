// Rates over the last second, from what each workload tick reports.

const WINDOW_MS = 1000

interface Sample {
  t: number
  pages: number
  blocks: number
  busyMs: number
}

export interface Rates {
  pagesPerSec: number
  blocksPerSec: number
  /** Busy time per wall time (1 = one full CPU). */
  cpu: number
}

export class RateMeter {
  #samples: Sample[] = []
  #since = performance.now()

  /** Restarts the window (e.g. on resume), so time spent paused does not dilute the rates. */
  reset(now = performance.now()): void {
    this.#samples = []
    this.#since = now
  }

  record(pages: number, blocks: number, busyMs: number, now = performance.now()): void {
    this.#samples.push({ t: now, pages, blocks, busyMs })
    this.#prune(now)
  }

  rates(now = performance.now()): Rates {
    this.#prune(now)
    const span = Math.max(1, Math.min(WINDOW_MS, now - this.#since))
    let pages = 0
    let blocks = 0
    let busy = 0
    for (const s of this.#samples) {
      pages += s.pages
      blocks += s.blocks
      busy += s.busyMs
    }
    return { pagesPerSec: (pages * 1000) / span, blocksPerSec: (blocks * 1000) / span, cpu: busy / span }
  }

  #prune(now: number): void {
    const from = now - WINDOW_MS
    let k = 0
    while (k < this.#samples.length && this.#samples[k]!.t <= from) k++
    if (k > 0) this.#samples.splice(0, k)
  }
}
