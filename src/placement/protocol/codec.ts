// Wire form of the protocol's messages (proto/placement.proto): encode, and decode with limits. A
// message from a peer that is malformed, too large or breaks a limit throws PlacementCodecError
// (the agent drops it and counts it by `code`); nothing of it is used.
import { pb } from '../../proto/index.js'
import type { HostState, HostView, ProblemKind, SiteRule, VmConstraints, VmView } from '../core/index.js'
import type { EventRef, MemberSnapshot, PlacementMessage } from './messages.js'

export const MAX_MESSAGE_BYTES = 256 * 1024
export const MAX_VMS_PER_MEMBER = 512
export const MAX_BAN = 16
export const MAX_SITE_RULES = 8
const MAX_ID = 256

export class PlacementCodecError extends Error {
  constructor(
    readonly code: 'malformed' | 'oversized',
    message: string,
  ) {
    super(message)
  }
}

const TYPES = [
  'join',
  'joined',
  'busy',
  'yield',
  'renew',
  'renewed',
  'left',
  'release',
  'drain',
  'undrain',
] as const
const KINDS: readonly ProblemKind[] = ['overload', 'underload', 'drain', 'misplaced']
const STATES: readonly HostState[] = ['up', 'standby', 'draining', 'down']

type Wire = ReturnType<typeof pb.PlacementMessage.decode>
type WireRef = NonNullable<Wire['event']>
type WireMember = NonNullable<Wire['member']>

export function encodePlacementMessage(msg: PlacementMessage): Uint8Array {
  const w: Record<string, unknown> = { type: TYPES.indexOf(msg.type) }
  switch (msg.type) {
    case 'join':
      Object.assign(w, { eventId: msg.event.id, event: ref(msg.event), leaseMs: msg.leaseMs })
      break
    case 'joined':
      Object.assign(w, { eventId: msg.eventId, member: member(msg.member) })
      break
    case 'busy':
      Object.assign(w, { eventId: msg.eventId, holder: ref(msg.holder) })
      break
    case 'yield':
      Object.assign(w, { eventId: msg.eventId, to: ref(msg.to) })
      break
    case 'renew':
      Object.assign(w, { eventId: msg.eventId, leaseMs: msg.leaseMs })
      break
    default:
      w.eventId = msg.eventId
  }
  return pb.PlacementMessage.encode(w).finish()
}

export function decodePlacementMessage(bytes: Uint8Array): PlacementMessage {
  if (bytes.length > MAX_MESSAGE_BYTES) throw new PlacementCodecError('oversized', `${bytes.length} bytes`)
  let w: Wire
  try {
    w = pb.PlacementMessage.decode(bytes)
  } catch (err) {
    throw new PlacementCodecError('malformed', `not a placement message: ${(err as Error).message}`)
  }
  const type = TYPES[w.type]
  if (!type) throw bad(`unknown type ${w.type}`)
  const eventId = id(w.eventId, 'event id')
  switch (type) {
    case 'join': {
      if (!w.event) throw bad('join without event')
      const event = fromRef(w.event)
      if (event.id !== eventId) throw bad('join: event id mismatch')
      return { type, event, leaseMs: count(w.leaseMs, 'lease') }
    }
    case 'joined':
      if (!w.member) throw bad('joined without member')
      return { type, eventId, member: fromMember(w.member) }
    case 'busy':
      if (!w.holder) throw bad('busy without holder')
      return { type, eventId, holder: fromRef(w.holder) }
    case 'yield':
      if (!w.to) throw bad('yield without to')
      return { type, eventId, to: fromRef(w.to) }
    case 'renew':
      return { type, eventId, leaseMs: count(w.leaseMs, 'lease') }
    default:
      return { type, eventId }
  }
}

function ref(e: EventRef) {
  return { id: e.id, leader: e.leader, kind: KINDS.indexOf(e.kind), openedAtMs: e.openedAt }
}

function res(r: { cpu: number; mem: number; disk: number }) {
  return { cpu: r.cpu, memMib: r.mem, diskMib: r.disk }
}

