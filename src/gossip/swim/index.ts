// Public surface of SWIM membership and failure detection.
//
// Wiring (the agent): `const s = new Swim({ host, logger, self: { site, addrs } }, init)`, `await
// s.start()`; on libp2p `peer:connect` call `s.addSeed(peerId, addrs)`; feed anti-entropy members
// to `s.mergeMembers()` and serve `s.snapshot()`; listen to `member:alive|suspect|dead|left`;
// metrics from `init.onDrop` / `init.onMessage` or `s.stats()`; on shutdown `await s.leave()`
// then `await s.stop()` before stopping the host.
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
  DEFAULT_MAX_MEMBERS,
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
