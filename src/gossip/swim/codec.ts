// Wire <-> memory for /skymesh/swim/1.0.0: validated decoding of SwimMessage and Member (sizes,
// counts, peer ids, multiaddrs), and encoding of our claims. Nothing here throws on peer input:
// a bad message or update comes back as a DropReason.
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { type MemberMessage, pb } from '../../proto/index.js'
import type { DropReason, MemberStatus } from '../types.js'
import {
  MAX_ADDR_BYTES,
  MAX_ADDRS,
  MAX_MESSAGE_BYTES,
  MAX_PEER_ID_BYTES,
  MAX_SITE_LENGTH,
  MAX_UPDATES,
  type SwimMessageKind,
} from './config.js'
import type { MemberUpdate } from './members.js'

export type SwimMessage = ReturnType<typeof pb.SwimMessage.decode>
export type Decoded<T> = { ok: true; value: T } | { ok: false; reason: DropReason }

const STATUS_FROM_WIRE: Record<number, MemberStatus> = {
  [pb.MemberStatus.ALIVE]: 'alive',
  [pb.MemberStatus.SUSPECT]: 'suspect',
  [pb.MemberStatus.DEAD]: 'dead',
  [pb.MemberStatus.LEFT]: 'left',
}

const STATUS_TO_WIRE: Record<MemberStatus, number> = {
  alive: pb.MemberStatus.ALIVE,
  suspect: pb.MemberStatus.SUSPECT,
  dead: pb.MemberStatus.DEAD,
  left: pb.MemberStatus.LEFT,
}

const KINDS: Record<number, SwimMessageKind> = {
  [pb.SwimMessage.Type.PING]: 'ping',
  [pb.SwimMessage.Type.ACK]: 'ack',
  [pb.SwimMessage.Type.PING_REQ]: 'ping-req',
  [pb.SwimMessage.Type.NACK]: 'nack',
}

export function messageKind(type: number): SwimMessageKind | undefined {
  return KINDS[type]
}

// ------------------------------------------------------------------------------- peer ids

const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'

/** base58btc, the text form of a peer id's multihash (kept here to avoid a direct multiformats dependency). */
export function base58btc(bytes: Uint8Array): string {
  const digits: number[] = []
  for (const byte of bytes) {
    let carry = byte
    for (let i = 0; i < digits.length; i++) {
      carry += (digits[i] as number) << 8
      digits[i] = carry % 58
      carry = Math.floor(carry / 58)
    }
    while (carry > 0) {
      digits.push(carry % 58)
      carry = Math.floor(carry / 58)
    }
  }
  let out = ''
  for (const byte of bytes) {
    if (byte !== 0) break
    out += '1'
  }
  for (let i = digits.length - 1; i >= 0; i--) out += B58[digits[i] as number]
  return out
}

/** Peer id bytes (multihash) -> canonical string, or undefined when they are not a peer id. */
export function peerIdStringFromBytes(bytes: Uint8Array | null | undefined): string | undefined {
  if (!bytes || bytes.length === 0 || bytes.length > MAX_PEER_ID_BYTES) return undefined
  try {
    return peerIdFromString(base58btc(bytes)).toString()
  } catch {
    return undefined
  }
}

export function peerIdBytes(peerId: string): Uint8Array {
  return peerIdFromString(peerId).toMultihash().bytes
}

/** Multiaddr bytes -> strings; undefined when one does not parse. */
export function addrsFromWire(list: readonly Uint8Array[] | null | undefined): string[] | undefined {
  const out: string[] = []
  for (const b of list ?? []) {
    if (!(b instanceof Uint8Array) || b.length === 0 || b.length > MAX_ADDR_BYTES) return undefined
    try {
      out.push(multiaddr(b).toString())
    } catch {
      return undefined
    }
  }
  return out
}

