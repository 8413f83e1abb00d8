// The SWIM failure detector and membership service over libp2p (memberlist's probe loop plus
// Lifeguard). Every exchange on /skymesh/swim/1.0.0 is one stream: a length-prefixed request
// (PING or PING_REQ) and a length-prefixed answer (ACK or NACK), each piggybacking membership
// updates. Periodic gossip pushes are PINGs whose ACK is read best-effort (its updates are applied,
// a missing one is not a probe failure), so no extra message type is needed.
import { setMaxListeners } from 'node:events'
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import { type MemberMessage, pb } from '../../proto/index.js'
import type { DropReason, MemberStatus, MemberView } from '../types.js'
import { BroadcastQueue } from './broadcast.js'
import { SwimChannels } from './channels.js'
import {
  addrsFromWire,
  addrsToWire,
  decodeMessage,
  encodeMessage,
  memberFromWire,
  memberToWire,
  memberWireSize,
  messageKind,
  peerIdBytes,
  peerIdStringFromBytes,
  type SwimMessage,
} from './codec.js'
import {
  MAX_ADDRS,
  MAX_MESSAGE_BYTES,
  MAX_UPDATES,
  resolveSwimConfig,
  SWIM_PROTOCOL,
  type SwimConfig,
  type SwimInit,
  type SwimMessageKind,
} from './config.js'
import type { SwimEventName, SwimEvents } from './events.js'
import { LocalHealth } from './health.js'
import { type ApplyResult, MemberList, type MemberUpdate } from './members.js'
import { pickSiteWeighted, SiteProbeOrder } from './site-pick.js'
import { anySignal, asError, delay, pickRandom, raceSignal, readErrorReason } from './util.js'

/** What the service needs from the libp2p host (the agent's `Host` satisfies it). */
export type SwimHost = Pick<
  Libp2p,
  'peerId' | 'handle' | 'unhandle' | 'dial' | 'dialProtocol' | 'peerStore' | 'getConnections'
>

export interface SwimComponents {
  host: SwimHost
  logger: Logger
  self: { site: string; addrs: () => string[] }
}

export interface SwimStats {
  messagesIn: Record<SwimMessageKind, number>
  messagesOut: Record<SwimMessageKind, number>
  bytesIn: number
  bytesOut: number
  drops: Partial<Record<DropReason, number>>
  /** Probes started by the probe loop. */
  probes: number
  /** Probes whose target missed the direct ACK (indirect probes followed). */
  directFailures: number
  /** PING_REQs sent. */
  indirectProbes: number
  /** Members we suspected ourselves (no ACK at all). */
  suspicions: number
  /** Times we raised our incarnation to refute a claim about us. */
  refutations: number
  /** Updates that changed our view. */
  updatesApplied: number
  /** Updates we already knew or that lost to what we know (normal redundancy, not drops). */
  updatesStale: number
  /** Outbound SWIM streams opened (each carries every request to one peer while it lasts). */
  streamsOpened: number
  /** Lifeguard local health multiplier (0 is healthy). */
  localHealth: number
  /** Updates waiting in the broadcast queue. */
  queued: number
  members: Record<MemberStatus, number>
}

type ProbeResult = 'ack' | 'nack' | 'fail'

interface QueuedUpdate {
  key: string
  wire: MemberMessage
}

/** An encoded message and the queued updates it carries (given back if it is not delivered). */
interface Outgoing {
  bytes: Uint8Array
  taken: QueuedUpdate[]
  /** The recipient our own record went to on this message, if it did. */
  selfTo?: string
}

const T = pb.SwimMessage.Type
const LEAVE_FANOUT = 16
/** A join sync sends at most this many messages (32 records each); anti-entropy covers bigger meshes. */
const MAX_SYNC_MESSAGES = 64
const MAX_CONCURRENT_SYNCS = 8
/** About this many members send a newcomer their list (its seed's anti-entropy pull does too). */
const SYNC_SENDERS = 4

/** No record, a placeholder from addSeed, or one that had died or left: it needs our list. */
function isNewcomer(prev: MemberUpdate | undefined): boolean {
  return prev === undefined || prev.incarnation === 0 || prev.status === 'dead' || prev.status === 'left'
}

type Listener = Parameters<EventTarget['addEventListener']>[1]
type AddOptions = Parameters<EventTarget['addEventListener']>[2]
type RemoveOptions = Parameters<EventTarget['removeEventListener']>[2]

// Declaration merge: typed overloads of the EventTarget methods.
export interface Swim {
  addEventListener<K extends SwimEventName>(
    type: K,
    listener: ((evt: SwimEvents[K]) => void) | null,
    options?: AddOptions,
  ): void
  addEventListener(type: string, listener: Listener, options?: AddOptions): void
  removeEventListener<K extends SwimEventName>(
    type: K,
    listener: ((evt: SwimEvents[K]) => void) | null,
    options?: RemoveOptions,
  ): void
  removeEventListener(type: string, listener: Listener, options?: RemoveOptions): void
}

