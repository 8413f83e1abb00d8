// The qemu driver: each VM is a qemu-system-x86_64 process (KVM when it works, TCG otherwise)
// controlled over QMP, booting the tiny guest (scripts/build-guest.sh) with a qcow2 layer on a base
// image as its disk, a NIC on a `-netdev stream` unix socket for the overlay switch, and its
// serial console in a log file.

import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { access, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { homedir, tmpdir } from 'node:os'
import { join } from 'node:path'
import type { CreateVmOptions, VmDriver, VmSpec, VmState } from '../types.js'
import { VmError } from '../types.js'
import { ensureGuest, type GuestImage } from './guest.js'
import { type Accel, detectAccel, findQemu, type QemuBinaries } from './host.js'
import { blankBase, createOverlay, findBase, materializeImage } from './images.js'
import { AdoptedProcess, pidAlive, pidCmdline } from './process.js'
import { QemuVm, type QemuVmPaths } from './qemu-vm.js'
import { QmpClient } from './qmp.js'

export type QemuNic =
  /** virtio-net on `-netdev stream` (QEMU listens on <dir>/nic.sock). */
  | 'stream'
  | 'none'
  /** virtio-net on QEMU's user-mode network with TCP port forwards from 127.0.0.1 (tests only). */
  | { user: { hostfwd: Array<{ hostPort: number; guestPort: number }> } }

/** Per-VM options on top of CreateVmOptions. */
export interface QemuVmOptions extends CreateVmOptions {
  /** Guest IPv4 with prefix, e.g. 10.0.0.5/24 (default: derived by the guest from its MAC). */
  ip?: string
  gateway?: string
  /** NIC MAC (default: 52:54:00 + 3 bytes of sha256(spec.id)). */
  mac?: string
  nic?: QemuNic
  /** Base image under the disk's qcow2 layer (default: a blank base of spec.diskMiB in the image store). */
  baseImage?: string
  /** Or a mesh image (src/images) by id: fetched from its holders if missing, then the base. */
  imageId?: string
  /** TCP port of the guest's echo server (default 7). */
  echoPort?: number
  /** Extra guest settings, passed as `skymesh.KEY=VALUE` on the kernel command line (e.g. connect). */
  guestArgs?: Record<string, string>
}

/** Mesh images by id (src/images): what the driver needs to use one as a base. */
export interface QemuImageSource {
  /**
   * The image as one local read-only file, fetched from any holder in the mesh first if missing
   * (`sources`, hosts known to hold it, tried first).
   */
  localFile(id: string, signal?: AbortSignal, sources?: string[]): Promise<string>
}

export interface QemuDriverInit {
  /** Mesh images, for `imageId` bases and migrations of VMs made from them. */
  images?: QemuImageSource
  /** Where base images live (default ~/.cache/skymesh/images). */
  imageStore?: string
  /** The guest kernel + initramfs (default: build or locate the tiny test guest). */
  guest?: GuestImage
  /** Force an accelerator (default: KVM if a probe guest runs under it, else TCG). */
  accel?: Accel
  qemu?: QemuBinaries
  /** How long a guest may take until QMP answers (default 20 s). */
  startTimeoutMs?: number
}

/** What `launch.json` in a VM's directory holds: enough to re-attach to its QEMU. */
interface LaunchRecord {
  spec: VmSpec
  options: Omit<QemuVmOptions, 'dir'>
}

// Unix socket paths are limited to 108 bytes.
const MAX_SOCKET_PATH = 100

export class QemuDriver implements VmDriver {
  readonly name = 'qemu'
  private readonly bins: QemuBinaries
  private readonly vms = new Set<QemuVm>()
  private closed = false

  /** Throws (with what to install) when QEMU is not on this host. */
  constructor(private readonly init: QemuDriverInit = {}) {
    this.bins = init.qemu ?? findQemu()
  }

  /** The accelerator this driver uses (probed once). */
  accel(): Promise<Accel> {
    return this.init.accel ? Promise.resolve(this.init.accel) : detectAccel(this.bins.system)
  }

  /** Where base images live (content-addressed, see images.ts). */
  get imageStore(): string {
    return this.init.imageStore ?? join(homedir(), '.cache', 'skymesh', 'images')
  }

  get binaries(): QemuBinaries {
    return this.bins
  }

  /**
   * The local base file of mesh image `id`, fetched by id from the mesh first if this host lacks
   * it (the destination of a migration does this before it accepts, naming the source as `from`:
   * it holds the image even when gossip does not say so yet, e.g. right after it restarted).
   */
  async imageBase(id: string, signal?: AbortSignal, from?: string): Promise<string> {
    const have = await findBase(this.bins.img, this.imageStore, { imageId: id })
    if (have) return have
    const images = this.init.images
    if (!images)
      throw new VmError('VM_IO', `image ${id.slice(0, 12)} is not here and this driver has no image source`)
    return materializeImage(this.imageStore, id, await images.localFile(id, signal, from ? [from] : []))
  }

  /** The QEMU guests this driver is running. */
  instances(): QemuVm[] {
    return [...this.vms]
  }

  create(spec: VmSpec, opts: QemuVmOptions): Promise<QemuVm> {
    return this.launch(spec, opts, 'boot')
  }

  /** A paused QEMU waiting for a migration stream (`-incoming defer -S`); call `migrateIncoming(uri)` on it. */
  prepareIncoming(spec: VmSpec, opts: QemuVmOptions): Promise<QemuVm> {
    return this.launch(spec, opts, 'incoming')
  }

  async restore(spec: VmSpec, opts: QemuVmOptions): Promise<QemuVm> {
    if (!(await this.hasSuspendImage(opts.dir))) {
      throw new VmError('VM_NO_SUSPEND_IMAGE', `no suspend image in ${opts.dir}`)
    }
    const vm = await this.launch(spec, opts, 'restore')
    try {
      await vm.migrateIncoming(`exec:cat '${paths(opts.dir, 'stream').suspendImage}'`)
      const end = await vm.waitMigration(120_000)
      if (end.status !== 'completed')
        throw new VmError('VM_IO', `restore failed: ${end.errorDesc ?? end.status}`)
      await vm.resume()
      return vm
    } catch (err) {
      await vm.stop()
      throw err
    }
  }

  /**
   * Re-attaches to the QEMU a previous agent started in `opts.dir` and left running: found by its
   * pidfile (and its command line, so a recycled pid is not taken for it), QMP reconnected, its
   * state read. Undefined when no such QEMU runs any more (it died meanwhile: the caller reports
   * the VM crashed); throws if one runs but does not answer.
   */
  async attach(spec: VmSpec, opts: { dir: string }): Promise<QemuVm | undefined> {
    if (this.closed) throw new VmError('VM_INVALID_STATE', 'qemu driver is closed')
    let launch: LaunchRecord
    let pid: number
    try {
      launch = JSON.parse(await readFile(join(opts.dir, 'launch.json'), 'utf8')) as LaunchRecord
      pid = Number((await readFile(join(opts.dir, 'qemu.pid'), 'utf8')).trim())
    } catch {
      return undefined
    }
    if (launch.spec?.id !== spec.id || !Number.isInteger(pid) || pid <= 1) return undefined
    const nic = launch.options.nic ?? 'stream'
    const p = paths(opts.dir, nic === 'stream' ? 'stream' : 'none')
    const cmd = pidCmdline(pid)
    if (!pidAlive(pid) || !cmd.includes(`skymesh-${spec.id}`) || !cmd.some((a) => a.includes(p.qmp))) {
      return undefined
    }
    const proc = new AdoptedProcess(pid)
    let qmp: QmpClient
    try {
      qmp = await QmpClient.connect(p.qmp, { connectTimeoutMs: 5000 })
    } catch (err) {
      proc.check()
      if (proc.exitCode !== null) return undefined
      proc.kill('SIGKILL')
      throw new VmError(
        'VM_IO',
        `QEMU ${pid} of ${spec.id} runs but its QMP does not answer: ${(err as Error).message}`,
      )
    }
    const vm = new QemuVm(
      launch.spec,
      p,
      proc,
      qmp,
      'running',
      (gone) => this.vms.delete(gone),
      launch.options,
    )
    this.vms.add(vm)
    await vm.refreshState()
    return vm
  }

  /**
   * Ends the QEMU a previous agent left in `dir` if one still runs there (an incoming migration the
   * agent died in: its paused copy is discarded with the directory).
   */
  async discard(dir: string): Promise<void> {
    let launch: LaunchRecord
    let pid: number
    try {
      launch = JSON.parse(await readFile(join(dir, 'launch.json'), 'utf8')) as LaunchRecord
      pid = Number((await readFile(join(dir, 'qemu.pid'), 'utf8')).trim())
    } catch {
      return
    }
    const cmd = pidCmdline(pid)
    if (Number.isInteger(pid) && pid > 1 && pidAlive(pid) && cmd.includes(`skymesh-${launch.spec?.id}`)) {
      const proc = new AdoptedProcess(pid, 100)
      proc.kill('SIGKILL')
      await new Promise<void>((r) => (proc.exitCode !== null ? r() : proc.once('exit', () => r())))
    }
  }

  async hasSuspendImage(dir: string): Promise<boolean> {
    return access(join(dir, 'suspend.state')).then(
      () => true,
      () => false,
    )
  }

  /** Stops every QEMU this driver started (none is left behind). */
  async close(): Promise<void> {
    this.closed = true
    await Promise.all([...this.vms].map((vm) => vm.stop().catch(() => {})))
  }

  private async launch(
    spec: VmSpec,
    opts: QemuVmOptions,
    mode: 'boot' | 'incoming' | 'restore',
  ): Promise<QemuVm> {
    if (this.closed) throw new VmError('VM_INVALID_STATE', 'qemu driver is closed')
    validate(spec, opts)
    const nic = opts.nic ?? 'stream'
    const p = paths(opts.dir, nic === 'stream' ? 'stream' : 'none')
    await mkdir(p.dir, { recursive: true })
    await mkdir(p.sockets, { recursive: true })
    await Promise.all([p.qmp, p.nic].map((s) => s && rm(s, { force: true })))
    if (mode !== 'restore' || !(await exists(p.disk))) {
      const base =
        opts.baseImage ??
        (opts.imageId
          ? await this.imageBase(opts.imageId)
          : await blankBase(this.bins.img, this.imageStore, spec.diskMiB))
      await createOverlay(this.bins.img, base, p.disk, spec.diskMiB)
    }
    const guest = this.init.guest ?? (await ensureGuest())
    const accel = await this.accel()
    const args = qemuArgs(spec, opts, p, guest, accel, nic, mode)
    const { dir: _dir, ...launchOptions } = opts
    await rm(p.pidfile, { force: true })
    const launchRecord: LaunchRecord = { spec, options: launchOptions }
    await writeFile(`${p.launch}.tmp`, `${JSON.stringify(launchRecord)}\n`)
    await rename(`${p.launch}.tmp`, p.launch)
    const logFd = openSync(p.log, 'a')
    let child: ReturnType<typeof spawn>
    try {
      // Its own process group: QEMU outlives the agent (a restarted agent re-attaches to it) and a
      // signal to the agent's group (Ctrl-C) does not reach the guests
      child = spawn(this.bins.system, args, { stdio: ['ignore', logFd, logFd], detached: true })
    } finally {
      closeSync(logFd)
    }
    let exitedEarly = false
    child.once('exit', () => {
      exitedEarly = true
    })
    child.once('error', () => {
      exitedEarly = true
    })
    let qmp: QmpClient
    try {
      qmp = await Promise.race([
        QmpClient.connect(p.qmp, { connectTimeoutMs: this.init.startTimeoutMs ?? 20_000 }),
        new Promise<never>((_, reject) => {
          const check = setInterval(() => {
            if (exitedEarly) {
              clearInterval(check)
              reject(new Error('QEMU exited during start'))
            }
          }, 50)
          child.once('exit', () => clearInterval(check))
          setTimeout(() => clearInterval(check), (this.init.startTimeoutMs ?? 20_000) + 1000)
        }),
      ])
    } catch (err) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await new Promise((r) =>
        child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r),
      )
      const tail = logTail(p.log)
      throw new VmError(
        'VM_IO',
        `QEMU for ${spec.id} did not start: ${(err as Error).message}${tail ? `\n${tail}` : ''}`,
      )
    }
    const initial: VmState = mode === 'boot' ? 'running' : 'paused'
    const vm = new QemuVm(spec, p, child, qmp, initial, (gone) => this.vms.delete(gone), launchOptions)
    this.vms.add(vm)
    await vm.refreshState().catch(() => {})
    return vm
  }
}