/** Multiaddr strings -> bytes, skipping any that do not parse (our own are always valid). */
export function addrsToWire(addrs: readonly string[]): Uint8Array[] {
  const out: Uint8Array[] = []
  for (const a of addrs.slice(0, MAX_ADDRS)) {
    try {
      out.push(multiaddr(a).bytes)
    } catch {
      // not a multiaddr: leave it out
    }
  }
  return out
}

// ------------------------------------------------------------------------------- members

/** protobufjs hands uint64 out as a Long when the `long` package is installed, a number otherwise. */
function uint64(v: unknown): number | undefined {
  if (v === undefined || v === null) return 0
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? v : undefined
  if (typeof v === 'object' && typeof (v as { low?: unknown }).low === 'number') {
    const { low, high } = v as { low: number; high: number }
    const n = (high >>> 0) * 2 ** 32 + (low >>> 0)
    return Number.isSafeInteger(n) ? n : undefined
  }
  return undefined
}

export function memberFromWire(m: MemberMessage): Decoded<MemberUpdate> {
  const peerId = peerIdStringFromBytes(m.peerId)
  if (peerId === undefined) return { ok: false, reason: 'malformed' }
  if ((m.addrs?.length ?? 0) > MAX_ADDRS) return { ok: false, reason: 'too-many-items' }
  const addrs = addrsFromWire(m.addrs)
  if (addrs === undefined) return { ok: false, reason: 'malformed' }
  const incarnation = uint64(m.incarnation)
  if (incarnation === undefined) return { ok: false, reason: 'malformed' }
  const status = STATUS_FROM_WIRE[m.status ?? 0]
  if (status === undefined) return { ok: false, reason: 'malformed' }
  const site = m.site ?? ''
  if (typeof site !== 'string' || site.length > MAX_SITE_LENGTH) return { ok: false, reason: 'malformed' }
  return { ok: true, value: { peerId, addrs, incarnation, status, site } }
}

export function memberToWire(u: MemberUpdate): MemberMessage {
  return {
    peerId: peerIdBytes(u.peerId),
    addrs: addrsToWire(u.addrs),
    incarnation: u.incarnation,
    status: STATUS_TO_WIRE[u.status],
    site: u.site.slice(0, MAX_SITE_LENGTH),
  }
}

/** Bytes a member adds to a SwimMessage (tag + length varint + body). */
export function memberWireSize(m: MemberMessage): number {
  const len = pb.Member.encode(m).finish().length
  return 1 + varintLength(len) + len
}

function varintLength(n: number): number {
  let len = 1
  while (n >= 0x80) {
    n = Math.floor(n / 0x80)
    len++
  }
  return len
}

// ------------------------------------------------------------------------------- messages

/** Decode and check the envelope (size, type, counts). Updates are checked one by one later. */
export function decodeMessage(bytes: Uint8Array): Decoded<SwimMessage> {
  if (bytes.length > MAX_MESSAGE_BYTES) return { ok: false, reason: 'oversized' }
  let msg: SwimMessage
  try {
    msg = pb.SwimMessage.decode(bytes)
  } catch {
    return { ok: false, reason: 'malformed' }
  }
  if (messageKind(msg.type ?? 0) === undefined) return { ok: false, reason: 'malformed' }
  if ((msg.updates?.length ?? 0) > MAX_UPDATES) return { ok: false, reason: 'too-many-items' }
  if ((msg.targetAddrs?.length ?? 0) > MAX_ADDRS) return { ok: false, reason: 'too-many-items' }
  return { ok: true, value: msg }
}

export function encodeMessage(m: {
  type: number
  seq: number
  updates: MemberMessage[]
  target?: Uint8Array
  targetAddrs?: Uint8Array[]
}): Uint8Array {
  return pb.SwimMessage.encode({
    type: m.type,
    seq: m.seq >>> 0,
    target: m.target,
    targetAddrs: m.targetAddrs,
    updates: m.updates,
  }).finish()
}
