// The hole-punch offer with one port per parallel punched connection (src/transfer/punch.ts).
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  decodeOffer,
  encodeOffer,
  MAX_PUNCH_STREAMS,
  newPunchSecret,
  PunchError,
  punchAll,
  punchPorts,
  withPorts,
} from '../../src/transfer/index.js'

describe('punch offers with several ports', () => {
  it('round-trips the ports in order, the first as port', () => {
    const s = newPunchSecret()
    const invite = decodeOffer(encodeOffer({ ...s, ...withPorts('203.0.113.7', [4001, 4002, 4003]) }), true)
    assert.equal(invite.port, 4001)
    assert.deepEqual(punchPorts(invite), [4001, 4002, 4003])
    assert.deepEqual(Buffer.from(invite.key), s.key)
    const answer = decodeOffer(
      encodeOffer({ attemptId: s.attemptId, ...withPorts('198.51.100.2', [5000]) }),
      false,
    )
    assert.deepEqual(punchPorts(answer), [5000])
    assert.equal(answer.morePorts, undefined)
  })

  it('refuses too many, repeated or bad ports', () => {
    const s = newPunchSecret()
    const ports = Array.from({ length: MAX_PUNCH_STREAMS + 1 }, (_, k) => 4000 + k)
    assert.throws(
      () => decodeOffer(encodeOffer({ ...s, ...withPorts('203.0.113.7', ports) }), true),
      /more than/,
    )
    assert.throws(
      () => decodeOffer(encodeOffer({ ...s, ...withPorts('203.0.113.7', [4001, 4001]) }), true),
      /repeated/,
    )
    assert.throws(
      () => decodeOffer(encodeOffer({ ...s, ...withPorts('203.0.113.7', [4001, 0]) }), true),
      /bad punch port/,
    )
  })

  it('a peer answering with another number of ports is a PunchError, before any connect', async () => {
    const s = newPunchSecret()
    await assert.rejects(
      punchAll({
        role: 'initiator',
        localPorts: [4001, 4002],
        remote: withPorts('127.0.0.1', [5001]),
        key: s.key,
        identity: s.identity,
        timeoutMs: 1000,
      }),
      (err: Error) => err instanceof PunchError && /punches 1 connection/.test(err.message),
    )
  })
})
