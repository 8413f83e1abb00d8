// One host's side of the cooperative (DVMS-like) protocol, as a pure state machine: inputs are messages,
// timer ticks and migration results, each with `now`; outputs are messages to send, migrations to start,
// finished events and the next time to be woken. The simulator and the agent drive the same code.
//
// A host reserved by an event belongs to exactly that event (its lease), so two partitions never plan
// on the same host. A leader grows its partition along the ring: it asks the next peer to join, runs the
// planner on the members' states after each join, and executes the first plan that fixes its problem.
// A busy peer is skipped; if its event ranks lower (a consolidation against an overload or drain, else
// the younger) and is still growing, the leader asks it to yield. The ranking is a total order, so the
// top event never yields and always progresses: no livelock; nobody waits on a reserved host, so no
// deadlock. Leases expire unless renewed: a crashed leader frees its members, a crashed
// member drops out of its partition.
import {
  plan as corePlan,
  DEFAULT_CONFIG,
  type HostLoad,
  type Move,
  misplaced,
  type PlacementConfig,
  type Plan,
  type Problem,
  type ProblemKind,
  problemOf,
  type Rng,
  TriggerTracker,
} from '../core/index.js'
import {
  type EventRecord,
  type EventRef,
  type MemberSnapshot,
  type Output,
  outranks,
  type PlacementMessage,
} from './messages.js'
import { judgePlan, nextCandidate, type Planner, planPartition, type Ring } from './partition.js'

export type { Planner, Ring }

export interface ProtocolConfig {
  /** A member's reservation lasts this long unless renewed (ms). */
  leaseMs: number
  /** A candidate that does not answer a join within this time is skipped (ms). */
  joinTimeoutMs: number
  /** A partition stops growing at this many hosts; the event then fails. */
  maxPartition: number
  /** After a failed event, the leader waits this long (plus jitter) before trying again (ms). */
  retryBackoffMs: number
  /** After yielding to an older event, wait about this long before reopening (ms). */
  yieldBackoffMs: number
  /** Ring positions a leader looks ahead per join, skipping hosts the gossip view rules out. */
  maxScan: number
}

export const DEFAULT_PROTOCOL: Readonly<ProtocolConfig> = Object.freeze({
  leaseMs: 10_000,
  joinTimeoutMs: 500,
  maxPartition: 12,
  retryBackoffMs: 30_000,
  yieldBackoffMs: 1_000,
  maxScan: 64,
})

export interface PlacementNodeInit {
  self: string
  ring: Ring
  /** This host's current state: itself and its VMs. */
  local: () => MemberSnapshot
  rng: Rng
  placement?: Partial<PlacementConfig>
  protocol?: Partial<ProtocolConfig>
  planner?: Planner
  /** From the (possibly stale) gossip view: false when a host clearly cannot help with `kind`. */
  worthAsking?: (host: string, kind: ProblemKind) => boolean
  /** Measured migration bandwidth between sites (bytes/s, keyed `from>to`), read at each plan. */
  siteLinks?: () => Readonly<Record<string, number>> | undefined
}

interface Holder {
  event: EventRef
  leaseUntil: number
}

interface OwnEvent {
  ref: EventRef
  members: Map<string, MemberSnapshot>
  lastAck: Map<string, number>
  everyone: Set<string>
  cursor: string
  asked: number
  pending?: { host: string; until: number; retried: boolean }
  yieldAsked: Set<string>
  state: 'growing' | 'executing'
  plan?: Plan
  /** A drain plan that fixes the drain but spreads over fewer hosts than asked: used if growing fails. */
  fallback?: Plan
  plannedAt?: number
  wave: number
  inflight: Set<string>
  failed: boolean
  nextRenew: number
  plannerRuns: number
  /** An operator's plan (a dry run applied): gather exactly these hosts, run only a plan `accept` approves. */
  fixed?: { queue: string[]; accept: (p: Plan) => boolean }
  /** Why the event ended as it did (rejected, unresolved). */
  note?: string
}

