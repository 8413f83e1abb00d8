// The source side of a QEMU migration through the mesh. Offer -> accept (the destination runs a
// paused QEMU with `-incoming defer` and an NBD export of its new disk); then the source QEMU
// mirrors its disk layer into that export and migrates its RAM, each connection tunnelled over its
// own libp2p stream; QEMU stops before switchover (guest paused), the mirror completes, the
// migration completes; then the handover of the engine: onHandover (journal) -> COMMIT -> RUNNING
// -> onReleased (the source QEMU quits). Before COMMIT every failure cancels QEMU's jobs and the
// guest runs on here; after COMMIT without an answer the guest stays paused (in doubt).

import { isIPv6, type Socket } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { Logger } from 'pino'
import { pb } from '../../proto/index.js'
import {
  abandonMirror,
  addPskCreds,
  baseOf,
  completeMirror,
  macForVm,
  type QemuMigrationInfo,
  type QemuPskCreds,
  type QemuVm,
  startMirror,
  waitMirrorReady,
} from '../../vm/qemu/index.js'
import type { VmSpec } from '../../vm/types.js'
import { type DirectGrant, directHostOf } from '../direct.js'
import {
  asMigrationError,
  CancelledError,
  HandoverInDoubtError,
  MigrationError,
  MigrationRefusedError,
  type RefusalCode,
} from '../errors.js'
import { nicsToOffer } from '../nics.js'
import type { ResolvedOptions } from '../options.js'
import { decideNextRound } from '../policy.js'
import { MiB, type MigrationView, type Phase } from '../progress.js'
import type { MigrationHost, SourceHooks, TransferTimeouts } from '../types.js'
import { withTimeout } from '../wire.js'
import {
  multifdCompressionOptions,
  type QemuMultifdCompression,
  sourceMultifdCompression,
} from './compression.js'
import { connectTunnel } from './direct-tunnel.js'
import { QEMU_TLS_CREDS } from './tls-creds.js'
import { capStreamWindow, TunnelListener } from './tunnel.js'
import { applyQemuInfo, initialView, isTerminal } from './view.js'
import { QEMU_CONTROL_PROTOCOL, QEMU_TUNNEL_PROTOCOL, QemuControlChannel } from './wire.js'

const REFUSE_FROM_PB: Record<number, RefusalCode> = {
  [pb.RefuseCode.UNKNOWN_VM]: 'UNKNOWN_VM',
  [pb.RefuseCode.NO_CAPACITY]: 'NO_CAPACITY',
  [pb.RefuseCode.ALREADY_MIGRATING]: 'ALREADY_MIGRATING',
  [pb.RefuseCode.BUSY]: 'BUSY',
  [pb.RefuseCode.BAD_OFFER]: 'BAD_OFFER',
  [pb.RefuseCode.VM_EXISTS]: 'VM_EXISTS',
  [pb.RefuseCode.STOPPING]: 'STOPPING',
}

/** QEMU's own TLS for the migration stream when the destination offers it (SKYMESH_QEMU_TLS=0: never). */
function qemuTlsEnabled(): boolean {
  return process.env.SKYMESH_QEMU_TLS !== '0'
}

/** QEMU states of a migration still under way at the source. */
const ACTIVE = new Set(['setup', 'active', 'pre-switchover', 'device', 'postcopy-active', 'wait-unplug'])

export interface QemuOutgoingInit {
  id: string
  host: MigrationHost
  to: PeerId
  instance: QemuVm
  spec: VmSpec
  epoch: number
  options: ResolvedOptions
  hooks: SourceHooks
  timeouts: TransferTimeouts
  logger: Logger
  signal: AbortSignal
  /** qemu-img, to read the disk's base image. */
  qemuImg: string
  /** Tunnels over the direct data channel when the destination grants it (absent: libp2p only). */
  direct?: { connectTimeoutMs: number }
  onChange: (view: MigrationView) => void
}

export class QemuOutgoingMigration {
  readonly id: string
  readonly done: Promise<MigrationView>
  readonly #i: QemuOutgoingInit
  readonly #v: MigrationView
  readonly #cancel = new AbortController()
  readonly #fail = new AbortController()
  readonly #signal: AbortSignal
  #committed = false
  /** Post-copy switched over: the source cannot resume the guest any more. */
  #postcopySwitched = false
  /** ms from the start to each step (accepted, mirrorReady, preSwitchover, completed, running...). */
  readonly milestones: Record<string, number> = {}
  #pausedAt: number | undefined
  #diskBytes = 0
  #lastEmit = 0

