// Propagation trees: one inter-site crossing per site, k-ary inside a site, re-parenting around a failure.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ancestors, buildTree, reparent } from '../../src/images/index.js'

const hosts = (site: string, n: number) => Array.from({ length: n }, (_, i) => ({ id: `${site}-${i}`, site }))

describe('buildTree', () => {
  it('fanout 1 is a chain, parents before children', () => {
    const t = buildTree({ id: 'root', site: 'a' }, hosts('a', 4), 1)
    assert.deepEqual(t.order, ['a-0', 'a-1', 'a-2', 'a-3'])
    assert.equal(t.parent.get('a-0'), 'root')
    assert.equal(t.parent.get('a-3'), 'a-2')
    assert.deepEqual(ancestors(t, 'a-3'), ['a-2', 'a-1', 'a-0', 'root'])
  })

  it('a k-ary tree gives no host more than k children inside a site', () => {
    const t = buildTree({ id: 'root', site: 'a' }, hosts('a', 10), 3)
    for (const [, c] of t.children) assert.ok(c.length <= 3)
    assert.equal(t.order.length, 10)
    assert.equal(new Set(t.order).size, 10)
  })

  it('a chunk crosses each inter-site link once: only one host per remote site has a parent in another site', () => {
    const targets = [...hosts('a', 3), ...hosts('b', 4), ...hosts('c', 2)]
    const site = new Map([['root', 'a'], ...targets.map((h) => [h.id, h.site] as [string, string])])
    const t = buildTree({ id: 'root', site: 'a' }, targets, 2)
    const crossings = new Map<string, number>()
    for (const [child, parent] of t.parent) {
      if (site.get(child) !== site.get(parent))
        crossings.set(site.get(child)!, (crossings.get(site.get(child)!) ?? 0) + 1)
    }
    assert.deepEqual(Object.fromEntries(crossings), { b: 1, c: 1 })
    assert.equal(t.order.length, targets.length)
  })

  it('ignores the root and duplicates among the targets; refuses a fanout below 1', () => {
    const t = buildTree(
      { id: 'root', site: 'a' },
      [{ id: 'root', site: 'a' }, ...hosts('a', 2), ...hosts('a', 2)],
      2,
    )
    assert.deepEqual(t.order, ['a-0', 'a-1'])
    assert.throws(() => buildTree({ id: 'root', site: 'a' }, hosts('a', 2), 0), RangeError)
  })
})

describe('reparent', () => {
  it('routes around a failed host: its children pull from its parent; the rest is unchanged', () => {
    const t = buildTree({ id: 'root', site: 'a' }, hosts('a', 4), 1)
    const r = reparent(t, 'a-1')
    assert.equal(r.parent.has('a-1'), false)
    assert.equal(r.parent.get('a-2'), 'a-0')
    assert.equal(r.parent.get('a-3'), 'a-2')
    assert.deepEqual(r.order, ['a-0', 'a-2', 'a-3'])
    assert.deepEqual(ancestors(r, 'a-3'), ['a-2', 'a-0', 'root'])
    // the original is not changed
    assert.equal(t.parent.get('a-2'), 'a-1')
    assert.throws(() => reparent(t, 'root'), RangeError)
  })

  it('a failed site gateway hands its site to the root', () => {
    const t = buildTree({ id: 'root', site: 'a' }, hosts('b', 3), 2)
    const r = reparent(t, 'b-0')
    assert.equal(r.parent.get('b-1'), 'root')
    assert.equal(r.parent.get('b-2'), 'root')
  })
})
