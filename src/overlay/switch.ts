// The virtual switch of one agent. Pure logic, no I/O: frames come in from local ports (the VMs'
// NICs) or from peers (other agents), and leave through port callbacks or the injected `send`.
//
// - The MAC table is not learned from traffic: it is fed from the location table (which host runs
//   which VM, hence which MAC), so a VM cannot steal another's address by sending frames.
// - Unicast goes to the local port or to the one host that runs the destination; unknown unicast is
//   dropped, never flooded. Broadcast/multicast reaches only the hosts with members of that network.
// - ARP requests from local VMs are answered here (ARP proxy) and never cross hosts.
// - Networks are isolated; a source MAC must be the sending port's own (or, from a peer, a MAC the
//   location table places on that peer); frames above the MTU are dropped. Every drop is counted.
import {
  ARP_REPLY,
  ARP_REQUEST,
  arpReplyFrame,
  ETH_HEADER,
  ETHERTYPE_ARP,
  gratuitousArpFrame,
  parseArp,
  parseEthernet,
  rarpAnnounceFrame,
} from './frame.js'
import { isGroupMac, type Mac } from './mac.js'
import { METADATA_IP, METADATA_MAC } from './metadata.js'

export const DEFAULT_MTU = 1500

export const DROP_REASONS = [
  'malformed',
  'mtu',
  'spoofed',
  'peer-spoofed',
  'isolation',
  'unknown-dst',
  'unknown-network',
  'no-port',
  'unreachable',
] as const
export type DropReason = (typeof DROP_REASONS)[number]

export const FORWARD_KINDS = ['local', 'to-peer', 'from-peer', 'relayed'] as const
export type ForwardKind = (typeof FORWARD_KINDS)[number]

/** What became of a frame: where it went, or why it was dropped. */
export type Outcome = 'delivered' | 'sent' | 'flooded' | 'arp-proxied' | 'relayed' | 'metadata' | DropReason

export interface PortInit {
  vmId: string
  network: string
  mac: Mac
  ip: string
  /** Hands a frame to the VM's NIC. */
  deliver: (frame: Uint8Array) => void
}

/** A NIC of a VM on another host, as the location table places it. */
export interface RemoteNic {
  vmId: string
  network: string
  mac: Mac
  ip: string
  host: string
}

export interface SwitchInit {
  /** Sends a frame to the agent `host`; false when it cannot be reached (the frame is dropped). */
  send: (host: string, network: string, frame: Uint8Array, relayed: boolean) => boolean
  /**
   * The metadata service (169.254.169.254): frames a local port sends to METADATA_MAC, with that port
   * (who asks) and a way to answer it (false once the port is gone). Without it the address is unknown.
   */
  metadata?: (port: PortInit, frame: Uint8Array, reply: (frame: Uint8Array) => boolean) => void
  now?: () => number
}

export interface SwitchStats {
  forwarded: Record<ForwardKind, { frames: number; bytes: number }>
  dropped: Record<DropReason, number>
  arpProxied: number
  announced: number
  /** Frames handed to the metadata service. */
  metadata: number
}

interface Detour {
  host: string
  until: number
}

const key = (network: string, vmId: string) => `${network}\0${vmId}`

export class VirtualSwitch {
  private readonly networks = new Map<string, { mtu: number }>()
  /** network -> mac -> port */
  private readonly local = new Map<string, Map<Mac, PortInit>>()
  private readonly ports = new Map<string, PortInit>()
  /** network -> mac -> remote NIC */
  private remote = new Map<string, Map<Mac, RemoteNic>>()
  /** network -> hosts with members */
  private hosts = new Map<string, Set<string>>()
  /** network -> ip -> mac, local and remote: what the ARP proxy answers. */
  private readonly ipIndex = new Map<string, Map<string, Mac>>()
  /** mac -> network, to tell isolation from an unknown destination. */
  private readonly macNetwork = new Map<Mac, string>()
  /** VMs that left this host: frames still arriving for them go on to their new host. */
  private readonly movedAway = new Map<string, Detour>()
  /** VMs that arrived: their previous host may relay frames for them for a while. */
  private readonly arrived = new Map<string, Detour>()
  readonly stats: SwitchStats = {
    forwarded: Object.fromEntries(
      FORWARD_KINDS.map((k) => [k, { frames: 0, bytes: 0 }]),
    ) as SwitchStats['forwarded'],
    dropped: Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>,
    arpProxied: 0,
    announced: 0,
    metadata: 0,
  }
  private readonly now: () => number

  constructor(private readonly init: SwitchInit) {
    this.now = init.now ?? Date.now
  }

  // ---------------------------------------------------------------- configuration

  addNetwork(name: string, opts: { mtu?: number } = {}): void {
    this.networks.set(name, { mtu: opts.mtu ?? DEFAULT_MTU })
    if (!this.local.has(name)) this.local.set(name, new Map())
  }

  hasNetwork(name: string): boolean {
    return this.networks.has(name)
  }

