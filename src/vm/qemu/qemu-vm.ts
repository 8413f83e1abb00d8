// One QEMU guest: the QEMU child process, its QMP connection and its state. State follows QMP
// (STOP/RESUME events, query-status); a QEMU that exits without being told to is reported as
// `crashed` (or `stopped` after a guest poweroff) and reaped — the child is always awaited.

import { readFileSync } from 'node:fs'
import { rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  type VmDisk,
  VmError,
  type VmInstance,
  type VmMemory,
  type VmSpec,
  type VmState,
  type VmStats,
} from '../types.js'
import type { QemuProcess } from './process.js'
import type { QemuVmOptions } from './qemu-driver.js'
import type { QmpClient, QmpEvent } from './qmp.js'
import { NoBlockDisk, NoPageMemory, noPageAccess, QEMU_CAPABILITIES } from './unsupported.js'

/** Files of a QEMU VM inside its directory. */
export interface QemuVmPaths {
  dir: string
  /** Directory of the unix sockets: `dir`, or a short one under /tmp when `dir` is too long. */
  sockets: string
  qmp: string
  /** The NIC's `-netdev stream` unix socket (QEMU listens; the overlay switch connects), if any. */
  nic: string | undefined
  serial: string
  log: string
  disk: string
  suspendImage: string
  /** QEMU's pid (`-pidfile`), to find it again after an agent restart. */
  pidfile: string
  /** How it was started (spec and options), for the same. */
  launch: string
}

export interface QemuMigrateOptions {
  /** Max downtime QEMU aims for, ms (`downtime-limit`). */
  downtimeLimitMs?: number
  /** Bandwidth cap in bytes/s (`max-bandwidth`); QEMU's default is 128 MiB/s, we lift it to unlimited-ish. */
  maxBandwidth?: number
  autoConverge?: boolean
  postcopy?: boolean
  /** multifd channels (>1 enables multifd). */
  multifdChannels?: number
  /**
   * multifd only: QEMU compresses each multifd packet (`multifd-compression`); both sides must
   * agree. A compressed packet is one buffer, so QEMU's TLS writes a few large records instead of one
   * per 4 KiB page. Unset = `none`.
   */
  multifdCompression?: MultifdCompression
  /** zstd level 1..20 or zlib level 1..9 (`multifd-zstd-level` / `multifd-zlib-level`); QEMU's default 1. */
  multifdLevel?: number
  /**
   * Stop in `pre-switchover` (guest paused, RAM sent) until `migrate-continue`: the moment to
   * complete a disk mirror (QEMU's `pause-before-switchover`).
   */
  pauseBeforeSwitchover?: boolean
  /** QOM id of a tls-creds object (tls.ts): QEMU's own TLS on the stream; unset = none. */
  tlsCreds?: string
}

/** QEMU 7.2's `multifd-compression` methods (zstd when QEMU is built with it, as Debian's). */
export type MultifdCompression = 'none' | 'zlib' | 'zstd'

/** migrate-set-parameters for multifd: channels, compression and its level (both sides alike). */
function multifdParams(opts: QemuMigrateOptions): Record<string, unknown> {
  const channels = opts.multifdChannels ?? 1
  if (channels <= 1) return {}
  const params: Record<string, unknown> = {
    'multifd-channels': channels,
    'multifd-compression': opts.multifdCompression ?? 'none',
  }
  if (opts.multifdLevel !== undefined && opts.multifdCompression === 'zstd')
    params['multifd-zstd-level'] = opts.multifdLevel
  if (opts.multifdLevel !== undefined && opts.multifdCompression === 'zlib')
    params['multifd-zlib-level'] = opts.multifdLevel
  return params
}

/** The parts of `query-migrate` we use (times in ms, bytes). */
export interface QemuMigrationInfo {
  status: string
  totalTimeMs?: number
  downtimeMs?: number
  setupTimeMs?: number
  transferredBytes?: number
  remainingBytes?: number
  dirtySyncCount?: number
  /** Pages of RAM sent in full. */
  normalPages?: number
  /** Throughput of the last iteration, megabits/s. */
  mbps?: number
  /** Pages dirtied per second. */
  dirtyPagesRate?: number
  pageSize?: number
  errorDesc?: string
}