export class PlacementNode {
  readonly self: string
  private readonly cfg: PlacementConfig
  private readonly pcfg: ProtocolConfig
  private readonly tracker: TriggerTracker
  private readonly planner: Planner
  private holder?: Holder
  private own?: OwnEvent
  private retryAt = 0
  private seq = 0
  private alive = true

  constructor(private readonly init: PlacementNodeInit) {
    this.self = init.self
    this.cfg = { ...DEFAULT_CONFIG, ...init.placement }
    this.pcfg = { ...DEFAULT_PROTOCOL, ...init.protocol }
    this.tracker = new TriggerTracker(this.cfg)
    this.planner = init.planner ?? corePlan
  }

  /** The event that reserves this host, if any (tests and the API read it). */
  reservedBy(): EventRef | undefined {
    return this.holder?.event
  }

  leading(): { id: string; state: 'growing' | 'executing'; members: string[]; moves: Move[] } | undefined {
    const o = this.own
    return o && { id: o.ref.id, state: o.state, members: [...o.members.keys()], moves: o.plan?.moves ?? [] }
  }

  /**
   * Opens an event now (no grace period) that asks exactly `members` to join, in order, then plans once
   * over them and runs the plan only if `accept` approves it (the plan a dry run showed); otherwise, or
   * if a member is busy or silent, the event ends `rejected` with a note. Undefined (nothing opened)
   * while this host is held by an event.
   */
  openFixed(
    kind: ProblemKind,
    members: readonly string[],
    accept: (p: Plan) => boolean,
    now: number,
  ): { eventId: string; out: Output[] } | undefined {
    if (!this.alive || this.own || this.holder) return undefined
    const out: Output[] = []
    const id = this.open({ kind, host: this.self }, now, out, {
      queue: members.filter((m) => m !== this.self),
      accept,
    })
    this.wake(now, out)
    return { eventId: id, out }
  }

  /** A crashed host: forgets everything and ignores all input (the simulator's fault injection). */
  crash(): void {
    this.alive = false
    this.holder = undefined
    this.own = undefined
  }

  /**
   * Membership says a peer is dead: a lease it holds on this host ends now (its partition is gone), and
   * as a leader this host drops it from its partition (its migrations will fail). Waiting for the lease
   * to run out gives the same result, later.
   */
  peerGone(peer: string, now: number): Output[] {
    if (!this.alive || peer === this.self) return []
    const out: Output[] = []
    if (this.holder && this.holder.event.leader === peer) this.holder = undefined
    const o = this.own
    if (o?.members.has(peer)) {
      o.members.delete(peer)
      o.lastAck.delete(peer)
    }
    if (o?.pending?.host === peer) {
      o.pending = undefined
      this.skip(peer, 'left the mesh', now, out)
    }
    if (!this.own && !this.holder) this.detect(now, out)
    this.wake(now, out)
    return out
  }

  // ------------------------------------------------------------------ inputs

  tick(now: number): Output[] {
    if (!this.alive) return []
    const out: Output[] = []
    if (this.holder && this.holder.event.leader !== this.self && now >= this.holder.leaseUntil)
      this.holder = undefined
    const o = this.own
    if (o) {
      if (o.pending && now >= o.pending.until) {
        const host = o.pending.host
        o.pending = undefined
        this.skip(host, 'did not answer', now, out)
      }
      if (this.own && now >= o.nextRenew) {
        for (const [m, t] of o.lastAck) {
          if (now - t > this.pcfg.leaseMs) {
            // A member stopped answering: it is gone from the partition (its migrations will fail).
            o.members.delete(m)
            o.lastAck.delete(m)
          } else out.push(send(m, { type: 'renew', eventId: o.ref.id, leaseMs: this.pcfg.leaseMs }))
        }
        o.nextRenew = now + this.pcfg.leaseMs / 3
      }
    }
    if (!this.own && !this.holder) this.detect(now, out)
    this.wake(now, out)
    return out
  }

