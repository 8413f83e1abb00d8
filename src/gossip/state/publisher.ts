// Publishes our own signed state: on change (debounced) and on a heartbeat. The version is
// max(last + 1, now) so it keeps growing across restarts (and past any older self seen on the wire).
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { Logger } from 'pino'
import type { LocalHostState } from '../types.js'
import { toHostStateMessage } from './convert.js'
import { encodeSignedHostState, type OpenedHostState, signHostState } from './envelope.js'

export const DEFAULT_HEARTBEAT_MS = 5 * 60_000

export interface PublisherComponents {
  privateKey: PrivateKey
  logger: Logger
  localState: () => LocalHostState
  /** Sends the encoded SignedHostState (gossipsub publish). */
  publish: (signed: Uint8Array) => Promise<void>
  /** Our own state, for the host table. */
  onLocal: (state: OpenedHostState) => void
}

export interface PublisherInit {
  /** Delay that gathers a burst of changes into one message; default 100 ms. */
  debounceMs?: number
  /**
   * Longest time between two messages; default 5 min. Not what keeps views right (anti-entropy
   * repairs missed messages, SWIM tells liveness): every heartbeat of every host goes to the whole
   * mesh, so at 30 s it was most of the bytes at rest.
   */
  heartbeatMs?: number
  now?: () => number
}

export class Publisher {
  private readonly peerId: string
  private readonly peerIdBytes: Uint8Array
  private readonly debounceMs: number
  private readonly heartbeatMs: number
  private readonly now: () => number
  private lastVersion = 0
  private running = false
  private debounceTimer?: NodeJS.Timeout
  private heartbeatTimer?: NodeJS.Timeout
  private chain: Promise<void> = Promise.resolve()

  constructor(
    private readonly components: PublisherComponents,
    init: PublisherInit = {},
  ) {
    const id = peerIdFromPrivateKey(components.privateKey)
    this.peerId = id.toString()
    this.peerIdBytes = id.toMultihash().bytes
    this.debounceMs = init.debounceMs ?? 100
    this.heartbeatMs = init.heartbeatMs ?? DEFAULT_HEARTBEAT_MS
    this.now = init.now ?? Date.now
  }

  get version(): number {
    return this.lastVersion
  }

  /** Publishes at once, then on changes and heartbeats until stop(). */
  start(): Promise<void> {
    this.running = true
    return this.publishNow()
  }

  stop(): void {
    this.running = false
    clearTimeout(this.debounceTimer)
    clearTimeout(this.heartbeatTimer)
    this.debounceTimer = undefined
    this.heartbeatTimer = undefined
  }

  /** Our state changed: publish within debounceMs. */
  notifyChanged(): void {
    if (!this.running || this.debounceTimer) return
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined
      void this.publishNow()
    }, this.debounceMs)
    this.debounceTimer.unref()
  }

  /** A signed state of ours with this version exists (an earlier run): the next one must be newer. */
  raiseFloor(version: number): void {
    if (version > this.lastVersion) this.lastVersion = version
  }

  /** Builds, signs and publishes a new version now (serialised with any publish in flight). */
  publishNow(): Promise<void> {
    const next = this.chain.then(() => this.publishOnce())
    this.chain = next.catch(() => {})
    return this.chain
  }

  private async publishOnce(): Promise<void> {
    if (!this.running) return
    const { logger } = this.components
    try {
      const now = this.now()
      const version = Math.max(this.lastVersion + 1, now)
      this.lastVersion = version
      const state = toHostStateMessage(this.components.localState(), {
        peerId: this.peerIdBytes,
        version,
        timestampMs: now,
      })
      const signed = encodeSignedHostState(await signHostState(this.components.privateKey, state))
      this.components.onLocal({ peerId: this.peerId, peerIdBytes: this.peerIdBytes, version, state, signed })
      await this.components.publish(signed)
    } catch (err) {
      logger.warn({ err: (err as Error).message }, 'host state not published')
    } finally {
      this.scheduleHeartbeat()
    }
  }

  private scheduleHeartbeat(): void {
    clearTimeout(this.heartbeatTimer)
    if (!this.running) return
    this.heartbeatTimer = setTimeout(() => void this.publishNow(), this.heartbeatMs)
    this.heartbeatTimer.unref()
  }
}
