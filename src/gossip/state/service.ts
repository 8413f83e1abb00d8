// HostStateService ties host-state dissemination together: our state published on gossipsub, every
// host's newest verified state (and the VM locations derived from it), and anti-entropy over
// /skymesh/sync/1.0.0 for what gossip missed (and for a joining agent's first snapshot).
import { EventEmitter } from 'node:events'
import { type GossipSub, type Message, TopicValidatorResult } from '@libp2p/gossipsub'
import type { Connection, Libp2p, PeerId, PrivateKey, Stream } from '@libp2p/interface'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import type { Logger } from 'pino'
import type { MemberMessage } from '../../proto/index.js'
import type { DropReason, HostStateView, LocalHostState, VmLocation } from '../types.js'
import {
  HOST_STATE_TOPIC,
  MAX_STATE_BYTES,
  MAX_SYNC_REQUEST_BYTES,
  MAX_SYNC_RESPONSE_BYTES,
  SYNC_PROTOCOL,
} from './constants.js'
import { type OpenedHostState, openHostState } from './envelope.js'
import { InvalidSyncResponseError, SyncFailedError } from './errors.js'
import { type AcceptResult, HostTable } from './host-table.js'
import type { HostMark, LocationChange } from './location-table.js'
import type { Member } from './pb-types.js'
import { Publisher } from './publisher.js'
import { decodeSyncRequest, decodeSyncResponse, encodeSyncRequest, encodeSyncResponse } from './sync-codec.js'
import { pickSyncPeer, type SyncPeerSites } from './sync-peer.js'

export type DropSource = 'gossip' | 'sync'
export type UpdateSource = DropSource | 'local'

/** The slice of the libp2p host this service uses. */
export interface HostStateHost
  extends Pick<
    Libp2p,
    | 'peerId'
    | 'handle'
    | 'unhandle'
    | 'dialProtocol'
    | 'getPeers'
    | 'addEventListener'
    | 'removeEventListener'
  > {
  services: { pubsub: GossipSub }
}

export interface HostStateComponents {
  host: HostStateHost
  /** The host's libp2p key: it signs our state. */
  privateKey: PrivateKey
  logger: Logger
  /** Our own state, read each time it is published. */
  localState: () => LocalHostState
  /** Members to hand a peer that asks during anti-entropy (the membership layer fills it). */
  membersProvider?: () => MemberMessage[]
  /** Members a peer sent during anti-entropy (opaque here). */
  onMembers?: (members: Member[], from: string) => void
  /** A message (or one state inside a sync response) was dropped. */
  onDrop?: (reason: DropReason, source: DropSource) => void
  /** Sites of peers and the preference for our own: periodic anti-entropy favours our site. */
  sites?: SyncPeerSites
}

export interface HostStateInit {
  /** Gathers a burst of changes into one message; default 100 ms. */
  debounceMs?: number
  /** Longest time between two publications of our state; default 5 min (see Publisher). */
  heartbeatMs?: number
  /**
   * Anti-entropy with one connected peer (site-weighted, see sync-peer.ts) this often; default 30 s (0 disables). Above 32
   * peers it stretches as memberlist's push/pull does: x (ceil(log2 n - log2 32) + 1).
   */
  syncIntervalMs?: number
  /** Bound on one anti-entropy exchange, either side; default 10 s. */
  syncTimeoutMs?: number
  /** Largest SignedHostState accepted; default 1 MiB. */
  maxStateBytes?: number
  /** Pull from every newly connected peer; default false (the agent calls syncWith itself). */
  syncOnConnect?: boolean
  /** Pull back from a requester whose digests show it has states we lack; default true. */
  reverseSync?: boolean
  /** Anti-entropy requests served at once (more are refused); default 4. */
  maxConcurrentServes?: number
  /** How long a removed VM's last location refuses older claims; default 1 h. */
  tombstoneTtlMs?: number
  /** Randomness for the periodic anti-entropy peer (tests). Default Math.random. */
  random?: () => number
}

export interface HostUpdate {
  peerId: string
  version: number
  previousVersion?: number
  source: UpdateSource
  state: HostStateView
  /** VMs that appeared at, moved to, or left this host with this state. */
  changes: LocationChange[]
}

export interface HostStateEvents {
  'host:update': [HostUpdate]
}

export interface SyncResult {
  /** States in the response. */
  received: number
  /** States taken into the host table (newer than what we had). */
  accepted: number
  members: number
}

