// The member list as a pure state machine (no I/O, no clock: `now` is passed in). It applies
// SWIM/memberlist incarnation rules, refutes claims about ourselves, runs suspicion timeouts and
// keeps dead members as tombstones until they are reaped. Each call returns what changed so the
// caller can gossip it (`broadcast`) and tell listeners (`event`).
//
// Lifeguard confirmations: our Member message has no "accuser" field, so a relayed suspect claim
// cannot be told from an independent one, and counting relays would shrink every timeout to the
// minimum within a gossip round. Confirmations therefore come from first-hand failure evidence the
// protocol does carry (observeFailure): a PING_REQ about the member (its sender's direct probe
// failed), a NACK from a helper, our own failed probe or failed indirect probe.
import type { MemberStatus, MemberView } from '../types.js'
import { Suspicion, suspicionConfirmations, suspicionMinTimeoutMs } from './suspicion.js'

/** One member claim, already validated (peer id and multiaddrs as strings). */
export interface MemberUpdate {
  peerId: string
  addrs: string[]
  incarnation: number
  status: MemberStatus
  site: string
}

export interface MemberEvent {
  type: MemberStatus
  member: MemberView
}

export interface ApplyResult {
  /** The claim changed our view (or confirmed a suspicion). */
  accepted: boolean
  /** What to gossip on: the accepted claim, or our own alive record after a refutation. */
  broadcast?: MemberUpdate
  /** The member's status changed (or a new member appeared). */
  event?: MemberEvent
  /** We raised our incarnation to refute a claim about ourselves. */
  refuted?: boolean
  /** A member not known before. */
  added?: boolean
  /** A new member was refused: the list is at maxMembers. */
  full?: boolean
}

export interface MemberListOptions {
  self: { peerId: string; addrs: string[]; site: string; incarnation: number }
  probeIntervalMs: number
  suspicionMult: number
  suspicionMaxTimeoutMult: number
  reapAfterMs: number
  /** Members kept at most (ourselves and tombstones included); newcomers beyond are refused. */
  maxMembers?: number
  now: number
}

interface MemberRecord {
  peerId: string
  addrs: string[]
  incarnation: number
  status: MemberStatus
  site: string
  statusSince: number
  suspicion?: Suspicion
}

const STALE: ApplyResult = Object.freeze({ accepted: false })
const FULL: ApplyResult = Object.freeze({ accepted: false, full: true })
export const DEFAULT_MAX_MEMBERS = 16_384

export class MemberList {
  readonly selfId: string
  private readonly opts: MemberListOptions
  private readonly records = new Map<string, MemberRecord>()
  private readonly me: MemberRecord
  private leaving = false
  /** Recent first-hand failure evidence: target -> observer -> when. */
  private readonly evidence = new Map<string, Map<string, number>>()

  constructor(opts: MemberListOptions) {
    this.opts = opts
    this.selfId = opts.self.peerId
    this.me = {
      peerId: opts.self.peerId,
      addrs: [...opts.self.addrs],
      incarnation: opts.self.incarnation,
      status: 'alive',
      site: opts.self.site,
      statusSince: opts.now,
    }
    this.records.set(this.selfId, this.me)
  }

  get incarnation(): number {
    return this.me.incarnation
  }

  get isLeaving(): boolean {
    return this.leaving
  }

  /** Our own record as a claim. */
  selfUpdate(): MemberUpdate {
    return toUpdate(this.me)
  }

  get(peerId: string): MemberUpdate | undefined {
    const r = this.records.get(peerId)
    return r ? toUpdate(r) : undefined
  }

  view(peerId: string): MemberView | undefined {
    const r = this.records.get(peerId)
    return r ? this.toView(r) : undefined
  }

  views(): MemberView[] {
    return [...this.records.values()].map((r) => this.toView(r))
  }

  /** Every record, ourselves included (anti-entropy). */
  snapshot(): MemberUpdate[] {
    return [...this.records.values()].map(toUpdate)
  }

  /** Members believed to be running (alive or suspect), ourselves included: the `n` of the formulas. */
  numLive(): number {
    let n = 0
    for (const r of this.records.values()) if (r.status === 'alive' || r.status === 'suspect') n++
    return n
  }

  aliveCount(): number {
    let n = 0
    for (const r of this.records.values()) if (r.status === 'alive') n++
    return n
  }

  /** Other members with one of the given statuses. */
  others(statuses: readonly MemberStatus[]): MemberUpdate[] {
    const out: MemberUpdate[] = []
    for (const r of this.records.values()) {
      if (r !== this.me && statuses.includes(r.status)) out.push(toUpdate(r))
    }
    return out
  }

  /** Dead members whose death is recent enough that they are still worth gossiping to. */
  recentlyDead(now: number, withinMs: number): MemberUpdate[] {
    const out: MemberUpdate[] = []
    for (const r of this.records.values()) {
      if (r.status === 'dead' && now - r.statusSince <= withinMs) out.push(toUpdate(r))
    }
    return out
  }

