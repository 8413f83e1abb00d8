// A multi-host, multi-site test network built from Linux network namespaces: every "host" is a
// namespace with its own address, hosts of a site share a bridge behind a site router, and the
// routers meet on a backbone. The wide-area link of each site can be shaped (tbf: bandwidth),
// made lossy (iptables statistic) or cut (iptables DROP: a partition). Everything it creates is
// named with a unique prefix and removed by destroy(); traffic never leaves the namespaces (the
// test process reaches the agents' APIs through one veth into the backbone). A site may sit behind
// NAT (`nat: true`): its router masquerades outbound connections and refuses inbound ones (all but
// the test process's own, which reach the agents' APIs).
//
//   root ns ── veth ── [core ns: bridge] ── veth ── [router ns of site s: bridge] ── veth ── [host ns]
//   10.N.0.254             10.N.0.0/24        10.N.0.s      10.N.s.1/24                 10.N.s.(10+k)
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { randomInt } from 'node:crypto'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { type RunningAgent, startAgent } from './agent-process.js'

const run = promisify(execFile)

/** test/helpers/delay-line.py (it is not compiled: from dist/, look in the source tree). */
const DELAY_LINE = fileURLToPath(new URL('./delay-line.py', import.meta.url)).replace(
  /\/dist\/test\/helpers\//,
  '/test/helpers/',
)

export interface SiteSpec {
  name: string
  hosts: number
  /**
   * Behind NAT: the router masquerades what its hosts open towards other sites and refuses new
   * inbound connections (TCP reset, so a dial fails at once rather than at its timeout; other
   * packets are dropped). Only the test process's address may still open connections in (its API
   * requests).
   */
  nat?: boolean
}

export interface NetnsHost {
  /** Namespace name (also used in interface names, so it stays short). */
  ns: string
  site: string
  /** Index of the host inside its site, from 0. */
  index: number
  ip: string
}

export interface LinkShape {
  /** Bandwidth of the site's wide-area link in Mbit/s (each direction). */
  rateMbit?: number
  /** Probability (0..1) that a packet crossing the site's wide-area link is dropped. */
  loss?: number
  /**
   * One-way delay (ms) added to every packet leaving the site for another site (through a
   * user-space delay line, see delay-line.py): the RTT between sites s and t is delay(s) + delay(t).
   */
  delayMs?: number
}

/** Why the harness cannot run here, or undefined when it can. */
export async function netnsUnavailable(): Promise<string | undefined> {
  if (process.platform !== 'linux') return 'network namespaces need Linux'
  if (process.getuid?.() !== 0) return 'network namespaces need root'
  for (const tool of ['ip', 'tc', 'iptables']) {
    if (!['/usr/sbin', '/sbin', '/usr/bin', '/bin'].some((d) => existsSync(`${d}/${tool}`))) {
      return `${tool} is not installed (apt-get install iproute2 iptables)`
    }
  }
  // The kernel may forbid namespaces (e.g. inside an unprivileged container): try one.
  const probe = `smprobe${process.pid % 100000}`
  try {
    await run('ip', ['netns', 'add', probe])
    await run('ip', ['netns', 'del', probe])
  } catch (err) {
    return `cannot create a network namespace: ${(err as Error).message.split('\n')[0]}`
  }
  return undefined
}

/**
 * The match and target of a NAT router's POSTROUTING rule: connections from `lan` to anywhere else
 * leave with the router's address. `randomPorts`: each new one from a random source port too
 * (MASQUERADE --random-fully), a NAT no hole punch gets through.
 */
export function masquerade(lan: string, opts: { randomPorts?: boolean } = {}): string[] {
  return ['-s', lan, '!', '-d', lan, '-j', 'MASQUERADE', ...(opts.randomPorts ? ['--random-fully'] : [])]
}

export class NetnsMesh {
  readonly hosts: NetnsHost[] = []
  readonly #prefix: string
  readonly #net: number
  readonly #sites: SiteSpec[]
  readonly #namespaces: string[] = []
  readonly #delayLines = new Map<number, ChildProcess>()
  #rootVeth = ''
  #destroyed = false

  private constructor(prefix: string, net: number, sites: SiteSpec[]) {
    this.#prefix = prefix
    this.#net = net
    this.#sites = sites
  }