  mtu(network: string): number | undefined {
    return this.networks.get(network)?.mtu
  }

  /** Plugs a VM's NIC in. Throws if the network is unknown or the MAC is already plugged. */
  attach(port: PortInit): void {
    const ports = this.local.get(port.network)
    if (!ports) throw new Error(`unknown network '${port.network}'`)
    const other = ports.get(port.mac)
    if (other && other.vmId !== port.vmId)
      throw new Error(`MAC ${port.mac} is already plugged in by ${other.vmId}`)
    this.detach(port.vmId, port.network)
    ports.set(port.mac, port)
    this.ports.set(key(port.network, port.vmId), port)
    this.macNetwork.set(port.mac, port.network)
    this.rebuildIpIndex()
  }

  detach(vmId: string, network: string): void {
    const port = this.ports.get(key(network, vmId))
    if (!port) return
    this.ports.delete(key(network, vmId))
    this.local.get(network)?.delete(port.mac)
    this.rebuildIpIndex()
  }

  port(vmId: string, network: string): PortInit | undefined {
    return this.ports.get(key(network, vmId))
  }

  /** Replaces the table of remote NICs (recomputed from the location table when it changes). */
  setRemote(nics: readonly RemoteNic[]): void {
    const remote = new Map<string, Map<Mac, RemoteNic>>()
    const hosts = new Map<string, Set<string>>()
    for (const n of nics) {
      const m = remote.get(n.network) ?? new Map<Mac, RemoteNic>()
      remote.set(n.network, m.set(n.mac, n))
      hosts.set(n.network, (hosts.get(n.network) ?? new Set<string>()).add(n.host))
    }
    this.remote = remote
    this.hosts = hosts
    this.rebuildIpIndex()
  }

  /** Hosts with members of `network` (other than this one). */
  hostsOf(network: string): string[] {
    return [...(this.hosts.get(network) ?? [])]
  }

  /** Source side of a migration: frames for `mac` that still arrive here go on to `host` until `until`. */
  forwardMoved(network: string, mac: Mac, host: string, until: number): void {
    this.movedAway.set(key(network, mac), { host, until })
  }

  /** Destination side: accept frames for `mac` relayed by its previous host `from` until `until`. */
  acceptRelayed(network: string, mac: Mac, from: string, until: number): void {
    this.arrived.set(key(network, mac), { host: from, until })
  }

  /** Forgets expired detours; call now and then. */
  prune(): void {
    const now = this.now()
    for (const m of [this.movedAway, this.arrived]) for (const [k, d] of m) if (d.until <= now) m.delete(k)
  }

  // ---------------------------------------------------------------- frames

  /** A frame sent by a local VM's NIC. */
  fromPort(vmId: string, network: string, frame: Uint8Array): Outcome {
    const port = this.ports.get(key(network, vmId))
    if (!port) return this.drop('no-port')
    const mtu = this.networks.get(network)?.mtu ?? DEFAULT_MTU
    if (frame.length > ETH_HEADER + mtu) return this.drop('mtu')
    const eth = parseEthernet(frame)
    if (!eth) return this.drop('malformed')
    if (eth.src !== port.mac) return this.drop('spoofed')

    if (eth.ethertype === ETHERTYPE_ARP) {
      const arp = parseArp(eth.payload)
      if (!arp) return this.drop('malformed')
      if (arp.senderMac !== port.mac || (arp.senderIp !== port.ip && arp.senderIp !== '0.0.0.0'))
        return this.drop('spoofed')
      if (arp.op === ARP_REQUEST) {
        if (arp.targetIp === METADATA_IP && this.init.metadata) {
          this.stats.arpProxied++
          this.deliver(
            port,
            arpReplyFrame({ mac: port.mac, ip: arp.senderIp }, { mac: METADATA_MAC, ip: METADATA_IP }),
          )
          return 'arp-proxied'
        }
        const answer = arp.targetIp === port.ip ? undefined : this.ipIndex.get(network)?.get(arp.targetIp)
        if (answer) {
          this.stats.arpProxied++
          this.deliver(
            port,
            arpReplyFrame({ mac: port.mac, ip: arp.senderIp }, { mac: answer, ip: arp.targetIp }),
          )
          return 'arp-proxied'
        }
        // Unknown address, or a VM's own gratuitous ARP: this host's ports only, never across hosts.
        return this.floodLocal(network, frame, port.mac)
      }
      if (arp.op !== ARP_REPLY) return this.drop('malformed')
    }

    if (eth.dst === METADATA_MAC && this.init.metadata) {
      this.stats.metadata++
      const k = key(network, vmId)
      this.init.metadata(port, frame, (reply) => {
        if (this.ports.get(k) !== port) return false
        this.deliver(port, reply)
        return true
      })
      return 'metadata'
    }
    if (isGroupMac(eth.dst)) {
      this.floodLocal(network, frame, port.mac)
      for (const host of this.hostsOf(network)) this.toPeer(host, network, frame, false)
      return 'flooded'
    }
    const dst = this.local.get(network)?.get(eth.dst)
    if (dst) return this.deliver(dst, frame)
    const remote = this.remote.get(network)?.get(eth.dst)
    const detour = this.detour(this.movedAway, network, eth.dst)
    // Right after a migration our table may lag behind the VM: the detour is fresher.
    if (detour) return this.toPeer(detour.host, network, frame, false)
    if (remote) return this.toPeer(remote.host, network, frame, false)
    return this.drop(this.macNetwork.has(eth.dst) ? 'isolation' : 'unknown-dst')
  }