  /** A member learnt outside gossip (a connection, a seed): alive at incarnation 0 until it tells us its own. */
  addSeed(peerId: string, addrs: string[], now: number): ApplyResult {
    if (peerId === this.selfId) return STALE
    const cur = this.records.get(peerId)
    if (cur) {
      if (cur.addrs.length === 0 && addrs.length > 0) cur.addrs = [...addrs]
      return STALE
    }
    if (this.isFull()) return FULL
    const r: MemberRecord = {
      peerId,
      addrs: [...addrs],
      incarnation: 0,
      status: 'alive',
      site: '',
      statusSince: now,
    }
    this.records.set(peerId, r)
    // Not gossiped: incarnation 0 is a placeholder, the member's own record will spread instead.
    return { accepted: true, added: true, event: { type: 'alive', member: this.toView(r) } }
  }

  /** Our probe of `peerId` failed (no ACK at all): suspect it at the incarnation we know. */
  suspect(peerId: string, now: number): ApplyResult {
    const r = this.records.get(peerId)
    if (!r || r === this.me) return STALE
    if (r.status === 'suspect') return this.observeFailure(peerId, this.selfId, now)
    return this.apply({ ...toUpdate(r), status: 'suspect' }, now, this.selfId)
  }

  /**
   * `observer` saw `peerId` fail first-hand. A confirmation of a running suspicion (accepted, worth
   * gossiping again when new), or kept for a suspicion that starts soon after.
   */
  observeFailure(peerId: string, observer: string, now: number): ApplyResult {
    if (peerId === this.selfId || peerId === observer) return STALE
    const r = this.records.get(peerId)
    if (!r || r.status === 'dead' || r.status === 'left') return STALE
    let seen = this.evidence.get(peerId)
    if (!seen) {
      seen = new Map()
      this.evidence.set(peerId, seen)
    }
    seen.set(observer, now)
    if (r.status === 'suspect' && r.suspicion?.confirm(observer)) {
      return { accepted: true, broadcast: toUpdate(r) }
    }
    return STALE
  }

  /**
   * Apply a claim. `accuser` is set only when the claim is first-hand (our own probe failed);
   * gossip and snapshots pass nothing.
   */
  apply(u: MemberUpdate, now: number, accuser?: string): ApplyResult {
    if (u.peerId === this.selfId) return this.applySelf(u)
    const cur = this.records.get(u.peerId)
    if (!cur) return this.add(u, now, accuser)
    switch (u.status) {
      case 'alive': {
        // Alive overrides anything at a lower incarnation; a dead member comes back only this way.
        if (u.incarnation <= cur.incarnation) return STALE
        const prev = cur.status
        cur.incarnation = u.incarnation
        cur.addrs = [...u.addrs]
        cur.site = u.site
        cur.suspicion = undefined
        this.evidence.delete(u.peerId)
        if (prev !== 'alive') {
          cur.status = 'alive'
          cur.statusSince = now
          return {
            accepted: true,
            broadcast: toUpdate(cur),
            event: { type: 'alive', member: this.toView(cur) },
          }
        }
        return { accepted: true, broadcast: toUpdate(cur) }
      }
      case 'suspect': {
        if (u.incarnation < cur.incarnation || cur.status === 'dead' || cur.status === 'left') return STALE
        if (cur.status === 'suspect' && cur.suspicion) {
          const raised = u.incarnation > cur.incarnation
          if (raised) cur.incarnation = u.incarnation
          const confirmed = accuser !== undefined && cur.suspicion.confirm(accuser)
          return raised || confirmed ? { accepted: true, broadcast: toUpdate(cur) } : STALE
        }
        cur.status = 'suspect'
        cur.incarnation = u.incarnation
        cur.statusSince = now
        cur.suspicion = this.newSuspicion(u.peerId, now, accuser)
        return {
          accepted: true,
          broadcast: toUpdate(cur),
          event: { type: 'suspect', member: this.toView(cur) },
        }
      }
      case 'dead':
      case 'left': {
        if (u.incarnation < cur.incarnation || cur.status === 'left') return STALE
        // A LEFT at a higher incarnation is newer news than our timeout-based DEAD.
        if (cur.status === 'dead' && !(u.status === 'left' && u.incarnation > cur.incarnation)) return STALE
        cur.status = u.status
        cur.incarnation = u.incarnation
        cur.statusSince = now
        cur.suspicion = undefined
        this.evidence.delete(u.peerId)
        return {
          accepted: true,
          broadcast: toUpdate(cur),
          event: { type: u.status, member: this.toView(cur) },
        }
      }
    }
    return STALE
  }