/** Longest time a peer goes without our own record on a message from us. */
const SELF_REFRESH_MS = 30_000

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: typed event overloads only (see above)
export class Swim extends EventTarget {
  readonly config: Readonly<SwimConfig>
  private readonly host: SwimHost
  private readonly log: Logger
  private readonly self: SwimComponents['self']
  private readonly random: () => number
  private readonly onDrop?: SwimInit['onDrop']
  private readonly onMessage?: SwimInit['onMessage']
  private readonly list: MemberList
  private readonly queue: BroadcastQueue<QueuedUpdate>
  private readonly health: LocalHealth
  private readonly counters: Omit<SwimStats, 'localHealth' | 'queued' | 'members' | 'streamsOpened'>
  private streamsOpenedBefore = 0
  private controller?: AbortController
  private channels?: SwimChannels
  private probeTimer?: NodeJS.Timeout
  private gossipTimer?: NodeJS.Timeout
  private tickTimer?: NodeJS.Timeout
  private reconnectTimer?: NodeJS.Timeout
  private readonly probeOrder: SiteProbeOrder
  private seq = 0
  private gossiping = false
  private readonly dialing = new Map<string, Promise<void>>()
  private readonly syncing = new Set<string>()
  /** Round trip of the last direct PING/ACK per member (ms). */
  private readonly rtts = new Map<string, number>()
  private selfWire?: { incarnation: number; status: MemberStatus; wire: MemberMessage; bytes: number }
  /** Per recipient: which of our records it last got from us, and when (see message()). */
  private readonly selfSent = new Map<string, { key: string; at: number }>()

  constructor(components: SwimComponents, init: SwimInit = {}) {
    super()
    this.config = resolveSwimConfig(init)
    this.host = components.host
    this.log = components.logger.child({ component: 'swim' })
    this.self = components.self
    this.random = init.random ?? Math.random
    this.onDrop = init.onDrop
    this.onMessage = init.onMessage
    const now = Date.now()
    this.list = new MemberList({
      self: {
        peerId: this.host.peerId.toString(),
        addrs: this.selfAddrs(),
        site: components.self.site,
        incarnation: init.incarnation ?? now,
      },
      probeIntervalMs: this.config.probeIntervalMs,
      suspicionMult: this.config.suspicionMult,
      suspicionMaxTimeoutMult: this.config.suspicionMaxTimeoutMult,
      reapAfterMs: this.config.reapAfterMs,
      maxMembers: this.config.maxMembers,
      now,
    })
    this.queue = new BroadcastQueue({
      retransmitMult: this.config.retransmitMult,
      maxQueued: this.config.maxQueuedBroadcasts,
    })
    this.health = new LocalHealth(this.config.awarenessMaxMultiplier)
    this.probeOrder = new SiteProbeOrder({
      random: this.random,
      preference: this.config.sitePreference,
      candidates: () => this.list.others(['alive', 'suspect']),
      selfSite: components.self.site,
      probeable: (id) => {
        const m = this.list.get(id)
        return Boolean(m && (m.status === 'alive' || m.status === 'suspect'))
      },
    })
    const kinds = (): Record<SwimMessageKind, number> => ({ ping: 0, ack: 0, 'ping-req': 0, nack: 0 })
    this.counters = {
      messagesIn: kinds(),
      messagesOut: kinds(),
      bytesIn: 0,
      bytesOut: 0,
      drops: {},
      probes: 0,
      directFailures: 0,
      indirectProbes: 0,
      suspicions: 0,
      refutations: 0,
      updatesApplied: 0,
      updatesStale: 0,
    }
  }

  get isStarted(): boolean {
    return this.controller !== undefined
  }

  /** Our peer id. */
  get selfId(): string {
    return this.list.selfId
  }

  /** Our current incarnation. */
  get incarnation(): number {
    return this.list.incarnation
  }