  handle(from: string, msg: PlacementMessage, now: number): Output[] {
    if (!this.alive) return []
    const out: Output[] = []
    switch (msg.type) {
      case 'join':
        this.onJoin(from, msg.event, msg.leaseMs, now, out)
        break
      case 'joined':
        this.onJoined(from, msg.eventId, msg.member, now, out)
        break
      case 'busy':
        this.onBusy(from, msg.eventId, msg.holder, now, out)
        break
      case 'yield':
        this.onYield(msg.eventId, msg.to, now, out)
        break
      case 'renew':
        if (this.holder?.event.id === msg.eventId) {
          this.holder.leaseUntil = now + msg.leaseMs
          out.push(send(from, { type: 'renewed', eventId: msg.eventId }))
        } else out.push(send(from, { type: 'left', eventId: msg.eventId }))
        break
      case 'renewed':
        if (this.own?.ref.id === msg.eventId && this.own.lastAck.has(from)) this.own.lastAck.set(from, now)
        break
      case 'left':
        if (this.own?.ref.id === msg.eventId) {
          this.own.members.delete(from)
          this.own.lastAck.delete(from)
        }
        break
      case 'release':
        if (this.holder?.event.id === msg.eventId) this.holder = undefined
        break
    }
    if (!this.own && !this.holder) this.detect(now, out)
    this.wake(now, out)
    return out
  }

  migrationFinished(id: string, ok: boolean, now: number): Output[] {
    if (!this.alive) return []
    const out: Output[] = []
    const o = this.own
    if (o?.state === 'executing' && o.inflight.delete(id)) {
      if (!ok) o.failed = true
      if (o.inflight.size === 0) {
        if (o.failed) this.close('failed', now, out)
        else this.startWave(o.wave + 1, now, out)
      }
    }
    this.wake(now, out)
    return out
  }

  // ------------------------------------------------------------------ leader side

  private detect(now: number, out: Output[]): void {
    const snap = this.init.local()
    const load: HostLoad = {
      state: snap.host.state,
      capacity: snap.host.capacity,
      used: sumDemand(snap),
      vms: snap.vms.length,
      misplaced: misplaced(snap.host, snap.vms, now, this.cfg),
    }
    const fired = this.tracker.observe(this.self, problemOf(load, this.cfg), now)
    if (!fired || now < this.retryAt) return
    this.open(fired, now, out)
  }

  private open(p: Problem, now: number, out: Output[], fixed?: OwnEvent['fixed']): string {
    const ref: EventRef = { id: `${this.self}#${++this.seq}`, leader: this.self, kind: p.kind, openedAt: now }
    this.holder = { event: ref, leaseUntil: Number.POSITIVE_INFINITY }
    this.own = {
      ref,
      members: new Map([[this.self, this.init.local()]]),
      lastAck: new Map(),
      everyone: new Set([this.self]),
      cursor: this.self,
      asked: 0,
      yieldAsked: new Set(),
      state: 'growing',
      wave: 0,
      inflight: new Set(),
      failed: false,
      nextRenew: now + this.pcfg.leaseMs / 3,
      plannerRuns: 0,
      ...(fixed ? { fixed } : {}),
    }
    this.askNext(now, out)
    return ref.id
  }

  /** A candidate did not join: an operator's plan cannot run as shown; a normal event asks the next. */
  private skip(host: string, why: string, now: number, out: Output[]): void {
    const o = this.own!
    if (o.fixed) {
      o.note = `host ${host} ${why}`
      this.close('rejected', now, out)
    } else this.askNext(now, out)
  }

  /** Asks the next useful peer on the ring to join, or gives up when the ring is exhausted. */
  private askNext(now: number, out: Output[]): void {
    const o = this.own!
    if (o.fixed) {
      const c = o.fixed.queue.shift()
      if (c === undefined) this.planFixed(now, out)
      else this.ask(c, now, out)
      return
    }
    if (o.members.size >= this.pcfg.maxPartition) {
      this.giveUp(now, out)
      return
    }
    const worth = this.init.worthAsking
    const c = nextCandidate(
      this.init.ring,
      this.self,
      o.cursor,
      (id) => o.members.has(id),
      worth && ((id) => worth(id, o.ref.kind)),
      this.pcfg.maxScan,
    )
    if (c === undefined) this.giveUp(now, out)
    else this.ask(c, now, out)
  }

