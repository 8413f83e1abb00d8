import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Bitmap } from '../../src/vm/index.js'

describe('Bitmap', () => {
  it('sets, gets and counts bits, each bit once', () => {
    const b = new Bitmap(100)
    assert.equal(b.count(), 0)
    b.set(3)
    b.set(3)
    b.set(64)
    assert.equal(b.count(), 2)
    assert.equal(b.get(3), true)
    assert.equal(b.get(4), false)
    assert.equal(b.get(64), true)
    b.clear(3)
    b.clear(3)
    assert.equal(b.count(), 1)
    assert.equal(b.get(3), false)
  })

  it('lists indices ascending across word boundaries', () => {
    const want = [0, 1, 31, 32, 33, 63, 64, 95, 96, 129]
    const b = Bitmap.fromIndices(130, [...want].reverse())
    assert.deepEqual([...b.indices()], want)
    assert.equal(b.count(), want.length)
  })

  it('matches a Set under random use', () => {
    const size = 5000
    const b = new Bitmap(size)
    const s = new Set<number>()
    let x = 12345
    for (let k = 0; k < 20000; k++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0
      const i = x % size
      if (x & 0x10000) {
        b.set(i)
        s.add(i)
      } else {
        b.clear(i)
        s.delete(i)
      }
    }
    assert.equal(b.count(), s.size)
    assert.deepEqual(
      [...b.indices()],
      [...s].sort((p, q) => p - q),
    )
  })

  it('throws RangeError on an index outside the bitmap', () => {
    const b = new Bitmap(10)
    assert.throws(() => b.set(10), RangeError)
    assert.throws(() => b.get(-1), RangeError)
    assert.throws(() => b.set(1.5), RangeError)
    assert.throws(() => new Bitmap(-1), RangeError)
  })

  it('round-trips through bytes in a byte-order independent layout', () => {
    const b = Bitmap.fromIndices(77, [0, 9, 31, 32, 76])
    const bytes = b.toBytes()
    assert.equal(bytes.length, 10)
    assert.equal(bytes[0], 0b1)
    assert.equal(bytes[1], 0b10) // bit 9
    assert.equal(bytes[3], 0x80) // bit 31
    assert.equal(bytes[4], 0b1) // bit 32
    assert.equal(bytes[9], 0b10000) // bit 76
    const c = Bitmap.fromBytes(bytes, 77)
    assert.deepEqual([...c.indices()], [0, 9, 31, 32, 76])
    assert.equal(c.count(), 5)
  })

  it('refuses bytes of the wrong length or with bits past the size', () => {
    assert.throws(() => Bitmap.fromBytes(new Uint8Array(3), 40), RangeError)
    assert.throws(() => Bitmap.fromBytes(Uint8Array.of(0, 0x80), 12), RangeError)
  })

  it('fills exactly size bits, ors and clones independently', () => {
    const b = new Bitmap(70)
    b.fill()
    assert.equal(b.count(), 70)
    assert.equal([...b.indices()].at(-1), 69)
    b.clearAll()
    assert.equal(b.count(), 0)
    const a = Bitmap.fromIndices(70, [1, 2])
    const c = a.clone()
    c.set(50)
    assert.equal(a.get(50), false)
    a.or(Bitmap.fromIndices(70, [2, 40]))
    assert.deepEqual([...a.indices()], [1, 2, 40])
    assert.equal(a.count(), 3)
    assert.throws(() => a.or(new Bitmap(71)), RangeError)
  })

  it('handles an empty bitmap', () => {
    const b = new Bitmap(0)
    assert.equal(b.count(), 0)
    assert.deepEqual([...b.indices()], [])
    assert.equal(b.toBytes().length, 0)
    assert.equal(Bitmap.fromBytes(new Uint8Array(0), 0).size, 0)
  })
})
