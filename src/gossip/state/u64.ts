// uint64 fields from protobufjs decode as Long objects whenever the `long` package is installed (it
// is, as a dependency of protobufjs), whatever --force-number says; read them through this.

interface LongLike {
  low: number
  high: number
}

/** A decoded uint64 as a JS number (exact below 2^53). */
export function u64(v: unknown): number {
  if (typeof v === 'number') return v
  if (typeof v === 'bigint') return Number(v)
  if (v !== null && typeof v === 'object' && 'low' in v && 'high' in v) {
    const l = v as LongLike
    return (l.high >>> 0) * 2 ** 32 + (l.low >>> 0)
  }
  return 0
}
