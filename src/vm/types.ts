// The VM driver interface: everything outside src/vm knows VMs only through these types.
// The transfer engine (migration) reads and writes guest memory pages and disk blocks through
// `VmMemory` / `VmDisk`, pauses and resumes through `VmInstance`, and checks a copy with `digest()`.

export const PAGE_SIZE = 4096
/** Disk block size for dirty tracking and transfer (the size of a qcow2 cluster). */
export const BLOCK_SIZE = 65536

export interface WorkloadSpec {
  /** Memory the guest dirties per second, in MiB (spread over its hot set). */
  dirtyMiBps: number
  /** Size of the set of pages the workload writes to, in MiB (capped at the VM's memory). */
  hotSetMiB: number
  /** Share of one CPU the workload uses, 0..vcpus (real work: it hashes its hot pages). */
  cpu: number
  /** Disk the guest writes per second, in MiB, to a hot set of blocks. */
  diskWriteMiBps: number
}

export interface VmSpec {
  id: string
  name: string
  vcpus: number
  memoryMiB: number
  diskMiB: number
  workload: WorkloadSpec
}

/**
 * Lifecycle: running <-> paused; running|paused -> suspended (state saved to disk, memory freed)
 * -> running (restored); any -> stopped (destroyed). `crashed` is set by the agent for a VM that
 * was running when the agent died (its memory is gone).
 */
export type VmState = 'running' | 'paused' | 'suspended' | 'stopped' | 'crashed'

export interface VmStats {
  state: VmState
  /** CPU share actually used over the last second. */
  cpu: number
  /** MiB/s of memory dirtied over the last second. */
  dirtyMiBps: number
  /** MiB/s written to disk over the last second. */
  diskWriteMiBps: number
  /** Total pages written by the workload since start (monotonic). */
  pagesWritten: number
  blocksWritten: number
}

/** A fixed-size bitmap: one bit per page or block. */
export interface DirtyBitmap {
  readonly size: number
  get(i: number): boolean
  set(i: number): void
  count(): number
  /** Indices of the set bits, ascending. */
  indices(): Generator<number>
}

export interface VmMemory {
  readonly pageSize: number
  readonly pageCount: number
  /** A copy of page `i` (pageSize bytes). */
  readPage(i: number): Uint8Array
  /** Copies page `i` into `target` at `offset` (no allocation). */
  readPageInto(i: number, target: Uint8Array, offset: number): void
  /** Overwrites page `i` (used by a migration destination). Does not mark it dirty. */
  writePage(i: number, data: Uint8Array): void
  /** True if page `i` is all zeroes (cheap to skip on the wire). */
  isZeroPage(i: number): boolean
  /**
   * Optional: a superset of the non-zero pages, ascending (e.g. the pages ever written), so a full
   * pass can skip memory known to be zero without looking at each page.
   */
  maybeNonZeroPages?(): Iterable<number>
  /**
   * sha256 of page `i` (32 bytes), or null if it is all zeroes. Cached until the page is written, so
   * hashing pages as they are sent makes the digest at the end of a migration cheap.
   */
  pageHash(i: number): Uint8Array | null
  /** Starts dirty tracking (all pages clean) — idempotent. */
  startDirtyTracking(): void
  /** Returns the pages dirtied since the last call (or since tracking started) and clears them. */
  takeDirtyPages(): DirtyBitmap
  /**
   * Optional: true if page `i` was dirtied since the last `takeDirtyPages()` (a copier skips such a
   * page in this round: the next one sends it anyway).
   */
  isDirty?(i: number): boolean
  stopDirtyTracking(): void
  /**
   * Optional: the memory as it is now, kept readable after the VM is stopped. Call only on a paused VM
   * that will not run again (e.g. released after a migration).
   */
  retain?(): RetainedMemory
}

/** Memory kept after its VM is gone (a migration source keeps it as a dedup source). Read-only. */
export interface RetainedMemory {
  readonly pageSize: number
  readonly pageCount: number
  /** The non-zero pages, ascending. */
  nonZeroPages(): number[]
  /** sha256 of page `i`, or null if it is zero. */
  pageHash(i: number): Uint8Array | null
  /** A read-only view of page `i`. */
  page(i: number): Uint8Array
}

export interface VmDisk {
  readonly blockSize: number
  readonly blockCount: number
  readBlock(i: number): Promise<Uint8Array>
  writeBlock(i: number, data: Uint8Array): Promise<void>
  /**
   * Optional: consecutive blocks from `first` (`data` is a whole number of blocks), as `writeBlock` of
   * each would, in fewer I/O calls (a copier receiving runs of blocks uses it when present).
   */
  writeBlocks?(first: number, data: Uint8Array): Promise<void>
  /** Blocks that were ever written (everything else reads as zeroes). */
  allocatedBlocks(): DirtyBitmap
  /** sha256 of block `i` (32 bytes), or null if it is all zeroes; cached until the block is written. */
  blockHash(i: number): Promise<Uint8Array | null>
  /**
   * Block `i` and the sha256 of exactly those bytes (null if all zeroes). Reading and hashing apart
   * can pair new bytes with an old hash when the guest writes in between; a copier that keys
   * deduplication by hash must use this. `into` (a block-sized buffer, optional): where the bytes may
   * be read, so a copier can reuse a few buffers instead of allocating one per block.
   */
  readBlockHashed(i: number, into?: Uint8Array): Promise<{ data: Uint8Array; hash: Uint8Array | null }>
  /** The disk part of `VmInstance.digest()`. Pause the VM first. */
  digest(): Promise<string>
  /**
   * Optional: the disk is a copy-on-write layer over this content-addressed base image (src/images);
   * a migration to a host that holds the image sends only `ownBlocks()`.
   */
  readonly baseImage?: { id: string; size: number }
  /** Optional, with `baseImage`: the blocks of the VM's own layer (all others read from the base). */
  ownBlocks?(): DirtyBitmap
  startDirtyTracking(): void
  takeDirtyBlocks(): DirtyBitmap
  stopDirtyTracking(): void
}

