// The web dashboard: a live view of the mesh served by every agent's API server (src/dashboard/static
// is the page; routes.ts the HTTP side; hub.ts the event stream).

export { rewriteBareImports } from './assets.js'
export { DashboardHub, type HubInit, type SseSink, TooManyClientsError } from './hub.js'
export { DASHBOARD_HEADER, type Dashboard, type DashboardInit, dashboardRoutes } from './routes.js'
export { Sessions } from './sessions.js'
export type {
  ChangeKind,
  DashboardAgent,
  DashboardSource,
  DashMigration,
  DashVm,
  Delta,
  HistoryPoint,
  Snapshot,
} from './types.js'
