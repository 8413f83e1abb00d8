// The cooperative placement protocol (DVMS-like) as a pure state machine; the wire form is
// proto/placement.proto.

export {
  decodePlacementMessage,
  encodePlacementMessage,
  MAX_BAN,
  MAX_MESSAGE_BYTES,
  MAX_SITE_RULES,
  MAX_VMS_PER_MEMBER,
  PlacementCodecError,
} from './codec.js'
export {
  dispatch,
  type EventRecord,
  type EventRef,
  type MemberSnapshot,
  type Outcome,
  type Output,
  olderThan,
  outranks,
  type PlacementMessage,
  type PlacementPorts,
} from './messages.js'
export {
  DEFAULT_PROTOCOL,
  PlacementNode,
  type PlacementNodeInit,
  type Planner,
  type ProtocolConfig,
  type Ring,
} from './node.js'
export {
  type Gathered,
  type GatherInit,
  gatherPartition,
  judgePlan,
  nextCandidate,
  POLICIES_FOR,
  planPartition,
} from './partition.js'
