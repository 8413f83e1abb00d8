// The progress of a QEMU migration in the same shape as the engine's (MigrationView), from
// `query-migrate` and the block mirror job.
import type { QemuMigrationInfo } from '../../vm/qemu/index.js'
import type { Mode } from '../policy.js'
import { emptyCounters, MiB, type MigrationView, type Phase, TERMINAL_PHASES } from '../progress.js'

export function initialView(init: {
  id: string
  vmId: string
  direction: 'out' | 'in'
  from: string
  to: string
  mode: Mode
}): MigrationView {
  return {
    ...init,
    postcopy: false,
    phase: 'offer',
    round: 0,
    startedAt: Date.now(),
    ...emptyCounters(),
    dirtyRateMiBps: 0,
    bandwidthMiBps: 0,
  }
}

/** Folds a query-migrate answer (and the disk mirror's bytes) into the view. */
export function applyQemuInfo(v: MigrationView, info: QemuMigrationInfo, diskBytes: number): void {
  const pageSize = info.pageSize ?? 4096
  v.round = info.dirtySyncCount ?? v.round
  v.pagesSent = info.normalPages ?? v.pagesSent
  v.bytesSent = (info.transferredBytes ?? 0) + diskBytes
  v.dirtyRateMiBps = ((info.dirtyPagesRate ?? 0) * pageSize) / MiB
  v.bandwidthMiBps = (info.mbps ?? 0) / 8
  if (info.remainingBytes !== undefined && v.bandwidthMiBps > 0) {
    v.etaMs = Math.round((info.remainingBytes / MiB / v.bandwidthMiBps) * 1000)
  }
}

export function isTerminal(p: Phase): boolean {
  return TERMINAL_PHASES.includes(p)
}
