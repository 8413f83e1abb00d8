// Host identities on the wire are peer id bytes (a multihash). Only Ed25519 ids inline their public
// key (identity multihash), which is what lets any receiver check a relayed state's signature.
import { publicKeyFromProtobuf } from '@libp2p/crypto/keys'
import type { PublicKey } from '@libp2p/interface'
import { peerIdFromPublicKey } from '@libp2p/peer-id'

export interface PeerKey {
  /** The peer id as a string (base58btc), as libp2p prints it. */
  id: string
  publicKey: PublicKey
}

// identity multihash: code 0x00, length 36 = protobuf PublicKey { Type = Ed25519, Data = 32 bytes }
const IDENTITY = 0x00
const ED25519_KEY_PROTOBUF_LENGTH = 36

/** The Ed25519 key inside peer id bytes, or undefined for any other (or a non-canonical) encoding. */
export function peerKeyFromBytes(bytes: Uint8Array): PeerKey | undefined {
  if (bytes.length !== 2 + ED25519_KEY_PROTOBUF_LENGTH) return undefined
  if (bytes[0] !== IDENTITY || bytes[1] !== ED25519_KEY_PROTOBUF_LENGTH) return undefined
  try {
    const publicKey = publicKeyFromProtobuf(bytes.subarray(2))
    if (publicKey.type !== 'Ed25519') return undefined
    const peerId = peerIdFromPublicKey(publicKey)
    // One host, one encoding: a re-encoded key must give back the same bytes.
    if (!equalBytes(peerId.toMultihash().bytes, bytes)) return undefined
    return { id: peerId.toString(), publicKey }
  } catch {
    return undefined
  }
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** Peer id bytes as a map key (base64), without parsing them. */
export function wireKey(peerIdBytes: Uint8Array): string {
  return Buffer.from(peerIdBytes.buffer, peerIdBytes.byteOffset, peerIdBytes.byteLength).toString('base64')
}