  async start(): Promise<void> {
    if (this.controller) return
    this.controller = new AbortController()
    setMaxListeners(Number.POSITIVE_INFINITY, this.controller.signal)
    this.channels = new SwimChannels({
      host: this.host,
      protocol: SWIM_PROTOCOL,
      maxMessageBytes: MAX_MESSAGE_BYTES,
      logger: this.log,
      openTimeoutMs: this.config.dialTimeoutMs,
      signal: this.controller.signal,
      onDrop: (reason) => this.drop(reason),
    })
    await this.host.handle(SWIM_PROTOCOL, (stream, connection) => this.onStream(stream, connection), {
      // One long-lived channel per direction and connection; a few spare for reopening.
      maxInboundStreams: 8,
      maxOutboundStreams: 8,
      // A host behind NAT may be reachable only through a relay (a limited connection).
      runOnLimitedConnection: true,
    })
    // Nobody has heard of us yet: take the listen addresses without a new incarnation.
    this.list.setSelfAddrs(this.selfAddrs(), false)
    this.enqueue(this.list.selfUpdate())
    const { probeIntervalMs, gossipIntervalMs } = this.config
    this.scheduleProbe(Math.floor(this.random() * probeIntervalMs))
    this.gossipTimer = setInterval(() => {
      this.gossipRound().catch((err) => this.log.debug({ err }, 'gossip round failed'))
    }, gossipIntervalMs)
    this.gossipTimer.unref()
    this.reconnectTimer = setInterval(() => {
      this.reconnectRound().catch((err) => this.log.debug({ err }, 'reconnect round failed'))
    }, this.config.reconnectIntervalMs)
    this.reconnectTimer.unref()
    const tickMs = Math.max(10, Math.min(250, probeIntervalMs / 4))
    this.tickTimer = setInterval(() => this.tick(), tickMs)
    this.tickTimer.unref()
    this.log.debug({ incarnation: this.list.incarnation }, 'swim started')
  }

  async stop(): Promise<void> {
    const controller = this.controller
    if (!controller) return
    this.controller = undefined
    controller.abort()
    this.channels?.closeAll()
    this.streamsOpenedBefore += this.channels?.opened ?? 0
    this.channels = undefined
    clearTimeout(this.probeTimer)
    clearInterval(this.gossipTimer)
    clearInterval(this.tickTimer)
    clearInterval(this.reconnectTimer)
    this.probeTimer = this.gossipTimer = this.tickTimer = this.reconnectTimer = undefined
    try {
      await this.host.unhandle(SWIM_PROTOCOL)
    } catch (err) {
      this.log.debug({ err }, 'unhandle failed (host stopped?)')
    }
    this.log.debug('swim stopped')
  }

  /**
   * Graceful leave: gossip LEFT at a higher incarnation, push it to up to 16 members now and wait
   * (at most `leavePropagateMs`) until it has been sent out. Call stop() afterwards.
   */
  async leave(options: { signal?: AbortSignal } = {}): Promise<void> {
    const controller = this.controller
    if (!controller) return
    this.enqueue(this.list.leave(Date.now()))
    const signals = [controller.signal, AbortSignal.timeout(this.config.leavePropagateMs)]
    if (options.signal) signals.push(options.signal)
    const signal = anySignal(signals)
    // Leaving is rare: tell up to LEAVE_FANOUT members directly, gossip carries it to the rest.
    const running = this.list.others(['alive', 'suspect'])
    await this.push(pickRandom(running, Math.max(this.config.gossipNodes, LEAVE_FANOUT), this.random), signal)
    const step = Math.max(10, Math.min(50, this.config.gossipIntervalMs / 2))
    while (this.queue.isPending(this.selfId, this.list.numLive()) && !signal.aborted)
      await delay(step, signal)
  }

  /** Everyone we know, ourselves included, dead and left members until they are reaped. */
  members(): MemberView[] {
    return this.list.views()
  }

  /** Round trip of our last PING answered by this member, in ms (a latency figure for free). */
  rtt(peerId: string): number | undefined {
    return this.rtts.get(peerId)
  }

  member(peerId: string): MemberView | undefined {
    return this.list.view(peerId)
  }

  /** Members with status alive, ourselves included (unless we are leaving). */
  aliveCount(): number {
    return this.list.aliveCount()
  }

  /**
   * A member learnt outside gossip (libp2p `peer:connect`, a bootstrap peer). Unknown peers are
   * added as alive until they tell us their own record; known ones are left alone (a connection
   * does not revive a dead member: its own higher incarnation does). True when it was new.
   */
  addSeed(peerId: PeerId | string, addrs: ReadonlyArray<Multiaddr | string> = []): boolean {
    let id: string
    try {
      id = typeof peerId === 'string' ? peerIdFromString(peerId).toString() : peerId.toString()
    } catch {
      return false
    }
    const list: string[] = []
    for (const a of addrs.slice(0, MAX_ADDRS)) {
      try {
        list.push(typeof a === 'string' ? multiaddr(a).toString() : a.toString())
      } catch {
        // skip what does not parse
      }
    }
    const res = this.list.addSeed(id, list, Date.now())
    this.handleResult(res)
    return res.added === true
  }

  /**
   * Members from anti-entropy (another agent's snapshot()). As in memberlist's mergeState, a DEAD
   * claim about a member we think is running becomes a suspicion it can still refute.
   */
  mergeMembers(members: readonly MemberMessage[]): void {
    const now = Date.now()
    for (const m of members) {
      const d = memberFromWire(m)
      if (!d.ok) {
        this.drop(d.reason)
        continue
      }
      let u = d.value
      if (u.status === 'dead') {
        const cur = this.list.get(u.peerId)
        if (cur && (cur.status === 'alive' || cur.status === 'suspect')) u = { ...u, status: 'suspect' }
      }
      this.handleResult(this.list.apply(u, now))
    }
  }

