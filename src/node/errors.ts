// Errors that cross the API carry a stable `code` and the HTTP status that reports them.

export type AgentErrorCode =
  | 'BAD_REQUEST'
  | 'UNAUTHORIZED'
  | 'NOT_FOUND'
  | 'VM_NOT_FOUND'
  | 'NAME_TAKEN'
  | 'INSUFFICIENT_CAPACITY'
  | 'INVALID_STATE'
  | 'NOT_RUNNING'
  | 'INTERNAL'

const STATUS: Record<AgentErrorCode, number> = {
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  VM_NOT_FOUND: 404,
  NAME_TAKEN: 409,
  INSUFFICIENT_CAPACITY: 409,
  INVALID_STATE: 409,
  NOT_RUNNING: 503,
  INTERNAL: 500,
}

export class AgentError extends Error {
  readonly status: number
  constructor(
    readonly code: AgentErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message)
    this.name = 'AgentError'
    this.status = STATUS[code]
  }
}

/** A configuration that cannot be used; `issues` name each bad key (`api`, `listen[1]`, ...). */
export class ConfigError extends Error {
  constructor(
    message: string,
    readonly issues: string[] = [],
  ) {
    super(message)
    this.name = 'ConfigError'
  }
}
