// Settings of the SWIM membership service: wire limits, defaults (hashicorp memberlist's LAN
// profile) and the resolution of an all-optional SwimInit into a fully-defaulted config.
import type { DropReason } from '../types.js'

export const SWIM_PROTOCOL = '/skymesh/swim/1.0.0'
/** Largest length-prefixed message accepted on the protocol. */
export const MAX_MESSAGE_BYTES = 64 * 1024
/** Piggybacked updates per message. */
export const MAX_UPDATES = 32
/** Addresses per member (and per PING_REQ target). */
export const MAX_ADDRS = 8
/** Longest site name accepted in an update. */
export const MAX_SITE_LENGTH = 128
/** Longest encoded peer id accepted (identity multihash of an Ed25519 key is 38 bytes). */
export const MAX_PEER_ID_BYTES = 128
/** Longest single encoded multiaddr accepted. */
export const MAX_ADDR_BYTES = 300

export type SwimMessageKind = 'ping' | 'ack' | 'ping-req' | 'nack'

export interface SwimInit {
  /** Time between two probes (scaled by LHM+1). Default 1000. */
  probeIntervalMs?: number
  /** Wait for a direct ACK (scaled by LHM+1). Default 500. */
  probeTimeoutMs?: number
  /** Members asked to probe a target that missed its direct ACK. Default 3. */
  indirectChecks?: number
  /** Time between two pushes of queued updates. Default 200. */
  gossipIntervalMs?: number
  /** Members each push goes to. Default 3. */
  gossipNodes?: number
  /** Dead members still get pushes this long, so a falsely-declared one can refute. Default 30 000. */
  gossipToTheDeadMs?: number
  /** Each update is sent retransmitMult * ceil(log10(n+1)) times. Default 4. */
  retransmitMult?: number
  /** Suspicion timeout (minimum) = suspicionMult * max(1, log10(n)) * probeInterval. Default 4. */
  suspicionMult?: number
  /** Maximum suspicion timeout = suspicionMaxTimeoutMult * minimum. Default 6. */
  suspicionMaxTimeoutMult?: number
  /** Highest Lifeguard local health multiplier (LHM 0..max). Default 8. */
  awarenessMaxMultiplier?: number
  /** Dead and left members are kept (late gossip cannot revive them) and removed after this. Default 24 h. */
  reapAfterMs?: number
  /** Time a new connection to a member may take; it is not cut short by a probe timeout. Default 5000. */
  dialTimeoutMs?: number
  /** Every this often, PING one dead member in case it is back (Serf's reconnect). Default 30 000. */
  reconnectIntervalMs?: number
  /** Members kept at most (tombstones included); gossip about more is dropped. Default 16 384. */
  maxMembers?: number
  /** leave() waits at most this long for the LEFT update to be sent out. Default 1000. */
  leavePropagateMs?: number
  /** Byte budget of the piggybacked updates of one message. Default 32 KiB. */
  maxPiggybackBytes?: number
  /** Bound of the broadcast queue (the most-sent entries go first). Default 4096. */
  maxQueuedBroadcasts?: number
  /** Our incarnation at start. Default Date.now(), so a restarted agent outranks its old record. */
  incarnation?: number
  /** A message or an update was dropped (metrics). */
  onDrop?: (reason: DropReason) => void
  /** A message was sent or received (metrics); bytes without the length prefix. */
  onMessage?: (direction: 'in' | 'out', kind: SwimMessageKind, bytes: number) => void
  /**
   * Members of our own site are this many times likelier to be probed and pushed to than members
   * of other sites (site-pick.ts): most SWIM traffic stays inside a site. 1: no preference. Default 8.
   */
  sitePreference?: number
  /** Randomness for shuffles and member picks (tests). Default Math.random. */
  random?: () => number
}

export interface SwimConfig {
  probeIntervalMs: number
  probeTimeoutMs: number
  indirectChecks: number
  gossipIntervalMs: number
  gossipNodes: number
  gossipToTheDeadMs: number
  retransmitMult: number
  suspicionMult: number
  suspicionMaxTimeoutMult: number
  awarenessMaxMultiplier: number
  reapAfterMs: number
  dialTimeoutMs: number
  reconnectIntervalMs: number
  maxMembers: number
  leavePropagateMs: number
  maxPiggybackBytes: number
  maxQueuedBroadcasts: number
  sitePreference: number
}

export const SWIM_DEFAULTS: Readonly<SwimConfig> = Object.freeze({
  probeIntervalMs: 1000,
  probeTimeoutMs: 500,
  indirectChecks: 3,
  gossipIntervalMs: 200,
  gossipNodes: 3,
  gossipToTheDeadMs: 30_000,
  retransmitMult: 4,
  suspicionMult: 4,
  suspicionMaxTimeoutMult: 6,
  awarenessMaxMultiplier: 8,
  reapAfterMs: 24 * 60 * 60 * 1000,
  dialTimeoutMs: 5000,
  reconnectIntervalMs: 30_000,
  maxMembers: 16_384,
  leavePropagateMs: 1000,
  maxPiggybackBytes: 32 * 1024,
  maxQueuedBroadcasts: 4096,
  sitePreference: 8,
})

export class SwimConfigError extends Error {
  readonly code = 'ERR_SWIM_CONFIG'
  override name = 'SwimConfigError'
}

export function resolveSwimConfig(init: SwimInit = {}): Readonly<SwimConfig> {
  const cfg: SwimConfig = { ...SWIM_DEFAULTS }
  for (const key of Object.keys(SWIM_DEFAULTS) as (keyof SwimConfig)[]) {
    const v = init[key]
    if (v === undefined) continue
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new SwimConfigError(`swim: ${key} must be a non-negative number, got ${String(v)}`)
    }
    cfg[key] = v
  }
  if (
    cfg.probeIntervalMs <= 0 ||
    cfg.probeTimeoutMs <= 0 ||
    cfg.gossipIntervalMs <= 0 ||
    cfg.dialTimeoutMs <= 0 ||
    cfg.reconnectIntervalMs <= 0 ||
    cfg.maxMembers < 1
  ) {
    throw new SwimConfigError('swim: intervals, timeouts and maxMembers must be > 0')
  }
  if (cfg.probeTimeoutMs > cfg.probeIntervalMs) {
    throw new SwimConfigError('swim: probeTimeoutMs must not exceed probeIntervalMs')
  }
  if (cfg.sitePreference < 1) throw new SwimConfigError('swim: sitePreference must be >= 1')
  if (cfg.suspicionMult < 1 || cfg.suspicionMaxTimeoutMult < 1 || cfg.retransmitMult < 1) {
    throw new SwimConfigError('swim: suspicionMult, suspicionMaxTimeoutMult and retransmitMult must be >= 1')
  }
  if (cfg.maxPiggybackBytes > MAX_MESSAGE_BYTES / 2) {
    throw new SwimConfigError(`swim: maxPiggybackBytes must be <= ${MAX_MESSAGE_BYTES / 2}`)
  }
  return Object.freeze(cfg)
}
