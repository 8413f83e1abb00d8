import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { CostModel } from '../../src/transfer/cost.js'
import { resolveOptions } from '../../src/transfer/options.js'
import {
  decideNextRound,
  estimateEtaMs,
  fitRoundCost,
  predictedDowntimeMs,
  type RoundInput,
  sendTimeMs,
  shouldCompress,
  shouldHash,
  stalled,
} from '../../src/transfer/policy.js'
import { RateMeter, TokenBucket } from '../../src/transfer/rate.js'

const MiB = 1024 * 1024
const base: RoundInput = {
  mode: 'precopy',
  round: 1,
  remainingBytes: 64 * MiB,
  history: [256 * MiB, 64 * MiB],
  bandwidthBps: 100 * MiB,
  downtimeMs: 50,
  maxRounds: 30,
}

describe('round decision', () => {
  it('stops when the rest fits the downtime at the measured bandwidth', () => {
    assert.deepEqual(decideNextRound({ ...base, remainingBytes: 4 * MiB }), {
      action: 'stop',
      reason: 'converged',
    })
    assert.deepEqual(decideNextRound({ ...base, remainingBytes: 6 * MiB }), { action: 'round' })
    assert.deepEqual(decideNextRound({ ...base, remainingBytes: 0, bandwidthBps: 0 }), {
      action: 'stop',
      reason: 'converged',
    })
    assert.deepEqual(decideNextRound({ ...base, bandwidthBps: 0 }), { action: 'round' })
  })

  it("counts a round's fixed cost (stop-copy and handover), at most half the target", () => {
    // 4 MiB at 100 MiB/s is 40 ms: fits 50 ms alone, not with 2 x 10 ms of fixed cost
    assert.equal(predictedDowntimeMs({ ...base, remainingBytes: 4 * MiB, roundFixedMs: 10 }), 60)
    assert.deepEqual(decideNextRound({ ...base, remainingBytes: 4 * MiB, roundFixedMs: 10 }), {
      action: 'round',
    })
    assert.deepEqual(decideNextRound({ ...base, remainingBytes: 2 * MiB, roundFixedMs: 10 }), {
      action: 'stop',
      reason: 'converged',
    })
    // aiming below the target leaves a margin: 2 MiB (20 ms + 20 ms) fits 50 ms, not half of it
    assert.deepEqual(decideNextRound({ ...base, remainingBytes: 2 * MiB, roundFixedMs: 10, aim: 0.5 }), {
      action: 'round',
    })
    assert.deepEqual(decideNextRound({ ...base, remainingBytes: MiB / 2, roundFixedMs: 5, aim: 0.5 }), {
      action: 'stop',
      reason: 'converged',
    })
    // a slow round trip counts for half the target at most: a small enough rest still converges
    assert.equal(predictedDowntimeMs({ ...base, remainingBytes: 0, roundFixedMs: 500 }), 25)
  })

  it('fits round time = fixed + bytes / rate over the rounds', () => {
    const rounds = [8, 16, 32].map((m) => ({ bytes: m * MiB, ms: 20 + (m * MiB * 1000) / (100 * MiB) }))
    const fit = fitRoundCost(rounds)
    assert.ok(Math.abs(fit.fixedMs - 20) < 1e-6, String(fit.fixedMs))
    assert.ok(Math.abs(fit.bps - 100 * MiB) < 1, String(fit.bps))
    // rounds of one size: no fixed part, the plain rate
    assert.deepEqual(
      fitRoundCost([
        { bytes: MiB, ms: 10 },
        { bytes: MiB, ms: 10 },
      ]),
      { fixedMs: 0, bps: 100 * MiB },
    )
    assert.deepEqual(fitRoundCost([]), { fixedMs: 0, bps: 0 })
    // a negative intercept (noise) is no fixed cost
    assert.equal(
      fitRoundCost([
        { bytes: MiB, ms: 1 },
        { bytes: 4 * MiB, ms: 100 },
      ]).fixedMs,
      0,
    )
  })

  it('keeps going while rounds shrink', () => {
    const h = [256, 128, 64, 32].map((x) => x * MiB)
    assert.deepEqual(decideNextRound({ ...base, round: 3, history: h, remainingBytes: 32 * MiB }), {
      action: 'round',
    })
  })

  it('gives up converging when rounds stop shrinking: stop-copy in pre-copy, post-copy in auto', () => {
    const h = [256, 60, 58, 59].map((x) => x * MiB)
    assert.ok(stalled(h))
    const i = { ...base, round: 3, history: h, remainingBytes: 59 * MiB }
    assert.deepEqual(decideNextRound(i), { action: 'stop', reason: 'no-progress' })
    assert.deepEqual(decideNextRound({ ...i, mode: 'auto' }), {
      action: 'postcopy',
      reason: 'not-converging',
    })
    assert.equal(stalled([100, 95]), false, 'one round is not a trend')
  })

  it('honours the round cap', () => {
    const i = { ...base, round: 29 }
    assert.deepEqual(decideNextRound(i), { action: 'stop', reason: 'max-rounds' })
    assert.deepEqual(decideNextRound({ ...i, mode: 'auto' }), { action: 'postcopy', reason: 'max-rounds' })
    assert.deepEqual(decideNextRound({ ...base, round: 0, maxRounds: 1 }), {
      action: 'stop',
      reason: 'max-rounds',
    })
  })
})

