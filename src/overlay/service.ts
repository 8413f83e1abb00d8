// The overlay of one agent: its virtual switch, the frame transport to other agents, the synthetic
// NICs of its VMs, the networks it knows and the NICs it allocated. I/O lives here; decisions about
// frames live in the switch.
//
// Dissemination: each host announces its networks and its VMs' NICs inside its signed, versioned
// gossip state (HostState.overlay, an encoded OverlayHostState). The location table says which
// host runs a VM, so MAC -> host is (NIC of VM) x (location of VM): the MAC table can never disagree
// with the location table, and a migration's location update (epoch bump) moves the MACs with it.
// Right after a handover the destination also sends an OverlayAnnounce on the frame streams, so
// peers reroute before gossip catches up; the epoch orders both.
import { createHash } from 'node:crypto'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import { decodeHostOverlay, encodeHostOverlay, type HostOverlay } from './codec.js'
import { ipFromNumber, ipToNumber } from './frame.js'
import { allocateIp, parseSubnet, subnetContains, usableRange } from './ipam.js'
import { allocateMac, isGroupMac, isMac, ZERO_MAC } from './mac.js'
import { type MetadataProvider, MetadataServer, type VmMetadata } from './metadata.js'
import { registerOverlayMetrics } from './metrics.js'
import { StreamPort } from './stream-port.js'
import { DEFAULT_MTU, type RemoteNic, VirtualSwitch } from './switch.js'
import { type PingResult, SyntheticNic } from './synthetic-nic.js'
import { TapPort, type TapPortStats, type TapSupport, tapSupport } from './tap-port.js'
import { type OverlayHost, OverlayTransport, type WireAnnounce, type WireFrame } from './transport.js'
import {
  type NetworkDef,
  type NetworkDetail,
  type NetworkMember,
  type NetworkSummary,
  type NicAttach,
  type NicRecord,
  OverlayError,
  type OverlayStore,
} from './types.js'

/** What the overlay reads from gossip. */
export interface OverlayGossip {
  hosts(): { peerId: string; version: number; overlay?: Uint8Array }[]
  where(vmId: string): { host: string; epoch: number; name: string } | undefined
  /** Calls `fn` whenever a host's state changes; returns an unsubscribe. */
  subscribe(fn: () => void): () => void
  /** Our announcement changed: publish soon. */
  notifyChanged(): void
}

export interface NetworkConfig {
  name: string
  subnet: string
  mtu?: number
}

export interface OverlayServiceInit {
  self: string
  host: OverlayHost
  gossip: OverlayGossip
  store: OverlayStore
  logger: Logger
  metrics?: Registry
  /** Networks from the agent's config file (present on every host that lists them). */
  networks?: readonly NetworkConfig[]
  /** How long a VM's previous host relays frames for it after a migration; default 10 s. */
  graceMs?: number
  dialTimeoutMs?: number
  /**
   * A VM's context for the metadata service at 169.254.169.254 (the virtual cluster's). Default, and
   * when it returns undefined: the VM's own name, MAC and address.
   */
  metadata?: MetadataProvider
  /** Whether TAP devices can be made here (default: root, /dev/net/tun, socat, ip). */
  tapSupport?: () => TapSupport
}

/** A NIC plugged in as a TAP device: its interface and its helper's state. */
export interface TapView extends TapPortStats {
  ifname: string
  up: boolean
  pid?: number
  lastError?: string
}

export interface ProbeReport {
  ip: string
  sent: number
  received: number
  lost: number
  rttMs: { min: number; avg: number; max: number } | null
  /** Sequence numbers (1-based, in send order) that got no reply. */
  lostSeqs: number[]
}

/** A NIC as an offer carries it (src/transfer MigrationNic): unchecked. */
export interface OfferedNic {
  network: string
  mac: string
  ip: string
  attach?: string
  /** Its network's definition at the source (absent: the network must be known here). */
  networkDef?: { subnet: string; mtu: number; createdMs: number; creator: string }
}

/** An offered NIC as checked here, with the definition of its network (known here, or offered). */
export interface CheckedNic extends NicRecord {
  networkDef: NetworkDef
}

/** NICs one VM may have (what an offer may list). */
export const MAX_NICS = 16

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/i
export const MTU_RANGE = { min: 576, max: 9000 } as const

