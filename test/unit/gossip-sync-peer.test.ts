// Periodic anti-entropy picks its peer with SWIM's site preference (src/gossip/state/sync-peer.ts).
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { pickSyncPeer } from '../../src/gossip/state/sync-peer.js'
import { seeded, siteOfId } from './fixtures/gossip-sites.js'

// Peers as connected ids; 'n0' has no known site yet (not a SWIM member): it counts as remote.
const peers = ['a1', 'a2', 'a3', 'a4', 'b0', 'b1', 'b2', 'b3', 'b4', 'n0']

function share(picks: string[], pred: (id: string) => boolean): number {
  return picks.filter(pred).length / picks.length
}

function run(n: number, self: string, preference: number): string[] {
  const random = seeded(9)
  return Array.from(
    { length: n },
    () => pickSyncPeer(peers, { self, of: siteOfId, preference }, random) as string,
  )
}

describe('anti-entropy peer choice', () => {
  it('favours the own site by the preference: 4 local vs 6 remote at 8 -> 32:6', () => {
    const picks = run(6000, 'a', 8)
    const remote = share(picks, (id) => !id.startsWith('a'))
    assert.ok(Math.abs(remote - 6 / 38) < 0.02, `remote share ${remote}`)
    // Every peer is still picked now and then, the unknown-site one included.
    assert.deepEqual([...new Set(picks)].sort(), [...peers].sort())
  })

  it('preference 1 is a uniform pick', () => {
    const picks = run(6000, 'a', 1)
    for (const id of peers) {
      const s = share(picks, (p) => p === id)
      assert.ok(Math.abs(s - 0.1) < 0.02, `${id}: ${s}`)
    }
  })

  it('a host alone in its site syncs across; no peers, no pick', () => {
    const picks = run(200, 'z', 8)
    assert.ok(picks.every((id) => peers.includes(id)))
    assert.ok(new Set(picks).size >= 8)
    assert.equal(pickSyncPeer([], { self: 'a', of: siteOfId, preference: 8 }, Math.random), undefined)
  })

  it('without site information it picks uniformly', () => {
    const random = seeded(4)
    const picks = Array.from({ length: 5000 }, () => pickSyncPeer(peers, undefined, random) as string)
    assert.ok(Math.abs(share(picks, (id) => id.startsWith('b')) - 0.5) < 0.03)
  })
})
