// Shapes the agent shows through its API (and the CLI reads). JSON-safe: strings, numbers, arrays.
import type { Registry } from 'prom-client'
import type { MemberStatus } from '../gossip/types.js'
import type { ProbeReport, TapView } from '../overlay/service.js'
import type { NicStats } from '../overlay/synthetic-nic.js'
import type { NetworkDetail, NetworkSummary } from '../overlay/types.js'
import type { MigrationView } from '../transfer/index.js'
import type { VmState, WorkloadSpec } from '../vm/types.js'
import type { NatStatus } from './nat.js'

export interface Resources {
  vcpus: number
  memoryMiB: number
  diskMiB: number
}

export interface NodeInfo {
  peerId: string
  addrs: string[]
  version: string
  site: string
  driver: string
  /** ISO 8601. */
  startedAt: string
  capacity: Resources
  used: Resources
  vmCount: number
  /** Reachability: what AutoNAT found, how peers see this host, its relayed addresses (nat.ts). */
  nat?: NatStatus
  /** What seals the direct data channel's records here: the native AES-GCM addon or node:crypto. */
  dataChannel?: string
}

export interface PeerInfo {
  peerId: string
  /** Remote addresses of the open connections to it. */
  addrs: string[]
  direction: 'inbound' | 'outbound'
  /** From the peer's hello message, once received. */
  site?: string
  version?: string
  driver?: string
  /** Last ping round trip in ms, if measured. */
  latencyMs?: number
  /** How we reach it: `direct`, `relayed` (circuit relay, behind NAT) or `hole-punched` (DCUtR). */
  connection?: 'direct' | 'relayed' | 'hole-punched'
  /** ISO 8601: when the first open connection was established. */
  connectedAt: string
}

export interface VmRecord {
  id: string
  name: string
  vcpus: number
  memoryMiB: number
  diskMiB: number
  workload: WorkloadSpec
  state: VmState
  /** Peer id of the host that runs it. */
  host: string
  /** Location epoch: only grows; bumped by the committed end of a migration. */
  epoch: number
  /** ISO 8601. */
  createdAt: string
  updatedAt: string
  /** Set while a live migration of this VM runs (in or out). */
  migration?: { id: string; direction: 'in' | 'out'; peer: string; phase: string }
  /** Its NICs on virtual networks (overlay): MAC and IP stay the same wherever it runs. */
  nics?: { network: string; mac: string; ip: string }[]
  /** The image its disk is a copy-on-write layer over (src/images), if any. */
  image?: string
}

export interface MigrateVmRequest {
  /** Peer id of the destination host. */
  to: string
  mode?: 'precopy' | 'postcopy' | 'auto'
  downtimeMs?: number
  bandwidthMiBps?: number
  maxRounds?: number
  streams?: number
  compression?: 'auto' | 'on' | 'off'
  /** Pre-copy: slow a guest that dirties memory faster than the link carries it (default true). */
  autoConverge?: boolean
  /** Data units over a direct TLS connection when possible ('auto', default) or libp2p streams only. */
  channel?: 'auto' | 'libp2p'
}

export type { MigrationView }

export interface CreateVmRequest {
  name: string
  vcpus: number
  memoryMiB: number
  diskMiB: number
  workload?: Partial<WorkloadSpec>
  /** Virtual networks to attach the VM to (one NIC each). */
  networks?: string[]
  /** 'tap': its NICs are Linux TAP devices made by the agent (synthetic driver; root, socat). */
  nicAttach?: 'tap'
  /** Image id (or unique prefix/name) whose content the disk starts with, copy-on-write (synthetic driver). */
  image?: string
  /** qemu driver: guest settings, `skymesh.KEY=VALUE` on the kernel command line (e.g. connect: 'ip:port'). */
  guestArgs?: Record<string, string>
}

export interface VmDigest {
  id: string
  memory: string
  disk: string
  combined: string
}

/** One host of the mesh as this agent sees it (membership + its last gossiped state). */
export interface ClusterHost {
  peerId: string
  self: boolean
  /** From failure detection; `unknown` for a host whose state we have but who is not a member yet. */
  status: MemberStatus | 'unknown'
  incarnation?: number
  /** ISO 8601: when its status last changed here. */
  statusSince?: string
  site: string
  addrs: string[]
  capacity?: Resources
  used?: Resources
  cpuLoad?: number
  vmCount: number
  /** Version of its last state we accepted. */
  stateVersion?: number
  /** When that state was published, by the host's clock (ms since epoch). */
  stateTimestampMs?: number
  /** When we accepted it, by our clock (ms since epoch), and how long ago that was. */
  receivedAtMs?: number
  receivedAgoMs?: number
  agentVersion?: string
}