  /** Every member we know (ourselves included) in wire form, for anti-entropy. */
  snapshot(): MemberMessage[] {
    return this.list.snapshot().map(memberToWire)
  }

  stats(): SwimStats {
    const members: Record<MemberStatus, number> = { alive: 0, suspect: 0, dead: 0, left: 0 }
    for (const m of this.list.views()) members[m.status]++
    return {
      ...this.counters,
      messagesIn: { ...this.counters.messagesIn },
      messagesOut: { ...this.counters.messagesOut },
      drops: { ...this.counters.drops },
      streamsOpened: this.streamsOpenedBefore + (this.channels?.opened ?? 0),
      localHealth: this.health.value,
      queued: this.queue.size,
      members,
    }
  }

  // ----------------------------------------------------------------------------- loops

  private scheduleProbe(ms: number): void {
    if (!this.controller) return
    this.probeTimer = setTimeout(() => {
      this.probeRound().catch((err) => this.log.debug({ err }, 'probe round failed'))
    }, ms)
    this.probeTimer.unref()
  }

  private async probeRound(): Promise<void> {
    const controller = this.controller
    if (!controller) return
    const started = Date.now()
    try {
      this.refreshSelfAddrs()
      const target = this.nextProbeTarget()
      if (target) await this.probe(target, controller.signal)
      // Alone (everyone else dead): try the dead at probe pace so a partition heals quickly.
      else await this.reconnectRound()
    } finally {
      const interval = this.health.scale(this.config.probeIntervalMs)
      this.scheduleProbe(Math.max(0, interval - (Date.now() - started)))
    }
  }

  /**
   * The next alive or suspect member of a shuffled round-robin (reshuffled at each pass), one per
   * site group, the group chosen with the site preference (site-pick.ts).
   */
  private nextProbeTarget(): MemberUpdate | undefined {
    const id = this.probeOrder.next()
    return id === undefined ? undefined : this.list.get(id)
  }

  /** One probe: PING; without an ACK in time, PING_REQ through others; without any ACK, suspect. */
  private async probe(target: MemberUpdate, signal: AbortSignal): Promise<void> {
    this.counters.probes++
    const done = new AbortController()
    try {
      const result = await this.probeOnce(target, signal, done)
      if (result === 'ack' || signal.aborted) return
      // Lifeguard: NACKs show the helpers reached nobody either, so the fault is not on our side;
      // missing ones hint that we are the slow one.
      this.health.apply(result.helpers > 0 ? result.helpers - result.nacks : 1)
      this.counters.suspicions++
      this.log.debug({ peer: target.peerId, ...result }, 'probe failed, suspecting')
      this.handleResult(this.list.suspect(target.peerId, Date.now()))
    } finally {
      done.abort()
    }
  }

  private async probeOnce(
    target: MemberUpdate,
    signal: AbortSignal,
    done: AbortController,
  ): Promise<'ack' | { helpers: number; nacks: number }> {
    let intervalMs = this.health.scale(this.config.probeIntervalMs)
    let timeoutMs = this.health.scale(this.config.probeTimeoutMs)
    if (!this.isConnected(target.peerId)) {
      // A first contact must also set up TCP + noise + yamux: grant it one more probe interval.
      timeoutMs += this.config.probeIntervalMs
      intervalMs += this.config.probeIntervalMs
    }
    // The direct exchange may still answer late (until the interval ends), as in memberlist.
    const directSignal = anySignal([signal, done.signal, AbortSignal.timeout(intervalMs)])
    const direct = this.ping(target, this.nextSeq(), directSignal)
    const early = await Promise.race([direct, delay(timeoutMs, directSignal).then(() => 'timeout' as const)])
    if (early === 'ack') {
      this.health.apply(-1)
      return 'ack'
    }
    if (signal.aborted) return { helpers: 0, nacks: 0 }
    this.counters.directFailures++
    this.log.debug({ peer: target.peerId }, 'no direct ack, probing indirectly')

    const helpers = pickRandom(
      this.list.others(['alive']).filter((m) => m.peerId !== target.peerId),
      this.config.indirectChecks,
      this.random,
    )
    // Wait until the interval ends, and at least long enough for a helper's NACK (sent at 80 % of
    // its own probe timeout) to come back through two streams.
    const waitMs = Math.max(intervalMs - timeoutMs, Math.ceil(timeoutMs * 1.5))
    const indirectSignal = anySignal([signal, done.signal, AbortSignal.timeout(waitMs)])
    const stopOnAck = (r: ProbeResult) => {
      if (r === 'ack') done.abort()
      return r
    }
    const results = await Promise.all([
      direct.then(stopOnAck),
      ...helpers.map((h) => this.pingReq(h, target, indirectSignal).then(stopOnAck)),
    ])
    if (results.includes('ack')) return 'ack'
    return { helpers: helpers.length, nacks: results.filter((r) => r === 'nack').length }
  }

