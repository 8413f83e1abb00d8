// Helpers for the QEMU tests: skip reason when QEMU or the guest packages are missing, short
// temp dirs (unix socket paths are limited), guest specs, the guest's serial console, and a
// frame-level peer on a `-netdev stream` socket (QEMU's 4-byte big-endian length + Ethernet frame).

import { execFile } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { createConnection, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { qemuAvailable } from '../../src/vm/qemu/index.js'
import type { VmSpec } from '../../src/vm/types.js'

const runFile = promisify(execFile)

/** Why the QEMU tests cannot run here, or false if they can. */
export function qemuSkipReason(): string | false {
  if (!qemuAvailable())
    return 'QEMU not installed (apt-get install qemu-system-x86 qemu-utils; .ci/run does it as root)'
  const kernels = existsSync('/boot')
    ? readdirSync('/boot').filter((f) => /^vmlinuz-.*-cloud-amd64$/.test(f))
    : []
  if (kernels.length === 0) return 'no Debian cloud kernel (apt-get install linux-image-cloud-amd64)'
  if (!existsSync('/bin/busybox')) return 'no busybox-static (apt-get install busybox-static)'
  return false
}

/**
 * Why QEMU 7.2 cannot do post-copy here, or false: its destination needs the userfaultfd syscall,
 * which needs CAP_SYS_PTRACE unless vm.unprivileged_userfaultfd is 1 (7.2 does not use /dev/userfaultfd).
 */
export function postcopySkipReason(): string | false {
  try {
    if (readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim() === '1') return false
    const eff = /CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]
    if (eff && (BigInt(`0x${eff}`) >> 19n) & 1n) return false
    return 'no userfaultfd for QEMU: vm.unprivileged_userfaultfd is 0 and there is no CAP_SYS_PTRACE'
  } catch {
    return 'no userfaultfd for QEMU (no /proc/sys/vm/unprivileged_userfaultfd)'
  }
}

/** A short temp dir under /tmp (sockets inside must stay under 108 bytes). */
export function shortTmpDir(prefix = 'skq-'): { path: string; remove: () => Promise<void> } {
  const path = mkdtempSync(`/tmp/${prefix}`)
  return { path, remove: () => rm(path, { recursive: true, force: true }) }
}

export function guestSpec(
  id: string,
  opts: { rateMiBps?: number; hotSetMiB?: number; memoryMiB?: number } = {},
): VmSpec {
  return {
    id,
    name: id,
    vcpus: 1,
    memoryMiB: opts.memoryMiB ?? 128,
    diskMiB: 64,
    workload: { dirtyMiBps: opts.rateMiBps ?? 1, hotSetMiB: opts.hotSetMiB ?? 16, cpu: 0, diskWriteMiBps: 0 },
  }
}

export interface MemLine {
  ok: boolean
  /** Guest uptime in seconds when the writer's second began. */
  t: number
  gen: number
  line: string
}

/** Lines of the guest's serial console so far. */
export function serialLines(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').split(/\r?\n/).filter(Boolean)
  } catch {
    return []
  }
}

export function memLines(path: string): MemLine[] {
  const out: MemLine[] = []
  for (const line of serialLines(path)) {
    const ok = /^SKYMESH MEM OK t=([\d.]+) gen=(\d+)/.exec(line)
    if (ok) out.push({ ok: true, t: Number(ok[1]), gen: Number(ok[2]), line })
    else if (line.startsWith('SKYMESH MEM FAIL')) out.push({ ok: false, t: Number.NaN, gen: -1, line })
  }
  return out
}

/** The guest TCP client's console lines (scripts/build-guest.sh, skymesh.connect). */
export interface TcpLog {
  connects: number
  /** Lines echoed so far on the current connection (the last OK line). */
  echoed: number
  fails: string[]
  closes: string[]
  /** Index in `lines` order: CONNECT/CLOSED/OK/FAIL events as they came. */
  events: string[]
}

