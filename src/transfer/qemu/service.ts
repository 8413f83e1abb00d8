// QEMU migrations through the mesh, plugged into the MigrationService: the service dispatches VMs
// whose driver migrates with QEMU's own stream here (capabilities.migration === 'qemu-stream') and
// shares its bookkeeping (active list, limits, outcomes for the status protocol, agent hooks).
import { randomBytes, randomUUID } from 'node:crypto'
import { createConnection, isIP, isIPv6, type Socket } from 'node:net'
import { join } from 'node:path'
import type tls from 'node:tls'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { Logger } from 'pino'
import { pb } from '../../proto/index.js'
import {
  addPskCreds,
  type BaseRef,
  exportDisk,
  findBase,
  guestArgsProblem,
  type MultifdCompression,
  QemuDriver,
  type QemuMigrateOptions,
  type QemuPskCreds,
  type QemuVm,
} from '../../vm/qemu/index.js'
import type { VmDriver, VmInstance, VmSpec } from '../../vm/types.js'
import { MAX_ID_LENGTH } from '../constants.js'
import { isOwnAddress } from '../direct.js'
import { asMigrationError, MigrationRefusedError, type RefusalCode } from '../errors.js'
import { offeredNics } from '../nics.js'
import type { ResolvedOptions } from '../options.js'
import type { MigrationView } from '../progress.js'
import type { DestinationHooks, MigrationHost, SourceHooks, TransferTimeouts } from '../types.js'
import { withTimeout } from '../wire.js'
import { checkMultifdCompression, multifdCompressionOptions } from './compression.js'
import { QemuIncomingMigration } from './destination.js'
import { pipeSockets, QemuDirectListener } from './direct-tunnel.js'
import { QemuOutgoingMigration } from './source.js'
import { QEMU_TLS_CREDS } from './tls-creds.js'
import { capStreamWindow, pipeSocketStream } from './tunnel.js'
import {
  MAX_TUNNELS,
  QEMU_CONTROL_PROTOCOL,
  QEMU_TUNNEL_PROTOCOL,
  type QemuControl,
  QemuControlChannel,
} from './wire.js'

const REFUSE_TO_PB: Record<RefusalCode, number> = {
  UNKNOWN_VM: pb.RefuseCode.UNKNOWN_VM,
  NO_CAPACITY: pb.RefuseCode.NO_CAPACITY,
  ALREADY_MIGRATING: pb.RefuseCode.ALREADY_MIGRATING,
  BUSY: pb.RefuseCode.BUSY,
  BAD_OFFER: pb.RefuseCode.BAD_OFFER,
  VM_EXISTS: pb.RefuseCode.VM_EXISTS,
  STOPPING: pb.RefuseCode.STOPPING,
  REFUSED: pb.RefuseCode.REFUSE_UNSPECIFIED,
}

/** True if `instance` migrates with QEMU's stream (not page by page). */
export function migratesWithQemu(instance: VmInstance): instance is QemuVm {
  return instance.capabilities?.migration === 'qemu-stream'
}

/** What the MigrationService shares with the QEMU path. */
export interface QemuServiceBridge {
  host: MigrationHost
  logger: Logger
  driver: VmDriver
  vmDir(vmId: string): string
  hooks: SourceHooks & DestinationHooks
  timeouts: TransferTimeouts
  signal: () => AbortSignal
  started(): boolean
  idUsed(migrationId: string): boolean
  hasVm(vmId: string): boolean
  migratingVm(vmId: string): boolean
  incomingFull(): string | undefined
  /** Counts an offer against the limits while it is being set up; returns the release. */
  holdIncoming(migrationId: string, vmId: string): () => void
  track(m: QemuOutgoingMigration | QemuIncomingMigration): void
  active(migrationId: string): unknown
  setOutcome(migrationId: string, outcome: 'committed' | 'aborted', epoch?: number): void
  emitProgress(v: MigrationView): void
  /** Direct data channel on (agent config `migration.directData`); absent: on. */
  directData?: boolean
  /** How long a source waits for a direct tunnel before it uses libp2p (default 3000 ms). */
  directConnectTimeoutMs?: number
}

