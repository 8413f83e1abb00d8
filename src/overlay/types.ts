// Shapes of the overlay module: network definitions, NICs, what the API shows, what gets persisted.
import type { Mac } from './mac.js'

export interface NetworkDef {
  name: string
  /** IPv4 CIDR. */
  subnet: string
  /** Largest Ethernet payload. */
  mtu: number
  /** When it was created (0 for networks from the agent's config file). */
  createdMs: number
  /** Peer id of the creating host ('' for config networks). */
  creator: string
}

/** How a NIC is plugged into the switch beyond the driver's own way: a Linux TAP device. */
export type NicAttach = 'tap'

/** A VM's NIC on one network: static for the VM's life. */
export interface NicRecord {
  vmId: string
  network: string
  mac: Mac
  ip: string
  /** Absent: the driver's NIC (in-process for synthetic VMs, `-netdev stream` for QEMU). */
  attach?: NicAttach
}

export interface NetworkSummary {
  name: string
  subnet: string
  mtu: number
  /** NICs on it, mesh-wide. */
  members: number
  /** Hosts with members (this one included). */
  hosts: number
  createdAt?: string
}

export interface NetworkMember {
  vmId: string
  name?: string
  mac: Mac
  ip: string
  host: string
  epoch?: number
  local: boolean
}

/** An address held on this host for a VM migrating in (not committed yet). */
export interface NetworkReservation {
  vmId: string
  mac: Mac
  ip: string
  migrationId: string
}

export interface NetworkDetail extends NetworkSummary {
  vms: NetworkMember[]
  /** Addresses held here for incoming migrations (they are nobody else's meanwhile). */
  reserved: NetworkReservation[]
}

/** What survives a restart (the agent keeps it in its store). */
export interface OverlaySnapshot {
  networks: NetworkDef[]
  nics: NicRecord[]
}

export interface OverlayStore {
  load(): Promise<OverlaySnapshot | undefined>
  save(snapshot: OverlaySnapshot): Promise<void>
}

export type OverlayErrorCode = 'BAD_REQUEST' | 'NOT_FOUND' | 'NAME_TAKEN' | 'INVALID_STATE'

export class OverlayError extends Error {
  constructor(
    readonly code: OverlayErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message)
    this.name = 'OverlayError'
  }
}
