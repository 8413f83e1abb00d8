// Transfer: live migration (pre-copy, post-copy, auto) of memory pages and disk blocks over libp2p
// streams. Knows VMs only through the driver interface of src/vm. See README.md.
export { CONTROL_PROTOCOL, DATA_PROTOCOL, DEFAULTS, STATUS_PROTOCOL } from './constants.js'
export type { DirectInit } from './direct.js'
// The sealed direct channel, also the chunk data path of images (src/images/direct.ts).
export {
  connectDirect,
  DIRECT_CIPHERS,
  type DirectChannelOptions,
  type DirectGrant,
  DirectListener,
  directHostOf,
} from './direct.js'
export {
  CancelledError,
  HandoverInDoubtError,
  LinkError,
  MigrationError,
  type MigrationErrorCode,
  MigrationRefusedError,
  ProtocolError,
  type RefusalCode,
  VerifyFailedError,
} from './errors.js'
export { copyNetworkDef, MAX_OFFER_NICS, offeredNics } from './nics.js'
export type {
  ChannelChoice,
  CompressionChoice,
  DedupChoice,
  MigrateOptions,
  ResolvedOptions,
} from './options.js'
export { decideNextRound, estimateEtaMs, type Mode, shouldCompress } from './policy.js'
export { type MigrationView, type Phase, TERMINAL_PHASES } from './progress.js'
// Skymesh's own TCP hole punch for that channel between two NATed hosts.
export {
  askObserved,
  decodeObserved,
  decodeOffer,
  encodeObserved,
  encodeOffer,
  MAX_PUNCH_STREAMS,
  newPunchSecret,
  OBSERVED_PROTOCOL,
  observedFrom,
  PUNCH_TIMEOUT_MS,
  type PunchEndpoint,
  PunchError,
  type PunchInvite,
  pickPunchPort,
  pickPunchPorts,
  punchAll,
  punchChannels,
  punchDirect,
  punchPorts,
  punchTcp,
  sealPunched,
  withPorts,
} from './punch.js'
export { describeSealedEngine, type RecordEngine } from './record-cipher.js'
export { SEALED_CIPHER, SealedFramed, type SealedOptions } from './sealed.js'
export {
  type BulkLink,
  type BulkLinkAdvisor,
  type MigrationEvents,
  MigrationService,
  type MigrationServiceInit,
  migrationService,
} from './service.js'
export type { Outcome } from './status.js'
export type {
  DestinationHooks,
  IncomingOffer,
  LocalVm,
  MigrationComponents,
  MigrationHost,
  MigrationNetworkDef,
  MigrationNic,
  Reservation,
  SourceHooks,
  TransferTimeouts,
} from './types.js'
