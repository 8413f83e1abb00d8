// Keeps us connected to the bootstrap peers: dials each one we have no connection to, now and then
// every interval. A peer on a mesh with another key never answers the pnet handshake, so every dial
// carries a timeout.
import type { PeerId } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import type { Host } from './p2p.js'

export interface BootstrapInit {
  host: Host
  logger: Logger
  addrs: readonly string[]
  intervalMs: number
  dialTimeoutMs: number
}

export class Bootstrapper {
  private timer?: NodeJS.Timeout
  private running = false
  /** Peer ids learnt from addresses that did not name one. */
  private readonly learnt = new Map<string, PeerId>()
  private stopped = false

  constructor(private readonly init: BootstrapInit) {}

  start(): void {
    if (this.init.addrs.length === 0) return
    void this.tick()
    this.timer = setInterval(() => void this.tick(), this.init.intervalMs)
    this.timer.unref()
  }

  stop(): void {
    this.stopped = true
    clearInterval(this.timer)
  }

  private async tick(): Promise<void> {
    if (this.running || this.stopped) return
    this.running = true
    try {
      await Promise.all(this.init.addrs.map((a) => this.ensure(a)))
    } finally {
      this.running = false
    }
  }

  private async ensure(addr: string): Promise<void> {
    const { host, logger } = this.init
    const ma = multiaddr(addr)
    const named = ma.getComponents().find((c) => c.name === 'p2p')?.value
    if (named === host.peerId.toString()) return
    const known = named ?? this.learnt.get(addr)?.toString()
    if (known && host.getPeers().some((p) => p.toString() === known)) return
    try {
      const conn = await host.dial(ma, { signal: AbortSignal.timeout(this.init.dialTimeoutMs) })
      this.learnt.set(addr, conn.remotePeer)
      logger.info({ addr, peer: conn.remotePeer.toString() }, 'connected to bootstrap peer')
    } catch (err) {
      if (!this.stopped)
        logger.warn({ addr, err: (err as Error).message }, 'bootstrap peer unreachable; will retry')
    }
  }
}
