// Typed events of the membership service.
import type { MemberView } from '../types.js'

export interface SwimEvents {
  /** A member joined, came back, or refuted a suspicion. */
  'member:alive': CustomEvent<MemberView>
  /** A member missed its probes; it is dead unless it refutes in time. */
  'member:suspect': CustomEvent<MemberView>
  /** A suspicion ran out (or another member said so). */
  'member:dead': CustomEvent<MemberView>
  /** A member left gracefully. */
  'member:left': CustomEvent<MemberView>
}

export type SwimEventName = keyof SwimEvents
