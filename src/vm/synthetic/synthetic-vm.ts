// A synthetic VM: real memory and a real sparse disk, driven by a synthetic workload. One lifecycle
// operation runs at a time (they queue), so e.g. a stop during a suspend waits for the suspend.

import { rm } from 'node:fs/promises'
import { VmError, type VmInstance, type VmSpec, type VmState, type VmStats } from '../types.js'
import type { CpuBudget } from './cpu-budget.js'
import { combineDigests, diskDigest, memoryDigest, type VmDigest } from './digest.js'
import type { GuestDisk } from './guest-disk.js'
import type { SyntheticMemory } from './memory.js'
import { commitManifest, removeSuspendImage, writeMemoryImage } from './suspend-image.js'
import { Workload } from './workload.js'

export interface SyntheticVmInit {
  spec: VmSpec
  dir: string
  memory: SyntheticMemory
  disk: GuestDisk
  state: 'running' | 'paused'
  seed: number
  tickMs: number
  budget: CpuBudget
  /** Called once the VM holds no more resources (suspended or stopped). */
  onGone: (vm: SyntheticVm) => void
}

export class SyntheticVm implements VmInstance {
  readonly spec: VmSpec
  readonly dir: string
  readonly memory: SyntheticMemory
  readonly disk: GuestDisk
  readonly #workload: Workload
  readonly #onGone: (vm: SyntheticVm) => void
  readonly #listeners = new Set<(state: VmState) => void>()
  #state: VmState
  #lock: Promise<unknown> = Promise.resolve()

  constructor(init: SyntheticVmInit) {
    this.spec = init.spec
    this.dir = init.dir
    this.memory = init.memory
    this.disk = init.disk
    this.#onGone = init.onGone
    this.#state = init.state
    this.#workload = new Workload(init.spec.workload, init.memory, init.disk, {
      seed: init.seed,
      tickMs: init.tickMs,
      vcpus: init.spec.vcpus,
      budget: init.budget,
      onFault: () => this.#crash(),
    })
    if (init.state === 'running') this.#workload.start()
  }

  get state(): VmState {
    return this.#state
  }

  pause(): Promise<void> {
    return this.#serialize(async () => {
      if (this.#state === 'paused') return
      this.#require('pause', 'running')
      await this.#workload.stop()
      this.#require('pause', 'running') // a disk fault may have crashed it meanwhile
      this.#setState('paused')
    })
  }

  resume(): Promise<void> {
    return this.#serialize(async () => {
      if (this.#state === 'running') return
      this.#require('resume', 'paused')
      this.#workload.start()
      this.#setState('running')
    })
  }

  suspend(): Promise<void> {
    return this.#serialize(async () => {
      this.#require('suspend', 'running', 'paused')
      const wasRunning = this.#state === 'running'
      await this.#workload.stop()
      this.#require('suspend', 'running', 'paused')
      try {
        // A stale image must be gone before any new file is written, so no mix is ever "complete"
        await removeSuspendImage(this.dir)
        const digest = await this.#digest()
        await writeMemoryImage(this.dir, this.memory)
        await this.disk.flush()
        await commitManifest(this.dir, {
          version: 1,
          spec: this.spec,
          pageSize: this.memory.pageSize,
          memoryBytes: this.memory.bytes,
          diskBytes: this.disk.bytes,
          digest,
          savedAt: new Date().toISOString(),
          complete: true,
        })
      } catch (err) {
        // The VM is intact: drop the partial image and carry on as before
        await removeSuspendImage(this.dir).catch(() => undefined)
        if (wasRunning) this.#workload.start()
        throw asVmError(err, 'suspend failed')
      }
      await this.disk.close()
      this.memory.free()
      this.#setState('suspended')
      this.#onGone(this)
    })
  }

  stop(): Promise<void> {
    return this.#stop(true)
  }

  #stop(sync: boolean): Promise<void> {
    return this.#serialize(async () => {
      if (this.#state === 'stopped') return
      await this.#workload.stop()
      try {
        await this.disk.close({ sync })
      } finally {
        this.memory.free()
        this.#setState('stopped')
        this.#onGone(this)
      }
    })
  }

  async destroy(): Promise<void> {
    try {
      // Its files are deleted next: no flush
      await this.#stop(false)
    } finally {
      await rm(this.dir, { recursive: true, force: true })
    }
  }

  digest(): Promise<VmDigest> {
    return this.#serialize(() => this.#digest())
  }

  warmDigest(): void {
    if (!this.memory.present || !this.disk.open) return
    this.memory.warmDigest()
    this.disk.warmDigest?.()
  }

  throttle(fraction: number): void {
    this.#workload.setThrottle(fraction)
  }

  stats(): VmStats {
    return { state: this.#state, ...this.#workload.stats() }
  }

  onStateChange(listener: (state: VmState) => void): () => void {
    this.#listeners.add(listener)
    return () => {
      this.#listeners.delete(listener)
    }
  }

  async #digest(): Promise<VmDigest> {
    if (!this.memory.present || !this.disk.open) {
      throw new VmError('VM_INVALID_STATE', `cannot digest VM ${this.spec.id}: it is ${this.#state}`)
    }
    const memory = memoryDigest(this.memory)
    return combineDigests(memory, await diskDigest(this.disk))
  }

  /** The guest failed (its disk write did): it stops running, its state stays for inspection. */
  #crash(): void {
    if (this.#state === 'running' || this.#state === 'paused') this.#setState('crashed')
  }

  #serialize<T>(op: () => Promise<T>): Promise<T> {
    const p = this.#lock.then(op)
    this.#lock = p.catch(() => undefined)
    return p
  }

  #require(op: string, ...states: VmState[]): void {
    if (!states.includes(this.#state)) {
      throw new VmError('VM_INVALID_STATE', `cannot ${op} VM ${this.spec.id}: it is ${this.#state}`)
    }
  }

  #setState(state: VmState): void {
    if (state === this.#state) return
    this.#state = state
    for (const l of [...this.#listeners]) {
      try {
        l(state)
      } catch {
        // a failing listener must not break the state machine or the other listeners
      }
    }
  }
}

function asVmError(err: unknown, what: string): VmError {
  if (err instanceof VmError) return err
  return new VmError('VM_IO', `${what}: ${err instanceof Error ? err.message : String(err)}`)
}
