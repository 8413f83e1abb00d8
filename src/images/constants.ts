// Names and limits of the image store and its wire protocols.

/** Chunk fetch, pull orders and progress between hosts (proto/images.proto). */
export const IMAGES_PROTOCOL = '/skymesh/images/1'
/** Virtual clusters: create a VM of a cluster on a host, hand it its context. */
export const VCLUSTER_PROTOCOL = '/skymesh/vcluster/1'

export const MiB = 1024 * 1024
/** Default chunk size: large enough that per-chunk costs vanish, small enough to pipeline well. */
export const DEFAULT_CHUNK_SIZE = MiB
/** Largest chunk accepted in a manifest (and so on the wire). */
export const MAX_CHUNK_SIZE = 4 * MiB
/** Most chunks in one image (64 GiB at 1 MiB chunks). */
export const MAX_CHUNKS = 65536
export const HASH_BYTES = 32
/** Largest manifest accepted: MAX_CHUNKS hashes of 32 bytes plus their field overhead, and a name. */
export const MAX_MANIFEST_BYTES = MAX_CHUNKS * (HASH_BYTES + 2) + 4096
/** Largest message on IMAGES_PROTOCOL: one chunk (or a manifest) plus framing. */
export const MAX_MESSAGE_BYTES = MAX_CHUNK_SIZE + 64 * 1024
/** Largest message on VCLUSTER_PROTOCOL. */
export const MAX_VCLUSTER_MESSAGE_BYTES = 512 * 1024
/** Most sources named in one pull order. */
export const MAX_SOURCES = 64
/** Most images a host lists in its gossiped state (src/gossip MAX_IMAGES). */
export const MAX_GOSSIPED_IMAGES = 1024
/** How long a server waits for a chunk it is itself still receiving (pipeline) before it says MISSING. */
export const DEFAULT_WAIT_MS = 20_000
/** Image names: as VM names, plus a few path-friendly characters. */
export const IMAGE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/