  private ask(c: string, now: number, out: Output[]): void {
    const o = this.own!
    o.cursor = c
    o.asked++
    o.pending = { host: c, until: now + this.pcfg.joinTimeoutMs, retried: false }
    out.push(send(c, { type: 'join', event: o.ref, leaseMs: this.pcfg.leaseMs }))
  }

  /** Every host of an operator's plan joined: plan once over them and run it only if it is that plan. */
  private planFixed(now: number, out: Output[]): void {
    const o = this.own!
    const p = this.planNow(now)
    if (judgePlan(p, this.self, o.ref.kind, this.cfg) !== 'grow' && o.fixed!.accept(p)) {
      this.execute(p, now, out)
      return
    }
    o.note = 'the hosts changed since the dry run: the plan over them is not the one shown'
    this.close('rejected', now, out)
  }

  private planNow(now: number): Plan {
    const o = this.own!
    o.members.set(this.self, this.init.local())
    o.plannerRuns++
    const links = this.init.siteLinks?.()
    const cfg = links ? { ...this.cfg, siteBandwidthBps: links } : this.cfg
    return planPartition(this.planner, [...o.members.values()], o.ref.kind, this.self, now, cfg)
  }

  /** The partition cannot grow any more: run the narrower drain plan if there is one, else give up. */
  private giveUp(now: number, out: Output[]): void {
    const o = this.own!
    if (o.fallback) this.execute(o.fallback, now, out)
    else this.close('unresolved', now, out)
  }

  private onJoined(from: string, eventId: string, member: MemberSnapshot, now: number, out: Output[]): void {
    const o = this.own
    if (!o || o.ref.id !== eventId || o.state !== 'growing' || member.host.id !== from) {
      // A late answer to an event that is over (or already executing): free that host at once.
      if (!o || o.ref.id !== eventId || !o.members.has(from))
        out.push(send(from, { type: 'release', eventId }))
      return
    }
    o.members.set(from, member)
    o.lastAck.set(from, now)
    o.everyone.add(from)
    if (o.pending?.host === from) o.pending = undefined
    if (!o.fixed) this.tryPlan(now, out)
    if (this.own === o && o.state === 'growing' && !o.pending) this.askNext(now, out)
  }

  private onBusy(from: string, eventId: string, holder: EventRef, now: number, out: Output[]): void {
    const o = this.own
    if (!o || o.ref.id !== eventId || o.pending?.host !== from) return
    if (o.fixed) {
      o.pending = undefined
      this.skip(from, `is held by event ${holder.id}`, now, out)
      return
    }
    if (outranks(o.ref, holder) && !o.yieldAsked.has(holder.id) && !o.pending.retried) {
      // We have priority: ask the younger partition to give its hosts up, and ask this host once more.
      o.yieldAsked.add(holder.id)
      out.push(send(holder.leader, { type: 'yield', eventId: holder.id, to: o.ref }))
      o.pending = { host: from, until: now + this.pcfg.joinTimeoutMs, retried: true }
      out.push(send(from, { type: 'join', event: o.ref, leaseMs: this.pcfg.leaseMs }))
      return
    }
    o.pending = undefined
    this.askNext(now, out)
  }

  private onYield(eventId: string, to: EventRef, now: number, out: Output[]): void {
    const o = this.own
    if (!o || o.ref.id !== eventId || o.state !== 'growing' || !outranks(to, o.ref)) return
    const kind = o.ref.kind
    this.close('yielded', now, out)
    this.retryAt = now + this.pcfg.yieldBackoffMs * (1 + this.init.rng())
    // A consolidation that gave way waits its whole grace again: it is an opportunity, not a fault.
    if (kind === 'underload') this.tracker.reset(this.self, now)
  }

  private tryPlan(now: number, out: Output[]): void {
    const o = this.own!
    const p = this.planNow(now)
    const verdict = judgePlan(p, this.self, o.ref.kind, this.cfg)
    // A drain spreads its VMs: keep growing while the plan uses fewer destinations than asked.
    if (verdict === 'fallback') o.fallback = p
    else if (verdict === 'execute') this.execute(p, now, out)
  }