  /** Expire suspicions (suspect -> dead), reap old tombstones, forget stale failure evidence. */
  tick(now: number): ApplyResult[] {
    const out: ApplyResult[] = []
    const window = this.evidenceWindowMs(this.numLive())
    for (const [target, seen] of this.evidence) {
      for (const [observer, at] of seen) if (now - at > window) seen.delete(observer)
      if (seen.size === 0 || !this.records.has(target)) this.evidence.delete(target)
    }
    for (const [id, r] of this.records) {
      if (r === this.me) continue
      if (r.status === 'suspect' && r.suspicion && r.suspicion.deadline <= now) {
        r.status = 'dead'
        r.statusSince = now
        r.suspicion = undefined
        out.push({ accepted: true, broadcast: toUpdate(r), event: { type: 'dead', member: this.toView(r) } })
      } else if (
        (r.status === 'dead' || r.status === 'left') &&
        now - r.statusSince >= this.opts.reapAfterMs
      ) {
        this.records.delete(id)
      }
    }
    return out
  }

  /** The suspicion timer of a suspect member (tests, diagnostics). */
  suspicionOf(
    peerId: string,
  ): { deadline: number; confirmations: number; k: number; minMs: number; maxMs: number } | undefined {
    const s = this.records.get(peerId)?.suspicion
    return s
      ? { deadline: s.deadline, confirmations: s.confirmations, k: s.k, minMs: s.minMs, maxMs: s.maxMs }
      : undefined
  }

  /** Earliest suspicion deadline, if any (lets a driver sleep until then). */
  nextDeadline(): number | undefined {
    let next: number | undefined
    for (const r of this.records.values()) {
      if (r.suspicion && (next === undefined || r.suspicion.deadline < next)) next = r.suspicion.deadline
    }
    return next
  }

  /** Graceful leave: LEFT at a higher incarnation; claims about us are no longer refuted. */
  leave(now: number): MemberUpdate {
    if (!this.leaving) {
      this.leaving = true
      this.me.incarnation++
      this.me.status = 'left'
      this.me.statusSince = now
    }
    return toUpdate(this.me)
  }

  /** Our addresses changed: a new incarnation carries them (`bump` false before anyone heard of us). */
  setSelfAddrs(addrs: string[], bump = true): MemberUpdate | undefined {
    if (this.leaving || sameList(addrs, this.me.addrs)) return undefined
    this.me.addrs = [...addrs]
    if (bump) this.me.incarnation++
    return toUpdate(this.me)
  }

  private applySelf(u: MemberUpdate): ApplyResult {
    if (this.leaving) return STALE
    if (u.status === 'alive') {
      // Someone holds a newer "us" than we do (a clock step back across a restart): outrank it.
      if (u.incarnation <= this.me.incarnation) return STALE
      this.me.incarnation = u.incarnation + 1
      return { accepted: true, broadcast: toUpdate(this.me), refuted: true }
    }
    if (u.incarnation < this.me.incarnation) {
      // An old accusation (or one made on a placeholder record): our current alive already wins,
      // gossip it again so the accuser learns.
      return { accepted: false, broadcast: toUpdate(this.me) }
    }
    this.me.incarnation = Math.max(this.me.incarnation + 1, u.incarnation + 1)
    return { accepted: true, broadcast: toUpdate(this.me), refuted: true }
  }

  private isFull(): boolean {
    return this.records.size >= (this.opts.maxMembers ?? DEFAULT_MAX_MEMBERS)
  }

  private add(u: MemberUpdate, now: number, accuser?: string): ApplyResult {
    if (this.isFull()) return FULL
    const r: MemberRecord = {
      peerId: u.peerId,
      addrs: [...u.addrs],
      incarnation: u.incarnation,
      status: u.status,
      site: u.site,
      statusSince: now,
    }
    if (u.status === 'suspect') r.suspicion = this.newSuspicion(u.peerId, now, accuser)
    this.records.set(u.peerId, r)
    // Dead and left strangers are recorded too: the tombstone stops stale alive gossip reviving them.
    return {
      accepted: true,
      added: true,
      broadcast: toUpdate(r),
      event: { type: u.status, member: this.toView(r) },
    }
  }

  private newSuspicion(peerId: string, now: number, accuser?: string): Suspicion {
    const n = this.numLive()
    const minMs = this.evidenceWindowMs(n)
    const s = new Suspicion({
      start: now,
      k: suspicionConfirmations(this.opts.suspicionMult, n),
      minMs,
      maxMs: this.opts.suspicionMaxTimeoutMult * minMs,
      from: accuser,
    })
    // Failures observed just before the suspicion started count toward it.
    for (const [observer, at] of this.evidence.get(peerId) ?? []) {
      if (now - at <= minMs) s.confirm(observer)
    }
    this.evidence.delete(peerId)
    return s
  }

  /** How long failure evidence stays relevant: the minimum suspicion timeout. */
  private evidenceWindowMs(n: number): number {
    return suspicionMinTimeoutMs(this.opts.suspicionMult, n, this.opts.probeIntervalMs)
  }

  private toView(r: MemberRecord): MemberView {
    return {
      peerId: r.peerId,
      addrs: [...r.addrs],
      status: r.status,
      incarnation: r.incarnation,
      site: r.site,
      statusSince: r.statusSince,
      self: r === this.me,
    }
  }
}

function toUpdate(r: MemberRecord): MemberUpdate {
  return { peerId: r.peerId, addrs: [...r.addrs], incarnation: r.incarnation, status: r.status, site: r.site }
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i])
}