/** What a driver's instances can do beyond the lifecycle (absent: the synthetic driver's defaults). */
export interface VmCapabilities {
  /** VmMemory / VmDisk / digest() work: the transfer engine can copy pages and blocks. */
  pageAccess: boolean
  /** How the VM migrates: 'pages' = the transfer engine, 'qemu-stream' = QEMU's own migration stream. */
  migration: 'pages' | 'qemu-stream'
}

export interface VmInstance {
  readonly spec: VmSpec
  /** Optional: absent means { pageAccess: true, migration: 'pages' }. */
  readonly capabilities?: VmCapabilities
  readonly state: VmState
  /** A real guest NIC's unix socket (QEMU `-netdev stream`) for the overlay switch to connect to. */
  readonly nicSocket?: string | undefined
  readonly memory: VmMemory
  readonly disk: VmDisk
  pause(): Promise<void>
  resume(): Promise<void>
  /** Saves memory and disk state into the VM's directory and frees its memory. */
  suspend(): Promise<void>
  /** Stops the VM for good (its directory stays until `destroy`). */
  stop(): Promise<void>
  /** Stops the VM and removes its directory. */
  destroy(): Promise<void>
  /**
   * sha256 (hex) over memory and over disk contents, a pure function of the bytes: a two-level tree
   * over sha256(unit) of every non-zero page/block with its index, in groups of 1024 units (exact
   * format in src/vm/synthetic/hash-cache.ts); zero units add nothing;
   * `combined` = sha256(memory digest || disk digest). Unit hashes may be cached as units are written,
   * so it costs only what changed since the last call. Pause the VM first for a value that does not move.
   */
  digest(): Promise<{ memory: string; disk: string; combined: string }>
  /**
   * Optional, cheap and synchronous: brings the cached part of the digest up to date with the units
   * hashed so far, so that the next `digest()` costs only what is written after this call (a migration
   * calls it between rounds and as pages arrive, keeping the tree's work out of its pause).
   */
  warmDigest?(): void
  stats(): VmStats
  /**
   * Optional: holds back `fraction` (0..0.99) of the guest's execution, so it dirties memory that much
   * slower (a migration's auto-converge, as QEMU's cpu-throttle); 0 lifts it.
   */
  throttle?(fraction: number): void
  /** Called with the new state whenever it changes (e.g. a guest that crashes). */
  onStateChange(listener: (state: VmState) => void): () => void
}

export interface CreateVmOptions {
  /** Directory owned by this VM: its disk and suspend image live here. */
  dir: string
  /** Seed for the workload's page choice and content, so runs are reproducible. */
  seed?: number
  /** MAC of the VM's first overlay NIC, for drivers whose guests have a real NIC. */
  mac?: string
  /** The guest's IPv4 with prefix on that network (e.g. 10.42.0.5/24). */
  ip?: string
  /**
   * prepareIncoming only: the disk starts as an empty copy-on-write layer over this base image (an id
   * the driver resolves on this host), so a migration sends only the source's layer.
   */
  baseImage?: string
  /** Settings for a real guest (the qemu driver: `skymesh.KEY=VALUE` on its kernel command line). */
  guestArgs?: Record<string, string>
}

export interface VmDriver {
  readonly name: string
  /** Creates and starts a VM with zeroed memory and an empty disk. */
  create(spec: VmSpec, opts: CreateVmOptions): Promise<VmInstance>
  /** Restores a VM suspended by `suspend()` in `opts.dir`; it runs again with the same digest. */
  restore(spec: VmSpec, opts: CreateVmOptions): Promise<VmInstance>
  /**
   * Creates a VM that is paused and empty, for a migration destination to fill page by page; the
   * caller resumes it after the handover.
   */
  prepareIncoming(spec: VmSpec, opts: CreateVmOptions): Promise<VmInstance>
  /** True if `dir` holds a complete suspend image. */
  hasSuspendImage(dir: string): Promise<boolean>
  /**
   * Drivers whose guests outlive the agent (qemu): the guest a previous agent left running in
   * `opts.dir`, re-attached; undefined if it is not running any more.
   */
  attach?(spec: VmSpec, opts: { dir: string }): Promise<VmInstance | undefined>
  /** The same drivers: ends a guest a previous agent left running in `dir` (before `dir` is removed). */
  discard?(dir: string): Promise<void>
  close(): Promise<void>
}

export class VmError extends Error {
  constructor(
    readonly code: 'VM_INVALID_STATE' | 'VM_NO_SUSPEND_IMAGE' | 'VM_IO' | 'VM_OUT_OF_RANGE',
    message: string,
  ) {
    super(message)
    this.name = 'VmError'
  }
}
