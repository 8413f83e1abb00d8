import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ContentStore } from '../../src/transfer/content-store.js'
import { contentHash, hashKey } from '../../src/transfer/dedup.js'
import { PAGE_SIZE } from '../../src/vm/index.js'
import { SyntheticMemory } from '../../src/vm/synthetic/memory.js'

/** Memory of `pages` pages, page i filled with byte (base + i) % 251 + 1 (all distinct, non-zero). */
function memoryWith(pages: number, base: number): SyntheticMemory {
  const m = new SyntheticMemory(pages * 2 * PAGE_SIZE)
  for (let i = 0; i < pages; i++) m.writePage(i, Buffer.alloc(PAGE_SIZE, ((base + i) % 251) + 1))
  return m
}

const keyOf = (fill: number) => hashKey(contentHash(Buffer.alloc(PAGE_SIZE, fill)))

describe('content store', () => {
  it('indexes the non-zero pages of a retained image and serves their bytes', () => {
    const store = new ContentStore(1024 * 1024)
    const m = memoryWith(10, 0)
    store.retain('vm-a', m.retain())
    m.free() // the VM is gone; the store still holds its buffer
    assert.equal(store.entries, 10)
    assert.equal(store.bytes, 10 * PAGE_SIZE)
    const hit = store.lookup(keyOf(4))
    assert.ok(hit)
    assert.deepEqual(Buffer.from(hit.image.page(hit.page)), Buffer.alloc(PAGE_SIZE, 4))
    assert.equal(store.lookup(keyOf(200)), undefined)
  })

  it('evicts the oldest image past its limit, drops an image by VM, refuses one larger than the limit', () => {
    const store = new ContentStore(20 * PAGE_SIZE)
    store.retain('vm-a', memoryWith(10, 0).retain())
    store.retain('vm-b', memoryWith(10, 100).retain())
    assert.ok(store.has('vm-a') && store.has('vm-b'))
    store.retain('vm-c', memoryWith(5, 50).retain())
    assert.equal(store.has('vm-a'), false, 'the oldest went first')
    assert.equal(store.lookup(keyOf(1)), undefined)
    assert.ok(store.lookup(keyOf(101)))
    store.drop('vm-b')
    assert.equal(store.lookup(keyOf(101)), undefined)
    assert.equal(store.bytes, 5 * PAGE_SIZE)
    store.retain('vm-huge', memoryWith(30, 0).retain())
    assert.equal(store.has('vm-huge'), false)
    assert.equal(new ContentStore(0).entries, 0)
  })
})
