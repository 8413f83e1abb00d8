// A mesh of real agents that faults are injected into: on loopback (processes) or, where the machine
// allows it, in network namespaces grouped into sites (test/helpers/netns.ts). Each host keeps its
// data dir and listen address across kills and restarts, so a restarted agent is the same peer at
// the same address. Every exit the mesh did not cause itself is counted as a crash.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type RunningAgent, removeDir, startAgent, tempDir } from '../helpers/agent-process.js'
import { NetnsMesh, type SiteSpec } from '../helpers/netns.js'
import { freePort } from '../helpers/tcp-relay.js'

/** Fast failure detection, so a scenario's faults are seen within seconds. */
const AGENT_CONFIG = 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 200\n  suspicionMult: 4\n'

export interface MeshHost {
  index: number
  site: string
  dataDir: string
  listen: string
  ns?: string
  ip: string
  agent?: RunningAgent
  /** Known once the host's agent has started (it keeps its key across restarts). */
  peerId?: string
  /** Set while the mesh itself stops or kills the agent: that exit is not a crash. */
  expectingExit: boolean
}

export interface Crash {
  host: number
  code: number | null
  signal: NodeJS.Signals | null
  tail: string
}

export class FaultMesh {
  readonly hosts: MeshHost[] = []
  readonly crashes: Crash[] = []
  readonly netns: NetnsMesh | undefined
  readonly #dir: string
  readonly #config: string

  private constructor(dir: string, netns?: NetnsMesh) {
    this.#dir = dir
    this.#config = join(dir, 'agent.yaml')
    this.netns = netns
  }

  /** `n` agents on loopback, spread over the given sites (names only: no shaping on loopback). */
  static async loopback(n: number, sites = ['site-a']): Promise<FaultMesh> {
    const mesh = new FaultMesh(await tempDir('skymesh-faults-'))
    await writeFile(mesh.#config, AGENT_CONFIG)
    for (let i = 0; i < n; i++) await mesh.#addHost(sites[i % sites.length]!, '127.0.0.1')
    await mesh.#startAll()
    return mesh
  }

  /** One agent per host of a namespace mesh (needs root; see netnsUnavailable). */
  static async namespaces(sites: SiteSpec[]): Promise<FaultMesh> {
    const net = await NetnsMesh.create(sites)
    const mesh = new FaultMesh(await tempDir('skymesh-faults-'), net)
    try {
      await writeFile(mesh.#config, AGENT_CONFIG)
      for (const h of net.hosts) await mesh.#addHost(h.site, h.ip, h.ns)
      await mesh.#startAll()
    } catch (err) {
      await mesh.destroy()
      throw err
    }
    return mesh
  }

  /** A new host joins (churn). */
  async join(site: string): Promise<MeshHost> {
    const h = await this.#addHost(site, '127.0.0.1')
    await this.start(h.index)
    return h
  }

  live(): RunningAgent[] {
    return this.hosts.flatMap((h) => (h.agent ? [h.agent] : []))
  }

  liveHosts(): MeshHost[] {
    return this.hosts.filter((h) => h.agent)
  }

  down(): MeshHost[] {
    return this.hosts.filter((h) => !h.agent)
  }

  async start(i: number): Promise<RunningAgent> {
    const h = this.hosts[i]!
    if (h.agent) return h.agent
    const bootstrap = this.#bootstrap(i)
    const agent = await startAgent({
      dataDir: h.dataDir,
      site: h.site,
      listen: h.listen,
      listenHost: h.ip,
      ...(h.ns ? { netns: h.ns } : {}),
      bootstrap,
      args: ['--config', this.#config, '--log-level', 'info'],
      timeoutMs: 120_000,
    })
    h.agent = agent
    h.expectingExit = false
    h.peerId = agent.peerId
    agent.proc.once('exit', (code, signal) => {
      if (h.agent === agent) h.agent = undefined
      if (!h.expectingExit) this.crashes.push({ host: i, code, signal, tail: agent.output().slice(-2000) })
    })
    return agent
  }

  async kill(i: number): Promise<void> {
    const h = this.hosts[i]!
    const agent = h.agent
    if (!agent) return
    h.expectingExit = true
    h.agent = undefined
    await agent.kill9()
  }

  async stop(i: number): Promise<void> {
    const h = this.hosts[i]!
    const agent = h.agent
    if (!agent) return
    h.expectingExit = true
    h.agent = undefined
    await agent.stop()
  }

  async restart(i: number): Promise<RunningAgent> {
    await this.stop(i)
    return this.start(i)
  }

  /** Starts every host that is down. */
  async startDown(): Promise<void> {
    for (const h of this.down()) await this.start(h.index)
  }

  async destroy(): Promise<void> {
    for (const h of this.hosts) {
      h.expectingExit = true
      await h.agent?.stop()
      h.agent = undefined
    }
    await this.netns?.destroy()
    await removeDir(this.#dir)
  }

  async #addHost(site: string, ip: string, ns?: string): Promise<MeshHost> {
    const index = this.hosts.length
    // Inside a namespace every port is free; on loopback, one the kernel just handed out
    const port = ns ? 4001 : await freePort()
    const h: MeshHost = {
      index,
      site,
      dataDir: join(this.#dir, `h${index}`),
      listen: `/ip4/${ip}/tcp/${port}`,
      ip,
      expectingExit: false,
      ...(ns ? { ns } : {}),
    }
    this.hosts.push(h)
    return h
  }

  async #startAll(): Promise<void> {
    await this.start(0)
    // Two at a time: a starting agent takes ~1.5 CPU-seconds and the machine has 2 cores
    for (let i = 1; i < this.hosts.length; i += 2) {
      await Promise.all([i, i + 1].filter((j) => j < this.hosts.length).map((j) => this.start(j)))
    }
  }

  /** Up to two other hosts that have started before, by their fixed addresses. */
  #bootstrap(i: number): string[] {
    return this.hosts
      .filter((h) => h.index !== i && h.peerId)
      .slice(0, 2)
      .map((h) => `${h.listen}/p2p/${h.peerId}`)
  }
}
