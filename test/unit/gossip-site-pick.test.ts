// SWIM's site preference (src/gossip/swim/site-pick.ts): most probes and pushes go to our own site,
// a few cross; every member of each group is still probed once per pass of its group.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { localChance, pickSiteWeighted, SiteProbeOrder } from '../../src/gossip/swim/site-pick.js'
import { seeded, siteMembers } from './fixtures/gossip-sites.js'

const members = siteMembers(['a1', 'a2', 'a3', 'a4', 'a5', 'b0', 'b1', 'b2', 'b3', 'b4', 'b5'])

describe('SWIM site preference', () => {
  it('localChance: plain SWIM at preference 1, all local or all remote when one group is empty', () => {
    assert.equal(localChance(5, 6, 1), 5 / 11)
    assert.equal(localChance(5, 6, 8), 40 / 46)
    assert.equal(localChance(0, 6, 8), 0)
    assert.equal(localChance(5, 0, 8), 1)
  })

  it('probes mostly inside the site, and every member of each group within its pass', () => {
    const order = new SiteProbeOrder({
      random: seeded(7),
      preference: 8,
      candidates: () => members,
      selfSite: 'a',
      probeable: () => true,
    })
    const picks = Array.from({ length: 4600 }, () => order.next()!)
    const remote = picks.filter((p) => p.startsWith('b')).length / picks.length
    assert.ok(Math.abs(remote - 6 / 46) < 0.03, `remote share ${remote}`)
    // Round-robin per group: in the first 5 local picks, each local member once.
    const local = picks.filter((p) => p.startsWith('a'))
    assert.deepEqual([...new Set(local.slice(0, 5))].sort(), ['a1', 'a2', 'a3', 'a4', 'a5'])
    const far = picks.filter((p) => p.startsWith('b'))
    assert.deepEqual([...new Set(far.slice(0, 6))].sort(), ['b0', 'b1', 'b2', 'b3', 'b4', 'b5'])
  })

  it('a host alone in its site probes the others; members that died are skipped', () => {
    const dead = new Set(['b1', 'b2'])
    const order = new SiteProbeOrder({
      random: seeded(3),
      preference: 8,
      candidates: () => members.filter((m) => m.site === 'b' && !dead.has(m.peerId)),
      selfSite: 'z',
      probeable: (id) => !dead.has(id),
    })
    const picks = Array.from({ length: 8 }, () => order.next())
    assert.deepEqual([...new Set(picks.slice(0, 4))].sort(), ['b0', 'b3', 'b4', 'b5'])
  })

  it('a newcomer is probed within the current pass of its group', () => {
    const list = [...members]
    const order = new SiteProbeOrder({
      random: seeded(11),
      preference: 1000,
      candidates: () => list,
      selfSite: 'a',
      probeable: () => true,
    })
    order.next()
    list.push({ peerId: 'a9', site: 'a' })
    order.insert('a9', 'a')
    const picks = Array.from({ length: 6 }, () => order.next())
    assert.ok(picks.includes('a9'), picks.join(','))
  })

  it('push targets favour the own site, distinct, at most k', () => {
    const random = seeded(5)
    let remote = 0
    for (let i = 0; i < 1000; i++) {
      const t = pickSiteWeighted(members, 3, 'a', 8, random)
      assert.equal(new Set(t).size, 3)
      remote += t.filter((m) => m.site === 'b').length
    }
    assert.ok(remote / 3000 < 0.25, `remote share of pushes ${remote / 3000}`)
    assert.equal(pickSiteWeighted(members.slice(0, 2), 3, 'a', 8, random).length, 2)
  })
})
