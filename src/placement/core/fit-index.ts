// First-fit search over many hosts in O(log n) per query when most hosts have no room: a segment tree
// that keeps, per resource, the largest remaining room below each node. A query descends only into
// nodes whose maxima could hold the demand, and a predicate (constraints) is checked at the leaves.
import type { Resources } from './types.js'

const NEG = Number.NEGATIVE_INFINITY

export class FitIndex {
  readonly size: number
  private readonly n: number
  private readonly cpu: Float64Array
  private readonly mem: Float64Array
  private readonly disk: Float64Array

  /** room[i]: what slot i can still take; slots are searched in index order. */
  constructor(room: readonly Resources[]) {
    this.size = room.length
    let n = 1
    while (n < Math.max(1, room.length)) n <<= 1
    this.n = n
    this.cpu = new Float64Array(2 * n).fill(NEG)
    this.mem = new Float64Array(2 * n).fill(NEG)
    this.disk = new Float64Array(2 * n).fill(NEG)
    room.forEach((r, i) => {
      this.cpu[n + i] = r.cpu
      this.mem[n + i] = r.mem
      this.disk[n + i] = r.disk
    })
    for (let i = n - 1; i >= 1; i--) this.pull(i)
  }

  private pull(i: number): void {
    const l = 2 * i
    const r = l + 1
    this.cpu[i] = Math.max(this.cpu[l]!, this.cpu[r]!)
    this.mem[i] = Math.max(this.mem[l]!, this.mem[r]!)
    this.disk[i] = Math.max(this.disk[l]!, this.disk[r]!)
  }

  room(i: number): Resources {
    const k = this.n + i
    return { cpu: this.cpu[k]!, mem: this.mem[k]!, disk: this.disk[k]! }
  }

  set(i: number, r: Resources): void {
    let k = this.n + i
    this.cpu[k] = r.cpu
    this.mem[k] = r.mem
    this.disk[k] = r.disk
    for (k >>= 1; k >= 1; k >>= 1) this.pull(k)
  }

  /** Takes a slot out of every search. */
  close(i: number): void {
    this.set(i, { cpu: NEG, mem: NEG, disk: NEG })
  }

  /** The first slot >= from with room for `d` for which `accept` holds, or -1. */
  findFirst(d: Resources, accept?: (i: number) => boolean, from = 0): number {
    const eps = 1e-9
    const c = d.cpu - eps
    const m = d.mem - eps
    const k = d.disk - eps
    const visit = (node: number, lo: number, hi: number): number => {
      if (hi < from || this.cpu[node]! < c || this.mem[node]! < m || this.disk[node]! < k) return -1
      if (lo === hi) return lo < this.size && (!accept || accept(lo)) ? lo : -1
      const mid = (lo + hi) >> 1
      const left = visit(2 * node, lo, mid)
      return left >= 0 ? left : visit(2 * node + 1, mid + 1, hi)
    }
    return visit(1, 0, this.n - 1)
  }
}