export class QemuMigrations {
  readonly #b: QemuServiceBridge
  readonly #log: Logger

  constructor(bridge: QemuServiceBridge) {
    this.#b = bridge
    this.#log = bridge.logger
  }

  async start(): Promise<void> {
    const { host } = this.#b
    await host.handle(QEMU_CONTROL_PROTOCOL, (s, c) => this.#onControl(s, c), { maxInboundStreams: 16 })
    await host.handle(QEMU_TUNNEL_PROTOCOL, (s, c) => this.#onTunnel(s, c), {
      maxInboundStreams: 4 * MAX_TUNNELS,
      maxOutboundStreams: 4 * MAX_TUNNELS,
    })
  }

  async stop(): Promise<void> {
    await this.#b.host.unhandle([QEMU_CONTROL_PROTOCOL, QEMU_TUNNEL_PROTOCOL]).catch(() => undefined)
  }

  outgoing(init: {
    id: string
    to: PeerId
    instance: QemuVm
    spec: VmSpec
    epoch: number
    options: ResolvedOptions
    signal: AbortSignal
  }): QemuOutgoingMigration {
    const driver = this.#b.driver
    const qemuImg = driver instanceof QemuDriver ? driver.binaries.img : 'qemu-img'
    return new QemuOutgoingMigration({
      ...init,
      host: this.#b.host,
      hooks: this.#b.hooks,
      timeouts: this.#b.timeouts,
      logger: this.#log,
      qemuImg,
      ...(this.#b.directData !== false
        ? { direct: { connectTimeoutMs: this.#b.directConnectTimeoutMs ?? 3000 } }
        : {}),
      onChange: (v) => this.#b.emitProgress(v),
    })
  }

  async #onControl(stream: Stream, conn: Connection): Promise<void> {
    const b = this.#b
    const control = new QemuControlChannel(stream)
    const signal = b.signal()
    const from = conn.remotePeer.toString()
    const refuse = async (code: RefusalCode, message: string) => {
      this.#log.info({ code, message, from }, 'qemu migration refused')
      await control.send({ refuse: { code: REFUSE_TO_PB[code], message } }, signal).catch(() => undefined)
      await control.framed.close()
    }
    let offer: NonNullable<QemuControl['offer']>
    try {
      const m = await withTimeout(b.timeouts.stepTimeoutMs, 'offer', signal, (s) =>
        control.expect(['offer'], s),
      )
      offer = m.offer!
    } catch (err) {
      control.framed.abort(asMigrationError(err))
      return
    }
    const migrationId = offer.migrationId ?? ''
    const s = offer.spec
    if (migrationId.length === 0 || migrationId.length > MAX_ID_LENGTH)
      return refuse('BAD_OFFER', 'bad migration id')
    if (!s?.id || s.id.length > 256) return refuse('BAD_OFFER', 'bad VM id')
    const spec: VmSpec = {
      id: s.id,
      name: s.name || s.id,
      vcpus: s.vcpus ?? 1,
      memoryMiB: Number(s.memoryMib ?? 0),
      diskMiB: Number(s.diskMib ?? 0),
      workload: {
        dirtyMiBps: s.workload?.dirtyMibps ?? 0,
        hotSetMiB: s.workload?.hotSetMib ?? 0,
        cpu: s.workload?.cpu ?? 0,
        diskWriteMiBps: s.workload?.diskWriteMibps ?? 0,
      },
    }
    const epoch = Number(offer.epoch ?? 0)
    const nic = offer.nic
    const multifd = offer.multifdChannels ?? 0
    if (!Number.isSafeInteger(epoch) || epoch < 0) return refuse('BAD_OFFER', 'bad epoch')
    if (nic?.kind !== 'stream' && nic?.kind !== 'none')
      return refuse('BAD_OFFER', `unknown NIC kind ${nic?.kind}`)
    if (multifd > 16) return refuse('BAD_OFFER', `multifd channels ${multifd} > 16`)
    const compressionError = checkMultifdCompression(offer.multifdCompression ?? '', offer.multifdLevel ?? 0)
    if (compressionError) return refuse('BAD_OFFER', compressionError)
    if (multifd <= 1 && (offer.multifdCompression || 'none') !== 'none')
      return refuse('BAD_OFFER', 'multifd compression without multifd channels')
    const compression = multifdCompressionOptions({
      method: (offer.multifdCompression || 'none') as MultifdCompression,
      level: offer.multifdLevel ?? 0,
    })
    if (offer.postcopy && multifd > 1)
      return refuse('BAD_OFFER', 'post-copy with multifd: QEMU 7.2 cannot combine them (use one stream)')
    const guestArgs =
      offer.guestArgs && Object.keys(offer.guestArgs).length ? { ...offer.guestArgs } : undefined
    const argsProblem = guestArgsProblem(guestArgs)
    if (argsProblem) return refuse('BAD_OFFER', argsProblem)
    const driver = b.driver
    if (!(driver instanceof QemuDriver)) {
      return refuse('BAD_OFFER', `this host runs the ${driver.name} driver, not qemu`)
    }
    if (!b.started()) return refuse('STOPPING', 'the migration service is stopping')
    if (b.idUsed(migrationId)) return refuse('BAD_OFFER', `migration id ${migrationId} was used before`)
    if (b.hasVm(spec.id)) return refuse('VM_EXISTS', `VM ${spec.id} already runs on this host`)
    if (b.migratingVm(spec.id)) return refuse('ALREADY_MIGRATING', `VM ${spec.id} is already migrating here`)
    const full = b.incomingFull()
    if (full) return refuse('BUSY', full)
    const unhold = b.holdIncoming(migrationId, spec.id)
    let release: () => void = () => undefined
    let instance: QemuVm | undefined
    try {
      const r = b.hooks.reserve
        ? await b.hooks.reserve({ migrationId, from, spec, epoch, nics: offeredNics(s) }, { signal })
        : { ok: true as const, release: () => undefined }
      if (!r.ok) return await refuse(r.code, r.message)
      release = () => r.release()
      const ref: BaseRef = offer.base?.imageId
        ? { imageId: offer.base.imageId }
        : offer.base?.sha256
          ? { sha256: offer.base.sha256 }
          : { blankMiB: offer.base?.blankMib ?? 0 }
      let baseImage: string | undefined
      try {
        baseImage = await findBase(driver.binaries.img, driver.imageStore, ref)
      } catch (err) {
        release()
        return await refuse('BAD_OFFER', `base image: ${(err as Error).message}`)
      }
      if (!baseImage && 'imageId' in ref) {
        // A mesh image: fetched by id from its holders (the source holds it) before accepting
        try {
          baseImage = await withTimeout(b.timeouts.stepTimeoutMs, 'base image fetch', signal, (s) =>
            driver.imageBase(ref.imageId, s, from),
          )
        } catch (err) {
          release()
          return await refuse(
            'NO_CAPACITY',
            `base image ${ref.imageId.slice(0, 12)} could not be fetched from the mesh: ${(err as Error).message}`,
          )
        }
      }
      if (!baseImage) {
        release()
        const name = 'sha256' in ref ? `sha256:${ref.sha256}` : 'blank'
        return await refuse(
          'NO_CAPACITY',
          `base image ${name} is not on this host (an imported base is not fetched over the mesh: add it as a mesh image)`,
        )
      }
      try {
        instance = await driver.prepareIncoming(spec, {
          dir: b.vmDir(spec.id),
          baseImage,
          nic: nic.kind as 'stream' | 'none',
          ...(nic.mac ? { mac: nic.mac } : {}),
          ...(nic.ip ? { ip: nic.ip } : {}),
          ...(nic.gateway ? { gateway: nic.gateway } : {}),
          ...(nic.echoPort ? { echoPort: nic.echoPort } : {}),
          ...(guestArgs ? { guestArgs } : {}),
        })
        const nbdPath = join(instance.paths.sockets, 'nbd-in.sock')
        await exportDisk(instance, nbdPath)
        // The migration stream: QEMU's own TLS-PSK straight from the source QEMU when both can,
        // else a unix socket the tunnels feed
        const qemuTls =
          offer.qemuTls && offer.directHost && b.directData !== false
            ? await this.#listenQemuTls(instance, offer.directHost, multifd || 1, offer, compression)
            : undefined
        const unixPath = join(instance.paths.sockets, 'mig-in.sock')
        const migrationPath = qemuTls ? '' : unixPath
        // Post-copy needs userfaultfd here (QEMU checks it when the capability is set): required
        // (mode postcopy) it refuses with QEMU's reason, optional (auto) it falls back to pre-copy
        let postcopy = qemuTls ? qemuTls.postcopy : offer.postcopy === true || offer.postcopyOptional === true
        if (!qemuTls) {
          try {
            await instance.migrateIncoming(`unix:${unixPath}`, {
              multifdChannels: multifd || 1,
              ...compression,
              postcopy,
            })
          } catch (err) {
            if (!postcopy || offer.postcopy) throw err
            this.#log.info({ err: (err as Error).message }, 'no post-copy on this host; pre-copy only')
            postcopy = false
            await instance.migrateIncoming(`unix:${unixPath}`, {
              multifdChannels: multifd || 1,
              ...compression,
              postcopy,
            })
          }
        }
        const reservationId = randomUUID()
        const m = new QemuIncomingMigration({
          id: migrationId,
          from,
          to: b.host.peerId.toString(),
          epoch,
          paused: offer.paused === true,
          postcopy,
          instance,
          control,
          reservationId,
          nbdPath,
          migrationPath,
          reservation: { release },
          hooks: b.hooks,
          timeouts: b.timeouts,
          logger: this.#log,
          signal,
          onChange: (v) => b.emitProgress(v),
          onOutcome: (o, e) => b.setOutcome(migrationId, o, e),
        })
        b.track(m)
        if (qemuTls) {
          m.markChannel('qemu-tls')
          void m.done.finally(() => qemuTls.creds.remove())
        }
        // Direct tunnels: listen where the source reached us, with a key made for this migration
        let direct: QemuDirectListener | undefined
        if (offer.directHost && b.directData !== false) {
          try {
            direct = await QemuDirectListener.listen(offer.directHost, (socket, kind, head) =>
              this.#onDirectTunnel(m, socket, kind, head),
            )
            void m.done.finally(() => direct?.close())
          } catch (err) {
            this.#log.info(
              { migration: migrationId, host: offer.directHost, err: (err as Error).message },
              'no direct tunnels: cannot listen there',
            )
          }
        }
        const grant = direct?.grant
        const accept = {
          reservationId,
          postcopy,
          ...(grant ? { directPort: grant.port, directKey: grant.key, directIdentity: grant.identity } : {}),
          ...(qemuTls
            ? { qemuTlsPort: qemuTls.port, qemuTlsKey: qemuTls.key, qemuTlsIdentity: qemuTls.identity }
            : {}),
        }
        await control.send({ accept }, signal).catch((err: unknown) => {
          control.framed.abort(asMigrationError(err))
        })
      } catch (err) {
        await instance?.destroy().catch(() => undefined)
        release()
        return await refuse('NO_CAPACITY', `cannot start the QEMU: ${asMigrationError(err).message}`)
      }
    } catch (err) {
      release()
      control.framed.abort(asMigrationError(err))
    } finally {
      unhold()
    }
  }

