import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import {
  encodeSignedHostState,
  MAX_VMS,
  openHostState,
  SIGNATURE_PREFIX,
  signHostState,
} from '../../src/gossip/state/index.js'
import type { VmSummaryMessage } from '../../src/proto/index.js'
import { pb } from '../../src/proto/index.js'

const vm = (id: string, epoch = 1): VmSummaryMessage => ({
  id,
  name: `name-${id}`,
  vcpus: 2,
  memoryMib: 512,
  diskMib: 1024,
  cpu: 0.5,
  dirtyMibps: 3,
  state: 'running',
  epoch,
})

async function signed(key: PrivateKey, version: number, vms: VmSummaryMessage[] = [vm('a')]) {
  const state = {
    peerId: peerIdFromPrivateKey(key).toMultihash().bytes,
    version,
    site: 'dc1',
    capacity: { vcpus: 8, memoryMib: 8192, diskMib: 100_000 },
    used: { vcpus: 2, memoryMib: 512, diskMib: 1024 },
    cpuLoad: 0.25,
    vms,
    timestampMs: Date.now(),
    agentVersion: '0.1.0',
    addrs: [],
  }
  return encodeSignedHostState(await signHostState(key, state))
}

describe('host state envelope', () => {
  it('opens what it signed, with uint64 fields as numbers', async () => {
    const key = await generateKeyPair('Ed25519')
    const bytes = await signed(key, 1_700_000_000_123)
    const r = await openHostState(bytes)
    assert.ok(r.ok)
    assert.equal(r.state.peerId, peerIdFromPrivateKey(key).toString())
    assert.equal(r.state.version, 1_700_000_000_123)
    assert.equal(r.state.state.vms.length, 1)
    assert.deepEqual(Buffer.from(r.state.signed), Buffer.from(bytes))
  })

  it('signs over the prefix, not the bare payload', async () => {
    const key = await generateKeyPair('Ed25519')
    const env = pb.SignedHostState.decode(await signed(key, 5))
    const prefixed = new Uint8Array([...new TextEncoder().encode(SIGNATURE_PREFIX), ...env.payload])
    assert.equal(await key.publicKey.verify(prefixed, env.signature), true)
    assert.equal(await key.publicKey.verify(env.payload, env.signature), false)
    // A signature over the bare payload (another protocol's) does not open.
    const bare = await key.sign(env.payload)
    const forged = encodeSignedHostState(pb.SignedHostState.create({ payload: env.payload, signature: bare }))
    assert.deepEqual(await openHostState(forged), { ok: false, reason: 'bad-signature' })
  })

  it('refuses to sign a state of another host', async () => {
    const a = await generateKeyPair('Ed25519')
    const b = await generateKeyPair('Ed25519')
    await assert.rejects(
      signHostState(a, { peerId: peerIdFromPrivateKey(b).toMultihash().bytes, version: 1 }),
    )
  })

  it('drops a tampered payload as bad-signature', async () => {
    const key = await generateKeyPair('Ed25519')
    const env = pb.SignedHostState.decode(await signed(key, 7))
    const state = pb.HostState.decode(env.payload)
    state.site = 'elsewhere'
    const tampered = encodeSignedHostState(
      pb.SignedHostState.create({ payload: pb.HostState.encode(state).finish(), signature: env.signature }),
    )
    assert.deepEqual(await openHostState(tampered), { ok: false, reason: 'bad-signature' })
    // One flipped bit of the signature.
    const sig = Uint8Array.from(env.signature)
    sig[0] = (sig[0] ?? 0) ^ 1
    const flipped = encodeSignedHostState(pb.SignedHostState.create({ payload: env.payload, signature: sig }))
    assert.deepEqual(await openHostState(flipped), { ok: false, reason: 'bad-signature' })
  })

  it('drops a state signed by another key than its peer id', async () => {
    const host = await generateKeyPair('Ed25519')
    const forger = await generateKeyPair('Ed25519')
    const env = pb.SignedHostState.decode(await signed(host, 9))
    const forged = encodeSignedHostState(
      pb.SignedHostState.create({
        payload: env.payload,
        signature: await forger.sign(
          new Uint8Array([...new TextEncoder().encode(SIGNATURE_PREFIX), ...env.payload]),
        ),
      }),
    )
    assert.deepEqual(await openHostState(forged), { ok: false, reason: 'bad-signature' })
  })

  it('drops an unsigned state and a non-Ed25519 peer id as bad-signature', async () => {
    const key = await generateKeyPair('Ed25519')
    const env = pb.SignedHostState.decode(await signed(key, 9))
    const unsigned = encodeSignedHostState(pb.SignedHostState.create({ payload: env.payload }))
    assert.deepEqual(await openHostState(unsigned), { ok: false, reason: 'bad-signature' })

    // A secp256k1 id inlines its key too, but only Ed25519 hosts are accepted.
    const secp = await generateKeyPair('secp256k1')
    const payload = pb.HostState.encode({
      peerId: peerIdFromPrivateKey(secp).toMultihash().bytes,
      version: 1,
    }).finish()
    const signature = await secp.sign(
      new Uint8Array([...new TextEncoder().encode(SIGNATURE_PREFIX), ...payload]),
    )
    const other = encodeSignedHostState(pb.SignedHostState.create({ payload, signature }))
    assert.deepEqual(await openHostState(other), { ok: false, reason: 'bad-signature' })

    // A peer id that is not a key at all.
    const junkId = pb.HostState.encode({ peerId: new Uint8Array([1, 2, 3]), version: 1 }).finish()
    const junk = encodeSignedHostState(
      pb.SignedHostState.create({ payload: junkId, signature: new Uint8Array(64) }),
    )
    assert.deepEqual(await openHostState(junk), { ok: false, reason: 'bad-signature' })
  })

  it('drops truncated and garbage bytes as malformed', async () => {
    const key = await generateKeyPair('Ed25519')
    const bytes = await signed(key, 11)
    for (const cut of [1, 5, 20, bytes.length - 1]) {
      const r = await openHostState(bytes.subarray(0, cut))
      assert.equal(r.ok, false, `cut at ${cut}`)
      if (!r.ok) assert.ok(['malformed', 'bad-signature'].includes(r.reason), `cut at ${cut}: ${r.reason}`)
    }
    assert.deepEqual(await openHostState(bytes.subarray(0, bytes.length - 1)), {
      ok: false,
      reason: 'malformed',
    })
    assert.deepEqual(await openHostState(new Uint8Array([0xff, 0xff, 0xff, 0xff])), {
      ok: false,
      reason: 'malformed',
    })
    assert.deepEqual(await openHostState(new Uint8Array()), { ok: false, reason: 'malformed' })
  })

  it('drops an oversized message before decoding it', async () => {
    const key = await generateKeyPair('Ed25519')
    const bytes = await signed(key, 12)
    assert.deepEqual(await openHostState(bytes, { maxBytes: bytes.length - 1 }), {
      ok: false,
      reason: 'oversized',
    })
    assert.equal((await openHostState(bytes, { maxBytes: bytes.length })).ok, true)
    assert.deepEqual(await openHostState(new Uint8Array(2 * 1024 * 1024)), { ok: false, reason: 'oversized' })
  })

  it('drops more than 4096 VMs or 8 addrs as too-many-items, even when signed', async () => {
    const key = await generateKeyPair('Ed25519')
    const many = Array.from({ length: MAX_VMS + 1 }, (_, i) => ({ id: `v${i}`, epoch: 1 }))
    assert.deepEqual(await openHostState(await signed(key, 13, many)), {
      ok: false,
      reason: 'too-many-items',
    })
    assert.equal((await openHostState(await signed(key, 13, many.slice(0, MAX_VMS)))).ok, true)

    const payload = pb.HostState.encode({
      peerId: peerIdFromPrivateKey(key).toMultihash().bytes,
      version: 14,
      addrs: Array.from({ length: 9 }, () => new Uint8Array([4, 127, 0, 0, 1])),
    }).finish()
    const signature = await key.sign(
      new Uint8Array([...new TextEncoder().encode(SIGNATURE_PREFIX), ...payload]),
    )
    const r = await openHostState(encodeSignedHostState(pb.SignedHostState.create({ payload, signature })))
    assert.deepEqual(r, { ok: false, reason: 'too-many-items' })
  })

  it('drops a signed state listing one VM twice as malformed', async () => {
    const key = await generateKeyPair('Ed25519')
    assert.deepEqual(await openHostState(await signed(key, 15, [vm('a'), vm('a', 2)])), {
      ok: false,
      reason: 'malformed',
    })
    assert.deepEqual(await openHostState(await signed(key, 15, [vm('')])), { ok: false, reason: 'malformed' })
    // Versions and epochs past 2^53 cannot be compared exactly.
    assert.deepEqual(await openHostState(await signed(key, 2 ** 60)), { ok: false, reason: 'malformed' })
    assert.deepEqual(await openHostState(await signed(key, 16, [vm('a', 2 ** 60)])), {
      ok: false,
      reason: 'malformed',
    })
    assert.equal((await openHostState(await signed(key, Number.MAX_SAFE_INTEGER))).ok, true)
  })
})
