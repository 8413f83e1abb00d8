// The destination side of a QEMU migration through the mesh: after the offer is accepted (see
// service.ts here) a paused QEMU with `-incoming defer` waits, its new disk layer exported over NBD;
// the tunnels fill it. On COMMIT (the source QEMU completed; its mirror is in sync): the export
// ends, the agent journals and adopts the VM (onCommit), QEMU resumes, RUNNING goes back. It
// never resumes without COMMIT; if anything fails before, its QEMU is killed and its directory
// removed, and the source's guest runs on.
import type { Logger } from 'pino'
import { type QemuVm, unexportDisk } from '../../vm/qemu/index.js'
import { asMigrationError, MigrationError } from '../errors.js'
import type { MigrationView, Phase } from '../progress.js'
import type { DestinationHooks, TransferTimeouts } from '../types.js'
import { withTimeout } from '../wire.js'
import type { TunnelCounters } from './tunnel.js'
import { applyQemuInfo, initialView, isTerminal } from './view.js'
import type { QemuControlChannel } from './wire.js'

export interface QemuIncomingInit {
  id: string
  from: string
  to: string
  epoch: number
  paused: boolean
  /** Post-copy allowed: the source may switch over before every page is here (status postcopy-active). */
  postcopy: boolean
  instance: QemuVm
  control: QemuControlChannel
  reservationId: string
  /** Unix sockets of the destination QEMU the tunnels connect to. */
  nbdPath: string
  migrationPath: string
  reservation: { release(): void }
  hooks: DestinationHooks
  timeouts: TransferTimeouts
  logger: Logger
  signal: AbortSignal
  onChange: (view: MigrationView) => void
  onOutcome: (outcome: 'committed' | 'aborted', epoch?: number) => void
}

export class QemuIncomingMigration {
  readonly id: string
  readonly from: string
  readonly reservationId: string
  readonly counters: TunnelCounters = { out: 0, in: 0 }
  tunnels = 0
  readonly done: Promise<MigrationView>
  readonly #i: QemuIncomingInit
  readonly #v: MigrationView
  readonly #cancel = new AbortController()
  #committed = false

