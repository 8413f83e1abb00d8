// The sealed channel's handshake arithmetic (sealed.ts): session keys, proofs and record nonces,
// pure functions of the pre-shared key and what the two ends said. See proto/transfer.proto
// ("sealed direct channel") for the exchange.
//
// Keys: HKDF-SHA256 over the 32-byte pre-shared key, salted with both fresh nonces (so every
// connection has keys of its own, even for the same grant), with the identity in the info. Out of it
// come, per direction, an AES-128-GCM key and a 4-byte nonce prefix, and one proof key per side.
// A record's nonce is the direction's prefix and its 8-byte record counter: unique per key, never
// sent, so a record replayed, dropped or moved fails authentication. A proof is an HMAC-SHA256 of
// the transcript (the client's hello as sent, then the server's nonce) with that side's proof key:
// only a holder of the pre-shared key can make it, and it is bound to this connection's nonces.
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto'

export const SEALED_VERSION = 1
export const SEALED_NONCE_BYTES = 32
export const SEALED_KEY_BYTES = 16
const IV_PREFIX_BYTES = 4
const PROOF_KEY_BYTES = 32
export const PROOF_BYTES = 32
/** A record counter stays below this (2^48 records of even 1 byte is far beyond any migration). */
export const MAX_RECORDS = 2 ** 48

export interface DirectionKeys {
  key: Buffer
  ivPrefix: Buffer
}

export interface SessionKeys {
  clientToServer: DirectionKeys
  serverToClient: DirectionKeys
  clientProofKey: Buffer
  serverProofKey: Buffer
}

/** Session keys of one connection (both ends compute the same). */
export function deriveSessionKeys(
  psk: Uint8Array,
  identity: string,
  clientNonce: Uint8Array,
  serverNonce: Uint8Array,
): SessionKeys {
  const lengths = [
    SEALED_KEY_BYTES,
    IV_PREFIX_BYTES,
    SEALED_KEY_BYTES,
    IV_PREFIX_BYTES,
    PROOF_KEY_BYTES,
    PROOF_KEY_BYTES,
  ]
  const total = lengths.reduce((a, b) => a + b, 0)
  const okm = Buffer.from(
    hkdfSync(
      'sha256',
      psk,
      Buffer.concat([clientNonce, serverNonce]),
      Buffer.from(`skymesh sealed v${SEALED_VERSION} ${identity}`),
      total,
    ),
  )
  let off = 0
  const next = (n: number) => {
    const part = okm.subarray(off, off + n)
    off += n
    return part
  }
  return {
    clientToServer: { key: next(SEALED_KEY_BYTES), ivPrefix: next(IV_PREFIX_BYTES) },
    serverToClient: { key: next(SEALED_KEY_BYTES), ivPrefix: next(IV_PREFIX_BYTES) },
    clientProofKey: next(PROOF_KEY_BYTES),
    serverProofKey: next(PROOF_KEY_BYTES),
  }
}

/** One side's proof: HMAC-SHA256 of the transcript (the hello as sent, then the server's nonce). */
export function proof(proofKey: Uint8Array, hello: Uint8Array, serverNonce: Uint8Array): Buffer {
  return createHmac('sha256', proofKey).update(hello).update(serverNonce).digest()
}

/** Whether `got` is `expected` (constant time; a wrong length is simply false). */
export function proofMatches(got: Uint8Array, expected: Uint8Array): boolean {
  return got.length === expected.length && timingSafeEqual(got, expected)
}

/** The 12-byte GCM nonce of record `seq` in a direction: its prefix, then `seq` as 8 bytes big-endian. */
export function recordNonce(ivPrefix: Uint8Array, seq: number): Buffer {
  if (!Number.isSafeInteger(seq) || seq < 0 || seq >= MAX_RECORDS)
    throw new RangeError(`record number ${seq}`)
  const n = Buffer.allocUnsafe(12)
  n.set(ivPrefix, 0)
  n.writeUInt32BE(Math.floor(seq / 2 ** 32), 4)
  n.writeUInt32BE(seq >>> 0, 8)
  return n
}