  private async gossipRound(): Promise<void> {
    const controller = this.controller
    if (!controller || this.gossiping || this.queue.pending(this.list.numLive()) === 0) return
    this.gossiping = true
    try {
      const signal = anySignal([controller.signal, AbortSignal.timeout(this.config.probeTimeoutMs)])
      await this.push(this.gossipTargets(), signal)
    } finally {
      this.gossiping = false
    }
  }

  /** Running members plus those declared dead recently (so a falsely-dead one hears it and refutes). */
  private gossipTargets(): MemberUpdate[] {
    const candidates = [
      ...this.list.others(['alive', 'suspect']),
      ...this.list.recentlyDead(Date.now(), this.config.gossipToTheDeadMs),
    ]
    return pickSiteWeighted(
      candidates,
      this.config.gossipNodes,
      this.self.site,
      this.config.sitePreference,
      this.random,
    )
  }

  /** Best-effort PINGs carrying queued updates; the ACKs' updates are applied, failures ignored. */
  private async push(targets: MemberUpdate[], signal: AbortSignal): Promise<void> {
    await Promise.all(targets.map((m) => this.ping(m, this.nextSeq(), signal)))
  }

  /** PING one random dead member: if it is in fact running, our record of it makes it refute. */
  private async reconnectRound(): Promise<void> {
    const controller = this.controller
    if (!controller) return
    const [m] = pickRandom(this.list.others(['dead']), 1, this.random)
    if (!m) return
    const signal = anySignal([controller.signal, AbortSignal.timeout(this.config.dialTimeoutMs)])
    await this.ping(m, this.nextSeq(), signal)
  }

  /**
   * Join sync (memberlist's push/pull, one way): send a newcomer every record we hold, up to
   * 32 per PING, so a member that knows only its seed learns the mesh at once instead of waiting
   * for gossip that may already have run out. Anti-entropy (snapshot/mergeMembers) remains the
   * periodic repair.
   */
  private scheduleSync(peer: string): void {
    const controller = this.controller
    if (!controller || this.syncing.has(peer) || this.syncing.size >= MAX_CONCURRENT_SYNCS) return
    // Every member a newcomer meets syncs it in a tiny mesh; otherwise about SYNC_SENDERS do: each
    // list is the whole mesh, and 49 of them at once were most of the cost of a join at 50 agents.
    const n = this.list.numLive()
    if (n > SYNC_SENDERS && this.random() >= SYNC_SENDERS / n) return
    this.syncing.add(peer)
    this.syncTo(peer, controller.signal)
      .catch((err) => this.log.debug({ err, peer }, 'join sync failed'))
      .finally(() => this.syncing.delete(peer))
  }

  private async syncTo(peer: string, stopSignal: AbortSignal): Promise<void> {
    const target = this.list.get(peer)
    if (!target) return
    const records = this.list.snapshot().filter((u) => u.peerId !== peer && u.peerId !== this.selfId)
    let chunk: MemberMessage[] = []
    let bytes = 0
    let sent = 0
    const flush = async (): Promise<boolean> => {
      if (chunk.length === 0) return true
      const seq = this.nextSeq()
      const req: Outgoing = {
        bytes: encodeMessage({ type: T.PING, seq, updates: [...chunk, this.selfRecord()] }),
        taken: [],
      }
      chunk = []
      bytes = 0
      sent++
      const signal = anySignal([
        stopSignal,
        AbortSignal.timeout(this.health.scale(this.config.probeTimeoutMs) * 2),
      ])
      const res = await this.exchange(peer, target.addrs, seq, req, 'ping', signal)
      if (res && res.type === T.ACK && res.seq === seq) this.ingest(res.updates, peer)
      return res !== undefined
    }
    for (const u of records) {
      const wire = memberToWire(u)
      const size = memberWireSize(wire)
      if (chunk.length >= MAX_UPDATES - 1 || bytes + size > this.config.maxPiggybackBytes) {
        if (sent >= MAX_SYNC_MESSAGES || !(await flush())) return
      }
      chunk.push(wire)
      bytes += size
    }
    if (sent < MAX_SYNC_MESSAGES) await flush()
  }

  private tick(): void {
    for (const res of this.list.tick(Date.now())) this.handleResult(res)
  }

  // ----------------------------------------------------------------------------- exchanges (dialer)

