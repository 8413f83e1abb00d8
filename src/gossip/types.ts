// Shared shapes of the gossip module (membership, host state, VM locations).
// JSON-safe view types are what the agent shows through its API.

export type MemberStatus = 'alive' | 'suspect' | 'dead' | 'left'

/** One member as this agent currently sees it. */
export interface MemberView {
  peerId: string
  addrs: string[]
  status: MemberStatus
  incarnation: number
  site: string
  /** ms since epoch when its status last changed here. */
  statusSince: number
  /** True for this agent itself. */
  self: boolean
}

export interface ResourcesView {
  vcpus: number
  memoryMiB: number
  diskMiB: number
}

/** What a host says about its VMs (one entry of its HostState). */
export interface VmSummaryView {
  id: string
  name: string
  vcpus: number
  memoryMiB: number
  diskMiB: number
  cpu: number
  dirtyMiBps: number
  state: string
  epoch: number
}

/** The newest verified state of one host. */
export interface HostStateView {
  peerId: string
  version: number
  site: string
  capacity: ResourcesView
  used: ResourcesView
  cpuLoad: number
  vms: VmSummaryView[]
  /** Sender's clock when published (ms since epoch). */
  timestampMs: number
  /** Our clock when we accepted it (ms since epoch). */
  receivedAtMs: number
  agentVersion: string
  addrs: string[]
  /** The overlay's announcement (encoded OverlayHostState), carried as is. */
  overlay?: Uint8Array
  /** The host's own measurements to each site (encoded SiteLinks, src/node/sites.ts), carried as is. */
  sites?: Uint8Array
  /** Ids (hex sha256) of the complete images the host holds (src/images). */
  images?: string[]
}

/** What the local agent publishes about itself (the gossip module adds peer id, version, time). */
export interface LocalHostState {
  site: string
  capacity: ResourcesView
  used: ResourcesView
  cpuLoad: number
  vms: VmSummaryView[]
  agentVersion: string
  addrs: string[]
  /** Encoded OverlayHostState (src/overlay); gossip only carries it. */
  overlay?: Uint8Array
  /** Encoded SiteLinks (src/node/sites.ts); gossip only carries it. */
  sites?: Uint8Array
  /** Ids (hex sha256) of the complete images held here (src/images); gossip only carries them. */
  images?: string[]
}

/** Where a VM runs: from the hosts' states, ordered by epoch. */
export interface VmLocation {
  vmId: string
  name: string
  host: string
  epoch: number
  /** `host-lost` when its host was declared dead; `host-left` after a graceful leave. */
  status: 'ok' | 'host-lost' | 'host-left'
  vm: VmSummaryView
}

/** Why a gossip message was dropped (a metrics label). */
export type DropReason =
  | 'malformed'
  | 'oversized'
  | 'bad-signature'
  | 'wrong-sender'
  | 'stale'
  | 'replayed'
  | 'too-many-items'
  | 'self'
