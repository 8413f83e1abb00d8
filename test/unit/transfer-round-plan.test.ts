import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  DirtyRateTrigger,
  REGION_PAGES,
  roundOrder,
  throttleFor,
  WRITE_LINK_TARGET,
  writeRateBps,
} from '../../src/transfer/round-plan.js'
import { Bitmap } from '../../src/vm/index.js'

const range = (a: number, b: number) => Array.from({ length: b - a }, (_, k) => a + k)

describe('pre-copy round order', () => {
  it('keeps the given order without a dirty probe (the guest is paused)', () => {
    const pages = [0, 5, 600, 1100, 1101]
    assert.deepEqual([...roundOrder(pages, undefined, 2048)], pages)
  })

  it('sends regions holding a dirty page last, every page once', () => {
    const pages = range(0, 4 * REGION_PAGES)
    // Region 1 holds a dirty page that is not even in this stream's share
    const dirty = new Set([REGION_PAGES + 7])
    const share = pages.filter((p) => p !== REGION_PAGES + 7)
    const order = [...roundOrder(share, (i) => dirty.has(i), 4 * REGION_PAGES)]
    assert.deepEqual(order, [
      ...range(0, REGION_PAGES),
      ...range(2 * REGION_PAGES, 4 * REGION_PAGES),
      ...range(REGION_PAGES, 2 * REGION_PAGES).filter((p) => p !== REGION_PAGES + 7),
    ])
  })

  it('judges each region when its turn comes (the dirty log grows during the round)', () => {
    const pages = range(0, 3 * REGION_PAGES)
    const dirty = new Set<number>()
    const order: number[] = []
    for (const p of roundOrder(pages, (i) => dirty.has(i), 3 * REGION_PAGES)) {
      order.push(p)
      // While region 0 is sent, the guest writes into region 2 (not yet reached) and region 0 (passed)
      if (p === 10) dirty.add(2 * REGION_PAGES + 3).add(4)
    }
    assert.equal(order.length, pages.length)
    assert.deepEqual(order.slice(0, 2 * REGION_PAGES), range(0, 2 * REGION_PAGES))
    assert.deepEqual(order.slice(2 * REGION_PAGES), range(2 * REGION_PAGES, 3 * REGION_PAGES))
    // Region 2 went last even though it came last anyway; a region judged clean stays in place
    const early = [...roundOrder(range(0, 2 * REGION_PAGES), (i) => i === 0, 2 * REGION_PAGES)]
    assert.deepEqual(early, [...range(REGION_PAGES, 2 * REGION_PAGES), ...range(0, REGION_PAGES)])
  })

  it('bounds the last region by the page count', () => {
    const probed: number[] = []
    const probe = (i: number) => {
      probed.push(i)
      return false
    }
    const order = [...roundOrder([REGION_PAGES + 1], probe, REGION_PAGES + 2)]
    assert.deepEqual(order, [REGION_PAGES + 1])
    assert.deepEqual(probed, [REGION_PAGES, REGION_PAGES + 1])
  })
})

/**
 * The source's round loop in small (as source.ts runs it): each round walks `roundOrder`, skips a page
 * dirtied again since the round's set was taken, and the stop-copy sends what the last round left plus
 * what is dirty at the pause. The guest writes while rounds run.
 */
function migrate(opts: { pages: number; rounds: number; writesPerPage: number; seed: number }) {
  const { pages: n } = opts
  const src = new Uint32Array(n)
  const dst = new Uint32Array(n)
  let dirty = new Bitmap(n)
  let version = 0
  let s = opts.seed
  const rand = () => {
    s = (s * 1103515245 + 12345) & 0x7fffffff
    return s
  }
  // A hot set in the middle of memory, so the deferral really reorders
  const hotStart = Math.floor(n / 3)
  const hot = Math.floor(n / 4)
  const write = (p: number) => {
    src[p] = ++version
    dirty.set(p)
  }
  for (let p = 0; p < n; p++) src[p] = ++version
  const sentIn: number[][] = []
  let set: number[] = range(0, n)
  const skipped = new Set<number>()
  for (let round = 0; round < opts.rounds; round++) {
    const sent: number[] = []
    for (const p of roundOrder(set, (i) => dirty.get(i), n)) {
      if (rand() % opts.writesPerPage === 0) write(hotStart + (rand() % hot))
      if (dirty.get(p)) {
        skipped.add(p)
        continue
      }
      dst[p] = src[p]!
      sent.push(p)
    }
    sentIn.push(sent)
    const taken = dirty
    dirty = new Bitmap(n)
    set = [...taken.indices()]
  }
  // Pause: the guest stops; a last write lands between the last round's take and the pause
  write(hotStart)
  const final = new Bitmap(n)
  for (const p of set) final.set(p)
  for (const p of dirty.indices()) final.set(p)
  for (const p of roundOrder([...final.indices()], undefined, n)) dst[p] = src[p]!
  return { src, dst, sentIn, skipped, final }
}

