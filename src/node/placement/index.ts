// The agent's placement: the service that drives the cooperative protocol, its wire transport, config.
export {
  type DryRunEvent,
  type DryRunMove,
  type DryRunRequest,
  type DryRunResult,
  type DryRunWorld,
  dryRun,
  planIdOf,
  plannerConfig,
} from './dry-run.js'
export { PlacementConflictError, PlacementDisabledError, PlacementLookupError } from './errors.js'
export { createPlacementMetrics, type PlacementMetrics } from './metrics.js'
export {
  type AppliedPlan,
  type PlacementEventView,
  type PlacementGossip,
  PlacementService,
  type PlacementServiceInit,
  type PlacementStatus,
} from './service.js'
export {
  DEFAULT_PLACEMENT_SETTINGS,
  type PlacementRule,
  type PlacementSettings,
  placementSchema,
  placementSettings,
} from './settings.js'
export { PLACEMENT_PROTOCOL, PlacementTransport } from './transport.js'
export { constraintsOf, type LocalVm, localSnapshot } from './view.js'
