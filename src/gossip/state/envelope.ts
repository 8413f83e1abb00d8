// The signed envelope of a host state: signature over SIGNATURE_PREFIX + encoded HostState, made with
// the host's libp2p key, so any peer can relay it and every receiver can check who wrote it.
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { type HostStateMessage, pb } from '../../proto/index.js'
import type { DropReason } from '../types.js'
import { MAX_ADDRS, MAX_IMAGES, MAX_STATE_BYTES, MAX_VMS, SIGNATURE_PREFIX } from './constants.js'
import type { HostState, SignedHostState } from './pb-types.js'
import { equalBytes, peerKeyFromBytes } from './peer-key.js'
import { u64 } from './u64.js'
import { countFields } from './wire.js'

const PREFIX = new TextEncoder().encode(SIGNATURE_PREFIX)

// Field numbers of pb.HostState counted before decoding.
const HOST_STATE_VMS = 7
const HOST_STATE_ADDRS = 10
const HOST_STATE_IMAGES = 12

/** What was signed: the prefix, then the payload. */
export function signedBytes(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(PREFIX.length + payload.length)
  out.set(PREFIX, 0)
  out.set(payload, PREFIX.length)
  return out
}

/** Signs a state of the key's own host. Throws if `state.peerId` is not that key's peer id. */
export async function signHostState(
  privateKey: PrivateKey,
  state: HostStateMessage,
): Promise<SignedHostState> {
  const own = peerIdFromPrivateKey(privateKey).toMultihash().bytes
  if (!state.peerId || !equalBytes(state.peerId, own)) {
    throw new Error('signHostState: state.peerId is not the peer id of the signing key')
  }
  const payload = pb.HostState.encode(state).finish()
  const signature = await privateKey.sign(signedBytes(payload))
  return pb.SignedHostState.create({ payload, signature })
}

/** The bytes to publish or relay. */
export function encodeSignedHostState(signed: SignedHostState): Uint8Array {
  return pb.SignedHostState.encode(signed).finish()
}

export interface OpenedHostState {
  /** Peer id string of the host the state is about (and which signed it). */
  peerId: string
  /** Peer id bytes as on the wire. */
  peerIdBytes: Uint8Array
  version: number
  state: HostState
  /** The encoded SignedHostState as received (a copy), kept for relaying. */
  signed: Uint8Array
}

export type OpenResult = { ok: true; state: OpenedHostState } | { ok: false; reason: DropReason }

export interface OpenOptions {
  /** Largest encoded SignedHostState accepted; default MAX_STATE_BYTES (1 MiB). */
  maxBytes?: number
}

/**
 * Checks an encoded SignedHostState from the network: size, decoding, item counts, and the
 * signature against the key in its own `peer_id`. Never throws.
 */
export async function openHostState(bytes: Uint8Array, opts: OpenOptions = {}): Promise<OpenResult> {
  if (bytes.length > (opts.maxBytes ?? MAX_STATE_BYTES)) return { ok: false, reason: 'oversized' }
  let envelope: SignedHostState
  try {
    envelope = pb.SignedHostState.decode(bytes)
  } catch {
    return { ok: false, reason: 'malformed' }
  }
  const payload = envelope.payload
  const signature = envelope.signature
  if (!payload?.length) return { ok: false, reason: 'malformed' }
  if (!signature?.length) return { ok: false, reason: 'bad-signature' }

  let state: HostState
  try {
    const counts = countFields(payload)
    if ((counts.get(HOST_STATE_VMS) ?? 0) > MAX_VMS) return { ok: false, reason: 'too-many-items' }
    if ((counts.get(HOST_STATE_ADDRS) ?? 0) > MAX_ADDRS) return { ok: false, reason: 'too-many-items' }
    if ((counts.get(HOST_STATE_IMAGES) ?? 0) > MAX_IMAGES) return { ok: false, reason: 'too-many-items' }
    state = pb.HostState.decode(payload)
  } catch {
    return { ok: false, reason: 'malformed' }
  }
  if (!state.peerId?.length) return { ok: false, reason: 'malformed' }
  const key = peerKeyFromBytes(state.peerId)
  if (!key) return { ok: false, reason: 'bad-signature' }
  try {
    if (!(await key.publicKey.verify(signedBytes(payload), signature))) {
      return { ok: false, reason: 'bad-signature' }
    }
  } catch {
    return { ok: false, reason: 'bad-signature' }
  }
  // Signed, but still checked: no VM listed twice or without an id, and versions and epochs exact
  // as JS numbers (above 2^53 two values would compare equal).
  const version = u64(state.version)
  if (!Number.isSafeInteger(version)) return { ok: false, reason: 'malformed' }
  const ids = new Set<string>()
  for (const vm of state.vms ?? []) {
    if (!vm.id || ids.has(vm.id) || !Number.isSafeInteger(u64(vm.epoch)))
      return { ok: false, reason: 'malformed' }
    ids.add(vm.id)
  }
  return {
    ok: true,
    state: {
      peerId: key.id,
      peerIdBytes: Uint8Array.from(state.peerId),
      version,
      state,
      signed: Uint8Array.from(bytes),
    },
  }
}