  constructor(init: QemuOutgoingInit) {
    this.#i = init
    this.id = init.id
    this.#v = initialView({
      id: init.id,
      vmId: init.spec.id,
      direction: 'out',
      from: init.host.peerId.toString(),
      to: init.to.toString(),
      mode: init.options.mode,
    })
    this.#signal = AbortSignal.any([init.signal, this.#cancel.signal, this.#fail.signal])
    this.done = this.#run()
  }

  view(): MigrationView {
    return { ...this.#v }
  }

  /** Cancels before the handover (the guest runs on here); false once COMMIT was sent or it ended. */
  cancel(): boolean {
    if (this.#committed || this.#postcopySwitched || isTerminal(this.#v.phase)) return false
    this.#cancel.abort(new CancelledError())
    return true
  }

  #setPhase(p: Phase): void {
    this.#v.phase = p
    this.#emit(true)
  }

  #emit(force = false): void {
    const now = Date.now()
    if (!force && now - this.#lastEmit < 100) return
    this.#lastEmit = now
    try {
      this.#i.onChange(this.view())
    } catch {
      // a listener's failure is not the migration's
    }
  }

  async #run(): Promise<MigrationView> {
    const { instance: vm, options, timeouts, host, to, hooks, spec, epoch, logger } = this.#i
    const log = logger.child({ migration: this.id, vm: spec.id, qemu: true })
    const mark = (what: string) => {
      this.milestones[what] = Date.now() - this.#v.startedAt
    }
    const wasPaused = vm.state === 'paused'
    const offStateChange = vm.onStateChange((s) => {
      if (s === 'paused' && this.#pausedAt === undefined) this.#pausedAt = Date.now()
    })
    const listeners: TunnelListener[] = []
    let creds: QemuPskCreds | undefined
    let control: QemuControlChannel | undefined
    let migrating = false
    let mirroring = false
    try {
      if (options.mode === 'postcopy' && options.streams > 1) {
        throw new MigrationRefusedError(
          'BAD_OFFER',
          'post-copy with several streams: QEMU 7.2 cannot combine post-copy with multifd (use streams: 1)',
        )
      }
      const base = await baseOf(this.#i.qemuImg, vm.paths.disk).catch((err: unknown) => {
        throw new MigrationRefusedError(
          'BAD_OFFER',
          `cannot name the disk's base image: ${(err as Error).message}`,
        )
      })
      const o = vm.options
      const nicKind = o.nic ?? 'stream'
      if (typeof nicKind !== 'string') {
        throw new MigrationRefusedError('BAD_OFFER', 'a guest on QEMU user networking cannot migrate')
      }
      const multifd = options.streams > 1 ? options.streams : 0
      // multifd compression (both QEMUs alike: it goes in the offer); a bad env value fails before the dial
      let compression: QemuMultifdCompression = { method: 'none', level: 0 }
      try {
        if (multifd) compression = sourceMultifdCompression(options.compression)
      } catch (err) {
        throw new MigrationRefusedError(
          'BAD_OFFER',
          `SKYMESH_QEMU_MULTIFD_COMPRESSION: ${(err as Error).message}`,
        )
      }
      const stream = await withTimeout(timeouts.dialTimeoutMs, 'dial', this.#signal, (s) =>
        host.dialProtocol(to, QEMU_CONTROL_PROTOCOL, { signal: s }),
      )
      control = new QemuControlChannel(stream)
      const directHost = this.#directHostToAsk()
      // Post-copy: asked for, or as auto's way out of a pre-copy that does not converge (not with
      // multifd, which QEMU 7.2 does not combine with it)
      const postcopyOptional = options.mode === 'auto' && multifd === 0
      await control.send(
        {
          offer: {
            migrationId: this.id,
            spec: {
              id: spec.id,
              name: spec.name,
              vcpus: spec.vcpus,
              memoryMib: spec.memoryMiB,
              diskMib: spec.diskMiB,
              workload: {
                dirtyMibps: spec.workload.dirtyMiBps,
                hotSetMib: spec.workload.hotSetMiB,
                cpu: spec.workload.cpu,
                diskWriteMibps: spec.workload.diskWriteMiBps,
              },
              nics: nicsToOffer(hooks.nicsOf?.(spec.id)),
            },
            epoch,
            base:
              'blankMiB' in base
                ? { blankMib: base.blankMiB }
                : 'imageId' in base
                  ? { imageId: base.imageId }
                  : { sha256: base.sha256 },
            nic: {
              kind: nicKind,
              mac: o.mac ?? macForVm(spec.id),
              ip: o.ip ?? '',
              gateway: o.gateway ?? '',
              echoPort: o.echoPort ?? 7,
            },
            guestArgs: o.guestArgs ?? {},
            multifdChannels: multifd,
            postcopy: options.mode === 'postcopy',
            postcopyOptional,
            paused: wasPaused,
            directHost: directHost ?? '',
            qemuTls: directHost !== undefined && qemuTlsEnabled(),
            multifdCompression: compression.method,
            multifdLevel: compression.level,
          },
        },
        this.#signal,
      )
      // The destination starts a QEMU before it answers: give it more than one step
      const reply = await withTimeout(2 * timeouts.stepTimeoutMs, 'offer answer', this.#signal, (s) =>
        control!.expect(['accept', 'refuse'], s),
      )
      if (reply.refuse) {
        throw new MigrationRefusedError(
          REFUSE_FROM_PB[reply.refuse.code ?? 0] ?? 'REFUSED',
          reply.refuse.message || 'refused',
        )
      }
      const reservationId = reply.accept?.reservationId ?? ''
      // The destination took post-copy (always when asked for; in auto mode when it can)
      const postcopy = reply.accept?.postcopy === true
      const a = reply.accept
      let grant: DirectGrant | undefined
      if (directHost && a?.directPort && a.directPort <= 65535 && a.directKey?.length === 32) {
        if (a.directIdentity && a.directIdentity.length <= 64)
          grant = { port: a.directPort, key: a.directKey, identity: a.directIdentity }
      } else if (directHost) this.#v.channelNote = 'the destination offers no direct channel'
      this.#v.channel = grant ? 'direct-tls' : 'libp2p'
      // The destination QEMU listens itself (QEMU's TLS-PSK): the migration stream skips the agents
      const qemuTlsGrant =
        directHost &&
        a?.qemuTlsPort &&
        a.qemuTlsPort <= 65535 &&
        a.qemuTlsKey?.length === 32 &&
        a.qemuTlsIdentity &&
        /^[A-Za-z0-9_-]{1,64}$/.test(a.qemuTlsIdentity)
          ? { host: directHost, port: a.qemuTlsPort, key: a.qemuTlsKey, identity: a.qemuTlsIdentity }
          : undefined
      if (qemuTlsGrant) {
        creds = await addPskCreds(vm, QEMU_TLS_CREDS, 'client', qemuTlsGrant.identity, qemuTlsGrant.key)
        this.#v.channel = 'qemu-tls'
      }
      // One pending read for the whole migration: the destination says nothing until COMMIT, so
      // anything before (an abort, the stream dying) fails the migration at once.
      const answer = control.expect(['running'], this.#i.signal)
      answer.catch((err: unknown) => {
        if (!this.#committed) this.#fail.abort(asMigrationError(err))
      })

      const open = (kind: number) => async (): Promise<Stream | Socket> => {
        // Direct TLS first; the first failure (firewall, timeout) sends this and later tunnels over libp2p
        if (grant && directHost) {
          try {
            return await connectTunnel(
              directHost,
              grant,
              kind,
              this.#i.direct?.connectTimeoutMs ?? 3000,
              this.#signal,
            )
          } catch (err) {
            this.#signal.throwIfAborted()
            grant = undefined
            this.#v.channel = 'libp2p'
            this.#v.channelNote = `direct connection failed: ${asMigrationError(err).message}`
            log.info({ err: this.#v.channelNote }, 'qemu tunnels over libp2p streams')
          }
        }
        const s = await host.dialProtocol(to, QEMU_TUNNEL_PROTOCOL, { signal: this.#signal })
        capStreamWindow(s)
        const lp = lpStream(s)
        await lp.write(pb.QemuTunnelHello.encode({ migrationId: this.id, reservationId, kind }).finish(), {
          signal: this.#signal,
        })
        return lp.unwrap()
      }
      const onTunnelError = (err: Error) => {
        if (this.#committed || isTerminal(this.#v.phase)) return
        log.warn({ err: err.message }, 'tunnel failed')
        this.#fail.abort(new MigrationError('LINK', `tunnel: ${err.message}`))
      }
      const dir = vm.paths.sockets
      const nbd = await TunnelListener.listen(
        join(dir, 'nbd-out.sock'),
        open(pb.QemuTunnelKind.TUNNEL_NBD),
        onTunnelError,
      )
      listeners.push(nbd)
      let migUri: string
      if (qemuTlsGrant) {
        const h = qemuTlsGrant.host
        migUri = `tcp:${isIPv6(h) ? `[${h}]` : h}:${qemuTlsGrant.port}`
      } else {
        const mig = await TunnelListener.listen(
          join(dir, 'mig-out.sock'),
          open(pb.QemuTunnelKind.TUNNEL_MIGRATION),
          onTunnelError,
        )
        listeners.push(mig)
        migUri = `unix:${mig.path}`
      }

      mark('accepted')
      // Disk: mirror the writable layer until it follows every write
      this.#setPhase('precopy')
      const bps = options.bandwidthMiBps ? options.bandwidthMiBps * MiB : undefined
      await startMirror(vm, nbd.path, bps)
      mirroring = true
      await waitMirrorReady(vm, this.#signal, (p) => {
        this.#diskBytes = p.offset
        this.#v.blocksSent = Math.round(p.offset / 65536)
        this.#v.bytesSent = p.offset
        this.#v.wireBytes = nbd.counters.out + nbd.counters.in
        this.#emit()
      })
      mark('mirrorReady')

      // Memory: QEMU's own pre-copy, stopping before switchover
      await vm.migrate(migUri, {
        downtimeLimitMs: options.downtimeMs,
        maxBandwidth: bps ?? 10 * 1024 ** 3,
        autoConverge: options.autoConverge,
        postcopy,
        multifdChannels: multifd || 1,
        ...multifdCompressionOptions(compression),
        pauseBeforeSwitchover: true,
        ...(creds ? { tlsCreds: creds.id } : {}),
      })
      migrating = true
      mark('migrateStarted')
      const startPostcopy = async () => {
        if (this.milestones.postcopyRequested !== undefined) return
        mark('postcopyRequested')
        await vm.qmp.execute('migrate-start-postcopy')
      }
      // 'postcopy': at once (QEMU switches after its first pass); 'auto': when rounds stop converging
      if (options.mode === 'postcopy') await startPostcopy()
      // QEMU's TLS stream passes no agent: its bytes are QEMU's count (RAM, before TLS framing)
      const wire = () =>
        listeners.reduce((n, l) => n + l.counters.out + l.counters.in, 0) +
        (qemuTlsGrant ? Math.max(0, this.#v.bytesSent - this.#diskBytes) : 0)
      const progress = this.#watchProgress(
        vm,
        wire,
        postcopy && options.mode === 'auto' ? startPostcopy : undefined,
      )
      let last: QemuMigrationInfo
      try {
        await this.#waitStatus(vm, ['pre-switchover'])
        this.#pausedAt ??= Date.now()
        mark('preSwitchover')
        this.#setPhase('stopcopy')
        await completeMirror(vm, timeouts.stepTimeoutMs)
        mirroring = false
        mark('mirrorCompleted')
        await vm.qmp.execute('migrate-continue', { state: 'pre-switchover' })
        // Post-copy switches here: the source has sent the devices and serves the rest on demand
        // from now on; it cannot take the guest back (the handover in doubt rules apply)
        if (this.milestones.postcopyRequested !== undefined) this.#postcopySwitched = true
        last = await this.#waitStatus(vm, ['completed', 'postcopy-active'])
        if (last.status === 'postcopy-active') {
          this.#v.postcopy = true
          this.#setPhase('postcopy')
        } else this.#postcopySwitched = false
        mark(last.status === 'completed' ? 'completed' : 'postcopyActive')
      } finally {
        progress.stop()
      }
      migrating = false
      applyQemuInfo(this.#v, last, this.#diskBytes)
      this.#v.wireBytes = wire()

      // Handover: journal, COMMIT, wait for RUNNING
      this.#setPhase('handover')
      this.#signal.throwIfAborted()
      await hooks.onHandover?.(this.view(), { signal: this.#signal })
      mark('journaled')
      this.#signal.throwIfAborted()
      this.#committed = true
      const newEpoch = epoch + 1
      try {
        await control.send({ commit: { epoch: newEpoch } }, this.#i.signal)
        await withTimeout(timeouts.stepTimeoutMs, 'running', this.#i.signal, (s) =>
          Promise.race([
            answer,
            new Promise<never>((_, reject) =>
              s.addEventListener('abort', () => reject(s.reason), { once: true }),
            ),
          ]),
        )
      } catch (err) {
        const e = new HandoverInDoubtError(
          `COMMIT sent, no RUNNING from the destination: ${asMigrationError(err).message}`,
        )
        this.#v.error = { code: e.code, message: e.message }
        this.#v.totalMs = Date.now() - this.#v.startedAt
        this.#setPhase('failed')
        log.error({ err: e.message }, 'qemu handover in doubt: the guest stays paused here')
        await hooks.onInDoubt?.(this.view())
        return this.view()
      }
      mark('running')
      if (last.status === 'postcopy-active') {
        // The guest runs there; its remaining pages still come from this QEMU: quit only after
        const end = await vm.waitMigrationStatus([], { timeoutMs: 24 * 3600_000, signal: this.#i.signal })
        if (end.status !== 'completed') {
          throw new MigrationError('VM_FAILED', `post-copy ended ${end.status}: ${end.errorDesc ?? ''}`)
        }
        applyQemuInfo(this.#v, end, this.#diskBytes)
        this.#v.wireBytes = wire()
        mark('completed')
      }
      this.#v.epoch = newEpoch
      this.#v.totalMs = Date.now() - this.#v.startedAt
      this.#v.downtimeMs = Date.now() - (this.#pausedAt ?? Date.now())
      log.info(
        {
          totalMs: this.#v.totalMs,
          downtimeMs: this.#v.downtimeMs,
          qemuDowntimeMs: last.downtimeMs,
          milestones: this.milestones,
        },
        'qemu guest running at the destination',
      )
      await this.#closeAll(listeners, control)
      if (hooks.onReleased) await hooks.onReleased(this.view(), vm)
      else await vm.destroy()
      this.#setPhase('done')
      return this.view()
    } catch (err) {
      if (this.#committed) {
        // onReleased failed after RUNNING: the guest runs there; say so, do not resume here
        const e = asMigrationError(err)
        this.#v.error = { code: e.code, message: `after the handover: ${e.message}` }
        this.#setPhase('failed')
        return this.view()
      }
      if (this.#postcopySwitched) {
        // Post-copy switched over, no COMMIT yet: the source QEMU cannot resume the guest and the
        // destination has not run it — in doubt, as after a COMMIT without an answer
        const e = new HandoverInDoubtError(`post-copy switched over, then: ${asMigrationError(err).message}`)
        this.#v.error = { code: e.code, message: e.message }
        this.#v.totalMs = Date.now() - this.#v.startedAt
        this.#setPhase('failed')
        log.error({ err: e.message }, 'qemu post-copy in doubt: the guest stays paused here')
        await this.#closeAll(listeners, control)
        await hooks.onInDoubt?.(this.view())
        return this.view()
      }
      const cause =
        this.#cancel.signal.aborted && !(err instanceof MigrationRefusedError)
          ? (this.#cancel.signal.reason as Error)
          : this.#fail.signal.aborted && !(err instanceof MigrationRefusedError)
            ? (this.#fail.signal.reason as Error)
            : err
      const e = asMigrationError(cause)
      log.warn(
        { code: e.code, err: e.message },
        'qemu migration failed before the handover; the guest stays here',
      )
      await this.#rollBack(vm, migrating, mirroring, wasPaused, log)
      if (control) {
        await control.send({ abort: { code: e.code, message: e.message } }).catch(() => undefined)
      }
      await this.#closeAll(listeners, control)
      this.#v.error = { code: e.code, message: e.message }
      this.#v.totalMs = Date.now() - this.#v.startedAt
      this.#setPhase(e.code === 'CANCELLED' ? 'cancelled' : 'failed')
      await hooks.onAborted?.(this.view())
      return this.view()
    } finally {
      offStateChange()
      await creds?.remove()
    }
  }

  /** The IP of our direct libp2p connection to the destination (none if disabled or relayed). */
  #directHostToAsk(): string | undefined {
    const { direct, options, host, to } = this.#i
    if (!direct) {
      this.#v.channelNote = 'direct channel disabled on this host'
      return undefined
    }
    if (options.channel === 'libp2p') {
      this.#v.channelNote = 'libp2p channel asked for'
      return undefined
    }
    for (const conn of host.getConnections?.(to) ?? []) {
      const h = directHostOf(conn)
      if (h) return h
    }
    this.#v.channelNote = 'no direct connection to the destination (relayed or unknown)'
    return undefined
  }

  /** Waits (on QEMU's MIGRATION events) until the status is one of `want`; a failed/cancelled migration or an abort throws. */
  async #waitStatus(vm: QemuVm, want: string[]): Promise<QemuMigrationInfo> {
    const info = await vm.waitMigrationStatus(want, {
      timeoutMs: 24 * 3600_000,
      signal: this.#signal,
    })
    if (!want.includes(info.status)) {
      throw new MigrationError(
        'VM_FAILED',
        `QEMU migration ${info.status}${info.errorDesc ? `: ${info.errorDesc}` : ''}`,
      )
    }
    return info
  }

  /**
   * The progress view from query-migrate every 200 ms, beside the waits (never in their way); a
   * migration that moves no byte for stallTimeoutMs fails.
   */
  #watchProgress(vm: QemuVm, wire: () => number, startPostcopy?: () => Promise<void>): { stop(): void } {
    const { stallTimeoutMs } = this.#i.timeouts
    const { downtimeMs, maxRounds } = this.#i.options
    let stopped = false
    let lastBytes = -1
    let lastMove = Date.now()
    let lastSync = 0
    const history: number[] = []
    const loop = async () => {
      while (!stopped && !this.#signal.aborted) {
        await sleep(200)
        if (stopped) return
        const info = await vm.queryMigrate().catch(() => undefined)
        if (!info || stopped) continue
        applyQemuInfo(this.#v, info, this.#diskBytes)
        this.#v.wireBytes = wire()
        this.#emit()
        // auto: after each of QEMU's dirty syncs (a round), the engine's rule for leaving pre-copy
        const sync = info.dirtySyncCount ?? 0
        if (startPostcopy && info.status === 'active' && sync > lastSync && sync >= 2) {
          lastSync = sync
          history.push(info.remainingBytes ?? 0)
          const d = decideNextRound({
            mode: 'auto',
            round: sync - 1,
            remainingBytes: info.remainingBytes ?? 0,
            history,
            bandwidthBps: ((info.mbps ?? 0) * 1e6) / 8,
            downtimeMs,
            maxRounds,
          })
          if (d.action === 'postcopy') {
            this.#i.logger.info(
              { migration: this.id, reason: d.reason, round: sync },
              'qemu: switching to post-copy',
            )
            await startPostcopy().catch(() => undefined)
          }
        }
        const moved = info.transferredBytes ?? 0
        if (moved !== lastBytes) {
          lastBytes = moved
          lastMove = Date.now()
        } else if (info.status === 'active' && Date.now() - lastMove > stallTimeoutMs) {
          this.#fail.abort(
            new MigrationError('TIMEOUT', `QEMU migration made no progress for ${stallTimeoutMs} ms`),
          )
          return
        }
      }
    }
    void loop()
    return {
      stop: () => {
        stopped = true
      },
    }
  }

  /** Before COMMIT: cancel QEMU's jobs; the guest runs here again (unless it was paused before). */
  async #rollBack(
    vm: QemuVm,
    migrating: boolean,
    mirroring: boolean,
    wasPaused: boolean,
    log: Logger,
  ): Promise<void> {
    if (vm.qmp.isClosed) return
    try {
      if (migrating) {
        await vm.qmp.execute('migrate_cancel').catch(() => undefined)
        for (let i = 0; i < 100; i++) {
          const s = (await vm.queryMigrate()).status
          if (!ACTIVE.has(s) && s !== 'cancelling') break
          await sleep(100)
        }
      }
      if (mirroring) await abandonMirror(vm)
      const state = await vm.refreshState()
      if (!wasPaused && state === 'paused') await vm.resume()
    } catch (err) {
      log.error({ err: (err as Error).message }, 'could not roll the qemu migration back cleanly')
    }
  }

  async #closeAll(listeners: TunnelListener[], control: QemuControlChannel | undefined): Promise<void> {
    await Promise.allSettled(listeners.map((l) => l.close()))
    if (control) await control.framed.close()
  }
}