  private execute(p: Plan, now: number, out: Output[]): void {
    const o = this.own!
    o.plan = p
    o.plannedAt = now
    o.state = 'executing'
    o.pending = undefined
    // Members the plan does not touch are free at once.
    const involved = new Set(p.moves.flatMap((m) => [m.from, m.to]))
    for (const m of [...o.members.keys()]) {
      if (m === this.self || involved.has(m)) continue
      out.push(send(m, { type: 'release', eventId: o.ref.id }))
      o.members.delete(m)
      o.lastAck.delete(m)
    }
    this.startWave(0, now, out)
  }

  private startWave(wave: number, now: number, out: Output[]): void {
    const o = this.own!
    const moves = o.plan!.moves.filter((m) => m.wave === wave)
    if (moves.length === 0) {
      this.close('done', now, out)
      return
    }
    o.wave = wave
    for (const m of moves) {
      const id = `${o.ref.id}/${m.vm}`
      o.inflight.add(id)
      out.push({ kind: 'migrate', id, eventId: o.ref.id, move: m })
    }
  }

  private close(outcome: EventRecord['outcome'], now: number, out: Output[]): void {
    const o = this.own!
    for (const m of o.members.keys())
      if (m !== this.self) out.push(send(m, { type: 'release', eventId: o.ref.id }))
    if (o.pending) out.push(send(o.pending.host, { type: 'release', eventId: o.ref.id }))
    const moves: Move[] = outcome === 'done' || outcome === 'failed' ? (o.plan?.moves ?? []) : []
    out.push({
      kind: 'event',
      record: {
        id: o.ref.id,
        kind: o.ref.kind,
        leader: this.self,
        openedAt: o.ref.openedAt,
        ...(o.plannedAt !== undefined ? { plannedAt: o.plannedAt } : {}),
        closedAt: now,
        outcome,
        members: [...o.everyone],
        moves,
        plannerRuns: o.plannerRuns,
        asked: o.asked,
        ...(o.note ? { note: o.note } : {}),
      },
    })
    this.own = undefined
    if (this.holder?.event.id === o.ref.id) this.holder = undefined
    if (outcome === 'unresolved' || outcome === 'failed') {
      // Not fixable now: wait before trying again, and let the grace period run again.
      this.retryAt = now + this.pcfg.retryBackoffMs * (1 + this.init.rng())
      this.tracker.reset(this.self, now)
    }
  }

  // ------------------------------------------------------------------ member side

  private onJoin(from: string, event: EventRef, leaseMs: number, now: number, out: Output[]): void {
    if (event.leader !== from) return
    if (!this.holder || this.holder.event.id === event.id) {
      this.holder = { event, leaseUntil: now + leaseMs }
      out.push(send(from, { type: 'joined', eventId: event.id, member: this.init.local() }))
    } else out.push(send(from, { type: 'busy', eventId: event.id, holder: this.holder.event }))
  }

  private wake(now: number, out: Output[]): void {
    let at = Number.POSITIVE_INFINITY
    if (this.holder && this.holder.event.leader !== this.self) at = Math.min(at, this.holder.leaseUntil)
    const o = this.own
    if (o) {
      if (o.pending) at = Math.min(at, o.pending.until)
      if (o.lastAck.size > 0) at = Math.min(at, o.nextRenew)
    } else if (!this.holder) {
      const due = this.tracker.dueAt(this.self)
      if (due !== undefined) at = Math.min(at, Math.max(due, this.retryAt))
    }
    if (at < Number.POSITIVE_INFINITY) out.push({ kind: 'wake', at: Math.max(at, now) })
  }
}

function send(to: string, msg: PlacementMessage): Output {
  return { kind: 'send', to, msg }
}

function sumDemand(s: MemberSnapshot): HostLoad['used'] {
  const u = { cpu: 0, mem: 0, disk: 0 }
  for (const v of s.vms) {
    u.cpu += v.demand.cpu
    u.mem += v.demand.mem
    u.disk += v.demand.disk
  }
  return u
}
