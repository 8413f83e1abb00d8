// Shapes the agent shows through its API (and the CLI reads). JSON-safe: strings, numbers, arrays.
import type { Registry } from 'prom-client'
import type { VmState, WorkloadSpec } from '../vm/types.js'

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
}

export interface CreateVmRequest {
  name: string
  vcpus: number
  memoryMiB: number
  diskMiB: number
  workload?: Partial<WorkloadSpec>
}

export interface VmDigest {
  id: string
  memory: string
  disk: string
  combined: string
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
  readonly metrics: Registry
}
