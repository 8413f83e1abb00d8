// The `synthetic` VM driver: in-process VMs with real memory, a real sparse disk file and a workload
// that dirties both, so migration, suspend and digests are exercised without a hypervisor.

import { mkdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { type CreateVmOptions, type VmDriver, VmError, type VmInstance, type VmSpec } from '../types.js'
import { CpuBudget } from './cpu-budget.js'
import { combineDigests, diskDigest, memoryDigest } from './digest.js'
import { DISK_ALLOC, DISK_IMG, SyntheticDisk } from './disk.js'
import type { BaseImage, GuestDisk } from './guest-disk.js'
import { SyntheticMemory } from './memory.js'
import { OverlayDisk } from './overlay-disk.js'
import { seedFromString } from './prng.js'
import { checkSpec } from './spec.js'
import {
  discardSuspendImage,
  MEMORY_IMG,
  MEMORY_MAP,
  readManifest,
  readMemoryImage,
  removeSuspendImage,
  settleDeletions,
} from './suspend-image.js'
import { SyntheticVm } from './synthetic-vm.js'

export interface SyntheticDriverInit {
  /** Workload timer period in ms (default 50). */
  tickMs?: number
  /**
   * Share of the agent's thread that the workloads of all VMs together may burn for their `cpu`
   * (default 0.5): the work runs in-process, so an unbounded share would starve the agent.
   */
  maxCpuShare?: number
  /** Finds the base image of a copy-on-write VM being restored (src/images); without it such VMs cannot be. */
  resolveBase?: (imageId: string) => BaseImage | undefined
}

export class SyntheticDriver implements VmDriver {
  readonly name = 'synthetic'
  readonly #tickMs: number
  readonly #budget: CpuBudget
  readonly #resolveBase?: (imageId: string) => BaseImage | undefined
  readonly #vms = new Set<SyntheticVm>()
  #closed = false

  constructor(init: SyntheticDriverInit = {}) {
    this.#tickMs = init.tickMs ?? 50
    this.#resolveBase = init.resolveBase
    if (!(this.#tickMs >= 1)) throw new RangeError(`tickMs ${init.tickMs} must be >= 1`)
    // Bursts of up to two ticks' worth keep the agent's event loop responsive
    this.#budget = new CpuBudget(init.maxCpuShare ?? 0.5, this.#tickMs * 2)
  }

  create(spec: VmSpec, opts: CreateVmOptions): Promise<VmInstance> {
    return this.#fresh(spec, opts, 'running')
  }

  /** A running VM whose disk is a copy-on-write layer over `base` (reads fall through, writes stay its own). */
  async createFromImage(spec: VmSpec, opts: CreateVmOptions, base: BaseImage): Promise<VmInstance> {
    this.#checkOpen()
    const sizes = checkSpec(spec)
    await mkdir(opts.dir, { recursive: true })
    await removeSuspendImage(opts.dir)
    const disk = await OverlayDisk.create(opts.dir, sizes.diskBytes, base)
    return this.#start(spec, opts, new SyntheticMemory(sizes.memoryBytes), disk, 'running')
  }

  /** A paused, empty VM for a migration to fill; with `opts.baseImage` its disk is a layer over that image. */
  async prepareIncoming(spec: VmSpec, opts: CreateVmOptions): Promise<VmInstance> {
    if (opts.baseImage === undefined) return this.#fresh(spec, opts, 'paused')
    this.#checkOpen()
    const base = this.#resolveBase?.(opts.baseImage)
    if (!base) throw new VmError('VM_IO', `the base image ${opts.baseImage.slice(0, 12)} is not on this host`)
    const sizes = checkSpec(spec)
    await mkdir(opts.dir, { recursive: true })
    await removeSuspendImage(opts.dir)
    const disk = await OverlayDisk.create(opts.dir, sizes.diskBytes, base)
    return this.#start(spec, opts, new SyntheticMemory(sizes.memoryBytes), disk, 'paused')
  }

  /** A VM with zeroed memory and an empty disk, in a wiped directory. */
  async #fresh(spec: VmSpec, opts: CreateVmOptions, state: 'running' | 'paused'): Promise<VmInstance> {
    this.#checkOpen()
    const sizes = checkSpec(spec)
    await mkdir(opts.dir, { recursive: true })
    await removeSuspendImage(opts.dir)
    const memory = new SyntheticMemory(sizes.memoryBytes)
    const disk = await SyntheticDisk.create(opts.dir, sizes.diskBytes)
    return this.#start(spec, opts, memory, disk, state)
  }

  async restore(spec: VmSpec, opts: CreateVmOptions): Promise<VmInstance> {
    this.#checkOpen()
    const sizes = checkSpec(spec)
    const dir = opts.dir
    const m = await readManifest(dir)
    if (!m) throw new VmError('VM_NO_SUSPEND_IMAGE', `no complete suspend image in ${dir}`)
    if (m.spec.id !== spec.id) {
      throw new VmError(
        'VM_NO_SUSPEND_IMAGE',
        `the suspend image in ${dir} is of VM ${m.spec.id}, not ${spec.id}`,
      )
    }
    if (m.memoryBytes !== sizes.memoryBytes || m.diskBytes !== sizes.diskBytes) {
      throw new VmError(
        'VM_NO_SUSPEND_IMAGE',
        `the suspend image in ${dir} has ${m.memoryBytes} bytes of memory and ${m.diskBytes} of disk, ` +
          `the spec ${sizes.memoryBytes} and ${sizes.diskBytes}`,
      )
    }
    const image = await readMemoryImage(dir, m)
    const memory = new SyntheticMemory(m.memoryBytes, image.buf, image.nonZero)
    const disk = await this.#openDisk(dir, m.diskBytes)
    try {
      const got = combineDigests(memoryDigest(memory), await diskDigest(disk))
      if (got.combined !== m.digest.combined) {
        const parts = [got.memory !== m.digest.memory && 'memory', got.disk !== m.digest.disk && 'disk']
        throw new VmError(
          'VM_IO',
          `the suspend image in ${dir} is corrupt: ${parts.filter(Boolean).join(' and ')} digest differs`,
        )
      }
      // Used up: an old image must never be restored a second time
      await discardSuspendImage(dir)
    } catch (err) {
      memory.free()
      await disk.close().catch(() => undefined)
      throw err
    }
    return this.#start(spec, opts, memory, disk, 'running')
  }

  async hasSuspendImage(dir: string): Promise<boolean> {
    if (!(await readManifest(dir))) return false
    try {
      await Promise.all([MEMORY_IMG, MEMORY_MAP, DISK_IMG, DISK_ALLOC].map((f) => stat(join(dir, f))))
      return true
    } catch {
      return false
    }
  }

  /** Stops every VM still running or paused on this driver; further calls to create etc. throw. */
  async close(): Promise<void> {
    this.#closed = true
    await Promise.allSettled([...this.#vms].map((vm) => vm.stop()))
    this.#vms.clear()
    await settleDeletions()
  }

  /** The disk left in `dir`: a plain one, or an overlay whose base image must be here. */
  async #openDisk(dir: string, bytes: number): Promise<GuestDisk> {
    const image = await OverlayDisk.baseOf(dir)
    if (image === undefined) return SyntheticDisk.open(dir, bytes)
    const base = this.#resolveBase?.(image)
    if (!base)
      throw new VmError(
        'VM_IO',
        `the base image ${image.slice(0, 12)} of the disk in ${dir} is not on this host`,
      )
    return OverlayDisk.open(dir, bytes, base)
  }

  #start(
    spec: VmSpec,
    opts: CreateVmOptions,
    memory: SyntheticMemory,
    disk: GuestDisk,
    state: 'running' | 'paused',
  ): SyntheticVm {
    const vm = new SyntheticVm({
      spec,
      dir: opts.dir,
      memory,
      disk,
      state,
      seed: opts.seed ?? seedFromString(spec.id),
      tickMs: this.#tickMs,
      budget: this.#budget,
      onGone: (v) => this.#vms.delete(v),
    })
    this.#vms.add(vm)
    return vm
  }

  #checkOpen(): void {
    if (this.#closed) throw new VmError('VM_INVALID_STATE', 'the synthetic driver is closed')
  }
}
