// Migration options as callers give them, and resolved with defaults and bounds.
import { DEFAULTS, MAX_DATA_STREAMS } from './constants.js'
import { MigrationRefusedError } from './errors.js'
import type { Mode } from './policy.js'

export type CompressionChoice = 'auto' | 'on' | 'off'
export type DedupChoice = 'auto' | 'on' | 'off'
export type ChannelChoice = 'auto' | 'libp2p'

export interface MigrateOptions {
  /** 'precopy' (default), 'postcopy' or 'auto' (pre-copy, post-copy when rounds stop shrinking). */
  mode?: Mode
  /** Downtime target of the stop-copy, ms (default 50). */
  downtimeMs?: number
  /** Bandwidth limit, MiB/s (default none). */
  bandwidthMiBps?: number
  /** Pre-copy round cap (default 30). */
  maxRounds?: number
  /** Parallel data streams, 1..16 (default 3). */
  streams?: number
  /** lz4 frames: 'auto' (when the link is slower than the codec, measured), 'on', 'off'. */
  compression?: CompressionChoice
  /** References by content hash: 'auto' (when hashing is far faster than the link), 'on', 'off'. */
  dedup?: DedupChoice
  /**
   * Pre-copy that stops converging slows the guest down (as QEMU's auto-converge): it holds back 50,
   * 75, 90, 97, then 99 % of the guest's execution until the rest fits the downtime (default true).
   */
  autoConverge?: boolean
  /**
   * What carries the data units: 'auto' (default) a direct TLS connection when the destination offers
   * one and it connects, else libp2p streams; 'libp2p' always libp2p streams.
   */
  channel?: ChannelChoice
  signal?: AbortSignal
}

export interface ResolvedOptions {
  mode: Mode
  downtimeMs: number
  bandwidthMiBps: number | undefined
  maxRounds: number
  streams: number
  compression: CompressionChoice
  dedup: DedupChoice
  autoConverge: boolean
  channel: ChannelChoice
}

export function resolveOptions(o: MigrateOptions, defaults: Partial<ResolvedOptions> = {}): ResolvedOptions {
  const r: ResolvedOptions = {
    mode: o.mode ?? defaults.mode ?? DEFAULTS.mode,
    downtimeMs: o.downtimeMs ?? defaults.downtimeMs ?? DEFAULTS.downtimeMs,
    bandwidthMiBps: o.bandwidthMiBps ?? defaults.bandwidthMiBps,
    maxRounds: o.maxRounds ?? defaults.maxRounds ?? DEFAULTS.maxRounds,
    streams: o.streams ?? defaults.streams ?? DEFAULTS.streams,
    compression: o.compression ?? defaults.compression ?? DEFAULTS.compression,
    dedup: o.dedup ?? defaults.dedup ?? DEFAULTS.dedup,
    autoConverge: o.autoConverge ?? defaults.autoConverge ?? true,
    channel: o.channel ?? defaults.channel ?? 'auto',
  }
  const bad = (msg: string) => new MigrationRefusedError('BAD_OFFER', msg)
  if (!['precopy', 'postcopy', 'auto'].includes(r.mode)) throw bad(`unknown mode ${r.mode}`)
  if (!(r.downtimeMs >= 0) || !Number.isFinite(r.downtimeMs))
    throw bad(`downtimeMs ${r.downtimeMs} must be >= 0`)
  if (r.bandwidthMiBps !== undefined && !(r.bandwidthMiBps > 0)) throw bad('bandwidthMiBps must be > 0')
  if (!Number.isInteger(r.maxRounds) || r.maxRounds < 1 || r.maxRounds > 1000)
    throw bad('maxRounds must be 1..1000')
  if (!Number.isInteger(r.streams) || r.streams < 1 || r.streams > MAX_DATA_STREAMS) {
    throw bad(`streams must be 1..${MAX_DATA_STREAMS}`)
  }
  if (!['auto', 'on', 'off'].includes(r.compression)) throw bad(`unknown compression ${r.compression}`)
  if (!['auto', 'on', 'off'].includes(r.dedup)) throw bad(`unknown dedup ${r.dedup}`)
  if (!['auto', 'libp2p'].includes(r.channel)) throw bad(`unknown channel ${r.channel}`)
  return r
}
