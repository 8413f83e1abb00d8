// Protocol ids, wire limits and defaults of the migration engine.

export const CONTROL_PROTOCOL = '/skymesh/migrate/1.0.0'
export const DATA_PROTOCOL = '/skymesh/migrate/data/1.0.0'
export const STATUS_PROTOCOL = '/skymesh/migrate/status/1.0.0'

/** Largest control message (the post-copy pending bitmap of a 32 GiB VM is 1 MiB: bounded by that). */
export const MAX_CONTROL_BYTES = 1024 * 1024 + 4096
export const MAX_STATUS_BYTES = 1024
/** Most units (pages or blocks) whose bytes one frame carries: 1 MiB of pages or 16 blocks. */
export const FRAME_PAYLOAD_BYTES = 1024 * 1024
/** Most runs in one frame. */
export const MAX_RUNS = 1024
/** Largest encoded data frame accepted (payload + runs + hashes + framing). */
export const MAX_FRAME_BYTES = FRAME_PAYLOAD_BYTES + 512 * 1024
/** Most units one frame may describe (zero runs are cheap, so this bounds the work one frame asks). */
export const MAX_FRAME_UNITS = 1 << 20
/** Bytes of content hash carried per unit in DATA (registration) and REF runs. */
export const HASH_BYTES = 16
/** Hashes one stream's dedup table holds (both ends stop registering past it). */
export const MAX_DEDUP_ENTRIES = 1 << 20
/** Content hashes in one content query (512 KiB). */
export const MAX_QUERY_HASHES = 32768
/** Bytes of non-zero pages of departed VMs a host keeps as a dedup source (ContentStore). */
export const DEFAULT_RETAIN_BYTES = 1024 * 1024 * 1024
/** Pages asked in one fetch message (post-copy). */
export const MAX_FETCH_PAGES = 4096
/** Longest ids we accept from a peer. */
export const MAX_ID_LENGTH = 64
export const MAX_DATA_STREAMS = 16

export const DEFAULTS = {
  mode: 'precopy' as const,
  downtimeMs: 50,
  maxRounds: 30,
  streams: 3,
  compression: 'auto' as const,
  dedup: 'auto' as const,
  maxOutgoing: 2,
  maxIncoming: 2,
  /** Unacknowledged bytes in flight per data stream. */
  windowBytes: 8 * 1024 * 1024,
  /** A step of the protocol (offer answer, verify, running) may take this long. */
  stepTimeoutMs: 30_000,
  /** No acknowledged progress on the data streams for this long fails the migration. */
  stallTimeoutMs: 30_000,
  /** Total time the source keeps asking a silent destination whether it committed. */
  statusTimeoutMs: 60_000,
  /** Dial timeout (a pnet dial without the key hangs otherwise). */
  dialTimeoutMs: 10_000,
}

/** The most unacknowledged bytes a source keeps in flight per data stream (the destination buffers it). */
export const MAX_WINDOW_BYTES = 8 * 1024 * 1024
/** Read buffer of a destination data stream: the window plus a frame and its framing. */
export const DATA_READ_BUFFER = MAX_WINDOW_BYTES + 2 * (1024 * 1024 + 512 * 1024)
/**
 * Pre-copy stops when the predicted pause fits this share of the downtime target: the last round
 * measured 40–57 ms when the prediction said it fit 50 ms (acks of the stop-copy round, the switchover
 * round trip and scheduling on a loaded host are what the fit underrates).
 */
export const STOP_AIM = 0.5