/**
 * Where a VM's unix sockets live: its own directory when the paths fit the 108-byte limit, else a
 * short directory under /tmp named by a hash of the VM directory (stable, so it can be found again).
 */
export function socketDir(dir: string): string {
  if (join(dir, 'qmp.sock').length <= MAX_SOCKET_PATH) return dir
  return join(tmpdir(), `skymesh-qemu-${createHash('sha256').update(dir).digest('hex').slice(0, 16)}`)
}

function paths(dir: string, nic: 'stream' | 'none'): QemuVmPaths {
  const sockets = socketDir(dir)
  return {
    dir,
    sockets,
    qmp: join(sockets, 'qmp.sock'),
    nic: nic === 'stream' ? join(sockets, 'nic.sock') : undefined,
    serial: join(dir, 'serial.log'),
    log: join(dir, 'qemu.log'),
    disk: join(dir, 'disk.qcow2'),
    suspendImage: join(dir, 'suspend.state'),
    pidfile: join(dir, 'qemu.pid'),
    launch: join(dir, 'launch.json'),
  }
}

function logTail(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-5).join('\n')
  } catch {
    return ''
  }
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  )
}

function validate(spec: VmSpec, opts: QemuVmOptions): void {
  const bad = (msg: string) => new VmError('VM_INVALID_STATE', `qemu VM ${spec.id}: ${msg}`)
  if (!opts.dir) throw bad('opts.dir is required')
  if (/[',\n]/.test(opts.dir)) throw bad(`directory must not contain quotes, commas or newlines: ${opts.dir}`)
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 64)
    throw bad(`memoryMiB must be an integer >= 64, got ${spec.memoryMiB}`)
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1)
    throw bad(`vcpus must be an integer >= 1, got ${spec.vcpus}`)
  if (opts.ip !== undefined && !/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(opts.ip))
    throw bad(`ip must be a.b.c.d/prefix, got ${opts.ip}`)
  if (opts.mac !== undefined && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(opts.mac))
    throw bad(`bad mac ${opts.mac}`)
  const problem = guestArgsProblem(opts.guestArgs)
  if (problem) throw bad(problem)
}