  constructor(init: QemuIncomingInit) {
    this.#i = init
    this.id = init.id
    this.from = init.from
    this.reservationId = init.reservationId
    this.#v = initialView({
      id: init.id,
      vmId: init.instance.spec.id,
      direction: 'in',
      from: init.from,
      to: init.to,
      mode: 'precopy',
    })
    this.done = this.#run()
  }

  get nbdPath(): string {
    return this.#i.nbdPath
  }

  get migrationPath(): string {
    return this.#i.migrationPath
  }

  view(): MigrationView {
    return { ...this.#v }
  }

  /**
   * The channel a tunnel came over (shown in the view). 'qemu-tls' (the migration stream QEMU to
   * QEMU) stays: the disk mirror's tunnel does not carry the bulk then.
   */
  markChannel(channel: 'libp2p' | 'direct-tls' | 'qemu-tls'): void {
    if (this.#v.channel !== 'qemu-tls') this.#v.channel = channel
  }

  /** Only the source cancels a migration; here it would only drop our copy before COMMIT. */
  cancel(): boolean {
    if (this.#committed || isTerminal(this.#v.phase)) return false
    this.#cancel.abort(new MigrationError('CANCELLED', 'cancelled at the destination'))
    return true
  }

  #setPhase(p: Phase): void {
    this.#v.phase = p
    try {
      this.#i.onChange(this.view())
    } catch {}
  }

  async #run(): Promise<MigrationView> {
    const { instance: vm, control, hooks, timeouts, logger } = this.#i
    const log = logger.child({ migration: this.id, vm: vm.spec.id, qemu: true })
    const signal = AbortSignal.any([this.#i.signal, this.#cancel.signal])
    this.#setPhase('precopy')
    // The incoming QEMU's end (MIGRATION event): once complete, the disk export has served its
    // purpose (the source completed its mirror before it sent the rest of the RAM) — ended here
    // before COMMIT comes, so the handover does not wait for it
    const ready = this.#i.postcopy ? ['completed', 'postcopy-active'] : ['completed']
    const incoming = vm
      .waitMigrationStatus(ready, { timeoutMs: 24 * 3600_000, signal })
      .then(async (info) => {
        if (ready.includes(info.status)) await unexportDisk(vm)
        return info
      })
    incoming.catch(() => undefined)
    try {
      const commitP = control.expect(['commit'], signal)
      let commit: Awaited<typeof commitP> | undefined
      commitP.then(
        (c) => {
          commit = c
        },
        () => undefined,
      )
      // Progress while waiting for COMMIT (the source drives everything)
      while (!commit) {
        const settled = await Promise.race([
          commitP.then(() => true),
          new Promise<false>((r) => setTimeout(() => r(false), 250).unref()),
        ])
        if (settled) break
        const info = await vm.queryMigrate().catch(() => undefined)
        if (info) applyQemuInfo(this.#v, info, 0)
        this.#v.wireBytes = this.counters.in + this.counters.out
        this.#i.onChange(this.view())
      }
      const c = await commitP
      const newEpoch = Number(c.commit?.epoch ?? 0)
      if (newEpoch !== this.#i.epoch + 1) {
        throw new MigrationError('PROTOCOL', `commit epoch ${newEpoch}, expected ${this.#i.epoch + 1}`)
      }
      const end = await withTimeout(timeouts.stepTimeoutMs, 'incoming QEMU migration', signal, (s) =>
        Promise.race([
          incoming,
          new Promise<never>((_, reject) =>
            s.addEventListener('abort', () => reject(s.reason), { once: true }),
          ),
        ]),
      )
      if (!ready.includes(end.status)) {
        throw new MigrationError('VM_FAILED', `incoming QEMU migration ${end.status}: ${end.errorDesc ?? ''}`)
      }
      // post-copy: the guest runs here from COMMIT on, its missing pages fault in from the source
      if (end.status === 'postcopy-active') this.#v.postcopy = true
      applyQemuInfo(this.#v, end, 0)
      this.#setPhase('handover')
      this.#committed = true
      try {
        await hooks.onCommit?.(this.view(), vm, newEpoch, { signal })
      } catch (err) {
        this.#committed = false
        throw err
      }
      this.#i.reservation.release()
      this.#i.onOutcome('committed', newEpoch)
      if (!this.#i.paused) await vm.resume()
      await control.send({ running: { epoch: newEpoch } }, this.#i.signal).catch((err: unknown) => {
        // The source will ask (status protocol); we committed and run
        log.warn({ err: (err as Error).message }, 'RUNNING not delivered')
      })
      this.#v.epoch = newEpoch
      this.#v.totalMs = Date.now() - this.#v.startedAt
      await withTimeout(5000, 'close', this.#i.signal, () => control.framed.close()).catch(() => undefined)
      this.#setPhase('done')
      return this.view()
    } catch (err) {
      const e = asMigrationError(err)
      if (this.#committed) {
        this.#v.error = { code: e.code, message: e.message }
        this.#setPhase('failed')
        return this.view()
      }
      const qemuLog = vm.logTail(8)
      const gone = vm.process.exitCode !== null || vm.process.signalCode !== null
      log.warn(
        {
          code: e.code,
          err: e.message,
          ...(gone ? { qemuExit: vm.process.exitCode ?? vm.process.signalCode } : {}),
          ...(qemuLog ? { qemuLog } : {}),
        },
        'incoming qemu migration failed; copy discarded',
      )
      await control.send({ abort: { code: e.code, message: e.message } }).catch(() => undefined)
      control.framed.abort(e)
      await vm.destroy().catch(() => undefined)
      this.#i.reservation.release()
      this.#i.onOutcome('aborted')
      this.#v.error = { code: e.code, message: e.message }
      this.#v.totalMs = Date.now() - this.#v.startedAt
      this.#setPhase(e.code === 'CANCELLED' ? 'cancelled' : 'failed')
      return this.view()
    }
  }
}
