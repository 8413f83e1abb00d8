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
