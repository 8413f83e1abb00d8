// The simulator's event queue: a binary min-heap by (time, insertion order), so equal times run in the
// order they were scheduled and a run is deterministic.
export class EventQueue {
  private t: number[] = []
  private s: number[] = []
  private f: (() => void)[] = []
  private seq = 0

  get size(): number {
    return this.t.length
  }

  push(time: number, fn: () => void): void {
    const seq = this.seq++
    let i = this.t.length
    this.t.push(time)
    this.s.push(seq)
    this.f.push(fn)
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!this.less(i, p)) break
      this.swap(i, p)
      i = p
    }
  }

  peekTime(): number {
    return this.t.length ? this.t[0]! : Number.POSITIVE_INFINITY
  }

  /** Removes the earliest event and returns [time, fn]. */
  pop(): [number, () => void] | undefined {
    const n = this.t.length
    if (n === 0) return undefined
    const out: [number, () => void] = [this.t[0]!, this.f[0]!]
    this.swap(0, n - 1)
    this.t.pop()
    this.s.pop()
    this.f.pop()
    let i = 0
    const m = n - 1
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let k = i
      if (l < m && this.less(l, k)) k = l
      if (r < m && this.less(r, k)) k = r
      if (k === i) break
      this.swap(i, k)
      i = k
    }
    return out
  }

  private less(a: number, b: number): boolean {
    const ta = this.t[a]!
    const tb = this.t[b]!
    return ta < tb || (ta === tb && this.s[a]! < this.s[b]!)
  }

  private swap(a: number, b: number): void {
    ;[this.t[a], this.t[b]] = [this.t[b]!, this.t[a]!]
    ;[this.s[a], this.s[b]] = [this.s[b]!, this.s[a]!]
    ;[this.f[a], this.f[b]] = [this.f[b]!, this.f[a]!]
  }
}
