// A NIC attached as a Linux TAP device: the kernel's own network stack (the host's, or a network
// namespace's once the device is moved there) is then a VM on the virtual LAN.
//
// Node cannot issue ioctl(TUNSETIFF), so a helper process owns the TAP: Debian's `socat` opens it
// (`TUN,tun-type=tap,iff-no-pi`) and relays it to a UDP socket of the agent on 127.0.0.1. A read on
// a TAP returns exactly one frame and socat writes each read as one datagram (and each datagram it
// receives as one write), so frame boundaries survive without any framing of ours; a C helper would
// only be needed if they did not. Both ends accept only each other: socat's socket is connected to
// the agent's (`UDP:`, so the kernel drops datagrams from anyone else), and the agent checks the
// sender's port. (socat 1.7.4's `range` option crashes it, and `sourceport` drops every datagram.)
//
// Supervised: when socat exits the port is down (frames for it are dropped and counted), the exit is
// reported, and socat is started again with growing pauses until the port is closed. The TAP device
// lives as long as socat's file descriptor: a restart makes a fresh device (in the host namespace).
// The device is left down: whoever uses it (moves it into a namespace, gives it to a guest) brings it
// up, so the host's own stack never answers or routes the VM's traffic in the meantime.
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { createSocket, type Socket } from 'node:dgram'
import { accessSync, constants, existsSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'
import type { Mac } from './mac.js'

const run = promisify(execFile)
const RESTART_MS = [100, 500, 1000, 2000, 5000]
/** Largest frame socat moves in one read or write (a jumbo frame is 9018 bytes). */
const SOCAT_BLOCK = 65_536

export interface TapSupport {
  ok: boolean
  /** Why TAP attachment is not possible here (when `ok` is false). */
  reason?: string
  socat?: string
}

function onPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    const p = join(dir, cmd)
    try {
      accessSync(p, constants.X_OK)
      return p
    } catch {
      // not here
    }
  }
  return undefined
}

/** Whether this host lets the agent make TAP devices: root, /dev/net/tun, socat and ip. */
export function tapSupport(): TapSupport {
  const missing: string[] = []
  if (process.getuid?.() !== 0) missing.push('root (CAP_NET_ADMIN) to create TAP devices')
  if (!existsSync('/dev/net/tun')) missing.push('/dev/net/tun (the tun kernel module)')
  else {
    try {
      accessSync('/dev/net/tun', constants.R_OK | constants.W_OK)
    } catch {
      missing.push('read/write access to /dev/net/tun')
    }
  }
  const socat = onPath('socat')
  if (!socat) missing.push("socat (Debian: 'apt-get install socat')")
  if (!onPath('ip')) missing.push("ip (Debian: 'apt-get install iproute2')")
  return missing.length
    ? { ok: false, reason: `TAP attachment is not possible on this host: it needs ${missing.join(', ')}` }
    : { ok: true, socat }
}

/** A short interface name (at most 15 bytes, IFNAMSIZ - 1). */
export function isIfname(s: string): boolean {
  return /^[a-zA-Z0-9_.-]{1,15}$/.test(s)
}

export interface TapPortStats {
  rxFrames: number
  txFrames: number
  /** Frames for the NIC dropped because the helper was not running (port down). */
  txDropped: number
  /** Datagrams from anywhere but the helper's socket, dropped. */
  foreign: number
  /** Times the helper was started, and times it exited while the port was plugged in. */
  starts: number
  exits: number
}

export type TapEvent =
  | { type: 'up'; ifname: string; pid: number }
  | { type: 'down'; ifname: string; reason: string; restartInMs: number }

export interface TapPortInit {
  ifname: string
  mac: Mac
  mtu: number
  /** A frame from the TAP (the kernel's stack sent it), for the switch. */
  transmit: (frame: Uint8Array) => void
  onEvent?: (e: TapEvent) => void
  /** A frame was dropped: for the NIC while the port is down, or a datagram not from the helper. */
  onDrop?: (reason: 'nic-down' | 'nic-foreign') => void
  /** Path of socat (default: found on PATH). */
  socat?: string
}

export class TapPort {
  readonly stats: TapPortStats = { rxFrames: 0, txFrames: 0, txDropped: 0, foreign: 0, starts: 0, exits: 0 }
  #sock: Socket | undefined
  #child: ChildProcess | undefined
  #helperPort = 0
  #up = false
  #closed = false
  #attempt = 0
  #timer: NodeJS.Timeout | undefined
  #lastError = ''

  constructor(private readonly init: TapPortInit) {
    if (!isIfname(init.ifname)) throw new TypeError(`not an interface name: ${JSON.stringify(init.ifname)}`)
  }