  private async ping(target: MemberUpdate, seq: number, signal: AbortSignal): Promise<ProbeResult> {
    const req = this.message(T.PING, seq, target.peerId)
    const sentAt = performance.now()
    const res = await this.exchange(target.peerId, target.addrs, seq, req, 'ping', signal)
    if (!res) return 'fail'
    if (res.type !== T.ACK || res.seq !== seq) {
      this.drop('malformed')
      return 'fail'
    }
    this.rtts.set(target.peerId, performance.now() - sentAt)
    this.ingest(res.updates, target.peerId)
    return 'ack'
  }

  private async pingReq(
    helper: MemberUpdate,
    target: MemberUpdate,
    signal: AbortSignal,
  ): Promise<ProbeResult> {
    this.counters.indirectProbes++
    const seq = this.nextSeq()
    const req = this.message(T.PING_REQ, seq, helper.peerId, {
      target: peerIdBytes(target.peerId),
      targetAddrs: addrsToWire(target.addrs),
    })
    const res = await this.exchange(helper.peerId, helper.addrs, seq, req, 'ping-req', signal)
    if (!res) return 'fail'
    if ((res.type !== T.ACK && res.type !== T.NACK) || res.seq !== seq) {
      this.drop('malformed')
      return 'fail'
    }
    this.ingest(res.updates, helper.peerId)
    if (res.type === T.NACK) {
      // The helper could not reach the target either: its evidence confirms a suspicion.
      this.handleResult(this.list.observeFailure(target.peerId, helper.peerId, Date.now()), false)
      return 'nack'
    }
    return 'ack'
  }

  /** Send one request on the peer's channel, wait for its answer. Undefined on any failure (never throws). */
  private async exchange(
    peer: string,
    addrs: readonly string[],
    seq: number,
    req: Outgoing,
    kind: SwimMessageKind,
    signal: AbortSignal,
  ): Promise<SwimMessage | undefined> {
    let answered = false
    try {
      const channels = this.channels
      if (!channels) throw new Error('swim: stopped')
      const peerId = peerIdFromString(peer)
      await this.connect(peerId, addrs, signal)
      this.countOut(kind, req.bytes.length)
      const answer = await channels.request(peerId, seq, req.bytes, signal)
      answered = true
      this.countIn(answer.msg.type, answer.bytes)
      return answer.msg
    } catch (err) {
      if (!answered) this.undelivered(req)
      if (!signal.aborted) this.log.trace({ peer, err }, 'swim exchange failed')
      return undefined
    }
  }

  private isConnected(peer: string): boolean {
    try {
      return this.host.getConnections(peerIdFromString(peer)).length > 0
    } catch {
      return false
    }
  }

  /**
   * Make sure a connection exists or is being made. A first contact (TCP + noise + yamux) can take
   * longer than a probe timeout on a busy host; the dial runs on under its own, longer timeout so
   * that a probe giving up does not abort it and the next probe finds the connection ready.
   */
  private async connect(peerId: PeerId, addrs: readonly string[], signal: AbortSignal): Promise<void> {
    if (this.host.getConnections(peerId).length > 0) return
    const key = peerId.toString()
    let pending = this.dialing.get(key)
    if (!pending) {
      const controller = this.controller
      if (!controller) throw new Error('swim: stopped')
      const dialSignal = anySignal([controller.signal, AbortSignal.timeout(this.config.dialTimeoutMs)])
      pending = (async () => {
        if (addrs.length > 0) {
          // libp2p dials only addresses it has in its peer store.
          await this.host.peerStore.merge(
            peerId,
            { multiaddrs: addrs.map((a) => multiaddr(a)) },
            { signal: dialSignal },
          )
        }
        await this.host.dial(peerId, { signal: dialSignal })
      })()
      this.dialing.set(key, pending)
      pending.then(
        () => this.dialing.delete(key),
        (err) => {
          this.dialing.delete(key)
          this.log.trace({ peer: key, err }, 'dial failed')
        },
      )
    }
    await raceSignal(pending, signal)
  }

  // ----------------------------------------------------------------------------- handler (listener)

