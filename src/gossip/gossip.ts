// The gossip service: SWIM membership and failure detection + signed host state on gossipsub +
// anti-entropy, tied together. Membership decides liveness; host state says what each host runs.
import type { PeerId, PrivateKey } from '@libp2p/interface'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import type { Host } from '../node/p2p.js'
import { createGossipMetrics, type GossipMetrics } from './metrics.js'
import { type HostStateInit, HostStateService } from './state/index.js'
import { Swim, type SwimInit } from './swim/index.js'
import type { HostStateView, LocalHostState, MemberView, VmLocation } from './types.js'

export interface GossipComponents {
  host: Host
  privateKey: PrivateKey
  logger: Logger
  /** Our own state, read each time it is published. */
  localState: () => LocalHostState
  site: string
  /** Registry the gossip metrics go to; none if absent. */
  metrics?: Registry
}

export interface GossipInit {
  swim?: Omit<SwimInit, 'onDrop' | 'onMessage'>
  state?: HostStateInit
  /** Bound on the join pull from a newly connected peer. Default 10 s. */
  joinTimeoutMs?: number
  /**
   * A joining agent asks its first this-many peers (and a peer back from dead) for their member
   * lists along with the states it lacks; other new connections exchange state digests only.
   * Default 2.
   */
  joinSyncPeers?: number
}

export class Gossip {
  readonly swim: Swim
  readonly state: HostStateService
  private readonly log: Logger
  private readonly metrics?: GossipMetrics
  private readonly synced = new Set<string>()
  /** Peers declared dead or left: pull from them again when they come back (a partition healed). */
  private readonly returning = new Set<string>()
  private joinSyncs = 0
  private readonly joinTimeoutMs: number
  private readonly joinSyncPeers: number

  constructor(
    private readonly components: GossipComponents,
    init: GossipInit = {},
  ) {
    this.log = components.logger
    this.joinTimeoutMs = init.joinTimeoutMs ?? 10_000
    this.joinSyncPeers = init.joinSyncPeers ?? 2
    const metrics = components.metrics ? createGossipMetrics(components.metrics, () => this) : undefined
    this.metrics = metrics
    this.swim = new Swim(
      {
        host: components.host,
        logger: components.logger.child({ component: 'swim' }),
        self: { site: components.site, addrs: () => components.host.getMultiaddrs().map(String) },
      },
      {
        ...init.swim,
        onDrop: (reason) => metrics?.dropped.inc({ reason, source: 'swim' }),
        onMessage: (direction, kind, bytes) => {
          metrics?.messages.inc({ direction, kind: `swim-${kind}` })
          metrics?.bytes.inc({ direction, channel: 'swim' }, bytes)
        },
      },
    )
    this.state = new HostStateService(
      {
        host: components.host,
        privateKey: components.privateKey,
        logger: components.logger.child({ component: 'hoststate' }),
        localState: components.localState,
        membersProvider: () => this.swim.snapshot(),
        onMembers: (members) => this.swim.mergeMembers(members),
        onDrop: (reason, source) => metrics?.dropped.inc({ reason, source }),
        sites: {
          self: components.site,
          of: (peerId) => this.swim.member(peerId)?.site,
          preference: this.swim.config.sitePreference,
        },
      },
      init.state,
    )
  }

  async start(): Promise<void> {
    const { host } = this.components
    await this.swim.start()
    await this.state.start()
    this.swim.addEventListener('member:alive', this.onAlive)
    this.swim.addEventListener('member:suspect', this.onSuspect)
    this.swim.addEventListener('member:dead', this.onDead)
    this.swim.addEventListener('member:left', this.onLeft)
    this.state.on('host:update', this.onHostUpdate)
    host.addEventListener('peer:identify', this.onIdentify)
    host.addEventListener('peer:connect', this.onConnect)
    host.addEventListener('self:peer:update', this.onSelfUpdate)
    // Peers we were connected to before gossip started.
    for (const peer of host.getPeers()) this.join(peer)
  }

  /** Graceful: tell the mesh we leave (our VMs show as `host-left`), then stop. */
  async leave(): Promise<void> {
    await this.swim.leave().catch((err: unknown) => this.log.warn({ err }, 'leave was not sent'))
  }

