// AutoNAT's verdict as GET /v1/node shows it: reachable once a public address is confirmed,
// unreachable when peers tried and failed, unknown when there is nothing public to check.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { multiaddr } from '@multiformats/multiaddr'
import { autonatVerdict, type NatAddress } from '../../src/node/nat.js'

const NOW = 1_000_000
const addr = (a: string, o: Partial<NatAddress> = {}): NatAddress => ({
  multiaddr: multiaddr(a),
  verified: false,
  expires: 0,
  type: 'transport',
  ...o,
})

describe('AutoNAT verdict', () => {
  it('is unknown with private addresses only (AutoNAT checks public ones), whatever they say', () => {
    const v = autonatVerdict(
      [
        addr('/ip4/10.1.2.10/tcp/4710', { verified: true, expires: NOW + 1000 }),
        addr('/ip4/10.1.0.1/tcp/4710/p2p/12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf/p2p-circuit'),
      ],
      NOW,
    )
    assert.equal(v.autonat, 'unknown')
    assert.match(v.reason, /public addresses only/)
    assert.deepEqual(v.confirmed, [])
  })

  it('is unknown while a public address has not been checked yet', () => {
    const v = autonatVerdict([addr('/ip4/34.90.1.7/tcp/4710')], NOW)
    assert.equal(v.autonat, 'unknown')
    assert.match(v.reason, /not checked yet/)
  })

  it('is unreachable when peers failed to dial a public address back, until that result expires', () => {
    const failed = addr('/ip4/34.90.1.7/tcp/4710', { verified: false, expires: NOW + 60_000 })
    const v = autonatVerdict([failed], NOW)
    assert.equal(v.autonat, 'unreachable')
    assert.deepEqual(v.unreachable, ['/ip4/34.90.1.7/tcp/4710'])
    assert.equal(autonatVerdict([failed], NOW + 60_001).autonat, 'unknown')
  })

  it('is reachable once one public address is confirmed; announce addresses do not count', () => {
    const v = autonatVerdict(
      [
        addr('/ip4/34.90.1.7/tcp/4710', { verified: true, expires: NOW + 60_000, type: 'observed' }),
        addr('/ip4/52.10.0.1/tcp/4710', { verified: false, expires: NOW + 60_000 }),
      ],
      NOW,
    )
    assert.equal(v.autonat, 'reachable')
    assert.deepEqual(v.confirmed, ['/ip4/34.90.1.7/tcp/4710'])
    assert.deepEqual(v.unreachable, ['/ip4/52.10.0.1/tcp/4710'])
    const announced = addr('/ip4/34.90.1.9/tcp/4710', { verified: true, expires: NOW + 1, type: 'announce' })
    assert.equal(autonatVerdict([announced], NOW).autonat, 'unknown')
  })
})