export interface ClusterView {
  self: string
  hosts: ClusterHost[]
  /** Members by status. */
  counts: Record<MemberStatus, number>
}

/** Where a VM of the mesh runs, as gossip tells it. */
export interface ClusterVm {
  id: string
  name: string
  host: string
  site?: string
  epoch: number
  /** `host-lost` when its host was declared dead, `host-left` after a graceful leave. */
  status: 'ok' | 'host-lost' | 'host-left'
  state: string
  vcpus: number
  memoryMiB: number
  diskMiB: number
  cpu: number
  dirtyMiBps: number
}

/** What the HTTP API needs from the agent; `Agent` implements it. */
export interface AgentService {
  nodeInfo(): NodeInfo
  peers(): PeerInfo[]
  listVms(): VmRecord[]
  /** Throws AgentError VM_NOT_FOUND. */
  getVm(id: string): VmRecord
  /** Throws AgentError NAME_TAKEN / INSUFFICIENT_CAPACITY; on error nothing changed. */
  createVm(req: CreateVmRequest): Promise<VmRecord>
  /** Throws AgentError VM_NOT_FOUND. */
  deleteVm(id: string): Promise<void>
  pauseVm(id: string): Promise<VmRecord>
  resumeVm(id: string): Promise<VmRecord>
  /** Throws AgentError VM_NOT_FOUND / INVALID_STATE (a crashed VM has no memory). */
  vmDigest(id: string): Promise<VmDigest>
  /** Starts a live migration (202); throws VM_NOT_FOUND, BAD_REQUEST (unknown host), INVALID_STATE. */
  migrateVm(id: string, req: MigrateVmRequest): MigrationView
  listMigrations(): MigrationView[]
  /** Throws NOT_FOUND. */
  getMigration(id: string): MigrationView
  /** Cancels before the handover; throws NOT_FOUND or INVALID_STATE (too late). */
  cancelMigration(id: string): MigrationView
  /** Every host of the mesh. */
  cluster(): ClusterView
  /** Every VM of the mesh with its host and epoch. */
  clusterVms(): ClusterVm[]
  /** One VM of the mesh by id (or unique name). Throws AgentError VM_NOT_FOUND. */
  where(idOrName: string): ClusterVm
  /** Sites, hosts per site, measured latency/bandwidth between them (GET /v1/sites). */
  sites?(): import('./sites.js').SitesView
  /** Calls `fn` when membership, a host's gossiped state or a migration changes (the dashboard's feed). */
  watch?(fn: (what: 'members' | 'hosts' | 'migrations') => void): () => void
  readonly metrics: Registry
}

// ---------------------------------------------------------------- overlay (virtual networks)

export type { NetworkDetail, NetworkMember, NetworkSummary } from '../overlay/types.js'

export interface CreateNetworkRequest {
  name: string
  subnet: string
  mtu?: number
}

/** A NIC of a local VM with its synthetic endpoint's counters. */
export interface VmNicView {
  vmId: string
  network: string
  mac: string
  ip: string
  stats?: NicStats
  /** A NIC attached as a TAP device: its interface name and helper state. */
  tap?: TapView
  /** For a VM that arrived by migration: ms from its arrival here to the first frame it received. */
  firstFrameAfterArrivalMs?: number
}

/** `POST /v1/vms/:id/ping`: ICMP echoes from the VM's synthetic NIC (a test and diagnosis hook). */
export interface PingRequest {
  ip: string
  network?: string
  count?: number
  intervalMs?: number
  timeoutMs?: number
  size?: number
}

/** What a ping from a VM saw: the overlay's probe report, as the API returns it. */
export type PingReport = ProbeReport

/** What the network routes need; `Agent` implements it. */
export interface NetworkApi {
  listNetworks(): NetworkSummary[]
  /** Throws BAD_REQUEST (bad name/subnet/mtu) or NAME_TAKEN. */
  createNetwork(req: CreateNetworkRequest): NetworkSummary
  /** Throws NOT_FOUND. */
  getNetwork(name: string): NetworkDetail
  vmNics(id: string): VmNicView[]
  pingFromVm(id: string, req: PingRequest): Promise<PingReport>
  /** What the metadata service (169.254.169.254) answers the VM; optional for test doubles. */
  vmMetadataOf?(id: string): Promise<import('../overlay/metadata.js').VmMetadata>
}