  get ifname(): string {
    return this.init.ifname
  }

  /** The helper runs and the device exists (with its MAC and MTU set). */
  get up(): boolean {
    return this.#up
  }

  get pid(): number | undefined {
    return this.#child?.pid
  }

  get lastError(): string {
    return this.#lastError
  }

  /** Opens the agent's socket and starts the helper; resolves when the device exists or failed. */
  async start(): Promise<void> {
    const sock = createSocket('udp4')
    sock.on('message', (m, r) => {
      if (r.address !== '127.0.0.1' || r.port !== this.#helperPort || !this.#helperPort) {
        this.stats.foreign++
        this.init.onDrop?.('nic-foreign')
        return
      }
      this.stats.rxFrames++
      this.init.transmit(new Uint8Array(m.buffer, m.byteOffset, m.byteLength))
    })
    sock.on('error', (err) => {
      this.#lastError = err.message
    })
    await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve))
    this.#sock = sock
    await this.#spawn()
  }

  /** A frame from the switch for the NIC. */
  deliver(frame: Uint8Array): void {
    if (!this.#up || !this.#sock) {
      this.stats.txDropped++
      this.init.onDrop?.('nic-down')
      return
    }
    this.stats.txFrames++
    this.#sock.send(frame, this.#helperPort, '127.0.0.1')
  }

  /** Stops the helper (the device disappears with it) and the socket. */
  close(): void {
    this.#closed = true
    this.#up = false
    clearTimeout(this.#timer)
    this.#child?.kill('SIGTERM')
    this.#child = undefined
    this.#sock?.close()
    this.#sock = undefined
  }

  async #spawn(): Promise<void> {
    if (this.#closed || !this.#sock) return
    const socat = this.init.socat ?? tapSupport().socat ?? 'socat'
    const own = this.#sock.address().port
    const helperPort = await freeUdpPort()
    this.#helperPort = helperPort
    const child = spawn(
      socat,
      [
        '-b',
        String(SOCAT_BLOCK),
        `TUN,tun-type=tap,tun-name=${this.init.ifname},iff-no-pi`,
        `UDP:127.0.0.1:${own},bind=127.0.0.1:${helperPort}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    )
    this.#child = child
    this.stats.starts++
    let stderr = ''
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-2000)
    })
    const exited = new Promise<void>((resolve) => {
      let gone = false
      const end = (why: string) => {
        if (gone) return
        gone = true
        if (this.#child === child) this.#onExit(why)
        resolve()
      }
      // spawn failures (ENOENT) emit 'error' and maybe no 'exit'
      child.on('error', (err) => end(`socat did not start: ${err.message}`))
      child.on('exit', (code, signal) =>
        end(`socat exited (${signal ?? `code ${code}`}): ${lastLine(stderr) || 'no message'}`),
      )
    })
    // The device exists once socat has opened it: then set its MAC and MTU.
    const ready = (async () => {
      for (let i = 0; i < 100 && this.#child === child && child.exitCode === null; i++) {
        try {
          await run('ip', [
            'link',
            'set',
            'dev',
            this.init.ifname,
            'address',
            this.init.mac,
            'mtu',
            String(this.init.mtu),
          ])
          return true
        } catch {
          await new Promise((r) => setTimeout(r, 30))
        }
      }
      return false
    })()
    const ok = await Promise.race([ready, exited.then(() => false)])
    if (ok && this.#child === child && child.exitCode === null && !this.#closed) {
      this.#up = true
      this.#attempt = 0
      this.init.onEvent?.({ type: 'up', ifname: this.init.ifname, pid: child.pid ?? 0 })
    } else if (this.#child === child && child.exitCode === null) {
      // socat runs but the device never appeared (or could not be configured): start over
      child.kill('SIGTERM')
    }
  }

  #onExit(reason: string): void {
    this.#up = false
    this.#child = undefined
    this.#lastError = reason
    if (this.#closed) return
    this.stats.exits++
    const ms = RESTART_MS[Math.min(this.#attempt++, RESTART_MS.length - 1)]!
    this.init.onEvent?.({ type: 'down', ifname: this.init.ifname, reason, restartInMs: ms })
    this.#timer = setTimeout(() => void this.#spawn(), ms)
    this.#timer.unref()
  }
}

function lastLine(s: string): string {
  return (
    s
      .trim()
      .split('\n')
      .pop()
      ?.replace(/^\S+ \S+ socat\[\d+\] /, '') ?? ''
  )
}

/** A UDP port on 127.0.0.1 that was free a moment ago (socat binds it; a lost race restarts it). */
async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4')
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve))
  const port = s.address().port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}