  /** A frame from the agent `peer` (authenticated by the libp2p connection). */
  fromPeer(peer: string, network: string, frame: Uint8Array, relayed = false): Outcome {
    const net = this.networks.get(network)
    if (!net) return this.drop('unknown-network')
    if (frame.length > ETH_HEADER + net.mtu) return this.drop('mtu')
    const eth = parseEthernet(frame)
    if (!eth) return this.drop('malformed')
    const src = this.remote.get(network)?.get(eth.src)
    if (relayed) {
      const via = this.detour(this.arrived, network, eth.dst)
      if (!src || !via || via.host !== peer) return this.drop('peer-spoofed')
    } else if (!src || src.host !== peer) {
      return this.drop(
        this.macNetwork.has(eth.src) && this.macNetwork.get(eth.src) !== network
          ? 'isolation'
          : 'peer-spoofed',
      )
    }
    this.count('from-peer', frame)
    if (isGroupMac(eth.dst)) return this.floodLocal(network, frame, undefined)
    const dst = this.local.get(network)?.get(eth.dst)
    if (dst) return this.deliver(dst, frame)
    const detour = relayed ? undefined : this.detour(this.movedAway, network, eth.dst)
    if (detour) {
      if (!this.init.send(detour.host, network, frame, true)) return this.drop('unreachable')
      this.count('relayed', frame)
      return 'relayed'
    }
    return this.drop(
      this.macNetwork.has(eth.dst) && this.macNetwork.get(eth.dst) !== network ? 'isolation' : 'unknown-dst',
    )
  }

  /**
   * Announces a local VM's NIC (after a migration): a gratuitous ARP (ARP caches learn the address)
   * and a RARP (as QEMU's announce-self: learning switches and bridges behind guests learn the MAC) to
   * this host's other ports and to every host with members of the network.
   */
  announce(vmId: string, network: string): boolean {
    const port = this.ports.get(key(network, vmId))
    if (!port) return false
    this.stats.announced++
    for (const frame of [gratuitousArpFrame(port.mac, port.ip), rarpAnnounceFrame(port.mac)]) {
      this.floodLocal(network, frame, port.mac)
      for (const host of this.hostsOf(network)) this.toPeer(host, network, frame, false)
    }
    return true
  }

  // ---------------------------------------------------------------- internals

  private detour(map: Map<string, Detour>, network: string, mac: Mac): Detour | undefined {
    const d = map.get(key(network, mac))
    if (!d) return undefined
    if (d.until <= this.now()) {
      map.delete(key(network, mac))
      return undefined
    }
    return d
  }

  private floodLocal(network: string, frame: Uint8Array, except: Mac | undefined): Outcome {
    for (const [mac, port] of this.local.get(network) ?? []) if (mac !== except) this.deliver(port, frame)
    return 'flooded'
  }

  private deliver(port: PortInit, frame: Uint8Array): Outcome {
    this.count('local', frame)
    port.deliver(frame)
    return 'delivered'
  }

  private toPeer(host: string, network: string, frame: Uint8Array, relayed: boolean): Outcome {
    if (!this.init.send(host, network, frame, relayed)) return this.drop('unreachable')
    this.count('to-peer', frame)
    return 'sent'
  }

  private count(kind: ForwardKind, frame: Uint8Array): void {
    const c = this.stats.forwarded[kind]
    c.frames++
    c.bytes += frame.length
  }

  private drop(reason: DropReason): DropReason {
    this.stats.dropped[reason]++
    return reason
  }

  private rebuildIpIndex(): void {
    this.ipIndex.clear()
    this.macNetwork.clear()
    for (const [network, nics] of this.remote) {
      const idx = this.indexOf(network)
      for (const n of nics.values()) {
        idx.set(n.ip, n.mac)
        this.macNetwork.set(n.mac, network)
      }
    }
    // Local ports last: where a stale remote entry and a local port disagree, the port is the truth.
    for (const port of this.ports.values()) {
      this.indexOf(port.network).set(port.ip, port.mac)
      this.macNetwork.set(port.mac, port.network)
    }
  }

  private indexOf(network: string): Map<string, Mac> {
    const idx = this.ipIndex.get(network) ?? new Map<string, Mac>()
    this.ipIndex.set(network, idx)
    return idx
  }
}
