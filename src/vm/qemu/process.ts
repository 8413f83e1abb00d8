// The QEMU process behind a guest: the agent's own child, or — after an agent restart — a QEMU
// the previous agent started (its own process group, so it outlives the agent) found again by its
// pidfile. A process that is not our child cannot be waited for: its end is seen by polling
// /proc (and at once when its QMP socket closes); its parent (init or a subreaper) reaps it.

import { EventEmitter } from 'node:events'
import { readFileSync } from 'node:fs'

/** What QemuVm needs of its process (a ChildProcess fits). */
export interface QemuProcess {
  readonly pid?: number | undefined
  readonly exitCode: number | null
  readonly signalCode: NodeJS.Signals | null
  kill(signal?: NodeJS.Signals): boolean
  once(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): unknown
}

/** True if `pid` exists and is not a zombie. */
export function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}

/** The command line of `pid` (empty if it is gone). */
export function pidCmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
  } catch {
    return []
  }
}

/** A running QEMU that is not our child: exit seen by polling (`check()` looks at once). */
export class AdoptedProcess extends EventEmitter implements QemuProcess {
  exitCode: number | null = null
  signalCode: NodeJS.Signals | null = null
  readonly #timer: NodeJS.Timeout

  constructor(
    readonly pid: number,
    pollMs = 500,
  ) {
    super()
    this.#timer = setInterval(() => this.check(), pollMs)
    this.#timer.unref()
  }

  /** Looks whether the process is gone; emits 'exit' once if so (exit code unknown: -1). */
  check(): void {
    if (this.exitCode !== null || this.signalCode !== null) return
    if (pidAlive(this.pid)) return
    clearInterval(this.#timer)
    this.exitCode = -1
    this.emit('exit', this.exitCode, null)
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    try {
      process.kill(this.pid, signal)
      setTimeout(() => this.check(), 50).unref()
      return true
    } catch {
      this.check()
      return false
    }
  }
}