export interface SyncOptions {
  signal?: AbortSignal
  /** Ask for the peer's members; default: whether onMembers is set. */
  wantMembers?: boolean
}

export interface HostStateStats {
  gossip: { messagesIn: number; messagesOut: number; bytesIn: number; bytesOut: number }
  sync: {
    requestsOut: number
    requestsIn: number
    failures: number
    statesIn: number
    statesOut: number
    bytesIn: number
    bytesOut: number
  }
  drops: Record<DropReason, number>
  dropsBySource: Record<DropSource, Record<DropReason, number>>
  hosts: number
  vms: number
  /** Distinct conflicting claims (two hosts, one VM, one epoch). */
  conflicts: number
}

const DROP_REASONS: readonly DropReason[] = [
  'malformed',
  'oversized',
  'bad-signature',
  'wrong-sender',
  'stale',
  'replayed',
  'too-many-items',
  'self',
]
/** Not the sender's fault (ordering, our own echo): gossipsub ignores these instead of penalising. */
const BENIGN: ReadonlySet<DropReason> = new Set(['stale', 'replayed', 'self'])
const REVERSE_SYNC_MIN_INTERVAL_MS = 1000
const DEFAULT_SYNC_INTERVAL_MS = 30_000
/** Republish our state while we have at most this many topic peers (see onSubscriptionChange). */
const FIRST_SUBSCRIBERS = 2

/** memberlist's pushPullScale: 1 up to 32 members, then one more per doubling. */
export function pushPullScale(n: number): number {
  return n <= 32 ? 1 : Math.ceil(Math.log2(n) - Math.log2(32)) + 1
}
const TOMBSTONE_PRUNE_MS = 60_000

const zeroDrops = (): Record<DropReason, number> =>
  Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>

export class HostStateService extends EventEmitter<HostStateEvents> {
  readonly peerId: string
  private readonly log: Logger
  private readonly table: HostTable
  private readonly publisher: Publisher
  private readonly syncTimeoutMs: number
  private readonly maxStateBytes: number
  private running = false
  private lifetime = new AbortController()
  private syncTimer?: NodeJS.Timeout
  private pruneTimer?: NodeJS.Timeout
  private serving = 0
  private readonly reverseInFlight = new Set<string>()
  private readonly reverseAt = new Map<string, number>()
  private readonly counters = {
    gossip: { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0 },
    sync: { requestsOut: 0, requestsIn: 0, failures: 0, statesIn: 0, statesOut: 0, bytesIn: 0, bytesOut: 0 },
    drops: { gossip: zeroDrops(), sync: zeroDrops() },
  }

  private readonly validate = (_peer: PeerId, msg: Message): Promise<TopicValidatorResult> =>
    this.onGossip(msg)

  private readonly onConnect = (evt: CustomEvent<PeerId>): void => {
    const peer = evt.detail
    this.syncWith(peer).catch((err: Error) =>
      this.log.debug({ peer: peer.toString(), err: err.message }, 'sync on connect failed'),
    )
  }

  private readonly onSubscriptionChange = (
    evt: CustomEvent<{ peerId: PeerId; subscriptions: { topic: string; subscribe: boolean }[] }>,
  ): void => {
    if (!evt.detail.subscriptions.some((s) => s.topic === HOST_STATE_TOPIC && s.subscribe)) return
    // Our first topic peers: what we published before anyone listened (at start, before any
    // connection) reached no one, and the next heartbeat is minutes away. Publish again now; the
    // mesh relays it to every agent.
    const subscribers = this.components.host.services.pubsub.getSubscribers(HOST_STATE_TOPIC).length
    if (subscribers <= FIRST_SUBSCRIBERS) this.publisher.notifyChanged()
  }

  constructor(
    private readonly components: HostStateComponents,
    private readonly init: HostStateInit = {},
  ) {
    super()
    this.peerId = peerIdFromPrivateKey(components.privateKey).toString()
    this.log = components.logger
    this.syncTimeoutMs = init.syncTimeoutMs ?? 10_000
    this.maxStateBytes = init.maxStateBytes ?? MAX_STATE_BYTES
    this.table = new HostTable({
      self: this.peerId,
      tombstoneTtlMs: init.tombstoneTtlMs,
      onConflict: (c) =>
        this.log.warn(c, 'two hosts claim one VM at one epoch; keeping the first seen location'),
    })
    this.publisher = new Publisher(
      {
        privateKey: components.privateKey,
        logger: this.log,
        localState: components.localState,
        publish: (bytes) => this.publish(bytes),
        onLocal: (state) => this.apply(state, 'local'),
      },
      { debounceMs: init.debounceMs, heartbeatMs: init.heartbeatMs },
    )
  }