  /** Builds the network; on failure everything built so far is removed again. */
  static async create(sites: SiteSpec[]): Promise<NetnsMesh> {
    if (sites.length < 1 || sites.length > 20) throw new Error('1..20 sites')
    if (sites.some((s) => s.hosts < 1 || s.hosts > 200)) throw new Error('1..200 hosts per site')
    // A unique prefix per harness (interface names are limited to 15 characters) and a /16 of
    // 10.0.0.0/8 that no existing route uses, so several harnesses can run side by side.
    const prefix = `sm${randomInt(36 ** 3)
      .toString(36)
      .padStart(3, '0')}`
    const net = await freeSlash16()
    const mesh = new NetnsMesh(prefix, net, sites)
    try {
      await mesh.#build()
    } catch (err) {
      await mesh.destroy()
      throw err
    }
    return mesh
  }

  get sites(): readonly SiteSpec[] {
    return this.#sites
  }

  hostsOf(site: string): NetnsHost[] {
    return this.hosts.filter((h) => h.site === site)
  }

  /** Runs a command inside a namespace and returns its stdout. */
  async exec(ns: string, cmd: string, args: string[]): Promise<string> {
    const { stdout } = await run('ip', ['netns', 'exec', ns, cmd, ...args])
    return stdout
  }

  /**
   * Starts `skymesh agent` inside the host's namespace: libp2p and the API listen on the host's
   * address (the API on the namespace address is reachable only from this test's backbone).
   */
  async startAgent(
    host: NetnsHost,
    opts: { dataDir?: string; bootstrap?: string[]; args?: string[]; timeoutMs?: number } = {},
  ): Promise<RunningAgent> {
    return startAgent({
      ...opts,
      site: host.site,
      netns: host.ns,
      listenHost: host.ip,
    })
  }

