// Names and limits of host-state dissemination (gossipsub topic, anti-entropy protocol).

/** gossipsub topic carrying each host's own SignedHostState. */
export const HOST_STATE_TOPIC = '/skymesh/hoststate/1'
/** Request/response anti-entropy protocol: one SyncRequest, one SyncResponse, both length-prefixed. */
export const SYNC_PROTOCOL = '/skymesh/sync/1.0.0'
/** Domain separation: a host-state signature cannot be replayed as a signature in another protocol. */
export const SIGNATURE_PREFIX = 'skymesh/hoststate:'

/** Largest encoded SignedHostState accepted (4096 VMs of ~150 bytes fit with room to spare). */
export const MAX_STATE_BYTES = 1024 * 1024
export const MAX_VMS = 4096
export const MAX_ADDRS = 8
/** Image ids a host state lists (src/images). */
export const MAX_IMAGES = 1024

export const MAX_SYNC_REQUEST_BYTES = 1024 * 1024
export const MAX_SYNC_RESPONSE_BYTES = 16 * 1024 * 1024
/** Most digests in a request, states or members in a response. */
export const MAX_SYNC_ITEMS = 16384
