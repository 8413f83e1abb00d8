// The sealed channel's key schedule (src/transfer/sealed-keys.ts): both ends derive the same keys,
// every connection (fresh nonces) gets its own, the directions differ, and record nonces are the
// direction's prefix and the record counter.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import {
  deriveSessionKeys,
  MAX_RECORDS,
  proof,
  proofMatches,
  recordNonce,
} from '../../src/transfer/sealed-keys.js'

describe('sealed key schedule', () => {
  const psk = randomBytes(32)
  const cn = randomBytes(32)
  const sn = randomBytes(32)

  it('is the same on both ends and differs per connection, direction and identity', () => {
    const a = deriveSessionKeys(psk, 'id', cn, sn)
    const b = deriveSessionKeys(Buffer.from(psk), 'id', Buffer.from(cn), Buffer.from(sn))
    assert.deepEqual(a, b)
    assert.notDeepEqual(a.clientToServer.key, a.serverToClient.key)
    assert.notDeepEqual(a.clientProofKey, a.serverProofKey)
    const other = deriveSessionKeys(psk, 'id', cn, randomBytes(32))
    assert.notDeepEqual(other.clientToServer.key, a.clientToServer.key)
    assert.notDeepEqual(deriveSessionKeys(psk, 'id2', cn, sn).clientToServer.key, a.clientToServer.key)
    assert.notDeepEqual(deriveSessionKeys(randomBytes(32), 'id', cn, sn).serverProofKey, a.serverProofKey)
    assert.equal(a.clientToServer.key.length, 16)
    assert.equal(a.clientToServer.ivPrefix.length, 4)
  })

  it('proofs bind the transcript', () => {
    const k = deriveSessionKeys(psk, 'id', cn, sn)
    const hello = Buffer.from('hello bytes')
    const p = proof(k.serverProofKey, hello, sn)
    assert.ok(proofMatches(p, proof(k.serverProofKey, Buffer.from(hello), sn)))
    assert.ok(!proofMatches(p, proof(k.serverProofKey, Buffer.from('hello bytez'), sn)))
    assert.ok(!proofMatches(p, proof(k.clientProofKey, hello, sn)))
    assert.ok(!proofMatches(p.subarray(0, 31), p), 'a short proof is no match')
  })

  it('record nonces: prefix, then the counter as 8 bytes big-endian, bounded', () => {
    const prefix = Buffer.from([1, 2, 3, 4])
    assert.deepEqual(recordNonce(prefix, 0), Buffer.from([1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]))
    assert.deepEqual(recordNonce(prefix, 2 ** 32 + 5), Buffer.from([1, 2, 3, 4, 0, 0, 0, 1, 0, 0, 0, 5]))
    assert.throws(() => recordNonce(prefix, MAX_RECORDS), RangeError)
    assert.throws(() => recordNonce(prefix, -1), RangeError)
  })
})
