// How long a live migration takes and how many bytes it moves, from the migration engine's own model
// (transfer's estimateEtaMs: a pre-copy round of all memory, then rounds that shrink by dirty/bandwidth,
// then the stop-copy downtime).
import { estimateEtaMs } from '../transfer/index.js'

export interface LinkModel {
  /** Per host NIC, shared by the migrations in flight on it (bytes/s). */
  bandwidthBps: number
  downtimeMs: number
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
