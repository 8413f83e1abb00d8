// A TCP relay on loopback for fault tests: agents announce the relay's address instead of their own,
// so every byte between them passes through here, and the test can cut the link (reset every socket
// and refuse new ones) and heal it again without touching the processes.
import { readFile } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'

export class TcpRelay {
  readonly #server: Server
  readonly #pairs = new Set<[Socket, Socket]>()
  #down = false
  #frozen = false
  /** Connections relayed so far (to check that traffic really goes through the relay). */
  accepted = 0

  private constructor(
    server: Server,
    readonly port: number,
    private readonly targetPort: number,
  ) {
    this.#server = server
  }

  /** Listens on 127.0.0.1 (port 0: any free port) and forwards to 127.0.0.1:targetPort. */
  static async start(targetPort: number): Promise<TcpRelay> {
    let relay: TcpRelay | undefined
    const server = createServer({ noDelay: true }, (client) => relay?.onClient(client))
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => resolve())
    })
    const address = server.address()
    if (!address || typeof address === 'string') throw new Error('relay has no port')
    relay = new TcpRelay(server, address.port, targetPort)
    return relay
  }

  get addr(): string {
    return `/ip4/127.0.0.1/tcp/${this.port}`
  }

  /** Open relayed connections. */
  get open(): number {
    return this.#pairs.size
  }

  /** Cuts the link: resets every relayed connection and refuses new ones until heal(). */
  cut(): void {
    this.#down = true
    for (const [a, b] of this.#pairs) {
      a.resetAndDestroy()
      b.resetAndDestroy()
    }
    this.#pairs.clear()
  }

  heal(): void {
    this.#down = false
  }

  /**
   * A silent link (a partition with no reset): nothing is forwarded either way, connections stay
   * open, new ones are accepted but carry nothing. thaw() lets the held bytes through again.
   */
  freeze(): void {
    this.#frozen = true
    for (const [a, b] of this.#pairs) {
      a.unpipe(b)
      b.unpipe(a)
      a.pause()
      b.pause()
    }
  }

  thaw(): void {
    this.#frozen = false
    for (const [a, b] of this.#pairs) this.#join(a, b)
  }

  #join(a: Socket, b: Socket): void {
    if (a.connecting || b.connecting) return
    a.pipe(b)
    b.pipe(a)
  }

  async close(): Promise<void> {
    this.cut()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  private onClient(client: Socket): void {
    if (this.#down) {
      client.resetAndDestroy()
      return
    }
    this.accepted++
    const upstream = new (client.constructor as typeof Socket)()
    const pair: [Socket, Socket] = [client, upstream]
    this.#pairs.add(pair)
    const drop = () => {
      if (!this.#pairs.delete(pair)) return
      client.destroy()
      upstream.destroy()
    }
    client.on('error', drop)
    client.on('close', drop)
    upstream.on('error', drop)
    upstream.on('close', drop)
    upstream.setNoDelay(true)
    upstream.connect(this.targetPort, '127.0.0.1', () => {
      if (!this.#frozen) this.#join(client, upstream)
    })
  }
}

/**
 * A free TCP port on 127.0.0.1 (for an agent that must listen on the same port after a restart, or
 * that opens its listener only later). It is picked at random below the kernel's ephemeral range:
 * a port from that range (what `listen(0)` hands out) can be taken meanwhile by any outgoing
 * connection on the machine, and the later listen then fails with EADDRINUSE (a CI flake).
 */
export async function freePort(): Promise<number> {
  const [low] = await ephemeralRange()
  const top = Math.min(low, 32768) - 1
  const bottom = Math.max(1024, top - 12_000)
  if (top - bottom < 1000) return kernelPort()
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = bottom + Math.floor(Math.random() * (top - bottom))
    if (await canListen(port)) return port
  }
  throw new Error(`no free port in ${bottom}-${top}`)
}

async function kernelPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  const address = server.address()
  await new Promise<void>((resolve) => server.close(() => resolve()))
  if (!address || typeof address === 'string') throw new Error('no port')
  return address.port
}

async function ephemeralRange(): Promise<[number, number]> {
  try {
    const [lo, hi] = (await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8'))
      .trim()
      .split(/\s+/)
      .map(Number)
    if (lo && hi) return [lo, hi]
  } catch {
    // not Linux: the IANA range
  }
  return [49152, 65535]
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}
