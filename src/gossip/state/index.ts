// Host state dissemination, the VM location table and anti-entropy: the public surface.
export {
  HOST_STATE_TOPIC,
  MAX_ADDRS,
  MAX_STATE_BYTES,
  MAX_SYNC_ITEMS,
  MAX_SYNC_REQUEST_BYTES,
  MAX_SYNC_RESPONSE_BYTES,
  MAX_VMS,
  SIGNATURE_PREFIX,
  SYNC_PROTOCOL,
} from './constants.js'
export { toHostStateMessage, toHostStateView } from './convert.js'
export {
  encodeSignedHostState,
  type OpenedHostState,
  type OpenOptions,
  type OpenResult,
  openHostState,
  signHostState,
} from './envelope.js'
export { InvalidSyncResponseError, SyncFailedError } from './errors.js'
export {
  type AcceptOptions,
  type AcceptResult,
  type HostEntry,
  HostTable,
  type HostTableInit,
} from './host-table.js'
export {
  type HostMark,
  type LocationChange,
  type LocationConflict,
  LocationTable,
  type LocationTableInit,
} from './location-table.js'
export type { HostState, Member, SignedHostState } from './pb-types.js'
export { Publisher, type PublisherComponents, type PublisherInit } from './publisher.js'
export {
  type DropSource,
  type HostStateComponents,
  type HostStateEvents,
  type HostStateHost,
  type HostStateInit,
  HostStateService,
  type HostStateStats,
  type HostUpdate,
  hostState,
  type SyncOptions,
  type SyncResult,
  type UpdateSource,
} from './service.js'
export { pickSyncPeer, type SyncPeerSites } from './sync-peer.js'
export { u64 } from './u64.js'