  /** Shapes the wide-area link of a site (both directions); an empty shape removes the shaping. */
  async shapeSite(site: string, shape: LinkShape): Promise<void> {
    const s = this.#siteIndex(site)
    const router = this.#routerNs(s)
    const core = this.#coreNs()
    const uplink = `${this.#prefix}u${s}`
    const downlink = `${this.#prefix}c${s}`
    for (const [ns, dev] of [
      [router, uplink],
      [core, downlink],
    ] as const) {
      await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'del', 'dev', dev, 'root']).catch(() => undefined)
      if (shape.rateMbit) {
        // burst: at least one MTU and ~2 ms at the rate; latency bounds the queue (bufferbloat)
        const burstBytes = Math.max(16 * 1024, Math.ceil((shape.rateMbit * 1e6) / 8 / 500))
        await run('ip', [
          'netns',
          'exec',
          ns,
          'tc',
          'qdisc',
          'add',
          'dev',
          dev,
          'root',
          'tbf',
          'rate',
          `${shape.rateMbit}mbit`,
          'burst',
          String(burstBytes),
          'latency',
          '50ms',
        ])
      }
    }
    await this.#iptables(router, ['-F', 'SMLOSS'])
    if (shape.loss && shape.loss > 0) {
      if (shape.loss >= 1) throw new Error('loss must be below 1 (use partition() to cut a link)')
      for (const dir of ['-i', '-o']) {
        await this.#iptables(router, [
          '-A',
          'SMLOSS',
          dir,
          uplink,
          '-m',
          'statistic',
          '--mode',
          'random',
          '--probability',
          String(shape.loss),
          '-j',
          'DROP',
        ])
      }
    }
    await this.#setDelay(s, shape.delayMs ?? 0)
  }

  /** Routes the site's outbound inter-site packets through a delay line (or straight, for 0). */
  async #setDelay(s: number, delayMs: number): Promise<void> {
    const router = this.#routerNs(s)
    const old = this.#delayLines.get(s)
    if (old) {
      old.kill('SIGKILL')
      this.#delayLines.delete(s)
    }
    await run('ip', ['-n', router, 'rule', 'del', 'iif', 'lan', 'lookup', '100']).catch(() => undefined)
    if (delayMs <= 0) return
    const line = spawn('ip', ['netns', 'exec', router, 'python3', DELAY_LINE, 'dl', String(delayMs)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.#delayLines.set(s, line)
    let stderr = ''
    line.stderr?.on('data', (d) => {
      stderr += d
    })
    await new Promise<void>((resolve, reject) => {
      line.stdout?.once('data', () => resolve())
      line.once('exit', (code) => reject(new Error(`delay line exited with ${code}: ${stderr}`)))
    })
    // Packets from the site's hosts to other sites go into the delay line, and come back out of
    // it into the main table (its packets arrive on `dl`, not `lan`, so they are not looped).
    await run('ip', ['-n', router, 'rule', 'add', 'iif', 'lan', 'lookup', '100'])
  }

  /**
   * Bytes that crossed the site's wide-area link so far (its router's uplink interface counters):
   * `in` entered the site from the backbone, `out` left it.
   */
  async siteLinkBytes(site: string): Promise<{ in: number; out: number }> {
    const s = this.#siteIndex(site)
    const { stdout } = await run('ip', [
      '-n',
      this.#routerNs(s),
      '-s',
      '-j',
      'link',
      'show',
      'dev',
      `${this.#prefix}u${s}`,
    ])
    const stats = (JSON.parse(stdout) as { stats64: { rx: { bytes: number }; tx: { bytes: number } } }[])[0]!
      .stats64
    return { in: stats.rx.bytes, out: stats.tx.bytes }
  }

  /** Cuts every packet between two sites (both directions) until heal(). */
  async partition(siteA: string, siteB: string): Promise<void> {
    const a = this.#siteIndex(siteA)
    const b = this.#siteIndex(siteB)
    for (const [from, to] of [
      [a, b],
      [b, a],
    ] as const) {
      await this.#iptables(this.#routerNs(from), [
        '-A',
        'SMCUT',
        '-s',
        this.#siteSubnet(from),
        '-d',
        this.#siteSubnet(to),
        '-j',
        'DROP',
      ])
    }
  }

  /** Removes every partition. */
  async heal(): Promise<void> {
    for (let s = 1; s <= this.#sites.length; s++) await this.#iptables(this.#routerNs(s), ['-F', 'SMCUT'])
  }

  /** Removes every namespace, link and route this mesh created. Safe to call twice. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return
    this.#destroyed = true
    for (const line of this.#delayLines.values()) line.kill('SIGKILL')
    this.#delayLines.clear()
    if (this.#rootVeth) await run('ip', ['link', 'del', this.#rootVeth]).catch(() => undefined)
    // Deleting a namespace deletes its interfaces and their veth peers.
    for (const ns of this.#namespaces.reverse()) await run('ip', ['netns', 'del', ns]).catch(() => undefined)
  }

  #siteIndex(site: string): number {
    const i = this.#sites.findIndex((s) => s.name === site)
    if (i < 0) throw new Error(`unknown site ${site}`)
    return i + 1
  }

  #coreNs(): string {
    return `${this.#prefix}core`
  }

  #routerNs(s: number): string {
    return `${this.#prefix}r${s}`
  }

  #siteSubnet(s: number): string {
    return `10.${this.#net}.${s}.0/24`
  }

  async #iptables(ns: string, args: string[]): Promise<void> {
    await run('ip', ['netns', 'exec', ns, 'iptables', '-w', ...args])
  }

  /** The router of site s becomes a NAT: masquerade out, refuse new connections in. */
  async #natRouter(s: number): Promise<void> {
    const router = this.#routerNs(s)
    const lan = this.#siteSubnet(s)
    const testDoor = `10.${this.#net}.0.254`
    await this.#iptables(router, ['-t', 'nat', '-A', 'POSTROUTING', ...masquerade(lan)])
    await this.#iptables(router, ['-N', 'SMNAT'])
    await this.#iptables(router, ['-A', 'FORWARD', '-d', lan, '-j', 'SMNAT'])
    const rules = [
      ['-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT'],
      ['-s', lan, '-j', 'ACCEPT'],
      ['-s', testDoor, '-j', 'ACCEPT'],
      ['-p', 'tcp', '-j', 'REJECT', '--reject-with', 'tcp-reset'],
      ['-j', 'DROP'],
    ]
    for (const rule of rules) await this.#iptables(router, ['-A', 'SMNAT', ...rule])
    // Unsolicited TCP to the router's own (public) address is dropped silently, as most NATs do:
    // a kernel RST from here would end the other side's half of a TCP simultaneous open (hole
    // punching) before this side's SYN arrives (see test/cluster/nat-punch.test.ts).
    await this.#iptables(router, ['-A', 'INPUT', '-i', `${this.#prefix}u${s}`, '-p', 'tcp', '-j', 'DROP'])
  }

  /** The namespace of a site's router (for tests that read its conntrack table). */
  routerNs(site: string): string {
    return this.#routerNs(this.#siteIndex(site))
  }

  /** The address of a site's router on the backbone: a NATed site's hosts appear from it. */
  routerIp(site: string): string {
    return `10.${this.#net}.0.${this.#siteIndex(site)}`
  }

  /** Whether site `site` sits behind NAT. */
  isNat(site: string): boolean {
    return Boolean(this.#sites[this.#siteIndex(site) - 1]?.nat)
  }

  async #addNs(ns: string): Promise<void> {
    await run('ip', ['netns', 'add', ns])
    this.#namespaces.push(ns)
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
  }

  async #build(): Promise<void> {
    const p = this.#prefix
    const n = this.#net
    const core = this.#coreNs()
    await this.#addNs(core)
    await run('ip', ['-n', core, 'link', 'add', 'br0', 'type', 'bridge'])
    await run('ip', ['-n', core, 'link', 'set', 'br0', 'up'])

    // The test process's own door into the backbone.
    this.#rootVeth = `${p}root`
    await run('ip', ['link', 'add', this.#rootVeth, 'type', 'veth', 'peer', 'name', `${p}rootp`])
    await run('ip', ['link', 'set', `${p}rootp`, 'netns', core])
    await run('ip', ['-n', core, 'link', 'set', `${p}rootp`, 'master', 'br0', 'up'])
    await run('ip', ['addr', 'add', `10.${n}.0.254/24`, 'dev', this.#rootVeth])
    await run('ip', ['link', 'set', this.#rootVeth, 'up'])

    for (let s = 1; s <= this.#sites.length; s++) {
      const site = this.#sites[s - 1]!
      const router = this.#routerNs(s)
      await this.#addNs(router)
      // uplink: router <-> backbone bridge
      const uplink = `${p}u${s}`
      const downlink = `${p}c${s}`
      await run('ip', [
        'link',
        'add',
        uplink,
        'netns',
        router,
        'type',
        'veth',
        'peer',
        'name',
        downlink,
        'netns',
        core,
      ])
      await run('ip', ['-n', core, 'link', 'set', downlink, 'master', 'br0', 'up'])
      await run('ip', ['-n', router, 'addr', 'add', `10.${n}.0.${s}/24`, 'dev', uplink])
      await run('ip', ['-n', router, 'link', 'set', uplink, 'up'])
      await run('ip', ['-n', router, 'link', 'add', 'lan', 'type', 'bridge'])
      await run('ip', ['-n', router, 'addr', 'add', `10.${n}.${s}.1/24`, 'dev', 'lan'])
      await run('ip', ['-n', router, 'link', 'set', 'lan', 'up'])
      await run('ip', ['netns', 'exec', router, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'])
      // The delay line's device (see #setDelay); packets re-enter from it with foreign sources.
      await run('ip', ['-n', router, 'tuntap', 'add', 'dev', 'dl', 'mode', 'tun'])
      for (const dev of ['all', 'default', 'dl']) {
        await run('ip', ['netns', 'exec', router, 'sysctl', '-qw', `net.ipv4.conf.${dev}.rp_filter=0`])
      }
      await run('ip', ['-n', router, 'link', 'set', 'dl', 'up'])
      // Chains for loss and cuts, hooked into forwarding (only routed, inter-site packets).
      for (const chain of ['SMLOSS', 'SMCUT']) {
        await this.#iptables(router, ['-N', chain])
        await this.#iptables(router, ['-A', 'FORWARD', '-j', chain])
      }
      if (site.nat) await this.#natRouter(s)
      await run('ip', ['route', 'add', `10.${n}.${s}.0/24`, 'via', `10.${n}.0.${s}`])
      for (let k = 0; k < site.hosts; k++) {
        const ns = `${p}s${s}h${k}`
        const ip = `10.${n}.${s}.${10 + k}`
        await this.#addNs(ns)
        const hostSide = `${p}e${s}x${k}`
        await run('ip', [
          'link',
          'add',
          'eth0',
          'netns',
          ns,
          'type',
          'veth',
          'peer',
          'name',
          hostSide,
          'netns',
          router,
        ])
        await run('ip', ['-n', router, 'link', 'set', hostSide, 'master', 'lan', 'up'])
        await run('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0'])
        await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
        await run('ip', ['-n', ns, 'route', 'add', 'default', 'via', `10.${n}.${s}.1`])
        this.hosts.push({ ns, site: site.name, index: k, ip })
      }
    }
    // Routers reach the other sites through their routers on the backbone.
    for (let s = 1; s <= this.#sites.length; s++) {
      for (let t = 1; t <= this.#sites.length; t++) {
        if (s === t) continue
        const router = this.#routerNs(s)
        await run('ip', ['-n', router, 'route', 'add', `10.${n}.${t}.0/24`, 'via', `10.${n}.0.${t}`])
        // the same destinations through the delay line, for packets the rule of #setDelay sends here
        await run('ip', ['-n', router, 'route', 'add', `10.${n}.${t}.0/24`, 'dev', 'dl', 'table', '100'])
      }
    }
  }
}

/** A second octet N such that no route of this host touches 10.N.0.0/16. */
async function freeSlash16(): Promise<number> {
  const { stdout } = await run('ip', ['-4', 'route', 'show'])
  const used = new Set([...stdout.matchAll(/\b10\.(\d+)\./g)].map((m) => Number(m[1])))
  for (let attempt = 0; attempt < 100; attempt++) {
    const n = 100 + randomInt(150)
    if (!used.has(n)) return n
  }
  throw new Error('no free 10.N.0.0/16 for the test network')
}
