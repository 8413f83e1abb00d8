// Errors of the image store and of virtual clusters. Codes are the agent API's codes (the routes map
// them to HTTP statuses), plus the wire-level reason a chunk source was dropped.

export type ImagesErrorCode =
  | 'BAD_REQUEST'
  | 'NOT_FOUND'
  | 'INVALID_STATE'
  | 'INSUFFICIENT_CAPACITY'
  | 'NAME_TAKEN'

export class ImagesError extends Error {
  constructor(
    readonly code: ImagesErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message)
    this.name = 'ImagesError'
  }
}

/** A source sent a chunk whose sha256 is not the manifest's: the source is dropped. */
export class BadChunkError extends Error {
  constructor(
    readonly index: number,
    readonly source: string,
  ) {
    super(`chunk ${index} from ${source} does not match its hash`)
    this.name = 'BadChunkError'
  }
}
