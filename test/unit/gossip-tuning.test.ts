// The derived gossip settings: gossipsub's degree bounds from one mesh degree, and the anti-entropy
// interval stretching with the mesh size as memberlist's push/pull does.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { pushPullScale } from '../../src/gossip/state/service.js'
import { meshDegrees, PUBSUB_DEFAULTS } from '../../src/node/p2p.js'

describe('gossip tuning', () => {
  it('derives Dlo, Dhi and Dout that gossipsub accepts from any mesh degree', () => {
    for (let d = 1; d <= 32; d++) {
      const { D, Dlo, Dhi, Dscore, Dout } = meshDegrees(d)
      assert.equal(D, d)
      assert.ok(Dlo >= 1 && Dlo <= D, `Dlo ${Dlo} for D ${d}`)
      assert.ok(Dhi >= D, `Dhi ${Dhi} for D ${d}`)
      assert.ok(Dscore <= D, `Dscore ${Dscore} for D ${d}`)
      // gossipsub's own checks: Dout < Dlo and Dout <= D / 2
      assert.ok(Dout >= 0 && (Dout < Dlo || Dout === 0) && Dout <= D / 2, `Dout ${Dout} for D ${d}`)
    }
    assert.deepEqual(meshDegrees(PUBSUB_DEFAULTS.meshDegree), { D: 4, Dlo: 3, Dhi: 8, Dscore: 3, Dout: 2 })
  })

  it('stretches the anti-entropy interval above 32 members, once per doubling', () => {
    assert.equal(pushPullScale(1), 1)
    assert.equal(pushPullScale(32), 1)
    assert.equal(pushPullScale(33), 2)
    assert.equal(pushPullScale(50), 2)
    assert.equal(pushPullScale(64), 2)
    assert.equal(pushPullScale(65), 3)
    assert.equal(pushPullScale(1000), 6)
  })
})
