// Gossip: membership + failure detection (SWIM), signed host state, VM locations, anti-entropy.
export { Gossip, type GossipComponents, type GossipInit } from './gossip.js'
export { HOST_STATE_TOPIC, SYNC_PROTOCOL } from './state/index.js'
export { SWIM_DEFAULTS, SWIM_PROTOCOL, type SwimInit } from './swim/index.js'
export type * from './types.js'
