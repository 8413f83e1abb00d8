// A MigrationView (what the agent API says of a migration) for tests of the API, CLI and dashboard
// that fake an agent: a migration just offered, every counter at zero, unless `over` says otherwise.
import type { MigrationView } from '../../src/node/types.js'
import { emptyCounters } from '../../src/transfer/progress.js'

export function fakeMigrationView(over: Partial<MigrationView> = {}): MigrationView {
  return {
    id: 'mig-1',
    vmId: 'vm-1',
    direction: 'out',
    from: 'source-peer',
    to: 'destination-peer',
    mode: 'precopy',
    postcopy: false,
    phase: 'offer',
    round: 0,
    startedAt: Date.now(),
    ...emptyCounters(),
    dirtyRateMiBps: 0,
    bandwidthMiBps: 0,
    ...over,
  }
}