  async start(): Promise<void> {
    if (this.running) return
    this.running = true
    this.lifetime = new AbortController()
    const { host } = this.components
    const pubsub = host.services.pubsub
    pubsub.topicValidators.set(HOST_STATE_TOPIC, this.validate)
    pubsub.subscribe(HOST_STATE_TOPIC)
    pubsub.addEventListener('subscription-change', this.onSubscriptionChange)
    await host.handle(SYNC_PROTOCOL, (stream, conn) => this.serve(stream, conn), {
      maxInboundStreams: 2,
      maxOutboundStreams: 2,
      runOnLimitedConnection: true,
    })
    if (this.init.syncOnConnect) host.addEventListener('peer:connect', this.onConnect)
    this.scheduleSync()
    this.pruneTimer = setInterval(() => this.prune(Date.now()), TOMBSTONE_PRUNE_MS)
    this.pruneTimer.unref()
    await this.publisher.start()
  }

  async stop(): Promise<void> {
    if (!this.running) return
    this.running = false
    this.publisher.stop()
    clearTimeout(this.syncTimer)
    clearInterval(this.pruneTimer)
    this.lifetime.abort(new Error('host state service stopped'))
    const { host } = this.components
    host.removeEventListener('peer:connect', this.onConnect)
    const pubsub = host.services.pubsub
    pubsub.removeEventListener('subscription-change', this.onSubscriptionChange)
    if (pubsub.topicValidators.get(HOST_STATE_TOPIC) === this.validate)
      pubsub.topicValidators.delete(HOST_STATE_TOPIC)
    try {
      pubsub.unsubscribe(HOST_STATE_TOPIC)
    } catch {
      // the host is already stopping
    }
    await host.unhandle(SYNC_PROTOCOL).catch(() => {})
  }

  /** Our state changed: publish it (debounced). */
  notifyChanged(): void {
    this.publisher.notifyChanged()
  }

  hosts(): HostStateView[] {
    return this.table.views()
  }

  host(peerId: string): HostStateView | undefined {
    return this.table.get(peerId)?.view
  }

  vms(): VmLocation[] {
    return this.table.locations.list()
  }

  where(vmId: string): VmLocation | undefined {
    return this.table.locations.where(vmId)
  }

  /** From the membership layer: show this host's VMs as host-lost / host-left (or ok again). */
  markHost(peerId: string, status: HostMark): void {
    this.table.locations.markHost(peerId, status)
  }

  hostStatus(peerId: string): HostMark {
    return this.table.locations.hostMark(peerId)
  }

  stats(): HostStateStats {
    const c = this.counters
    const drops = zeroDrops()
    for (const r of DROP_REASONS) drops[r] = c.drops.gossip[r] + c.drops.sync[r]
    return {
      gossip: { ...c.gossip },
      sync: { ...c.sync },
      drops,
      dropsBySource: { gossip: { ...c.drops.gossip }, sync: { ...c.drops.sync } },
      hosts: this.table.size,
      vms: this.table.locations.size,
      conflicts: this.table.locations.conflicts,
    }
  }

