// One error class per condition, each with a stable code.
import type { DropReason } from '../types.js'

/** The anti-entropy exchange did not complete (dial, timeout, reset, abort). */
export class SyncFailedError extends Error {
  readonly code = 'ERR_SYNC_FAILED'
  override name = 'SyncFailedError'
}

/** The peer answered with something that is not a valid SyncResponse. */
export class InvalidSyncResponseError extends Error {
  readonly code = 'ERR_INVALID_SYNC_RESPONSE'
  override name = 'InvalidSyncResponseError'
  constructor(
    readonly reason: DropReason,
    message = `invalid sync response: ${reason}`,
  ) {
    super(message)
  }
}