export class OverlayService {
  readonly switch: VirtualSwitch
  readonly transport: OverlayTransport
  readonly metadata: MetadataServer
  private readonly log: Logger
  /** Networks created here or from config. */
  private readonly ownNetworks = new Map<string, NetworkDef>()
  /** The winning definition of every network known mesh-wide. */
  private networks = new Map<string, NetworkDef>()
  /** NICs of the VMs on this host, by VM. */
  private readonly localNics = new Map<string, NicRecord[]>()
  /** NICs of every VM of the mesh, from the hosts' announcements (ours excluded). */
  private meshNics = new Map<string, NicRecord[]>()
  private readonly decoded = new Map<string, { version: number; overlay: HostOverlay }>()
  /** Fresher locations from OverlayAnnounce, until gossip has caught up with them. */
  private readonly announced = new Map<string, { host: string; epoch: number }>()
  private readonly endpoints = new Map<string, SyntheticNic>()
  /** Guests with a real NIC (QEMU's `-netdev stream` socket), by `vmId\0network`. */
  private readonly streams = new Map<string, StreamPort>()
  /** NICs attached as TAP devices (socat helpers), by `vmId\0network`. */
  private readonly taps = new Map<string, TapPort>()
  /**
   * NICs held for incoming migrations until their commit (migration id -> NICs): nobody else gets
   * their MAC or IP meanwhile. Only in memory: an agent that restarts rolls the migration back
   * (its journal entry says so) and the hold goes with it.
   */
  private readonly held = new Map<string, CheckedNic[]>()
  /** When VMs arrived here by migration (wall-clock ms). */
  private readonly arrivals = new Map<string, number>()
  private unsubscribe?: () => void
  private pruneTimer?: NodeJS.Timeout
  private saving: Promise<void> = Promise.resolve()
  private readonly graceMs: number
  malformedBatches = 0
  /** Frames a NIC port dropped: TAP helper or QEMU socket down, guest not reading, foreign datagrams. */
  readonly portDropped = { 'nic-down': 0, 'nic-full': 0, 'nic-foreign': 0 }

  constructor(private readonly init: OverlayServiceInit) {
    this.log = init.logger
    this.graceMs = init.graceMs ?? 10_000
    this.transport = new OverlayTransport({
      host: init.host,
      logger: init.logger,
      dialTimeoutMs: init.dialTimeoutMs,
      onBatch: (peer, announces, frames) => this.onBatch(peer, announces, frames),
      onMalformed: (peer) => {
        this.malformedBatches++
        this.log.debug({ peer }, 'malformed overlay batch dropped')
      },
    })
    this.metadata = new MetadataServer({
      provider: async (vm) => (await init.metadata?.(vm)) ?? this.ownMetadata(vm),
    })
    this.switch = new VirtualSwitch({
      send: (host, network, data, relayed) => this.transport.send(host, { network, data, relayed }),
      metadata: (port, frame, reply) =>
        this.metadata.handle(
          { vmId: port.vmId, network: port.network, mac: port.mac, ip: port.ip },
          frame,
          reply,
        ),
    })
    if (init.metrics) registerOverlayMetrics(init.metrics, this)
  }

  async start(): Promise<void> {
    const snap = await this.init.store.load()
    for (const n of snap?.networks ?? []) this.ownNetworks.set(n.name, n)
    for (const c of this.init.networks ?? []) {
      const def = this.validateNetwork(c, { createdMs: 0, creator: '' })
      const prev = this.ownNetworks.get(def.name)
      if (prev && prev.subnet !== def.subnet) {
        this.log.warn(
          { network: def.name, stored: prev.subnet, config: def.subnet },
          'config changes a network subnet',
        )
      }
      this.ownNetworks.set(def.name, def)
    }
    for (const n of snap?.nics ?? []) {
      const list = this.localNics.get(n.vmId) ?? []
      list.push(n)
      this.localNics.set(n.vmId, list)
    }
    this.recompute()
    await this.transport.start()
    this.unsubscribe = this.init.gossip.subscribe(() => this.recompute())
    this.pruneTimer = setInterval(() => this.switch.prune(), 1000)
    this.pruneTimer.unref()
  }

  async stop(): Promise<void> {
    this.unsubscribe?.()
    if (this.pruneTimer) clearInterval(this.pruneTimer)
    for (const port of this.streams.values()) port.close()
    this.streams.clear()
    for (const port of this.taps.values()) port.close()
    this.taps.clear()
    this.metadata.close()
    await this.transport.stop()
    await this.saving
  }

  // ---------------------------------------------------------------- networks

  createNetwork(req: NetworkConfig): NetworkSummary {
    const def = this.validateNetwork(req, { createdMs: Date.now(), creator: this.init.self })
    if (this.networks.has(def.name)) {
      throw new OverlayError('NAME_TAKEN', `network '${def.name}' already exists`, { field: 'name' })
    }
    this.ownNetworks.set(def.name, def)
    this.recompute()
    this.persist()
    this.init.gossip.notifyChanged()
    this.log.info({ network: def.name, subnet: def.subnet, mtu: def.mtu }, 'network created')
    return this.summary(def)
  }

