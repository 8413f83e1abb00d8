// What the dashboard reads from the agent, and the shapes it sends to the browser.
import type { PlacementStatus } from '../node/placement/index.js'
import type { ClusterHost, ClusterVm, MigrationView, NodeInfo, VmRecord } from '../node/types.js'
import type { ClusterView as PlacementClusterView } from '../placement/index.js'

/** What changed in the agent: the hub recomputes only the sections that depend on it. */
export type ChangeKind = 'members' | 'hosts' | 'migrations'

/** The agent as the dashboard sees it (src/node/agent.ts implements it). */
export interface DashboardAgent {
  nodeInfo(): NodeInfo
  cluster(): { self: string; hosts: ClusterHost[] }
  clusterVms(): ClusterVm[]
  listVms(): VmRecord[]
  listMigrations(): MigrationView[]
  /** Calls `fn` on each change (membership, gossiped host state, migration progress); returns the unsubscribe. */
  watch?(fn: (what: ChangeKind) => void): () => void
}

export interface DashboardSource {
  agent: DashboardAgent
  placement?: { status(): PlacementStatus; clusterView(): PlacementClusterView }
  images?: { listImages(): unknown[]; listVclusters(): unknown[] }
  /** The overlay's networks: the addresses of every VM of the mesh on them. */
  networks?: {
    listNetworks(): { name: string }[]
    getNetwork(name: string): { vms: { vmId: string; ip: string }[] }
  }
}

/** One VM of the mesh as the VMs table shows it. */
export interface DashVm extends ClusterVm {
  /** Runs on this agent's host. */
  local: boolean
  /** Overlay addresses (known for VMs of this host). */
  ips: string[]
  /** When this agent saw it change host (ms since epoch); null if not since the dashboard started. */
  movedAt: number | null
  /** The migration this host runs for it, if any. */
  migration?: { id: string; phase: string }
}

/** A migration with what its progress bar needs. */
export interface DashMigration extends MigrationView {
  vmName: string
  /** Memory + disk of the VM (bytes); 0 when unknown. */
  vmBytes: number
  /** 0..1: bytes carried against the VM's size, 1 once done. */
  progress: number
}

/** One point of the active-hosts chart. */
export interface HistoryPoint {
  t: number
  /** Live hosts that hold at least one VM. */
  active: number
  /** The fewest hosts the VMs' demand needs (placement's lower bound). */
  lowerBound: number
  alive: number
}

export interface Snapshot {
  serverNow: number
  meta: NodeInfo
  hosts: ClusterHost[]
  vms: DashVm[]
  migrations: DashMigration[]
  placement: PlacementStatus | null
  history: HistoryPoint[]
  images: unknown[] | null
  vclusters: unknown[] | null
}

export type Section = 'meta' | 'hosts' | 'vms' | 'placement' | 'images' | 'vclusters'

/** What one SSE `delta` event carries. */
export type Delta =
  | { section: Section; data: unknown }
  | { section: 'migration'; data: DashMigration }
  | { section: 'migration-gone'; data: string }
  | { section: 'history'; data: HistoryPoint }