  /**
   * Anti-entropy pull: sends our digests, takes every state the peer has newer (each verified like
   * gossip) and its members. Throws SyncFailedError or InvalidSyncResponseError.
   */
  async syncWith(peer: PeerId | string, opts: SyncOptions = {}): Promise<SyncResult> {
    const peerId = typeof peer === 'string' ? peerIdFromString(peer) : peer
    const from = peerId.toString()
    const signals = [AbortSignal.timeout(this.syncTimeoutMs), this.lifetime.signal]
    if (opts.signal) signals.push(opts.signal)
    const signal = AbortSignal.any(signals)
    const wantMembers = opts.wantMembers ?? this.components.onMembers !== undefined
    const request = encodeSyncRequest(
      [...this.table.entries()].map((e) => ({ peerIdBytes: e.peerIdBytes, version: e.version })),
      wantMembers,
    )
    this.counters.sync.requestsOut++
    let raw: Uint8Array
    let stream: Stream | undefined
    try {
      stream = await this.components.host.dialProtocol(peerId, SYNC_PROTOCOL, {
        signal,
        runOnLimitedConnection: true,
      })
      const lp = lpStream(stream, {
        maxDataLength: MAX_SYNC_RESPONSE_BYTES,
        maxBufferSize: MAX_SYNC_RESPONSE_BYTES + 16,
      })
      await lp.write(request, { signal })
      this.counters.sync.bytesOut += request.length
      raw = (await lp.read({ signal })).subarray()
      this.counters.sync.bytesIn += raw.length
      await stream.close({ signal }).catch(() => {})
    } catch (err) {
      this.counters.sync.failures++
      stream?.abort(err as Error)
      const name = (err as Error).name
      if (name === 'InvalidDataLengthError' || name === 'InvalidDataLengthLengthError') {
        this.drop('oversized', 'sync')
        throw new InvalidSyncResponseError('oversized')
      }
      throw new SyncFailedError(`sync with ${from} failed: ${(err as Error).message}`, { cause: err })
    }

    const response = decodeSyncResponse(raw)
    if (!response.ok) {
      this.counters.sync.failures++
      this.drop(response.reason, 'sync')
      throw new InvalidSyncResponseError(response.reason)
    }
    let accepted = 0
    for (const bytes of response.states) {
      this.counters.sync.statesIn++
      const opened = await openHostState(bytes, { maxBytes: this.maxStateBytes })
      if (!opened.ok) {
        this.drop(opened.reason, 'sync')
        continue
      }
      if (this.ingest(opened.state, 'sync').ok) accepted++
    }
    for (let i = 0; i < response.badMembers; i++) this.drop('too-many-items', 'sync')
    if (wantMembers && this.components.onMembers) {
      try {
        this.components.onMembers(response.members, from)
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'onMembers failed')
      }
    }
    this.log.debug({ peer: from, received: response.states.length, accepted }, 'synced')
    return { received: response.states.length, accepted, members: response.members.length }
  }

  // --- gossip ---

  private async publish(bytes: Uint8Array): Promise<void> {
    await this.components.host.services.pubsub.publish(HOST_STATE_TOPIC, bytes)
    this.counters.gossip.messagesOut++
    this.counters.gossip.bytesOut += bytes.length
  }

  /** gossipsub topic validator: the verdict decides whether the message is forwarded. Never throws. */
  private async onGossip(msg: Message): Promise<TopicValidatorResult> {
    try {
      this.counters.gossip.messagesIn++
      this.counters.gossip.bytesIn += msg.data.length
      if (msg.type !== 'signed') return this.reject('bad-signature')
      const opened = await openHostState(msg.data, { maxBytes: this.maxStateBytes })
      if (!opened.ok) return this.reject(opened.reason)
      const result = this.ingest(opened.state, 'gossip', msg.from.toString())
      if (!result.ok)
        return BENIGN.has(result.reason) ? TopicValidatorResult.Ignore : TopicValidatorResult.Reject
      return TopicValidatorResult.Accept
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'host state message not handled')
      return TopicValidatorResult.Ignore
    }
  }

  private reject(reason: DropReason): TopicValidatorResult {
    this.drop(reason, 'gossip')
    return BENIGN.has(reason) ? TopicValidatorResult.Ignore : TopicValidatorResult.Reject
  }

  // --- the table ---

  /** A verified state from the network into the table; counts the drop if it is not taken. */
  private ingest(state: OpenedHostState, source: DropSource, sender?: string): AcceptResult {
    const result = this.table.accept(state, sender === undefined ? {} : { sender })
    if (!result.ok) {
      this.drop(result.reason, source)
      // Our own state, signed by our key, newer than what we publish: an earlier run of this agent.
      if (result.reason === 'self' && result.version >= this.publisher.version) {
        this.publisher.raiseFloor(result.version)
        this.publisher.notifyChanged()
      }
      return result
    }
    this.emitUpdate(result, source)
    return result
  }

  private apply(state: OpenedHostState, source: UpdateSource): void {
    const result = this.table.accept(state, { local: true })
    if (result.ok) this.emitUpdate(result, source)
  }

  private emitUpdate(result: Extract<AcceptResult, { ok: true }>, source: UpdateSource): void {
    const { entry, previous, changes } = result
    const update: HostUpdate = {
      peerId: entry.peerId,
      version: entry.version,
      source,
      state: entry.view,
      changes,
    }
    if (previous) update.previousVersion = previous.version
    try {
      this.emit('host:update', update)
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'host:update listener failed')
    }
  }

  private drop(reason: DropReason, source: DropSource): void {
    this.counters.drops[source][reason]++
    try {
      this.components.onDrop?.(reason, source)
    } catch {
      // a metrics callback must not break message handling
    }
  }

  // --- anti-entropy, serving side ---

  private async serve(stream: Stream, conn: Connection): Promise<void> {
    const remote = conn.remotePeer.toString()
    if (this.serving >= (this.init.maxConcurrentServes ?? 4)) {
      stream.abort(new Error('too many sync requests'))
      return
    }
    this.serving++
    this.counters.sync.requestsIn++
    const signal = AbortSignal.any([AbortSignal.timeout(this.syncTimeoutMs), this.lifetime.signal])
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_SYNC_REQUEST_BYTES })
      let raw: Uint8Array
      try {
        raw = (await lp.read({ signal })).subarray()
      } catch (err) {
        const name = (err as Error).name
        // A length (or a length of the length) above the limit is oversized; a bad varint is malformed.
        if (name === 'InvalidDataLengthError' || name === 'InvalidDataLengthLengthError')
          this.drop('oversized', 'sync')
        else if (name === 'InvalidMessageLengthError') this.drop('malformed', 'sync')
        throw err
      }
      this.counters.sync.bytesIn += raw.length
      const request = decodeSyncRequest(raw)
      if (!request.ok) {
        this.drop(request.reason, 'sync')
        throw new Error(`bad sync request: ${request.reason}`)
      }
      const states: Uint8Array[] = []
      for (const e of this.table.entries()) {
        const theirs = request.have.get(e.wireKey)
        if (theirs === undefined || theirs < e.version) states.push(e.signed)
      }
      const members = request.wantMembers ? (this.components.membersProvider?.() ?? []) : []
      const response = encodeSyncResponse(states, members, MAX_SYNC_RESPONSE_BYTES)
      await lp.write(response.bytes, { signal })
      this.counters.sync.statesOut += response.states
      this.counters.sync.bytesOut += response.bytes.length
      await stream.close({ signal })
      if (response.leftOut > 0)
        this.log.debug({ peer: remote, leftOut: response.leftOut }, 'sync response truncated')
      this.maybeReverseSync(remote, request.have)
    } catch (err) {
      this.log.debug({ peer: remote, err: (err as Error).message }, 'sync request dropped')
      stream.abort(err as Error)
    } finally {
      this.serving--
    }
  }

  /** The requester has states we lack or hold older: pull them back (rate-limited per peer). */
  private maybeReverseSync(remote: string, have: Map<string, number>): void {
    if (this.init.reverseSync === false || !this.running || this.reverseInFlight.has(remote)) return
    const now = Date.now()
    if (now - (this.reverseAt.get(remote) ?? 0) < REVERSE_SYNC_MIN_INTERVAL_MS) return
    const ours = new Map<string, number>()
    for (const e of this.table.entries()) ours.set(e.wireKey, e.version)
    let behind = false
    for (const [key, version] of have) {
      const mine = ours.get(key)
      if (mine === undefined || mine < version) {
        behind = true
        break
      }
    }
    if (!behind) return
    this.reverseInFlight.add(remote)
    this.reverseAt.set(remote, now)
    this.syncWith(remote)
      .catch((err: Error) => this.log.debug({ peer: remote, err: err.message }, 'reverse sync failed'))
      .finally(() => this.reverseInFlight.delete(remote))
  }

  private prune(now: number): void {
    this.table.locations.prune(now)
    for (const [peer, at] of this.reverseAt)
      if (now - at > REVERSE_SYNC_MIN_INTERVAL_MS) this.reverseAt.delete(peer)
  }

  private scheduleSync(): void {
    const base = this.init.syncIntervalMs ?? DEFAULT_SYNC_INTERVAL_MS
    if (base <= 0 || !this.running) return
    const ms = base * pushPullScale(this.components.host.getPeers().length + 1)
    this.syncTimer = setTimeout(() => {
      this.syncWithRandomPeer()
      this.scheduleSync()
    }, ms)
    this.syncTimer.unref()
  }

  private syncWithRandomPeer(): void {
    const peer = pickSyncPeer(
      this.components.host.getPeers(),
      this.components.sites,
      this.init.random ?? Math.random,
    )
    if (!peer) return
    this.syncWith(peer).catch((err: Error) =>
      this.log.debug({ peer: peer.toString(), err: err.message }, 'periodic sync failed'),
    )
  }
}

/** js-libp2p style factory: `hostState(init)(components)`. */
export function hostState(init: HostStateInit = {}): (components: HostStateComponents) => HostStateService {
  return (components) => new HostStateService(components, init)
}