  /**
   * The incoming QEMU listens itself on `host` (one of this host's addresses, where the source
   * reached us, never 0.0.0.0; ephemeral port) with QEMU's TLS and a fresh PSK for this migration
   * only. Undefined when it cannot (the tunnels carry the stream then; QEMU's incoming side untouched).
   */
  async #listenQemuTls(
    vm: QemuVm,
    host: string,
    channels: number,
    offer: NonNullable<QemuControl['offer']>,
    compression: Pick<QemuMigrateOptions, 'multifdCompression' | 'multifdLevel'>,
  ): Promise<
    { port: number; key: Buffer; identity: string; creds: QemuPskCreds; postcopy: boolean } | undefined
  > {
    if (!isIP(host) || !isOwnAddress(host)) return undefined
    const key = randomBytes(32)
    const identity = randomBytes(16).toString('hex')
    let creds: QemuPskCreds | undefined
    let postcopy = offer.postcopy === true || offer.postcopyOptional === true
    const uri = `tcp:${isIPv6(host) ? `[${host}]` : host}:0`
    try {
      creds = await addPskCreds(vm, QEMU_TLS_CREDS, 'server', identity, key)
      try {
        await vm.migrateIncoming(uri, {
          multifdChannels: channels,
          ...compression,
          postcopy,
          tlsCreds: creds.id,
        })
      } catch (err) {
        // QEMU's refusal of post-copy (no userfaultfd), as on the unix path
        if (!postcopy || offer.postcopy) throw err
        this.#log.info({ err: (err as Error).message }, 'no post-copy on this host; pre-copy only')
        postcopy = false
        await vm.migrateIncoming(uri, {
          multifdChannels: channels,
          ...compression,
          postcopy,
          tlsCreds: creds.id,
        })
      }
      const port = await vm.incomingPort()
      return { port, key, identity, creds, postcopy }
    } catch (err) {
      await creds?.remove()
      this.#log.info(
        { host, err: (err as Error).message },
        "no QEMU TLS listener there: the migration stream goes through the agents' tunnels",
      )
      return undefined
    }
  }

  /** A direct tunnel of `m` (its TLS-PSK key and identity are that migration's): to the QEMU socket of its kind. */
  async #onDirectTunnel(
    m: QemuIncomingMigration,
    remote: tls.TLSSocket,
    kind: number,
    head: Buffer,
  ): Promise<void> {
    const path =
      kind === pb.QemuTunnelKind.TUNNEL_NBD
        ? m.nbdPath
        : kind === pb.QemuTunnelKind.TUNNEL_MIGRATION
          ? m.migrationPath
          : undefined
    if (!path || m.tunnels >= MAX_TUNNELS || this.#b.active(m.id) !== m) {
      this.#log.warn({ migration: m.id, kind }, 'qemu direct tunnel refused')
      remote.destroy()
      return
    }
    m.tunnels++
    m.markChannel('direct-tls')
    try {
      const socket: Socket = createConnection({ path, allowHalfOpen: true })
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve)
        socket.once('error', reject)
      })
      socket.pause()
      await pipeSockets(socket, remote, m.counters, head)
    } catch (err) {
      remote.destroy()
      // Once the migration is over, the source cutting its tunnels is their normal end
      const over = ['done', 'failed', 'cancelled'].includes(m.view().phase)
      this.#log[over ? 'debug' : 'warn'](
        { migration: m.id, err: (err as Error).message },
        'qemu direct tunnel ended with an error',
      )
    }
  }

  async #onTunnel(stream: Stream, conn: Connection): Promise<void> {
    const b = this.#b
    capStreamWindow(stream)
    const lp = lpStream(stream, { maxDataLength: 1024 })
    try {
      const bytes = await withTimeout(b.timeouts.stepTimeoutMs, 'tunnel hello', b.signal(), (s) =>
        lp.read({ signal: s }),
      )
      const hello = pb.QemuTunnelHello.decode(bytes.subarray())
      const m = b.active(hello.migrationId)
      if (
        !(m instanceof QemuIncomingMigration) ||
        m.from !== conn.remotePeer.toString() ||
        m.reservationId !== hello.reservationId ||
        m.tunnels >= MAX_TUNNELS
      ) {
        throw new MigrationRefusedError('BAD_OFFER', 'unknown migration or tunnel')
      }
      const path =
        hello.kind === pb.QemuTunnelKind.TUNNEL_NBD
          ? m.nbdPath
          : hello.kind === pb.QemuTunnelKind.TUNNEL_MIGRATION
            ? m.migrationPath
            : undefined
      if (!path) throw new MigrationRefusedError('BAD_OFFER', `unknown tunnel kind ${hello.kind}`)
      m.tunnels++
      m.markChannel('libp2p')
      const socket = createConnection({ path, allowHalfOpen: true })
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve)
        socket.once('error', reject)
      })
      await pipeSocketStream(socket, lp.unwrap(), m.counters).catch((err: unknown) => {
        this.#log.warn({ migration: m.id, err: (err as Error).message }, 'qemu tunnel ended with an error')
      })
    } catch (err) {
      this.#log.warn({ err: asMigrationError(err).message }, 'qemu tunnel refused')
      stream.abort(asMigrationError(err))
    }
  }
}