  /**
   * An inbound channel: requests until the peer closes it, each answered on the same stream (a
   * PING at once, a PING_REQ when its probe is done). Never throws: bad input is dropped, counted
   * and the stream aborted (the peer opens a new one).
   */
  private async onStream(stream: Stream, connection: Connection): Promise<void> {
    const controller = this.controller
    if (!controller) {
      stream.abort(new Error('swim: stopped'))
      return
    }
    const from = connection.remotePeer.toString()
    const lp = lpStream(stream, { maxDataLength: MAX_MESSAGE_BYTES })
    for (let n = 0; ; n++) {
      let bytes: Uint8Array
      try {
        bytes = (await lp.read({ signal: controller.signal })).subarray()
      } catch (err) {
        const reason = readErrorReason(err)
        // The end of the stream between two requests is the peer closing its channel.
        const closedBetween = reason === 'malformed' && n > 0 && (err as Error).name === 'UnexpectedEOFError'
        if (reason && !closedBetween && !controller.signal.aborted) this.drop(reason)
        if (closedBetween) await stream.close().catch((e: unknown) => stream.abort(asError(e)))
        else stream.abort(asError(err))
        return
      }
      const d = decodeMessage(bytes)
      if (!d.ok) {
        this.reject(stream, d.reason)
        return
      }
      const msg = d.value
      if (msg.type === T.PING) {
        this.countIn(msg.type, bytes.length)
        this.ingest(msg.updates, from)
        this.reply(lp, stream, this.message(T.ACK, msg.seq, from), 'ack', controller.signal)
      } else if (msg.type === T.PING_REQ) {
        const target = peerIdStringFromBytes(msg.target)
        const targetAddrs = addrsFromWire(msg.targetAddrs)
        if (target === undefined || targetAddrs === undefined) {
          this.reject(stream, 'malformed')
          return
        }
        this.countIn(msg.type, bytes.length)
        this.ingest(msg.updates, from)
        // The requester's direct probe failed: first-hand evidence (a Lifeguard confirmation).
        this.handleResult(this.list.observeFailure(target, from, Date.now()), false)
        // Probing takes a while: keep reading the channel meanwhile.
        void this.probeFor(target, targetAddrs, controller.signal).then((ok) => {
          if (!ok) this.handleResult(this.list.observeFailure(target, this.selfId, Date.now()), false)
          const reply = this.message(ok ? T.ACK : T.NACK, msg.seq, from)
          this.reply(lp, stream, reply, ok ? 'ack' : 'nack', controller.signal)
        })
      } else {
        // ACK and NACK only come back on channels we opened.
        this.reject(stream, 'malformed')
        return
      }
    }
  }

  /** Write one answer on an inbound channel; a failed write aborts the stream (the peer reopens). */
  private reply(
    lp: ReturnType<typeof lpStream>,
    stream: Stream,
    out: Outgoing,
    kind: SwimMessageKind,
    stop: AbortSignal,
  ): void {
    const signal = anySignal([stop, AbortSignal.timeout(this.config.dialTimeoutMs)])
    lp.write(out.bytes, { signal }).then(
      () => this.countOut(kind, out.bytes.length),
      (err: unknown) => {
        this.undelivered(out)
        stream.abort(asError(err))
      },
    )
  }

  /** PING_REQ on behalf of another member: ACK when the target answers before our NACK deadline. */
  private async probeFor(target: string, addrs: string[], signal: AbortSignal): Promise<boolean> {
    if (target === this.selfId) return true
    const known = this.list.get(target)
    const m: MemberUpdate = known ?? { peerId: target, addrs, incarnation: 0, status: 'alive', site: '' }
    const via = addrs.length > 0 ? { ...m, addrs } : m
    // NACK a little before the requester gives up, so it can tell "target down" from "we are slow".
    const timeout = AbortSignal.timeout(Math.max(1, Math.floor(this.config.probeTimeoutMs * 0.8)))
    return (await this.ping(via, this.nextSeq(), anySignal([signal, timeout]))) === 'ack'
  }

  private reject(stream: Stream, reason: DropReason): void {
    this.drop(reason)
    stream.abort(new Error(`swim: ${reason} message`))
  }

  // ----------------------------------------------------------------------------- state

  /** Validate and apply piggybacked updates; a bad one is dropped alone. */
  /**
   * Validate and apply piggybacked updates from `from`; a bad one is dropped alone. A member that
   * introduces itself to us for the first time (or again after being dead) gets our member list.
   */
  private ingest(updates: readonly MemberMessage[] | null | undefined, from: string): void {
    if (!updates || updates.length === 0) return
    const now = Date.now()
    for (const m of updates) {
      const d = memberFromWire(m)
      if (!d.ok) {
        this.drop(d.reason)
        continue
      }
      const u = d.value
      const prev = u.peerId === from ? this.list.get(from) : undefined
      // Relayed claims are not first-hand evidence: no accuser.
      const res = this.list.apply(u, now)
      this.handleResult(res)
      if (u.peerId === from && res.accepted && u.status === 'alive' && isNewcomer(prev))
        this.scheduleSync(from)
    }
  }

  private handleResult(res: ApplyResult, isUpdate = true): void {
    if (res.full) this.drop('too-many-items')
    else if (isUpdate) {
      if (res.accepted) this.counters.updatesApplied++
      else this.counters.updatesStale++
    }
    if (res.broadcast) this.enqueue(res.broadcast)
    if (res.refuted) {
      this.counters.refutations++
      // Lifeguard: being accused hints that we may be the slow one.
      this.health.apply(1)
      this.log.info({ incarnation: this.list.incarnation }, 'refuted a suspicion of this agent')
    }
    if (res.added && res.event && (res.event.type === 'alive' || res.event.type === 'suspect')) {
      // Probe newcomers within this pass: insert at a random place among the members still to come.
      this.probeOrder.insert(res.event.member.peerId, res.event.member.site)
    }
    if (res.event) {
      const { type, member } = res.event
      if (type === 'dead' || type === 'left') this.rtts.delete(member.peerId)
      this.log.info({ peer: member.peerId, status: type, incarnation: member.incarnation }, 'member status')
      this.dispatchEvent(new CustomEvent(`member:${type}`, { detail: member }))
    }
  }