/** Why `args` cannot go on a kernel command line, or undefined if they can. */
export function guestArgsProblem(args: Record<string, string> | undefined): string | undefined {
  if (args === undefined) return undefined
  const entries = Object.entries(args)
  if (entries.length > 8) return `at most 8 guestArgs, got ${entries.length}`
  for (const [k, v] of entries) {
    if (!/^[a-z][a-z0-9]{0,15}$/.test(k))
      return `guestArgs key '${k}' must be 1-16 of a-z0-9, starting with a letter`
    if (typeof v !== 'string' || !/^[A-Za-z0-9.:/_-]{1,64}$/.test(v))
      return `guestArgs.${k} must be 1-64 of A-Z a-z 0-9 . : / _ -`
  }
  return undefined
}

/** A stable locally administered-looking MAC in QEMU's 52:54:00 range, from the VM id. */
export function macForVm(id: string): string {
  const h = createHash('sha256').update(id).digest()
  return `52:54:00:${[h[0], h[1], h[2]].map((b) => (b ?? 0).toString(16).padStart(2, '0')).join(':')}`
}

function qemuArgs(
  spec: VmSpec,
  opts: QemuVmOptions,
  p: QemuVmPaths,
  guest: GuestImage,
  accel: Accel,
  nic: QemuNic,
  mode: 'boot' | 'incoming' | 'restore',
): string[] {
  // The guest's memory writer: its hot set (capped so the tmpfs fits) and rate in KiB/s.
  const hotSetMiB = Math.max(1, Math.min(Math.round(spec.workload.hotSetMiB), Math.floor(spec.memoryMiB / 3)))
  const rateKiB = Math.round(spec.workload.dirtyMiBps * 1024)
  const append = [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    'mitigations=off',
    `skymesh.memmib=${hotSetMiB}`,
    `skymesh.rate=${rateKiB}`,
    `skymesh.echo=${opts.echoPort ?? 7}`,
  ]
  if (opts.ip) append.push(`skymesh.ip=${opts.ip}`)
  if (opts.gateway) append.push(`skymesh.gw=${opts.gateway}`)
  for (const [k, v] of Object.entries(opts.guestArgs ?? {})) append.push(`skymesh.${k}=${v}`)
  const args = [
    '-name',
    `skymesh-${spec.id}`,
    '-machine',
    'pc',
    '-accel',
    accel === 'kvm' ? 'kvm' : spec.vcpus > 1 ? 'tcg,thread=multi' : 'tcg',
    '-cpu',
    accel === 'kvm' ? 'host' : 'max',
    '-smp',
    String(spec.vcpus),
    // 8 KiB short of the size: QEMU 7.2 under TCG loses dirty-page tracking of some guest writes
    // during migration when RAM is a multiple of 256 KiB (fixed upstream in 9.x) — a busy guest
    // then crashes at the destination; both ends use the same size
    '-m',
    `${spec.memoryMiB * 1024 - 8}k`,
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-kernel',
    guest.kernel,
    '-initrd',
    guest.initrd,
    '-append',
    append.join(' '),
    '-serial',
    `file:${p.serial}`,
    '-qmp',
    `unix:${p.qmp},server=on,wait=off`,
    '-pidfile',
    p.pidfile,
    '-blockdev',
    JSON.stringify({ driver: 'qcow2', 'node-name': 'disk0', file: { driver: 'file', filename: p.disk } }),
    '-device',
    'virtio-blk-pci,drive=disk0,id=vda',
  ]
  const mac = opts.mac ?? macForVm(spec.id)
  if (nic === 'stream') {
    args.push(
      '-netdev',
      JSON.stringify({ type: 'stream', id: 'net0', server: true, addr: { type: 'unix', path: p.nic } }),
      '-device',
      `virtio-net-pci,netdev=net0,mac=${mac}`,
    )
  } else if (typeof nic === 'object') {
    const fwd = nic.user.hostfwd.map((f) => `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`).join('')
    args.push('-netdev', `user,id=net0${fwd}`, '-device', `virtio-net-pci,netdev=net0,mac=${mac}`)
  }
  if (mode !== 'boot') args.push('-incoming', 'defer', '-S')
  return args
}