const STATUS_TO_STATE: Record<string, VmState> = {
  running: 'running',
  paused: 'paused',
  inmigrate: 'paused',
  postmigrate: 'paused',
  prelaunch: 'paused',
  'finish-migrate': 'paused',
  suspended: 'paused',
  'save-vm': 'paused',
  'restore-vm': 'paused',
  debug: 'paused',
  colo: 'paused',
  'internal-error': 'crashed',
  'io-error': 'crashed',
  'guest-panicked': 'crashed',
  shutdown: 'stopped',
  watchdog: 'crashed',
}

export class QemuVm implements VmInstance {
  readonly capabilities = QEMU_CAPABILITIES
  readonly memory: VmMemory
  readonly disk: VmDisk
  private _state: VmState
  private readonly listeners = new Set<(s: VmState) => void>()
  private shutdownReason: string | undefined
  private stopping = false
  /** Resolves once the QEMU process has exited (and been reaped). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  private lastCpu: { at: number; ticks: number } | undefined
  private cpuShare = 0

  constructor(
    readonly spec: VmSpec,
    readonly paths: QemuVmPaths,
    readonly process: QemuProcess,
    readonly qmp: QmpClient,
    initial: VmState,
    onGone: (vm: QemuVm) => void,
    /** The options it was started with (a migration starts its destination with the same). */
    readonly options: Omit<QemuVmOptions, 'dir'> = {},
  ) {
    this._state = initial
    this.memory = new NoPageMemory(spec.memoryMiB)
    this.disk = new NoBlockDisk(spec.diskMiB)
    qmp.on('event', (e: QmpEvent) => this.onEvent(e))
    // A QEMU that is not our child (re-attached) is watched by polling: its QMP closing means it is going
    qmp.once('close', () => {
      const check = (process as { check?: () => void }).check
      if (check) setTimeout(() => check.call(process), 50).unref()
    })
    this.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null) => {
        qmp.close()
        if (!this.stopping && this._state !== 'suspended') {
          this.setState(this.shutdownReason === 'guest-shutdown' ? 'stopped' : 'crashed')
        }
        onGone(this)
        resolve({ code, signal })
      }
      if (process.exitCode !== null || process.signalCode !== null) done(process.exitCode, process.signalCode)
      else process.once('exit', done)
    })
  }

  get state(): VmState {
    return this._state
  }

  get pid(): number | undefined {
    return this.process.pid
  }

  /** The unix socket the overlay switch connects to for this guest's NIC (length-prefixed Ethernet frames). */
  get nicSocket(): string | undefined {
    return this.paths.nic
  }

  get serialLog(): string {
    return this.paths.serial
  }

  onStateChange(listener: (state: VmState) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  async pause(): Promise<void> {
    this.requireState('pause', 'running')
    await this.qmp.execute('stop')
    this.setState('paused')
  }

  async resume(): Promise<void> {
    this.requireState('resume', 'paused')
    await this.qmp.execute('cont')
    this.setState('running')
  }

  /** Re-reads the state from QEMU (query-status). */
  async refreshState(): Promise<VmState> {
    const s = await this.qmp.execute<{ status: string }>('query-status')
    this.setState(STATUS_TO_STATE[s.status] ?? 'paused')
    return this._state
  }

  /** Saves the guest (QEMU migration stream to a file) into its directory and ends QEMU. */
  async suspend(): Promise<void> {
    this.requireState('suspend', 'running', 'paused')
    if (this._state === 'running') await this.pause()
    const tmp = `${this.paths.suspendImage}.tmp`
    await this.migrate(`exec:cat > '${tmp}'`)
    const end = await this.waitMigration(120_000)
    if (end.status !== 'completed') {
      await rm(tmp, { force: true })
      throw new VmError('VM_IO', `suspend of ${this.spec.id} failed: ${end.errorDesc ?? end.status}`)
    }
    await rename(tmp, this.paths.suspendImage)
    this.setState('suspended')
    await this.endProcess()
  }

  async stop(): Promise<void> {
    if (this._state === 'stopped' || this._state === 'crashed' || this._state === 'suspended') {
      await this.endProcess()
      if (this._state === 'suspended') this.setState('stopped')
      return
    }
    await this.endProcess()
    this.setState('stopped')
  }

  async destroy(): Promise<void> {
    await this.stop()
    await rm(this.paths.dir, { recursive: true, force: true })
    if (this.paths.sockets !== this.paths.dir) await rm(this.paths.sockets, { recursive: true, force: true })
  }

  digest(): Promise<{ memory: string; disk: string; combined: string }> {
    return Promise.reject(noPageAccess('digest'))
  }

  stats(): VmStats {
    this.sampleCpu()
    return {
      state: this._state,
      cpu: this.cpuShare,
      dirtyMiBps: 0,
      diskWriteMiBps: 0,
      pagesWritten: 0,
      blocksWritten: 0,
    }
  }

  // --- migration (QEMU's own stream; the agent tunnels it later) ---

  /** Starts an outgoing migration to `uri` (e.g. `unix:/path`), after setting capabilities/parameters. */
  async migrate(uri: string, opts: QemuMigrateOptions = {}): Promise<void> {
    const caps: Array<{ capability: string; state: boolean }> = [
      // MIGRATION events on every status change: waits below react at once instead of polling
      { capability: 'events', state: true },
      { capability: 'auto-converge', state: opts.autoConverge ?? false },
      { capability: 'postcopy-ram', state: opts.postcopy ?? false },
      { capability: 'multifd', state: (opts.multifdChannels ?? 1) > 1 },
      { capability: 'pause-before-switchover', state: opts.pauseBeforeSwitchover ?? false },
    ]
    await this.qmp.execute('migrate-set-capabilities', { capabilities: caps })
    const params: Record<string, unknown> = { 'max-bandwidth': opts.maxBandwidth ?? 10 * 1024 ** 3 }
    if (opts.downtimeLimitMs !== undefined) params['downtime-limit'] = opts.downtimeLimitMs
    Object.assign(params, multifdParams(opts))
    // always set: a failed TLS migration must not leave its (deleted) creds to the next one
    params['tls-creds'] = opts.tlsCreds ?? ''
    await this.qmp.execute('migrate-set-parameters', params)
    await this.qmp.execute('migrate', { uri })
  }

  /** On a VM made by `prepareIncoming`: sets the same capabilities, then listens on `uri` for the stream. */
  async migrateIncoming(uri: string, opts: QemuMigrateOptions = {}): Promise<void> {
    const caps = [
      { capability: 'events', state: true },
      { capability: 'postcopy-ram', state: opts.postcopy ?? false },
      { capability: 'multifd', state: (opts.multifdChannels ?? 1) > 1 },
    ]
    await this.qmp.execute('migrate-set-capabilities', { capabilities: caps })
    const params: Record<string, unknown> = { 'tls-creds': opts.tlsCreds ?? '', ...multifdParams(opts) }
    await this.qmp.execute('migrate-set-parameters', params)
    await this.qmp.execute('migrate-incoming', { uri })
  }

  /** Incoming: the TCP port QEMU listens on (after `migrate-incoming tcp:HOST:0`), from query-migrate. */
  async incomingPort(): Promise<number> {
    const r = await this.qmp.execute<Record<string, unknown>>('query-migrate')
    const addrs = (r['socket-address'] ?? []) as Array<{ type?: string; port?: string | number }>
    const port = Number(addrs.find((a) => a.type === 'inet')?.port)
    if (!Number.isInteger(port) || port <= 0 || port > 65535) {
      throw new Error('the incoming QEMU names no TCP port')
    }
    return port
  }

  async queryMigrate(): Promise<QemuMigrationInfo> {
    const r = await this.qmp.execute<Record<string, unknown>>('query-migrate')
    const ram = r.ram as Record<string, number> | undefined
    return {
      status: String(r.status ?? 'none'),
      totalTimeMs: r['total-time'] as number | undefined,
      downtimeMs: r.downtime as number | undefined,
      setupTimeMs: r['setup-time'] as number | undefined,
      transferredBytes: ram?.transferred,
      remainingBytes: ram?.remaining,
      dirtySyncCount: ram?.['dirty-sync-count'],
      normalPages: ram?.normal,
      mbps: ram?.mbps,
      dirtyPagesRate: ram?.['dirty-pages-rate'],
      pageSize: ram?.['page-size'],
      errorDesc: r['error-desc'] as string | undefined,
    }
  }

  /** Waits until the migration completed, failed or was cancelled (or throws after `timeoutMs`). */
  waitMigration(timeoutMs: number): Promise<QemuMigrationInfo> {
    return this.waitMigrationStatus([], { timeoutMs })
  }

  /**
   * Waits until the migration's status is one of `want` or it ended (completed/failed/cancelled),
   * and returns query-migrate then. It reacts to QEMU's MIGRATION events (the `events` capability,
   * set by migrate/migrateIncoming) the moment they come, with a slow poll behind in case one was
   * missed; throws on timeout or when `signal` aborts.
   */
  async waitMigrationStatus(
    want: string[],
    opts: { timeoutMs: number; signal?: AbortSignal; pollMs?: number },
  ): Promise<QemuMigrationInfo> {
    const done = new Set([...want, 'completed', 'failed', 'cancelled'])
    const wake = new AbortController()
    const onEvent = (e: QmpEvent) => {
      if (e.event === 'MIGRATION' && done.has(String(e.data?.status))) wake.abort()
    }
    this.qmp.on('event', onEvent)
    const deadline = Date.now() + opts.timeoutMs
    try {
      for (;;) {
        opts.signal?.throwIfAborted()
        const info = await this.queryMigrate()
        if (done.has(info.status)) return info
        const left = deadline - Date.now()
        if (left <= 0)
          throw new VmError(
            'VM_IO',
            `migration of ${this.spec.id} still ${info.status} after ${opts.timeoutMs} ms`,
          )
        const signals = [wake.signal, ...(opts.signal ? [opts.signal] : [])]
        await sleep(Math.min(left, opts.pollMs ?? 1000), undefined, {
          signal: AbortSignal.any(signals),
        }).catch(() => undefined)
      }
    } finally {
      this.qmp.off('event', onEvent)
    }
  }

  // --- internals ---

  private onEvent(e: QmpEvent): void {
    switch (e.event) {
      case 'STOP':
        if (this._state === 'running') this.setState('paused')
        break
      case 'RESUME':
        this.setState('running')
        break
      case 'SHUTDOWN':
        this.shutdownReason = String(e.data?.reason ?? '')
        break
      case 'GUEST_PANICKED':
        this.setState('crashed')
        break
    }
  }

  /** Asks QEMU to quit, then kills it if it does not; always waits until the process is reaped. */
  private async endProcess(): Promise<void> {
    this.stopping = true
    if (this.process.exitCode === null && this.process.signalCode === null) {
      if (!this.qmp.isClosed) this.qmp.execute('quit', undefined, 2000).catch(() => {})
      const quit = await Promise.race([this.exited.then(() => true), sleep(5000).then(() => false)])
      if (!quit) this.process.kill('SIGKILL')
    }
    await this.exited
  }

  private requireState(op: string, ...allowed: VmState[]): void {
    if (!allowed.includes(this._state)) {
      throw new VmError('VM_INVALID_STATE', `cannot ${op} VM ${this.spec.id}: it is ${this._state}`)
    }
  }

  private setState(s: VmState): void {
    if (s === this._state) return
    this._state = s
    for (const l of this.listeners) l(s)
  }

  private sampleCpu(): void {
    const pid = this.process.pid
    if (pid === undefined || this.process.exitCode !== null) {
      this.cpuShare = 0
      return
    }
    try {
      const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? []
      const ticks = Number(fields[11]) + Number(fields[12]) // utime + stime, from field 14
      const now = Date.now()
      if (this.lastCpu && now > this.lastCpu.at) {
        this.cpuShare = (ticks - this.lastCpu.ticks) / 100 / ((now - this.lastCpu.at) / 1000)
      }
      this.lastCpu = { at: now, ticks }
    } catch {
      this.cpuShare = 0
    }
  }

  /** Last lines of QEMU's own log (stderr), for error messages. */
  logTail(lines = 5): string {
    try {
      return readFileSync(join(this.paths.log), 'utf8').trim().split('\n').slice(-lines).join('\n')
    } catch {
      return ''
    }
  }
}
