// The narrow components the migration service needs, and the agent's hooks.
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from 'pino'
import type { VmDriver, VmInstance, VmSpec } from '../vm/index.js'
import type { RefusalCode } from './errors.js'
import type { MigrationView } from './progress.js'

/** The slice of the libp2p host the engine uses. */
export type MigrationHost = Pick<Libp2p, 'peerId' | 'handle' | 'unhandle' | 'dialProtocol'> &
  /** The source reads the address of its direct connection to the destination (direct data channel). */
  Partial<Pick<Libp2p, 'getConnections'>>

export type { Connection, PeerId, Stream }

/** A VM this host runs, as the agent knows it. */
export interface LocalVm {
  instance: VmInstance
  spec: VmSpec
  /** Its location epoch (bumped by each committed migration). */
  epoch: number
}

/** What the destination is asked to take. */
export interface IncomingOffer {
  migrationId: string
  from: string
  spec: VmSpec
  epoch: number
  /** The VM's overlay NICs as the source lists them (unchecked: the agent validates them). */
  nics?: MigrationNic[]
}

/** A VM's overlay NIC, as it travels in an offer (the transfer engine only carries it). */
export interface MigrationNic {
  network: string
  mac: string
  ip: string
  /** '' or absent: the driver's NIC; 'tap': a TAP device. */
  attach?: string
  /** Its network's definition at the source (unchecked): a destination may join the network by it. */
  networkDef?: MigrationNetworkDef
}

/** A network's definition as an offer carries it (src/overlay NetworkDef without the name). */
export interface MigrationNetworkDef {
  subnet: string
  mtu: number
  createdMs: number
  creator: string
}

export type Reservation =
  | { ok: true; id?: string; release(): void }
  | { ok: false; code: RefusalCode; message: string }

export interface SourceHooks {
  /** Source, when it makes the offer: the VM's overlay NICs, so they travel with the migration. */
  nicsOf?(vmId: string): readonly MigrationNic[]
  /**
   * Source, after the destination verified its copy and before COMMIT is sent: journal "handover of
   * VM to peer, new epoch" so a restarted agent asks the destination instead of resuming. If it
   * throws, COMMIT is not sent and the VM resumes here.
   */
  onHandover?(m: MigrationView, opts: { signal: AbortSignal }): Promise<void>
  /**
   * Source, once the destination confirmed RUNNING (post-copy: once it has every page): destroy the
   * local copy and drop its record. Default: `instance.destroy()`.
   */
  onReleased?(m: MigrationView, instance: VmInstance): Promise<void>
  /** Source, after a failure before COMMIT: the VM runs here again (resumed if it was paused). */
  onAborted?(m: MigrationView): Promise<void>
  /**
   * Source, after COMMIT with no way to know or finish (no answer within the bound, or a post-copy
   * whose stream broke): the VM stays paused here; the agent resolves it later (`queryStatus`).
   */
  onInDoubt?(m: MigrationView): Promise<void>
}

export interface DestinationHooks {
  /**
   * Destination, capacity check and reservation for an offer (the agent's). Released when the
   * migration fails, or after `onCommit` (the agent accounts the VM itself from then on).
   */
  reserve?(offer: IncomingOffer, opts: { signal: AbortSignal }): Promise<Reservation>
  /**
   * Destination, on COMMIT, before the VM is resumed: register the VM with `newEpoch` and journal it.
   * If it throws, the destination answers ABORT, discards its copy, and the source resumes the VM.
   */
  onCommit?(
    m: MigrationView,
    instance: VmInstance,
    newEpoch: number,
    opts: { signal: AbortSignal },
  ): Promise<void>
  /**
   * Destination, answering a status query for a migration this process does not remember (e.g. after
   * a restart): 'committed' if the journal has it, else undefined (= it did not commit here).
   */
  lookupOutcome?(migrationId: string): Promise<'committed' | 'aborted' | undefined>
  /**
   * Destination, an offer whose disk is a copy-on-write layer over a content-addressed image: make the
   * image complete here (fetching it from the mesh by its id if needed) and say true — the VM's disk is
   * then a layer over it and only the source's layer crosses the wire — or false for a full copy.
   * `from`: the source, which holds the image even when gossip does not say so yet.
   */
  ensureBaseImage?(imageId: string, opts: { signal: AbortSignal; from?: string }): Promise<boolean>
}

export interface TransferTimeouts {
  dialTimeoutMs: number
  stepTimeoutMs: number
  stallTimeoutMs: number
  statusTimeoutMs: number
  windowBytes: number
}

export interface MigrationComponents {
  host: MigrationHost
  logger: Logger
  /** Creates incoming (paused, empty) VMs on the destination. */
  driver: VmDriver
  /** Directory for an incoming VM. */
  vmDir(vmId: string): string
  /** Source: the VM to migrate; destination: refuses an offer for a VM it already holds. */
  lookupVm(vmId: string): LocalVm | undefined
  hooks?: SourceHooks & DestinationHooks
}
