// Migration errors: one class per condition, each with a stable `code` that crosses the wire and the API.

export type RefusalCode =
  | 'UNKNOWN_VM'
  | 'NO_CAPACITY'
  | 'ALREADY_MIGRATING'
  | 'BUSY'
  | 'BAD_OFFER'
  | 'VM_EXISTS'
  | 'STOPPING'
  | 'REFUSED'

export type MigrationErrorCode =
  | RefusalCode
  | 'PROTOCOL'
  | 'LINK'
  | 'TIMEOUT'
  | 'VERIFY_FAILED'
  | 'CANCELLED'
  | 'TOO_LATE'
  | 'HANDOVER_IN_DOUBT'
  | 'POSTCOPY_LOST'
  | 'VM_FAILED'
  | 'UNKNOWN_MIGRATION'
  | 'INTERNAL'

export class MigrationError extends Error {
  override name = 'MigrationError'
  constructor(
    readonly code: MigrationErrorCode,
    message: string,
  ) {
    super(message)
  }
}

/** The migration was refused (by this host before it started, or by the destination). */
export class MigrationRefusedError extends MigrationError {
  override name = 'MigrationRefusedError'
  constructor(
    override readonly code: RefusalCode,
    message: string,
  ) {
    super(code, message)
  }
}

/** A peer sent bytes that are not a valid message of the protocol at this point (garbage, truncation). */
export class ProtocolError extends MigrationError {
  override name = 'ProtocolError'
  constructor(message: string) {
    super('PROTOCOL', message)
  }
}

/** The link (a stream or the connection) failed or stalled. */
export class LinkError extends MigrationError {
  override name = 'LinkError'
  constructor(message: string) {
    super('LINK', message)
  }
}

/** The destination's copy does not have the source's digest. */
export class VerifyFailedError extends MigrationError {
  override name = 'VerifyFailedError'
  constructor(message: string) {
    super('VERIFY_FAILED', message)
  }
}

/** `cancel(id)` (or the service stopping) ended the migration before the handover. */
export class CancelledError extends MigrationError {
  override name = 'CancelledError'
  constructor(message = 'migration cancelled') {
    super('CANCELLED', message)
  }
}

/**
 * COMMIT was sent but neither RUNNING nor a status answer came back within the bound: the VM stays
 * paused at the source (resuming could make two running copies); the agent resolves it later with
 * `queryStatus`.
 */
export class HandoverInDoubtError extends MigrationError {
  override name = 'HandoverInDoubtError'
  constructor(message: string) {
    super('HANDOVER_IN_DOUBT', message)
  }
}

/** Wraps anything thrown into a MigrationError, keeping a MigrationError as it is. */
export function asMigrationError(err: unknown, fallback: MigrationErrorCode = 'INTERNAL'): MigrationError {
  if (err instanceof MigrationError) return err
  // libp2p v3 streams fail with Events (StreamAbortEvent, StreamResetEvent...) that carry the error
  if (typeof Event !== 'undefined' && err instanceof Event) {
    const inner = (err as Event & { error?: unknown }).error
    if (inner !== undefined && inner !== err) return asMigrationError(inner, fallback)
    return new LinkError(`stream ${err.type}`)
  }
  const msg = err instanceof Error ? err.message : String(err)
  const name = err instanceof Error ? err.name : ''
  if (name === 'AbortError' || name === 'TimeoutError') return new MigrationError('TIMEOUT', msg)
  if (/reset|closed|EOF|ECONNRESET|aborted|StreamState|Stream/i.test(`${name} ${msg}`)) {
    return new LinkError(msg)
  }
  return new MigrationError(fallback, msg)
}
