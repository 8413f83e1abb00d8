// Anti-entropy messages: SyncRequest (digests of what we have) and SyncResponse (signed states newer
// or missing on the requester's side, plus members). Counts are checked on the raw bytes first.
import protobuf from 'protobufjs/minimal.js'
import { type MemberMessage, pb } from '../../proto/index.js'
import type { DropReason } from '../types.js'
import { MAX_ADDRS, MAX_SYNC_ITEMS } from './constants.js'
import type { Member } from './pb-types.js'
import { wireKey } from './peer-key.js'
import { u64 } from './u64.js'
import { countFields, rawFields } from './wire.js'

const { Writer } = protobuf

// Field numbers (proto/gossip.proto).
const REQUEST_HAVE = 1
const RESPONSE_STATES = 1
const RESPONSE_MEMBERS = 2

export interface Digest {
  peerIdBytes: Uint8Array
  version: number
}

export function encodeSyncRequest(have: readonly Digest[], wantMembers: boolean): Uint8Array {
  return pb.SyncRequest.encode({
    have: have.slice(0, MAX_SYNC_ITEMS).map((d) => ({ peerId: d.peerIdBytes, version: d.version })),
    wantMembers,
  }).finish()
}

export type DecodedSyncRequest =
  | { ok: true; have: Map<string, number>; wantMembers: boolean }
  | { ok: false; reason: DropReason }

/** The requester's digests keyed by wireKey(peer id bytes). */
export function decodeSyncRequest(bytes: Uint8Array): DecodedSyncRequest {
  try {
    if ((countFields(bytes).get(REQUEST_HAVE) ?? 0) > MAX_SYNC_ITEMS)
      return { ok: false, reason: 'too-many-items' }
    const req = pb.SyncRequest.decode(bytes)
    const have = new Map<string, number>()
    for (const d of req.have ?? []) {
      if (!d.peerId?.length) continue
      const key = wireKey(d.peerId)
      have.set(key, Math.max(have.get(key) ?? 0, u64(d.version)))
    }
    return { ok: true, have, wantMembers: req.wantMembers === true }
  } catch {
    return { ok: false, reason: 'malformed' }
  }
}

export interface EncodedSyncResponse {
  bytes: Uint8Array
  states: number
  members: number
  /** States left out to stay under maxBytes (the next exchange brings them). */
  leftOut: number
}

/**
 * Writes a SyncResponse from already-encoded SignedHostStates (sent as their host signed them) and
 * members, staying under maxBytes: members first, then as many states as fit.
 */
export function encodeSyncResponse(
  states: readonly Uint8Array[],
  members: readonly MemberMessage[],
  maxBytes: number,
): EncodedSyncResponse {
  const w = Writer.create()
  let size = 0
  let memberCount = 0
  for (const m of members.slice(0, MAX_SYNC_ITEMS)) {
    const b = pb.Member.encode(m).finish()
    if (size + fieldSize(b.length) > maxBytes) break
    w.uint32((RESPONSE_MEMBERS << 3) | 2).bytes(b)
    size += fieldSize(b.length)
    memberCount++
  }
  let stateCount = 0
  for (const s of states) {
    if (stateCount >= MAX_SYNC_ITEMS || size + fieldSize(s.length) > maxBytes) break
    w.uint32((RESPONSE_STATES << 3) | 2).bytes(s)
    size += fieldSize(s.length)
    stateCount++
  }
  return { bytes: w.finish(), states: stateCount, members: memberCount, leftOut: states.length - stateCount }
}

export type DecodedSyncResponse =
  | { ok: true; states: Uint8Array[]; members: Member[]; badMembers: number }
  | { ok: false; reason: DropReason }

/** Splits a response into raw signed states (each still to be opened) and decoded members. */
export function decodeSyncResponse(bytes: Uint8Array): DecodedSyncResponse {
  try {
    const counts = countFields(bytes)
    if (
      (counts.get(RESPONSE_STATES) ?? 0) > MAX_SYNC_ITEMS ||
      (counts.get(RESPONSE_MEMBERS) ?? 0) > MAX_SYNC_ITEMS
    ) {
      return { ok: false, reason: 'too-many-items' }
    }
    const states = rawFields(bytes, RESPONSE_STATES)
    const members: Member[] = []
    let badMembers = 0
    for (const raw of rawFields(bytes, RESPONSE_MEMBERS)) {
      // A copy: members are kept by the membership layer, the response buffer should not be.
      const m = pb.Member.decode(Uint8Array.from(raw))
      if ((m.addrs?.length ?? 0) > MAX_ADDRS || !m.peerId?.length) badMembers++
      else members.push(m)
    }
    return { ok: true, states, members, badMembers }
  } catch {
    return { ok: false, reason: 'malformed' }
  }
}

/** Bytes a length-delimited field of `len` bytes takes with a one-byte tag. */
function fieldSize(len: number): number {
  let varint = 1
  for (let v = len; v >= 0x80; v = Math.floor(v / 0x80)) varint++
  return 1 + varint + len
}
