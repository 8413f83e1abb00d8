// A QEMU guest's NIC on the virtual switch: QEMU's `-netdev stream` listens on a unix socket and
// carries Ethernet frames each prefixed with its length (4 bytes, big-endian). The port connects to
// that socket, hands the guest's frames to the switch and writes the switch's frames to the guest.
// It reconnects while plugged in (QEMU may not listen yet, or restart), and it never buffers without
// bound: a guest that does not read loses frames, like a NIC whose ring is full.
import { createConnection, type Socket } from 'node:net'

/** Frames larger than this are not Ethernet (jumbo frames are 9018 bytes): the stream is broken. */
const MAX_FRAME = 65_535
/** Bytes queued towards a guest that is not reading before frames are dropped. */
const MAX_QUEUED = 4 * 1024 * 1024
const RECONNECT_MS = [50, 100, 200, 500, 1000]

export interface StreamPortStats {
  rxFrames: number
  txFrames: number
  /** Frames for the guest dropped: not connected, or the guest does not keep up. */
  txDropped: number
  /** Connections made (more than one: QEMU restarted or the socket was lost). */
  connects: number
  /** The stream carried a length no Ethernet frame has: the connection was dropped. */
  broken: number
}

export interface StreamPortInit {
  path: string
  /** A frame from the guest, for the switch. */
  transmit: (frame: Uint8Array) => void
  onError?: (err: Error) => void
  /** A frame for the guest was dropped: not connected ('nic-down') or the guest does not read ('nic-full'). */
  onDrop?: (reason: 'nic-down' | 'nic-full') => void
}

export class StreamPort {
  readonly stats: StreamPortStats = { rxFrames: 0, txFrames: 0, txDropped: 0, connects: 0, broken: 0 }
  #socket: Socket | undefined
  #connected = false
  #closed = false
  #attempt = 0
  #timer: NodeJS.Timeout | undefined
  #buf: Buffer = Buffer.alloc(0)

  constructor(private readonly init: StreamPortInit) {
    this.#connect()
  }

  get connected(): boolean {
    return this.#connected
  }

  /** A frame from the switch for the guest. */
  deliver(frame: Uint8Array): void {
    const s = this.#socket
    if (!this.#connected || !s || s.writableLength > MAX_QUEUED) {
      this.stats.txDropped++
      this.init.onDrop?.(!this.#connected || !s ? 'nic-down' : 'nic-full')
      return
    }
    const hdr = Buffer.allocUnsafe(4)
    hdr.writeUInt32BE(frame.length)
    s.write(hdr)
    s.write(frame)
    this.stats.txFrames++
  }

  close(): void {
    this.#closed = true
    clearTimeout(this.#timer)
    this.#socket?.destroy()
    this.#socket = undefined
    this.#connected = false
  }

  #connect(): void {
    if (this.#closed) return
    const s = createConnection(this.init.path)
    this.#socket = s
    s.on('connect', () => {
      this.#connected = true
      this.#attempt = 0
      this.stats.connects++
    })
    s.on('data', (d: Buffer) => this.#onData(s, d))
    s.on('error', (err) => {
      // ENOENT/ECONNREFUSED while QEMU starts are expected; the rest is worth a line
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'ENOENT' && code !== 'ECONNREFUSED') this.init.onError?.(err)
    })
    s.on('close', () => {
      if (this.#socket !== s) return
      this.#connected = false
      this.#socket = undefined
      this.#buf = Buffer.alloc(0)
      if (this.#closed) return
      const ms = RECONNECT_MS[Math.min(this.#attempt++, RECONNECT_MS.length - 1)]!
      this.#timer = setTimeout(() => this.#connect(), ms)
      this.#timer.unref()
    })
  }

  #onData(s: Socket, d: Buffer): void {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, d]) : d
    while (this.#buf.length >= 4) {
      const len = this.#buf.readUInt32BE(0)
      if (len === 0 || len > MAX_FRAME) {
        this.stats.broken++
        this.init.onError?.(new Error(`the NIC stream carried a ${len}-byte frame: reconnecting`))
        s.destroy()
        return
      }
      if (this.#buf.length < 4 + len) break
      // A copy: the switch may keep the frame after this buffer is reused
      const frame = new Uint8Array(this.#buf.subarray(4, 4 + len))
      this.#buf = this.#buf.subarray(4 + len)
      this.stats.rxFrames++
      this.init.transmit(frame)
    }
  }
}
