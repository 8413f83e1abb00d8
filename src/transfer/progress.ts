// What a migration exposes while it runs and after: counters, rates, ETA, times, failure reason.
import type { Mode } from './policy.js'

export type Phase =
  | 'offer'
  | 'precopy'
  | 'postcopy'
  | 'stopcopy'
  | 'verify'
  | 'handover'
  | 'done'
  | 'failed'
  | 'cancelled'

export const TERMINAL_PHASES: readonly Phase[] = ['done', 'failed', 'cancelled']

export interface MigrationView {
  id: string
  vmId: string
  /** 'out' on the source, 'in' on the destination. */
  direction: 'out' | 'in'
  /** Peer ids (strings). */
  from: string
  to: string
  mode: Mode
  /** True once an auto (or post-copy) migration resumed the VM at the destination before all pages. */
  postcopy: boolean
  phase: Phase
  round: number
  startedAt: number
  /** VM bytes carried as content (DATA units, before compression). */
  bytesSent: number
  /** Encoded frame and control bytes (what the streams carried before encryption). */
  wireBytes: number
  pagesSent: number
  blocksSent: number
  zeroPages: number
  zeroBlocks: number
  dedupPages: number
  dedupBlocks: number
  /** Pages sent as a reference to content the destination already held (its ContentStore). */
  storePages?: number
  /** Pre-copy: pages skipped in a round because the guest wrote them again before they went (sent later). */
  redirtiedPages?: number
  frames: number
  compressedFrames: number
  /** Post-copy: pages the destination asked for because its guest touched them. */
  faultPages: number
  dirtyRateMiBps: number
  bandwidthMiBps: number
  etaMs?: number
  /** Auto-converge: the share (0..0.99) of the guest's execution held back at the source, if any. */
  throttle?: number
  /** Once terminal. */
  totalMs?: number
  /** Pause at the source until the destination's RUNNING arrived (source side). */
  downtimeMs?: number
  /** The epoch the VM has at the destination after the commit. */
  epoch?: number
  error?: { code: string; message: string }
  /** Source side: how the migration reached its destination (direct, hole-punched or relayed). */
  link?: 'direct' | 'hole-punched' | 'relayed'
  /** Why the link is not direct, when it is not. */
  linkNote?: string
  /** What carries the data units: libp2p streams, or direct TLS connections (direct.ts). */
  channel?: 'libp2p' | 'direct-sealed' | 'direct-tls' | 'qemu-tls'
  /** Source side: why the data does not use a direct TLS connection, when it does not. */
  channelNote?: string
}

export type Counters = Pick<
  MigrationView,
  | 'bytesSent'
  | 'wireBytes'
  | 'pagesSent'
  | 'blocksSent'
  | 'zeroPages'
  | 'zeroBlocks'
  | 'dedupPages'
  | 'dedupBlocks'
  | 'frames'
  | 'compressedFrames'
  | 'faultPages'
> & { storePages: number; redirtiedPages: number }

export function emptyCounters(): Counters {
  return {
    bytesSent: 0,
    wireBytes: 0,
    pagesSent: 0,
    blocksSent: 0,
    zeroPages: 0,
    zeroBlocks: 0,
    dedupPages: 0,
    dedupBlocks: 0,
    storePages: 0,
    redirtiedPages: 0,
    frames: 0,
    compressedFrames: 0,
    faultPages: 0,
  }
}

export const MiB = 1024 * 1024