export function tcpLog(path: string): TcpLog {
  const log: TcpLog = { connects: 0, echoed: 0, fails: [], closes: [], events: [] }
  for (const line of serialLines(path)) {
    if (!line.startsWith('SKYMESH TCP ')) continue
    log.events.push(line)
    if (line.startsWith('SKYMESH TCP CONNECT')) {
      log.connects++
      log.echoed = 0
    } else if (line.startsWith('SKYMESH TCP FAIL')) log.fails.push(line)
    else if (line.startsWith('SKYMESH TCP CLOSED')) log.closes.push(line)
    else {
      const ok = /^SKYMESH TCP OK n=(\d+)/.exec(line)
      if (ok) log.echoed = Number(ok[1])
    }
  }
  return log
}

/** Waits until `pred` holds for the serial console's lines; throws with the console's tail if not. */
export async function waitSerial(
  path: string,
  pred: (lines: string[]) => boolean,
  timeoutMs: number,
  what: string,
): Promise<string[]> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const lines = serialLines(path)
    if (pred(lines)) return lines
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}; serial console:\n${lines.slice(-10).join('\n')}`,
      )
    }
    await sleep(200)
  }
}

/** True if a process with this pid exists (and is not a zombie). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.split(') ')[1]?.[0] !== 'Z'
  } catch {
    return false
  }
}

/** Plays the overlay switch on a `-netdev stream` unix socket: sends and receives whole Ethernet frames. */
export class StreamPeer {
  private buf = Buffer.alloc(0)
  private readonly frames: Uint8Array[] = []
  private waiter: (() => void) | undefined

  private constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d])
      while (this.buf.length >= 4) {
        const len = this.buf.readUInt32BE(0)
        if (this.buf.length < 4 + len) break
        this.frames.push(new Uint8Array(this.buf.subarray(4, 4 + len)))
        this.buf = this.buf.subarray(4 + len)
      }
      this.waiter?.()
    })
  }

  static connect(path: string): Promise<StreamPeer> {
    return new Promise((resolve, reject) => {
      const s = createConnection(path)
      s.once('connect', () => resolve(new StreamPeer(s)))
      s.once('error', reject)
    })
  }

  send(frame: Uint8Array): void {
    const hdr = Buffer.alloc(4)
    hdr.writeUInt32BE(frame.length)
    this.socket.write(Buffer.concat([hdr, frame]))
  }

  /** The next received frame matching `pred` (others are dropped), or throws after `timeoutMs`. */
  async receive(pred: (f: Uint8Array) => boolean, timeoutMs: number): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      while (this.frames.length) {
        const f = this.frames.shift() as Uint8Array
        if (pred(f)) return f
      }
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no matching frame within ${timeoutMs} ms`)
      await new Promise<void>((r) => {
        const t = setTimeout(r, left)
        this.waiter = () => {
          clearTimeout(t)
          r()
        }
      })
    }
  }

  close(): void {
    this.socket.destroy()
  }
}

/** Pids of live QEMU processes whose command line contains `match` (e.g. a VM id or a data dir). */
export function qemuPids(match: string): number[] {
  const out: number[] = []
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0')
      if (cmd[0]?.includes('qemu-system') && cmd.some((a) => a.includes(match)) && processAlive(Number(d)))
        out.push(Number(d))
    } catch {
      // gone meanwhile
    }
  }
  return out
}

/** `len` bytes at `offset` of the guest-visible disk behind a qcow2 layer (read while QEMU holds it). */
export async function readGuestDisk(disk: string, offset: number, len: number): Promise<Buffer> {
  const tmp = mkdtempSync('/tmp/skq-dd-')
  try {
    const bs = 512
    await runFile('qemu-img', [
      'dd',
      '-U',
      '-f',
      'qcow2',
      '-O',
      'raw',
      `bs=${bs}`,
      // qemu-img 7.2's dd writes nothing when given skip=: read from the start instead
      `count=${Math.ceil((offset + len) / bs)}`,
      `if=${disk}`,
      `of=${tmp}/out.raw`,
    ])
    return readFileSync(`${tmp}/out.raw`).subarray(offset, offset + len)
  } finally {
    await rm(tmp, { recursive: true, force: true })
  }
}