  private enqueue(u: MemberUpdate): void {
    const wire = memberToWire(u)
    this.queue.enqueue(u.peerId, { key: u.peerId, wire }, memberWireSize(wire))
  }

  /**
   * A message to `about` with piggybacked updates: queued ones (except those about the recipient
   * itself), our own record, and our record of the recipient if it is not alive (so it can refute).
   */
  private message(
    type: number,
    seq: number,
    about: string | undefined,
    extra: { target?: Uint8Array; targetAddrs?: Uint8Array[] } = {},
  ): Outgoing {
    const taken = this.queue.take(this.list.numLive(), {
      maxItems: MAX_UPDATES - 2,
      maxBytes: this.config.maxPiggybackBytes,
      exclude: about,
    })
    const updates = taken.map((q) => q.wire)
    // Our own record rides on a message when the recipient has not had this incarnation from us, and
    // at least every SELF_REFRESH_MS: on every message it was most of SWIM's bytes at rest
    let selfTo: string | undefined
    if (!taken.some((q) => q.key === this.selfId) && this.selfDue(about)) {
      updates.push(this.selfRecord())
      selfTo = about
    }
    if (about !== undefined && about !== this.selfId) {
      const r = this.list.get(about)
      if (r && r.status !== 'alive') updates.push(memberToWire(r))
    }
    return { bytes: encodeMessage({ type, seq, updates, ...extra }), taken, ...(selfTo ? { selfTo } : {}) }
  }

  /** The message did not get through: its updates' transmissions do not count. */
  private undelivered(out: Outgoing): void {
    // It did not get our record either: the next message carries it
    if (out.selfTo !== undefined) this.selfSent.delete(out.selfTo)
    for (const q of out.taken) this.queue.restore(q.key, q)
  }

  private selfDue(to: string | undefined): boolean {
    if (to === undefined) return true
    const u = this.list.selfUpdate()
    const key = `${u.incarnation}:${u.status}`
    const now = Date.now()
    const last = this.selfSent.get(to)
    if (last && last.key === key && now - last.at < SELF_REFRESH_MS) return false
    this.selfSent.set(to, { key, at: now })
    // Bounded: peers long gone are forgotten (they get the record again if they come back)
    if (this.selfSent.size > 4 * Math.max(64, this.list.numLive())) {
      for (const [peer, v] of this.selfSent) if (now - v.at >= SELF_REFRESH_MS) this.selfSent.delete(peer)
    }
    return true
  }

  private selfRecord(): MemberMessage {
    const u = this.list.selfUpdate()
    const c = this.selfWire
    if (c && c.incarnation === u.incarnation && c.status === u.status) return c.wire
    const wire = memberToWire(u)
    this.selfWire = { incarnation: u.incarnation, status: u.status, wire, bytes: memberWireSize(wire) }
    return wire
  }

  private selfAddrs(): string[] {
    try {
      return this.self.addrs().slice(0, MAX_ADDRS)
    } catch {
      return []
    }
  }

  /** Our addresses changed (a late listen, an announce): a new incarnation spreads them. */
  private refreshSelfAddrs(): void {
    const u = this.list.setSelfAddrs(this.selfAddrs())
    if (u) this.enqueue(u)
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0
    return this.seq
  }

  private drop(reason: DropReason): void {
    this.counters.drops[reason] = (this.counters.drops[reason] ?? 0) + 1
    try {
      this.onDrop?.(reason)
    } catch (err) {
      this.log.warn({ err }, 'onDrop callback threw')
    }
  }

  private countIn(type: number, bytes: number): void {
    const kind = messageKind(type) ?? 'ping'
    this.counters.messagesIn[kind]++
    this.counters.bytesIn += bytes
    this.notify('in', kind, bytes)
  }

  private countOut(kind: SwimMessageKind, bytes: number): void {
    this.counters.messagesOut[kind]++
    this.counters.bytesOut += bytes
    this.notify('out', kind, bytes)
  }

  private notify(direction: 'in' | 'out', kind: SwimMessageKind, bytes: number): void {
    try {
      this.onMessage?.(direction, kind, bytes)
    } catch (err) {
      this.log.warn({ err }, 'onMessage callback threw')
    }
  }
}

/** js-libp2p style factory: `swim(init)(components)`. */
export function swim(init: SwimInit = {}): (components: SwimComponents) => Swim {
  return (components) => new Swim(components, init)
}