function member(m: MemberSnapshot) {
  return {
    hostId: m.host.id,
    site: m.host.site,
    capacity: res(m.host.capacity),
    state: STATES.indexOf(m.host.state),
    vms: m.vms.map((v) => ({
      id: v.id,
      demand: res(v.demand),
      memoryBytes: v.memoryBytes,
      pin: v.constraints?.pin ?? '',
      ban: [...(v.constraints?.ban ?? [])],
      antiAffinity: v.constraints?.antiAffinity ?? '',
      sites: (v.constraints?.sites ?? []).map((s) => ({
        site: s.site,
        fromHour: s.fromHour,
        toHour: s.toHour,
      })),
      lastMovedAtMs: v.lastMovedAt ?? 0,
    })),
  }
}

function fromRef(r: WireRef): EventRef {
  const kind = KINDS[r.kind ?? -1]
  if (!kind) throw bad(`unknown problem kind ${r.kind}`)
  return {
    id: id(r.id, 'event id'),
    leader: id(r.leader, 'leader'),
    kind,
    openedAt: count(r.openedAtMs, 'openedAt'),
  }
}

function fromRes(
  r: { cpu?: number | null; memMib?: number | null; diskMib?: number | null } | null | undefined,
) {
  if (!r) throw bad('resources missing')
  return { cpu: amount(r.cpu, 'cpu'), mem: amount(r.memMib, 'memory'), disk: amount(r.diskMib, 'disk') }
}

function fromMember(m: WireMember): MemberSnapshot {
  const state = STATES[m.state ?? -1]
  if (!state) throw bad(`unknown host state ${m.state}`)
  const hostId = id(m.hostId, 'host id')
  const vms = m.vms ?? []
  if (vms.length > MAX_VMS_PER_MEMBER) throw bad(`${vms.length} VMs (at most ${MAX_VMS_PER_MEMBER})`)
  const host: HostView = { id: hostId, site: str(m.site, 'site'), capacity: fromRes(m.capacity), state }
  return {
    host,
    vms: vms.map((v): VmView => {
      const ban = (v.ban ?? []).map((b) => id(b, 'ban'))
      if (ban.length > MAX_BAN) throw bad(`${ban.length} banned hosts (at most ${MAX_BAN})`)
      const rules = v.sites ?? []
      if (rules.length > MAX_SITE_RULES) throw bad(`${rules.length} site rules (at most ${MAX_SITE_RULES})`)
      const sites: SiteRule[] = rules.map((s) => ({
        site: str(s.site, 'site'),
        fromHour: hour(s.fromHour),
        toHour: hour(s.toHour),
      }))
      const c: VmConstraints = {
        ...(v.pin ? { pin: id(v.pin, 'pin') } : {}),
        ...(ban.length ? { ban } : {}),
        ...(v.antiAffinity ? { antiAffinity: str(v.antiAffinity, 'group') } : {}),
        ...(sites.length ? { sites } : {}),
      }
      const last = count(v.lastMovedAtMs, 'lastMovedAt')
      return {
        id: id(v.id, 'vm id'),
        host: hostId,
        demand: fromRes(v.demand),
        memoryBytes: count(v.memoryBytes, 'memory bytes'),
        ...(Object.keys(c).length ? { constraints: c } : {}),
        ...(last > 0 ? { lastMovedAt: last } : {}),
      }
    }),
  }
}

function bad(message: string): PlacementCodecError {
  return new PlacementCodecError('malformed', message)
}

function str(s: string | null | undefined, what: string): string {
  const v = s ?? ''
  if (v.length > MAX_ID) throw bad(`${what} too long`)
  return v
}

function id(s: string | null | undefined, what: string): string {
  const v = str(s, what)
  if (!v) throw bad(`${what} missing`)
  return v
}

/** An absent 64-bit field decodes as the generated code's Long default: read it as a number. */
function plain(x: unknown): number {
  if (typeof x === 'number') return x
  if (x && typeof x === 'object' && 'low' in x && 'high' in x) {
    const l = x as { low: number; high: number }
    return (l.high >>> 0) * 2 ** 32 + (l.low >>> 0)
  }
  return x === null || x === undefined ? 0 : Number.NaN
}

function amount(x: unknown, what: string): number {
  const v = plain(x)
  if (!Number.isFinite(v) || v < 0) throw bad(`${what} must be a finite number >= 0`)
  return v
}

function count(x: unknown, what: string): number {
  const v = amount(x, what)
  if (!Number.isSafeInteger(v)) throw bad(`${what} must be an integer`)
  return v
}

function hour(x: unknown): number {
  const v = count(x, 'hour')
  if (v > 24) throw bad('hour must be 0..24')
  return v
}
