// Messages of the cooperative protocol as plain typed objects. The wire form is proto/placement.proto
// (the agent encodes these; the simulator passes them as they are).
import type { HostView, Move, ProblemKind, VmView } from '../core/index.js'

/** An event and the partition it grows: led by the host that saw the problem. */
export interface EventRef {
  id: string
  leader: string
  kind: ProblemKind
  /** When the leader opened it (its clock): older events have priority when partitions meet. */
  openedAt: number
}

/** What a member brings into a partition: itself and its VMs, as of joining. */
export interface MemberSnapshot {
  host: HostView
  vms: VmView[]
}

export type PlacementMessage =
  /** Leader -> candidate: join my partition, reserved for leaseMs unless renewed. */
  | { type: 'join'; event: EventRef; leaseMs: number }
  /** Candidate -> leader: reserved for you; here is my state. */
  | { type: 'joined'; eventId: string; member: MemberSnapshot }
  /** Candidate -> leader: reserved by another event. */
  | { type: 'busy'; eventId: string; holder: EventRef }
  /** Older leader -> younger leader: give your hosts up (ignored once the younger one executes). */
  | { type: 'yield'; eventId: string; to: EventRef }
  /** Leader -> member: still here, extend the lease. */
  | { type: 'renew'; eventId: string; leaseMs: number }
  /** Member -> leader: lease extended. */
  | { type: 'renewed'; eventId: string }
  /** Member -> leader: not (any more) in your partition (its lease expired). */
  | { type: 'left'; eventId: string }
  /** Leader -> member: the event is over, you are free. */
  | { type: 'release'; eventId: string }
  /** Anyone -> host: start draining (an operator asked another agent); eventId names the request. */
  | { type: 'drain'; eventId: string }
  /** Anyone -> host: stop draining, take VMs again. */
  | { type: 'undrain'; eventId: string }

/** rejected: an operator's plan that could not run exactly as its dry run showed. */
export type Outcome = 'done' | 'failed' | 'unresolved' | 'yielded' | 'rejected'

/** What happened to one event (the agent shows recent ones through its API). */
export interface EventRecord {
  id: string
  kind: ProblemKind
  leader: string
  openedAt: number
  /** When a plan was accepted (undefined if none was). */
  plannedAt?: number
  closedAt: number
  outcome: Outcome
  /** Every host that was in the partition. */
  members: string[]
  moves: Move[]
  /** Planner runs and the hosts asked (joined or not). */
  plannerRuns: number
  asked: number
  /** Why it ended so (a rejected operator's plan). */
  note?: string
}

export type Output =
  | { kind: 'send'; to: string; msg: PlacementMessage }
  /** Start a live migration; report its end with node.migrationFinished(id, ok, now). */
  | { kind: 'migrate'; id: string; eventId: string; move: Move }
  | { kind: 'event'; record: EventRecord }
  /** Call node.tick() again at this time (or earlier). */
  | { kind: 'wake'; at: number }

/** Side effects of outputs, for drivers that prefer callbacks (the agent). */
export interface PlacementPorts {
  send(to: string, msg: PlacementMessage): void
  migrate(id: string, eventId: string, move: Move): void
  event?(record: EventRecord): void
  wake?(at: number): void
}

export function dispatch(outputs: readonly Output[], ports: PlacementPorts): void {
  for (const o of outputs) {
    if (o.kind === 'send') ports.send(o.to, o.msg)
    else if (o.kind === 'migrate') ports.migrate(o.id, o.eventId, o.move)
    else if (o.kind === 'event') ports.event?.(o.record)
    else ports.wake?.(o.at)
  }
}

/** Priority when partitions meet: the older event wins, ties by id. */
export function olderThan(a: EventRef, b: EventRef): boolean {
  return a.openedAt < b.openedAt || (a.openedAt === b.openedAt && a.id < b.id)
}

/**
 * Whether event a may ask b to yield: faults (overload, drain) outrank the rest (underload, misplaced),
 * then the older wins. A total order, so the top event never yields and always progresses.
 */
export function outranks(a: EventRef, b: EventRef): boolean {
  const rank = (e: EventRef) => (e.kind === 'underload' || e.kind === 'misplaced' ? 1 : 0)
  return rank(a) < rank(b) || (rank(a) === rank(b) && olderThan(a, b))
}