  async stop(): Promise<void> {
    const { host } = this.components
    host.removeEventListener('peer:identify', this.onIdentify)
    host.removeEventListener('peer:connect', this.onConnect)
    host.removeEventListener('self:peer:update', this.onSelfUpdate)
    this.state.off('host:update', this.onHostUpdate)
    this.swim.removeEventListener('member:alive', this.onAlive)
    this.swim.removeEventListener('member:suspect', this.onSuspect)
    this.swim.removeEventListener('member:dead', this.onDead)
    this.swim.removeEventListener('member:left', this.onLeft)
    await this.state.stop()
    await this.swim.stop()
  }

  /** Our state changed (a VM came, went, or changed): publish it soon (debounced). */
  notifyChanged(): void {
    this.state.notifyChanged()
  }

  members(): MemberView[] {
    return this.swim.members()
  }

  hosts(): HostStateView[] {
    return this.state.hosts()
  }

  vms(): VmLocation[] {
    return this.state.vms()
  }

  where(vmId: string): VmLocation | undefined {
    return this.state.where(vmId)
  }

  /** A new connection: learn the peer as a member and pull a snapshot from it (the join). */
  private join(peer: PeerId): void {
    const addrs = this.components.host
      .getConnections(peer)
      .filter((c) => c.direction === 'outbound')
      .map((c) => c.remoteAddr)
    this.swim.addSeed(peer, addrs)
    const id = peer.toString()
    if (this.synced.has(id)) return
    this.synced.add(id)
    // Digests go both ways on every new connection (the peer pulls back what it lacks), so states
    // of agents that joined at the same time meet at once; only the whole member list, the big part
    // of a response, is asked from the first few peers and from a peer back from dead.
    const back = this.returning.delete(id)
    const wantMembers = back || this.joinSyncs < this.joinSyncPeers
    if (wantMembers && !back) this.joinSyncs++
    this.state
      .syncWith(peer, { signal: AbortSignal.timeout(this.joinTimeoutMs), wantMembers })
      .then((r) => this.log.debug({ peer: id, accepted: r.accepted }, 'joined through anti-entropy'))
      .catch((err: unknown) => {
        // Try again on the next connection to it; the periodic exchange repairs the rest.
        this.synced.delete(id)
        if (back) this.returning.add(id)
        else if (wantMembers) this.joinSyncs--
        this.log.debug({ peer: id, err: (err as Error).message }, 'join sync failed')
      })
  }

  private readonly onConnect = (evt: CustomEvent<PeerId>) => this.join(evt.detail)

  private readonly onIdentify = (
    evt: CustomEvent<{ peerId: PeerId; listenAddrs: { toString(): string }[] }>,
  ) => {
    // identify tells us where the peer listens: addresses other members can probe it at.
    this.swim.addSeed(evt.detail.peerId, evt.detail.listenAddrs.map(String))
  }

  private readonly onSelfUpdate = () => this.state.notifyChanged()

  private readonly onAlive = (evt: CustomEvent<MemberView>) => {
    this.state.markHost(evt.detail.peerId, 'ok')
    this.log.info({ peer: evt.detail.peerId, site: evt.detail.site }, 'member alive')
  }

  private readonly onSuspect = (evt: CustomEvent<MemberView>) => {
    this.log.warn({ peer: evt.detail.peerId }, 'member suspect')
  }

  private readonly onDead = (evt: CustomEvent<MemberView>) => {
    this.state.markHost(evt.detail.peerId, 'lost')
    this.synced.delete(evt.detail.peerId)
    this.returning.add(evt.detail.peerId)
    this.log.warn({ peer: evt.detail.peerId }, 'member dead: its VMs are host-lost')
  }

  private readonly onLeft = (evt: CustomEvent<MemberView>) => {
    this.state.markHost(evt.detail.peerId, 'left')
    this.synced.delete(evt.detail.peerId)
    this.returning.add(evt.detail.peerId)
    this.log.info({ peer: evt.detail.peerId }, 'member left')
  }

  private readonly onHostUpdate = (update: { source: string; state: HostStateView }) => {
    if (update.source !== 'gossip') return
    // How long a state took from its host to us (same clock on one machine; skewed across hosts).
    const lag = update.state.receivedAtMs - update.state.timestampMs
    if (lag >= 0) this.metrics?.convergenceLag.observe(lag / 1000)
  }
}
