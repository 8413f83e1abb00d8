import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { connect, createTestNode, fillVm, type TestNode } from '../../src/transfer/testing.js'

describe('pre-copy migration between two real libp2p hosts', { timeout: 120_000 }, () => {
  let a: TestNode
  let b: TestNode

  before(async () => {
    a = await createTestNode()
    b = await createTestNode()
    await connect(a, b)
  })

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()])
  })

  it('moves an idle VM: same digest, source released, epoch bumped', { timeout: 30_000 }, async () => {
    const vm = await a.createVm('idle-1')
    await fillVm(vm, 2000, 40)
    const before = (await vm.digest()).combined
    const v = a.service.migrate('idle-1', b.host.peerId, { streams: 2 })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    const moved = b.vms.get('idle-1')
    assert.ok(moved, 'the destination holds the VM')
    assert.equal(moved.epoch, 2)
    assert.equal(moved.instance.state, 'running')
    assert.equal((await moved.instance.digest()).combined, before)
    assert.equal(a.vms.has('idle-1'), false, 'the source copy is released')
    assert.equal(vm.state, 'stopped')
    assert.ok(end.pagesSent >= 2000 && end.blocksSent >= 40, JSON.stringify(end))
    assert.ok(end.downtimeMs !== undefined && end.totalMs !== undefined)
    console.log(
      'idle',
      JSON.stringify({
        total: end.totalMs,
        down: end.downtimeMs,
        bytes: end.bytesSent,
        wire: end.wireBytes,
        rounds: end.round,
        dedup: end.dedupPages,
        comp: end.compressedFrames,
      }),
    )
  })

  it('moves a busy VM: the destination copy equals the source at the pause', {
    timeout: 60_000,
  }, async () => {
    const vm = await a.createVm('busy-1', {
      memoryMiB: 64,
      workload: { dirtyMiBps: 4, hotSetMiB: 8, diskWriteMiBps: 1 },
    })
    await fillVm(vm, 4000, 80)
    await new Promise((r) => setTimeout(r, 300))
    const v = a.service.migrate('busy-1', b.host.peerId, { streams: 3 })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    const hand = a.calls.find((c) => c.hook === 'onHandover' && c.migrationId === v.id)
    const commit = b.calls.find((c) => c.hook === 'onCommit' && c.migrationId === v.id)
    assert.ok(hand?.digest && commit?.digest)
    assert.equal(commit.digest, hand.digest)
    assert.equal(b.vms.get('busy-1')?.instance.state, 'running')
    assert.equal(a.vms.has('busy-1'), false)
    console.log(
      'busy',
      JSON.stringify({
        total: end.totalMs,
        down: end.downtimeMs,
        bytes: end.bytesSent,
        wire: end.wireBytes,
        rounds: end.round,
      }),
    )
  })

  for (const [compression, streams, dedup] of [
    ['on', 1, 'on'],
    ['off', 4, 'off'],
    ['auto', 2, 'auto'],
  ] as const) {
    it(`compression ${compression}, ${streams} stream(s), dedup ${dedup}`, { timeout: 30_000 }, async () => {
      const id = `opt-${compression}-${streams}`
      const vm = await a.createVm(id, { workload: { dirtyMiBps: 2, hotSetMiB: 2 } })
      await fillVm(vm, 3000, 20, streams)
      const v = a.service.migrate(id, b.host.peerId, { compression, streams, dedup })
      const end = await a.service.done(v.id)
      assert.equal(end.phase, 'done', JSON.stringify(end.error))
      const hand = a.calls.find((c) => c.hook === 'onHandover' && c.migrationId === v.id)
      const commit = b.calls.find((c) => c.hook === 'onCommit' && c.migrationId === v.id)
      assert.equal(commit?.digest, hand?.digest)
      if (compression === 'on') assert.ok(end.compressedFrames > 0 && end.wireBytes < end.bytesSent)
      if (compression === 'off') assert.equal(end.compressedFrames, 0)
      if (dedup === 'on') assert.ok(end.dedupPages > 0, 'repeated pages went as references')
      if (dedup === 'off') assert.equal(end.dedupPages, 0)
      console.log(
        id,
        JSON.stringify({
          total: end.totalMs,
          down: end.downtimeMs,
          bytes: end.bytesSent,
          wire: end.wireBytes,
          dedup: end.dedupPages,
        }),
      )
    })
  }

  it('auto-converge throttles a guest that dirties faster than the link', {
    timeout: 90_000,
  }, async () => {
    const vm = await a.createVm('hot-ac', {
      memoryMiB: 32,
      workload: { dirtyMiBps: 24, hotSetMiB: 4, diskWriteMiBps: 0 },
    })
    await fillVm(vm, 2000, 4)
    await new Promise((r) => setTimeout(r, 200))
    const v = a.service.migrate('hot-ac', b.host.peerId, {
      bandwidthMiBps: 8,
      downtimeMs: 100,
      compression: 'off',
    })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.ok((end.throttle ?? 0) >= 0.5, `the guest was throttled: ${JSON.stringify(end)}`)
    const hand = a.calls.find((c) => c.hook === 'onHandover' && c.migrationId === v.id)
    const commit = b.calls.find((c) => c.hook === 'onCommit' && c.migrationId === v.id)
    assert.equal(commit?.digest, hand?.digest)
    console.log(
      'auto-converge',
      JSON.stringify({ down: end.downtimeMs, rounds: end.round, throttle: end.throttle }),
    )
  })

  it('without auto-converge the same guest is never throttled', { timeout: 90_000 }, async () => {
    const vm = await a.createVm('hot-noac', {
      memoryMiB: 32,
      workload: { dirtyMiBps: 24, hotSetMiB: 4, diskWriteMiBps: 0 },
    })
    await fillVm(vm, 2000, 4)
    const v = a.service.migrate('hot-noac', b.host.peerId, {
      bandwidthMiBps: 8,
      downtimeMs: 100,
      compression: 'off',
      autoConverge: false,
    })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.equal(end.throttle, undefined)
    assert.ok(end.round >= 2, 'it stopped for lack of progress after a few rounds')
  })

  it('a VM that comes back sends references to the copy it left (A -> B -> A)', {
    timeout: 60_000,
  }, async () => {
    const vm = await a.createVm('round-trip', { workload: { dirtyMiBps: 1, hotSetMiB: 1 } })
    await fillVm(vm, 3000, 10)
    const out = await a.service.done(
      a.service.migrate('round-trip', b.host.peerId, { compression: 'off' }).id,
    )
    assert.equal(out.phase, 'done', JSON.stringify(out.error))
    assert.equal(out.storePages, 0, 'b held nothing of it')
    assert.ok(
      a.service.store.has('round-trip') && a.service.store.entries > 1000,
      'a keeps the copy that left',
    )
    const back = await b.service.done(
      b.service.migrate('round-trip', a.host.peerId, { compression: 'off' }).id,
    )
    assert.equal(back.phase, 'done', JSON.stringify(back.error))
    const hand = b.calls.find((c) => c.hook === 'onHandover' && c.migrationId === back.id)
    const commit = a.calls.find((c) => c.hook === 'onCommit' && c.migrationId === back.id)
    assert.equal(commit?.digest, hand?.digest, 'the copy built from references checks')
    assert.ok((back.storePages ?? 0) > 2000, `pages sent as references: ${back.storePages}`)
    assert.ok(back.bytesSent < out.bytesSent / 2, `${back.bytesSent} bytes back vs ${out.bytesSent} out`)
    assert.equal(a.service.store.has('round-trip'), false, 'the kept copy is dropped once the VM runs here')
    console.log(
      'round-trip',
      JSON.stringify({ out: out.bytesSent, back: back.bytesSent, refs: back.storePages }),
    )
  })
})
