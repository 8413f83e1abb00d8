// Public surface of SWIM membership and failure detection.
export { BroadcastQueue, type BroadcastQueueOptions, retransmitLimit, type TakeOptions } from './broadcast.js'
export { memberFromWire, memberToWire } from './codec.js'
export {
  MAX_ADDRS,
  MAX_MESSAGE_BYTES,
  MAX_UPDATES,
  resolveSwimConfig,
  SWIM_DEFAULTS,
  SWIM_PROTOCOL,
  type SwimConfig,
  SwimConfigError,
  type SwimInit,
  type SwimMessageKind,
} from './config.js'
export type { SwimEventName, SwimEvents } from './events.js'
export { LocalHealth } from './health.js'
export {
  type ApplyResult,
  type MemberEvent,
  MemberList,
  type MemberListOptions,
  type MemberUpdate,
} from './members.js'
export {
  Suspicion,
  suspicionConfirmations,
  suspicionMinTimeoutMs,
  suspicionTimeoutMs,
} from './suspicion.js'
export { Swim, type SwimComponents, type SwimHost, type SwimStats, swim } from './swim.js'