describe('rates, compression and hashing choices', () => {
  it('compresses only when the codec beats the link', () => {
    assert.equal(shouldCompress(100 * MiB, 1000 * MiB, 0.5), true)
    assert.equal(shouldCompress(1000 * MiB, 1000 * MiB, 0.5), false)
    assert.equal(shouldCompress(10 * MiB, 120 * MiB, 1.0), false, 'incompressible data')
    assert.equal(shouldCompress(undefined, undefined, undefined), false)
    assert.equal(shouldCompress(0, 500 * MiB, 0.3), true)
    assert.equal(shouldHash(10 * MiB, 700 * MiB, 0), true)
    assert.equal(shouldHash(300 * MiB, 700 * MiB, 0), false)
    assert.equal(shouldHash(300 * MiB, 700 * MiB, 0.5), true)
  })

  it('cost model: on/off are fixed, auto probes then follows the figures', () => {
    assert.equal(new CostModel('on', 'off').compressNext(), true)
    assert.equal(new CostModel('off', 'off').compressNext(), false)
    const m = new CostModel('auto', 'auto')
    assert.equal(m.compressNext(), true, 'the first frame probes')
    m.recordCompression(MiB, MiB, 10) // incompressible at 100 MiB/s
    m.link.add(50 * MiB)
    let yes = 0
    for (let k = 0; k < 32; k++) if (m.compressNext()) yes++
    assert.equal(yes, 2, 'only the probes')
  })

  it('rate meter and token bucket', () => {
    const r = new RateMeter(1000, 0)
    r.add(MiB, 100)
    r.add(MiB, 500)
    assert.equal(Math.round(r.rate(1000) / MiB), 2)
    assert.equal(r.rate(3000), 0)
    assert.equal(r.total, 2 * MiB)
    const b = new TokenBucket(MiB, 256 * 1024)
    assert.equal(b.reserve(256 * 1024), 0)
    assert.ok(b.reserve(512 * 1024) >= 490)
  })
})

describe('ETA and options', () => {
  it('estimates pre-copy as a shrinking series plus the stop-copy', () => {
    assert.equal(sendTimeMs(100 * MiB, 100 * MiB), 1000)
    assert.equal(sendTimeMs(1, 0), Number.POSITIVE_INFINITY)
    const e = {
      phase: 'precopy',
      roundRemainingBytes: 100 * MiB,
      dirtyBps: 50 * MiB,
      bandwidthBps: 100 * MiB,
      downtimeMs: 50,
    }
    assert.equal(Math.round(estimateEtaMs(e)!), 1000 + 1000 + 50)
    assert.equal(estimateEtaMs({ ...e, phase: 'postcopy' }), 1000)
    assert.equal(estimateEtaMs({ ...e, bandwidthBps: 0 }), undefined)
    assert.equal(estimateEtaMs({ ...e, phase: 'done' }), 0)
    // a guest that dirties as fast as the link: bounded, not infinite
    assert.ok(Number.isFinite(estimateEtaMs({ ...e, dirtyBps: 200 * MiB })!))
  })

  it('resolves defaults and rejects bad options', () => {
    const o = resolveOptions({})
    assert.deepEqual(
      [o.mode, o.downtimeMs, o.maxRounds, o.streams, o.compression, o.bandwidthMiBps],
      ['precopy', 50, 30, 3, 'auto', undefined],
    )
    assert.throws(() => resolveOptions({ streams: 0 }), /streams/)
    assert.throws(() => resolveOptions({ streams: 17 }), /streams/)
    assert.throws(() => resolveOptions({ mode: 'x' as 'auto' }), /mode/)
    assert.throws(() => resolveOptions({ bandwidthMiBps: -1 }), /bandwidth/)
  })
})
