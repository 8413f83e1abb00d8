// A TCP relay on loopback for fault tests: agents announce the relay's address instead of their own,
// so every byte between them passes through here, and the test can cut the link (reset every socket
// and refuse new ones) and heal it again without touching the processes.
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

/** A free TCP port on 127.0.0.1 (for an agent that must listen on the same port after a restart). */
export async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  const address = server.address()
  await new Promise<void>((resolve) => server.close(() => resolve()))
  if (!address || typeof address === 'string') throw new Error('no port')
  return address.port
}
