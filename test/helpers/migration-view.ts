// A MigrationView (what the agent API says of a migration) for tests of the API, CLI and dashboard
// that fake an agent: a migration just offered, every counter at zero, unless `over` says otherwise.
import type { MigrationView } from '../../src/node/types.js'

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
    bytesSent: 0,
    wireBytes: 0,
    pagesSent: 0,
    blocksSent: 0,
    zeroPages: 0,
    zeroBlocks: 0,
    dedupPages: 0,
    dedupBlocks: 0,
    frames: 0,
    compressedFrames: 0,
    faultPages: 0,
    dirtyRateMiBps: 0,
    bandwidthMiBps: 0,
    ...over,
  }
}