describe('pre-copy rounds with the round order', () => {
  for (const seed of [1, 7, 42]) {
    it(`the destination ends equal to the source (seed ${seed})`, () => {
      const r = migrate({ pages: 6 * REGION_PAGES, rounds: 4, writesPerPage: 3, seed })
      assert.deepEqual(r.dst, r.src)
      assert.ok(r.skipped.size > 0, 'some page was skipped as dirtied during its round')
      // Round 0 sent the hot set's region last: fewer of its pages crossed twice
      assert.ok(r.sentIn[0]!.length < 6 * REGION_PAGES)
      assert.ok(r.final.get(Math.floor((6 * REGION_PAGES) / 3)), 'a page written at the pause is sent')
    })
  }

  it('a page written during its round and skipped goes in the final round', () => {
    const n = 2 * REGION_PAGES
    const src = new Uint32Array(n).fill(1)
    const dst = new Uint32Array(n)
    const dirty = new Bitmap(n)
    const target = REGION_PAGES + 5
    for (const p of roundOrder(range(0, n), (i) => dirty.get(i), n)) {
      if (p === 3) {
        src[target] = 2
        dirty.set(target)
      }
      if (dirty.get(p)) continue
      dst[p] = src[p]!
    }
    assert.equal(dst[target], 0, 'skipped in the round')
    // The stop-copy sends every still-dirty page
    for (const p of roundOrder([...dirty.indices()], undefined, n)) dst[p] = src[p]!
    assert.deepEqual(dst, src)
  })
})

describe('dirty-rate trigger of auto-converge', () => {
  it('fires after two rounds in a row where the guest dirtied half of what was sent', () => {
    const t = new DirtyRateTrigger()
    assert.equal(t.record(256, 16), false, 'round 0 of a big VM: little dirtied')
    assert.equal(t.record(64, 40), false, 'one dirty-bound round is not enough')
    assert.equal(t.record(40, 35), true)
    t.reset()
    assert.equal(t.record(35, 20), false, 'counted afresh after a slow-down')
    assert.equal(t.record(20, 5), false)
    assert.equal(t.record(5, 4), false, 'a calm round in between starts the count over')
  })

  it('counts a round that sent nothing while the guest dirtied (all skipped as re-dirtied)', () => {
    const t = new DirtyRateTrigger()
    t.record(0, 10)
    assert.equal(t.record(0, 10), true)
  })

  it('never fires for an idle guest', () => {
    const t = new DirtyRateTrigger()
    for (let k = 0; k < 5; k++) assert.equal(t.record(k === 0 ? 100 : 0, 0), false)
  })
})

describe('write-rate estimate of auto-converge', () => {
  const MiB = 1024 * 1024

  it('recovers the rate of random writes over a hot set from a saturated dirty count', () => {
    // 100 MiB/s at random over 64 MiB for 1 s: 64·(1 - e^(-100/64)) MiB distinct
    const hot = 64 * MiB
    const dirty = hot * (1 - Math.exp(-100 / 64))
    const w = writeRateBps(dirty, 1000, hot)
    assert.ok(Math.abs(w / MiB - 100) < 0.5, `estimate ${w / MiB}`)
    // The plain distinct rate (unknown hot set) is only a lower bound
    assert.ok(writeRateBps(dirty, 1000, 0) < 0.8 * w)
  })

  it('reads a short count against a large hot set as about the plain rate', () => {
    const w = writeRateBps(10 * MiB, 100, 1024 * MiB)
    assert.ok(w / MiB > 100 && w / MiB < 101, `estimate ${w / MiB}`)
  })

  it('is bounded when everything is dirty, and 0 without data', () => {
    const w = writeRateBps(64 * MiB, 1000, 64 * MiB)
    assert.ok(Number.isFinite(w) && w / MiB < 64 * 3, `estimate ${w / MiB}`)
    assert.equal(writeRateBps(0, 1000, 64 * MiB), 0)
    assert.equal(writeRateBps(MiB, 0, 64 * MiB), 0)
  })
})

describe('predictive throttle of auto-converge', () => {
  const steps = [0.5, 0.75, 0.9, 0.97, 0.99]

  it('picks the smallest step that brings the guest under the target share of the link', () => {
    // 100 MiB/s of writes on a 67 MiB/s link: 0.9 leaves 10 MiB/s (0.15 of the link), 0.75 leaves 25 (0.37)
    assert.equal(throttleFor({ writeBps: 100, bandwidthBps: 67, throttle: 0, steps }), 0.9)
    // On a 200 MiB/s link, 0.75 leaves 25 MiB/s = 0.125 of it; 0.5 leaves 50 = 0.25: enough
    assert.equal(throttleFor({ writeBps: 100, bandwidthBps: 200, throttle: 0, steps }), 0.5)
  })

  it('leaves a guest that writes little of the link alone', () => {
    assert.equal(throttleFor({ writeBps: 10, bandwidthBps: 120, throttle: 0, steps }), 0)
    assert.equal(throttleFor({ writeBps: WRITE_LINK_TARGET * 100, bandwidthBps: 100, throttle: 0, steps }), 0)
  })

  it('judges the rate measured under a throttle as the slowed guest, and never lowers it', () => {
    // 25 MiB/s measured at 0.75: the guest would write 100; on a 50 MiB/s link it needs 0.9
    assert.equal(throttleFor({ writeBps: 25, bandwidthBps: 50, throttle: 0.75, steps }), 0.9)
    // 5 MiB/s at 0.9 on a 100 MiB/s link: fine as it is (not lowered to 0.5)
    assert.equal(throttleFor({ writeBps: 5, bandwidthBps: 100, throttle: 0.9, steps }), 0.9)
  })

  it('goes to the highest step when none is enough, and does nothing without a link rate', () => {
    assert.equal(throttleFor({ writeBps: 1000, bandwidthBps: 1, throttle: 0, steps }), 0.99)
    assert.equal(throttleFor({ writeBps: 100, bandwidthBps: 0, throttle: 0.5, steps }), 0.5)
  })
})
