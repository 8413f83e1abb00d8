// How long a live migration takes and how many bytes it moves, from the migration engine's own model
// (transfer's estimateEtaMs: a pre-copy round of all memory, then rounds that shrink by dirty/bandwidth,
// then the stop-copy downtime).
import { estimateEtaMs } from '../transfer/index.js'

export interface LinkModel {
  /** Per host NIC, shared by the migrations in flight on it (bytes/s). */
  bandwidthBps: number
  downtimeMs: number
}

/**
 * Post-copy (what overload relief uses): the VM pauses for `downtimeMs`, resumes on the destination —
 * its load moves then — and its memory follows once, pushed and faulted at the link's pace.
 */
export function postcopyCost(
  memoryBytes: number,
  bandwidthBps: number,
  downtimeMs: number,
): { switchMs: number; ms: number; bytes: number } {
  const push =
    estimateEtaMs({
      phase: 'postcopy',
      roundRemainingBytes: memoryBytes,
      dirtyBps: 0,
      bandwidthBps,
      downtimeMs,
    }) ?? (memoryBytes / bandwidthBps) * 1000
  return { switchMs: downtimeMs, ms: downtimeMs + push, bytes: memoryBytes }
}

export function migrationCost(
  memoryBytes: number,
  dirtyBps: number,
  bandwidthBps: number,
  downtimeMs: number,
): { ms: number; bytes: number } {
  const ms = estimateEtaMs({
    phase: 'precopy',
    roundRemainingBytes: memoryBytes,
    dirtyBps,
    bandwidthBps,
    downtimeMs,
  })
  const total = ms ?? (memoryBytes / bandwidthBps) * 1000 + downtimeMs
  // Bytes: what the link carried during the copy (all rounds), the stop-copy included.
  const bytes = Math.max(memoryBytes, ((total - downtimeMs) / 1000) * bandwidthBps)
  return { ms: total, bytes }
}
