// The queue of membership updates waiting to be piggybacked (pure), after memberlist's
// TransmitLimitedQueue: each update is sent retransmitMult * ceil(log10(n+1)) times, the least-sent
// (then newest) first; a newer update about the same member replaces the queued one. Unlike UDP, a
// stream tells us when a message was not delivered: such a transmission is given back (restore).

export interface BroadcastQueueOptions {
  retransmitMult: number
  /** Entries kept at most; beyond it the most-sent (then oldest) entries go. */
  maxQueued: number
}

export interface TakeOptions {
  maxItems: number
  maxBytes: number
  /** Key not to hand out (and not to count): the recipient knows itself best. */
  exclude?: string
}

interface Entry<T> {
  key: string
  item: T
  bytes: number
  transmits: number
  /** Insertion order: higher is newer. */
  id: number
}

/** memberlist retransmitLimit: retransmitMult * ceil(log10(n+1)). */
export function retransmitLimit(retransmitMult: number, n: number): number {
  return retransmitMult * Math.ceil(Math.log10(Math.max(0, n) + 1))
}

export class BroadcastQueue<T> {
  private readonly opts: BroadcastQueueOptions
  private readonly entries = new Map<string, Entry<T>>()
  private nextId = 0

  constructor(opts: BroadcastQueueOptions) {
    this.opts = opts
  }

  /** Entries held, including ones whose last transmissions are not yet confirmed. */
  get size(): number {
    return this.entries.size
  }

  /** Entries still to be sent for a mesh of `n` members. */
  pending(n: number): number {
    const limit = this.limit(n)
    let count = 0
    for (const e of this.entries.values()) if (e.transmits < limit) count++
    return count
  }

  has(key: string): boolean {
    return this.entries.has(key)
  }

  /** True while the entry for `key` still has transmissions left for `n` members. */
  isPending(key: string, n: number): boolean {
    const e = this.entries.get(key)
    return e !== undefined && e.transmits < this.limit(n)
  }

  /** Times the entry for `key` has been handed out (undefined if none is queued). */
  transmits(key: string): number | undefined {
    return this.entries.get(key)?.transmits
  }

  /** Queue `item` (about `key`, `bytes` long on the wire), replacing any older entry about `key`. */
  enqueue(key: string, item: T, bytes: number): void {
    this.entries.delete(key)
    this.entries.set(key, { key, item, bytes, transmits: 0, id: this.nextId++ })
    if (this.entries.size > this.opts.maxQueued) this.prune(this.opts.maxQueued)
  }

  clear(): void {
    this.entries.clear()
  }

  /**
   * Items for one message: least-sent first, newest first among equals, within `maxItems` and
   * `maxBytes`. Each handed-out item counts one transmission. Entries that reached the limit for
   * `n` members are dropped at the next take (until then restore() can still give one back).
   */
  take(n: number, opts: TakeOptions): T[] {
    if (this.entries.size === 0 || opts.maxItems <= 0) return []
    const limit = this.limit(n)
    const sorted = [...this.entries.values()].sort((a, b) => a.transmits - b.transmits || b.id - a.id)
    const out: T[] = []
    let bytes = 0
    for (const e of sorted) {
      if (e.transmits >= limit) {
        this.entries.delete(e.key)
        continue
      }
      if (e.key === opts.exclude || out.length >= opts.maxItems || bytes + e.bytes > opts.maxBytes) continue
      bytes += e.bytes
      out.push(e.item)
      e.transmits++
    }
    return out
  }

  /**
   * The message carrying `item` was not delivered (the exchange failed): the transmission does not
   * count. Ignored when a newer update about `key` has replaced it meanwhile.
   */
  restore(key: string, item: T): void {
    const e = this.entries.get(key)
    if (e && e.item === item && e.transmits > 0) e.transmits--
  }

  private limit(n: number): number {
    return Math.max(1, retransmitLimit(this.opts.retransmitMult, n))
  }

  private prune(keep: number): void {
    const sorted = [...this.entries.values()].sort((a, b) => b.transmits - a.transmits || a.id - b.id)
    for (const e of sorted) {
      if (this.entries.size <= keep) break
      this.entries.delete(e.key)
    }
  }
}
