// Errors of the placement service; the API maps them to 404 / 409.

export class PlacementLookupError extends Error {
  constructor(
    readonly what: 'host' | 'vm',
    message: string,
  ) {
    super(message)
    this.name = 'PlacementLookupError'
  }
}

export class PlacementDisabledError extends Error {
  constructor() {
    super('placement is disabled on this agent (config placement.enabled: false)')
    this.name = 'PlacementDisabledError'
  }
}

/** A plan that cannot run as shown (the view changed, a host is busy): the API answers 409. */
export class PlacementConflictError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'PlacementConflictError'
  }
}