  listNetworks(): NetworkSummary[] {
    return [...this.networks.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((n) => this.summary(n))
  }

  getNetwork(name: string): NetworkDetail {
    const def = this.networks.get(name)
    if (!def) throw new OverlayError('NOT_FOUND', `no network '${name}' in the mesh`)
    const vms: NetworkMember[] = []
    for (const nics of this.localNics.values()) {
      for (const n of nics) {
        if (n.network !== name) continue
        const loc = this.init.gossip.where(n.vmId)
        vms.push({ vmId: n.vmId, name: loc?.name, mac: n.mac, ip: n.ip, host: this.init.self, local: true })
      }
    }
    for (const [vmId, nics] of this.meshNics) {
      if (this.localNics.has(vmId)) continue
      const loc = this.locate(vmId)
      if (!loc) continue
      for (const n of nics) {
        if (n.network !== name) continue
        vms.push({
          vmId,
          name: this.init.gossip.where(vmId)?.name,
          mac: n.mac,
          ip: n.ip,
          host: loc.host,
          epoch: loc.epoch,
          local: false,
        })
      }
    }
    vms.sort((a, b) => compareIp(a.ip, b.ip))
    const reserved = [...this.held].flatMap(([migrationId, nics]) =>
      nics
        .filter((n) => n.network === name)
        .map((n) => ({ vmId: n.vmId, mac: n.mac, ip: n.ip, migrationId })),
    )
    return { ...this.summary(def), vms, reserved }
  }

  // ---------------------------------------------------------------- VMs

  /**
   * NICs for a new VM on `networks` (nothing is kept until `attach`). Throws on unknown networks, and
   * when `attach` asks for TAP devices on a host that cannot make them.
   */
  allocate(vmId: string, networks: readonly string[], opts: { attach?: NicAttach } = {}): NicRecord[] {
    if (opts.attach === 'tap') {
      const support = (this.init.tapSupport ?? tapSupport)()
      if (!support.ok)
        throw new OverlayError('INVALID_STATE', support.reason ?? 'no TAP', { field: 'nicAttach' })
    }
    const seen = new Set<string>()
    const nics: NicRecord[] = []
    const macs = new Set<string>()
    const ips = new Map<string, Set<string>>()
    for (const n of this.allNics()) {
      macs.add(n.mac)
      ips.set(n.network, (ips.get(n.network) ?? new Set()).add(n.ip))
    }
    for (const [i, name] of networks.entries()) {
      if (seen.has(name)) {
        throw new OverlayError('BAD_REQUEST', `networks[${i}]: '${name}' is listed twice`, {
          field: `networks[${i}]`,
        })
      }
      seen.add(name)
      const def = this.networks.get(name)
      if (!def) {
        throw new OverlayError('BAD_REQUEST', `networks[${i}]: no network '${name}' (create it first)`, {
          field: `networks[${i}]`,
        })
      }
      const taken = ips.get(name) ?? new Set<string>()
      let ip: string
      try {
        ip = allocateIp(parseSubnet(def.subnet), vmId, (x) => taken.has(x))
      } catch (err) {
        throw new OverlayError('INVALID_STATE', `networks[${i}]: ${(err as Error).message}`, {
          field: `networks[${i}]`,
        })
      }
      const mac = allocateMac(name, vmId, (m) => macs.has(m))
      macs.add(mac)
      nics.push({ vmId, network: name, mac, ip, ...(opts.attach ? { attach: opts.attach } : {}) })
    }
    return nics
  }

  /** A new VM's NICs: keep them and plug them in. */
  attach(vmId: string, nics: readonly NicRecord[], running: () => boolean, nicSocket?: string): void {
    if (nics.length === 0) return
    this.localNics.set(vmId, [...nics])
    this.plug(vmId, running, nicSocket)
    this.persist()
    this.init.gossip.notifyChanged()
  }

  /**
   * Plugs in the NICs this host keeps for `vmId` (a VM created or resumed here). A guest with a real
   * NIC (`nicSocket`: QEMU's stream socket) has its first network on that socket; a synthetic VM gets
   * an in-process NIC on each.
   */
  plug(vmId: string, running: () => boolean, nicSocket?: string): void {
    for (const [i, nic] of (this.localNics.get(vmId) ?? []).entries()) {
      if (!this.switch.hasNetwork(nic.network)) this.switch.addNetwork(nic.network, { mtu: DEFAULT_MTU })
      if (nic.attach === 'tap' && nicSocket === undefined) {
        this.plugTap(vmId, nic)
        continue
      }
      if (nicSocket !== undefined) {
        // QEMU has one NIC: further networks stay allocated but unplugged
        if (i > 0) continue
        const k = `${vmId}\0${nic.network}`
        this.streams.get(k)?.close()
        const port = new StreamPort({
          path: nicSocket,
          transmit: (frame) => this.switch.fromPort(vmId, nic.network, frame),
          onError: (err) => this.log.warn({ vm: vmId, err: err.message }, 'guest NIC stream'),
          onDrop: (reason) => this.portDropped[reason]++,
        })
        this.streams.set(k, port)
        this.switch.attach({ ...nic, deliver: (frame) => port.deliver(frame) })
        continue
      }
      const endpoint = new SyntheticNic({
        mac: nic.mac,
        ip: nic.ip,
        running,
        transmit: (frame) => this.switch.fromPort(vmId, nic.network, frame),
      })
      this.endpoints.set(`${vmId}\0${nic.network}`, endpoint)
      this.switch.attach({ ...nic, deliver: (frame) => endpoint.receive(frame) })
    }
  }

  /**
   * A NIC as a TAP device named after (host, VM, network), so the old and the new host of a migrating
   * VM never compete for one name. The helper is supervised by the port; its ups and downs are logged.
   */
  private plugTap(vmId: string, nic: NicRecord): void {
    const k = `${vmId}\0${nic.network}`
    this.taps.get(k)?.close()
    const ifname = `sm${createHash('sha256').update(`${this.init.self}\0${k}`).digest('hex').slice(0, 11)}`
    const port = new TapPort({
      ifname,
      mac: nic.mac,
      mtu: this.switch.mtu(nic.network) ?? DEFAULT_MTU,
      transmit: (frame) => this.switch.fromPort(vmId, nic.network, frame),
      onDrop: (reason) => this.portDropped[reason]++,
      onEvent: (e) => {
        if (e.type === 'up')
          this.log.info({ vm: vmId, network: nic.network, ifname, pid: e.pid }, 'TAP port up')
        else
          this.log.warn(
            { vm: vmId, network: nic.network, ifname, reason: e.reason, restartInMs: e.restartInMs },
            'TAP port down: its helper exited, restarting it',
          )
      },
    })
    this.taps.set(k, port)
    this.switch.attach({ ...nic, deliver: (frame) => port.deliver(frame) })
    port.start().catch((err: unknown) => {
      this.log.error({ vm: vmId, ifname, err: (err as Error).message }, 'TAP port did not start')
    })
  }

  /** How a local VM's NIC on `network` is plugged in, and its counters. */
  nicView(vmId: string, network: string): { stats?: SyntheticNic['stats']; tap?: TapView } {
    const k = `${vmId}\0${network}`
    const tap = this.taps.get(k)
    return {
      stats: this.endpoints.get(k)?.stats,
      tap: tap
        ? {
            ifname: tap.ifname,
            up: tap.up,
            pid: tap.pid,
            ...tap.stats,
            ...(tap.lastError ? { lastError: tap.lastError } : {}),
          }
        : undefined,
    }
  }

  /** The VM is gone (deleted): unplug and forget its NICs. */
  release(vmId: string): void {
    if (!this.unplug(vmId)) return
    this.localNics.delete(vmId)
    this.arrivals.delete(vmId)
    this.recompute()
    this.persist()
    this.init.gossip.notifyChanged()
  }

  /** Source side of a committed migration: unplug, relay what still arrives to `to` for a while. */
  departed(vmId: string, to: string | undefined): void {
    const nics = this.localNics.get(vmId) ?? []
    this.unplug(vmId)
    this.localNics.delete(vmId)
    this.arrivals.delete(vmId)
    if (to) {
      const until = Date.now() + this.graceMs
      for (const n of nics) this.switch.forwardMoved(n.network, n.mac, to, until)
      this.announced.set(vmId, { host: to, epoch: (this.init.gossip.where(vmId)?.epoch ?? 0) + 1 })
    }
    this.recompute()
    this.persist()
    this.init.gossip.notifyChanged()
  }

  /**
   * Destination side of an offer: the NICs the source says its VM has, checked (changes nothing).
   * Each must be on a network known here or defined by the offer (a network known here under that
   * name with another subnet or MTU is another network: refused), with a unicast MAC and a usable IP
   * of that network that no other VM holds or is held for; where gossip already knows the VM's NICs,
   * the offer must say the same. Throws OverlayError('BAD_REQUEST') naming the first bad NIC.
   */
  checkOffered(vmId: string, offered: readonly OfferedNic[]): NicRecord[] {
    return this.checked(vmId, offered).map(({ networkDef: _, ...n }) => n)
  }

  /** checkOffered's work: the NICs with the definition of their network. */
  private checked(vmId: string, offered: readonly OfferedNic[]): CheckedNic[] {
    const bad = (i: number, msg: string) =>
      new OverlayError('BAD_REQUEST', `nics[${i}]: ${msg}`, { field: `nics[${i}]` })
    if (offered.length > MAX_NICS) {
      throw new OverlayError('BAD_REQUEST', `nics: at most ${MAX_NICS} NICs, got ${offered.length}`, {
        field: 'nics',
      })
    }
    const known = this.meshNics.get(vmId)
    const nics: CheckedNic[] = []
    for (const [i, n] of offered.entries()) {
      const def = this.offeredNetwork(n, (msg) => bad(i, msg))
      if (nics.some((x) => x.network === def.name)) throw bad(i, `network '${def.name}' is listed twice`)
      if (typeof n.mac !== 'string' || !isMac(n.mac) || isGroupMac(n.mac) || n.mac === ZERO_MAC)
        throw bad(i, `expected a unicast MAC like 02:00:00:00:00:01, got ${JSON.stringify(n.mac)}`)
      const subnet = parseSubnet(def.subnet)
      const num = typeof n.ip === 'string' ? ipToNumber(n.ip) : undefined
      const range = usableRange(subnet)
      if (num === undefined || ipFromNumber(num) !== n.ip || num < range.first || num > range.last)
        throw bad(i, `expected a host address of ${def.subnet}, got ${JSON.stringify(n.ip)}`)
      if (n.attach !== undefined && n.attach !== '' && n.attach !== 'tap')
        throw bad(i, `attach: expected 'tap' or nothing, got ${JSON.stringify(n.attach)}`)
      for (const other of this.allNics()) {
        if (other.vmId === vmId) continue
        if (other.mac === n.mac) throw bad(i, `MAC ${n.mac} belongs to VM ${other.vmId}`)
        if (other.network === def.name && other.ip === n.ip)
          throw bad(i, `IP ${n.ip} on '${def.name}' belongs to VM ${other.vmId}`)
      }
      const gossiped = known?.find((x) => x.network === def.name)
      if (known?.length && (!gossiped || gossiped.mac !== n.mac || gossiped.ip !== n.ip)) {
        const said = gossiped ? `${gossiped.mac} ${gossiped.ip}` : 'no NIC'
        throw bad(i, `gossip says VM ${vmId} has ${said} on '${def.name}', the offer ${n.mac} ${n.ip}`)
      }
      nics.push({
        vmId,
        network: def.name,
        mac: n.mac,
        ip: n.ip,
        ...(n.attach ? { attach: 'tap' as const } : {}),
        networkDef: def,
      })
    }
    if (known?.length && nics.length > 0 && known.length !== nics.length) {
      throw new OverlayError(
        'BAD_REQUEST',
        `nics: gossip says VM ${vmId} has ${known.length} NIC(s), the offer ${nics.length}`,
        { field: 'nics' },
      )
    }
    return nics
  }

  /**
   * Holds an incoming VM's NICs for `migrationId` (checked again now: another offer or a new VM may
   * have taken an address since) until `unhold` or the VM's arrival. Throws as checkOffered.
   */
  hold(migrationId: string, vmId: string, offered: readonly OfferedNic[]): CheckedNic[] {
    const nics = this.checked(vmId, offered)
    if (nics.length > 0) this.held.set(migrationId, nics)
    return nics
  }

  /** The hold of an incoming migration goes (it failed, or the VM's NICs are its own now). */
  unhold(migrationId: string): void {
    this.held.delete(migrationId)
  }

  /**
   * A VM committed here whose NICs the overlay lost (the agent died between journaling the commit and
   * saving its overlay state): keep them again, from the migration journal. Not plugged in (the VM
   * comes back crashed); a VM whose NICs are known here is left alone.
   */
  restoreNics(vmId: string, nics: readonly OfferedNic[]): NicRecord[] {
    if (this.localNics.has(vmId) || nics.length === 0) return []
    const kept = nics.map((n) => ({
      vmId,
      network: n.network,
      mac: n.mac,
      ip: n.ip,
      ...(n.attach === 'tap' ? { attach: 'tap' as const } : {}),
    }))
    this.joinNetworks(nics)
    this.localNics.set(vmId, kept)
    this.recompute()
    this.persist()
    this.init.gossip.notifyChanged()
    this.log.warn({ vm: vmId, nics: kept.length }, 'NICs of a committed arrival restored from the journal')
    return kept
  }

  /** A local VM's NICs as an offer carries them: each with its network's definition. */
  offerNics(vmId: string): (NicRecord & { networkDef?: NetworkDef })[] {
    return (this.localNics.get(vmId) ?? []).map((n) => {
      const def = this.networks.get(n.network) ?? this.ownNetworks.get(n.network)
      return def ? { ...n, networkDef: def } : { ...n }
    })
  }

  /** The network an offered NIC is on: known here (and not contradicted by the offer), else offered. */
  private offeredNetwork(n: OfferedNic, bad: (msg: string) => Error): NetworkDef {
    const name = typeof n.network === 'string' ? n.network : ''
    const known = this.networks.get(name)
    let offered: NetworkDef | undefined
    if (n.networkDef) {
      try {
        offered = this.validateNetwork(
          { name, subnet: n.networkDef.subnet, mtu: n.networkDef.mtu },
          { createdMs: n.networkDef.createdMs, creator: n.networkDef.creator },
        )
      } catch (err) {
        throw bad(`network definition: ${(err as Error).message}`)
      }
    }
    if (known && offered && (known.subnet !== offered.subnet || known.mtu !== offered.mtu)) {
      throw bad(
        `network '${name}' here is ${known.subnet} (MTU ${known.mtu}), the VM's is ${offered.subnet} (MTU ${offered.mtu}): another network under the same name`,
      )
    }
    const def = known ?? offered
    if (!def)
      throw bad(`no network ${JSON.stringify(n.network)} known here, and the offer does not define it`)
    return def
  }

  /** Networks the NICs are on become this host's own too (it has members there now). */
  private joinNetworks(nics: readonly OfferedNic[]): void {
    let joined = false
    for (const n of nics) {
      if (this.ownNetworks.has(n.network)) continue
      const known = this.networks.get(n.network)
      const def = known ?? (n.networkDef ? { name: n.network, ...n.networkDef } : undefined)
      if (!def) continue
      this.ownNetworks.set(def.name, { ...def })
      joined = true
      this.log.info({ network: def.name, subnet: def.subnet }, 'network joined: a VM on it arrived')
    }
    if (joined) this.recompute()
  }

  /**
   * Destination side of a committed migration: the VM keeps its NICs (known mesh-wide from its
   * previous host's announcement, else those its offer carried: `offered`, checked by checkOffered). Plug
   * them in, accept frames its previous host relays, and announce it: OverlayAnnounce to every host
   * with members, and a gratuitous ARP on each network.
   */
  arrived(
    vmId: string,
    epoch: number,
    from: string | undefined,
    running: () => boolean,
    nicSocket?: string,
    offered: readonly OfferedNic[] = [],
  ): NicRecord[] {
    const gossiped = this.meshNics.get(vmId) ?? []
    const nics: NicRecord[] = gossiped.length
      ? gossiped.map((n) => ({ ...n }))
      : offered.map((n) => ({
          vmId,
          network: n.network,
          mac: n.mac,
          ip: n.ip,
          ...(n.attach === 'tap' ? { attach: 'tap' as const } : {}),
        }))
    if (nics.length === 0) return []
    this.joinNetworks(offered.length ? offered : nics)
    this.arrivals.set(vmId, Date.now())
    this.localNics.set(vmId, nics)
    this.announced.delete(vmId)
    this.recompute()
    this.plug(vmId, running, nicSocket)
    this.persist()
    this.init.gossip.notifyChanged()
    const until = Date.now() + this.graceMs
    const hosts = new Set<string>()
    for (const n of nics) {
      if (from) this.switch.acceptRelayed(n.network, n.mac, from, until)
      for (const h of this.switch.hostsOf(n.network)) hosts.add(h)
    }
    if (from) hosts.add(from)
    for (const h of hosts) this.transport.announce(h, { vmId, epoch })
    for (const n of nics) this.switch.announce(vmId, n.network)
    this.log.info({ vm: vmId, epoch, hosts: hosts.size, nics: nics.length }, 'VM announced on the overlay')
    return nics
  }

  /** What any VM of this host learns from the metadata service: its own name, MAC and address. */
  ownMetadata(vm: { vmId: string; network: string; mac: string; ip: string }): VmMetadata {
    return {
      vmId: vm.vmId,
      name: this.init.gossip.where(vm.vmId)?.name ?? vm.vmId,
      network: vm.network,
      mac: vm.mac,
      ip: vm.ip,
    }
  }

  /** After a migration: ms from the handover (arrival here) to the first frame the VM received. */
  firstFrameAfterArrival(vmId: string, network: string): number | undefined {
    const at = this.arrivals.get(vmId)
    const first = this.endpoints.get(`${vmId}\0${network}`)?.firstFrameAt
    return at !== undefined && first !== undefined ? first - at : undefined
  }

  nicsOf(vmId: string): NicRecord[] {
    return [...(this.localNics.get(vmId) ?? [])]
  }

  /** The synthetic NIC of a local VM on `network` (first NIC if absent). */
  endpoint(vmId: string, network?: string): SyntheticNic | undefined {
    const nic = (this.localNics.get(vmId) ?? []).find((n) => network === undefined || n.network === network)
    return nic ? this.endpoints.get(`${vmId}\0${nic.network}`) : undefined
  }

  /** Test hook: ping `ip` from a local VM's synthetic NIC. */
  async ping(
    vmId: string,
    ip: string,
    opts: { network?: string; timeoutMs?: number; size?: number } = {},
  ): Promise<PingResult> {
    const nics = this.localNics.get(vmId)
    if (!nics?.length) throw new OverlayError('NOT_FOUND', `VM ${vmId} has no NIC on this host`)
    const nic = opts.network
      ? nics.find((n) => n.network === opts.network)
      : (nics.find((n) =>
          subnetContains(parseSubnet(this.networks.get(n.network)?.subnet ?? '0.0.0.0/8'), ip),
        ) ?? nics[0])
    if (!nic)
      throw new OverlayError('BAD_REQUEST', `VM ${vmId} is not on network '${opts.network}'`, {
        field: 'network',
      })
    const ep = this.endpoints.get(`${vmId}\0${nic.network}`)
    if (!ep) throw new OverlayError('INVALID_STATE', `VM ${vmId} has no plugged NIC on '${nic.network}'`)
    return ep.ping(ip, { timeoutMs: opts.timeoutMs, size: opts.size })
  }

  /**
   * Test and diagnosis hook: `count` echoes to `ip`, one every `intervalMs`, each waiting up to
   * `timeoutMs`; reports which got no reply.
   */
  async probe(
    vmId: string,
    ip: string,
    opts: { network?: string; count?: number; intervalMs?: number; timeoutMs?: number; size?: number } = {},
  ): Promise<ProbeReport> {
    const count = opts.count ?? 1
    const interval = opts.intervalMs ?? 100
    const results: Array<Promise<number | undefined>> = []
    for (let i = 0; i < count; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, interval))
      results.push(
        this.ping(vmId, ip, { network: opts.network, timeoutMs: opts.timeoutMs, size: opts.size }).then(
          (r) => r.rttMs,
          (err: unknown) => {
            if (err instanceof OverlayError) throw err
            return undefined
          },
        ),
      )
    }
    const rtts = await Promise.all(results)
    const ok = rtts.filter((r): r is number => r !== undefined)
    return {
      ip,
      sent: count,
      received: ok.length,
      lost: count - ok.length,
      rttMs: ok.length
        ? { min: Math.min(...ok), avg: ok.reduce((a, b) => a + b, 0) / ok.length, max: Math.max(...ok) }
        : null,
      lostSeqs: rtts.flatMap((r, i) => (r === undefined ? [i + 1] : [])),
    }
  }

  /** Our announcement for gossip (HostState.overlay). */
  announcement(): Uint8Array {
    return encodeHostOverlay({
      networks: [...this.ownNetworks.values()],
      nics: [...this.localNics.values()].flat(),
    })
  }

  portCount(): number {
    return this.endpoints.size + this.streams.size + this.taps.size
  }

  networkCount(): number {
    return this.networks.size
  }

  // ---------------------------------------------------------------- internals

  private onBatch(peer: string, announces: WireAnnounce[], frames: WireFrame[]): void {
    let moved = false
    for (const a of announces) {
      const known = this.locate(a.vmId)
      if (known && a.epoch <= known.epoch) continue
      this.announced.set(a.vmId, { host: peer, epoch: a.epoch })
      moved = true
    }
    if (moved) this.recompute()
    for (const f of frames) this.switch.fromPeer(peer, f.network, f.data, f.relayed)
  }

  /** Where a VM runs: the location table, or a fresher announcement. */
  private locate(vmId: string): { host: string; epoch: number } | undefined {
    const loc = this.init.gossip.where(vmId)
    const ann = this.announced.get(vmId)
    if (ann && (!loc || ann.epoch > loc.epoch)) return ann
    if (ann) this.announced.delete(vmId) // gossip caught up
    return loc
  }

  /** Rebuilds the mesh view (networks, NICs, the switch's remote table) from the hosts' states. */
  private recompute(): void {
    const defs = new Map<string, NetworkDef>()
    const offer = (n: NetworkDef) => {
      const cur = defs.get(n.name)
      if (!cur || n.createdMs < cur.createdMs || (n.createdMs === cur.createdMs && n.creator < cur.creator)) {
        defs.set(n.name, n)
      }
    }
    for (const n of this.ownNetworks.values()) offer(n)
    const meshNics = new Map<string, NicRecord[]>()
    for (const h of this.init.gossip.hosts()) {
      if (h.peerId === this.init.self || !h.overlay) continue
      let d = this.decoded.get(h.peerId)
      if (!d || d.version !== h.version) {
        d = { version: h.version, overlay: decodeHostOverlay(h.overlay) }
        this.decoded.set(h.peerId, d)
      }
      for (const n of d.overlay.networks) offer(n)
      for (const nic of d.overlay.nics) {
        const list = meshNics.get(nic.vmId) ?? []
        if (!list.some((x) => x.network === nic.network)) list.push(nic)
        meshNics.set(nic.vmId, list)
      }
    }
    this.networks = defs
    this.meshNics = meshNics
    for (const def of defs.values()) {
      if (this.switch.mtu(def.name) !== def.mtu) this.switch.addNetwork(def.name, { mtu: def.mtu })
    }
    const remote: RemoteNic[] = []
    for (const [vmId, nics] of meshNics) {
      if (this.localNics.has(vmId)) continue
      const loc = this.locate(vmId)
      if (!loc || loc.host === this.init.self) continue
      for (const n of nics) remote.push({ ...n, host: loc.host })
    }
    this.switch.setRemote(remote)
  }

  private unplug(vmId: string): boolean {
    const nics = this.localNics.get(vmId)
    if (!nics) return false
    for (const n of nics) {
      this.switch.detach(vmId, n.network)
      this.endpoints.delete(`${vmId}\0${n.network}`)
      this.streams.get(`${vmId}\0${n.network}`)?.close()
      this.streams.delete(`${vmId}\0${n.network}`)
      this.taps.get(`${vmId}\0${n.network}`)?.close()
      this.taps.delete(`${vmId}\0${n.network}`)
    }
    return true
  }

  private *allNics(): Iterable<NicRecord> {
    for (const l of this.localNics.values()) yield* l
    for (const l of this.meshNics.values()) yield* l
    for (const l of this.held.values()) yield* l
  }

  private summary(def: NetworkDef): NetworkSummary {
    let members = 0
    const hosts = new Set<string>()
    for (const nics of this.localNics.values()) {
      for (const n of nics) {
        if (n.network !== def.name) continue
        members++
        hosts.add(this.init.self)
      }
    }
    for (const [vmId, nics] of this.meshNics) {
      if (this.localNics.has(vmId)) continue
      const loc = this.locate(vmId)
      for (const n of nics) {
        if (n.network !== def.name || !loc) continue
        members++
        hosts.add(loc.host)
      }
    }
    return {
      name: def.name,
      subnet: def.subnet,
      mtu: def.mtu,
      members,
      hosts: hosts.size,
      createdAt: def.createdMs ? new Date(def.createdMs).toISOString() : undefined,
    }
  }

  private validateNetwork(req: NetworkConfig, origin: { createdMs: number; creator: string }): NetworkDef {
    if (typeof req.name !== 'string' || !NAME_RE.test(req.name)) {
      throw new OverlayError(
        'BAD_REQUEST',
        `name: expected 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, got ${JSON.stringify(req.name)}`,
        { field: 'name' },
      )
    }
    let subnet: string
    try {
      subnet = parseSubnet(req.subnet).cidr
    } catch (err) {
      throw new OverlayError('BAD_REQUEST', `subnet: ${(err as Error).message}`, { field: 'subnet' })
    }
    const mtu = req.mtu ?? DEFAULT_MTU
    if (!Number.isInteger(mtu) || mtu < MTU_RANGE.min || mtu > MTU_RANGE.max) {
      throw new OverlayError(
        'BAD_REQUEST',
        `mtu: expected an integer from ${MTU_RANGE.min} to ${MTU_RANGE.max}, got ${mtu}`,
        {
          field: 'mtu',
        },
      )
    }
    return { name: req.name, subnet, mtu, ...origin }
  }

  private persist(): void {
    const snapshot = { networks: [...this.ownNetworks.values()], nics: [...this.localNics.values()].flat() }
    this.saving = this.saving
      .then(() => this.init.store.save(snapshot))
      .catch((err: unknown) => this.log.error({ err }, 'overlay state not saved'))
  }
}

function compareIp(a: string, b: string): number {
  const n = (s: string) => s.split('.').reduce((acc, o) => acc * 256 + Number(o), 0)
  return n(a) - n(b)
}
