import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { connect, createTestNode, fillVm, type TestNode } from '../../src/transfer/testing.js'

describe('post-copy and auto migration', { timeout: 120_000 }, () => {
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

  it('post-copy moves an idle VM: every page once, same digest', { timeout: 30_000 }, async () => {
    const vm = await a.createVm('pc-idle')
    await fillVm(vm, 3000, 30)
    const digest = (await vm.digest()).combined
    const nonZero = countNonZero(vm)
    const v = a.service.migrate('pc-idle', b.host.peerId, { mode: 'postcopy' })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.equal(end.postcopy, true)
    assert.equal(end.pagesSent, nonZero, 'each non-zero page sent exactly once')
    const moved = b.vms.get('pc-idle')!
    assert.equal((await moved.instance.digest()).combined, digest)
    assert.equal(a.vms.has('pc-idle'), false)
    console.log(
      'postcopy idle',
      JSON.stringify({ total: end.totalMs, down: end.downtimeMs, pages: end.pagesSent }),
    )
  })

  it('post-copy moves a busy VM: the destination runs at once, faults are served, the image checks', {
    timeout: 30_000,
  }, async () => {
    const vm = await a.createVm('pc-busy', {
      memoryMiB: 64,
      workload: { dirtyMiBps: 8, hotSetMiB: 8, diskWriteMiBps: 1 },
    })
    await fillVm(vm, 6000, 40)
    await new Promise((r) => setTimeout(r, 200))
    // Slow push so that the guest at the destination touches pages before they arrive
    const v = a.service.migrate('pc-busy', b.host.peerId, {
      mode: 'postcopy',
      bandwidthMiBps: 40,
      streams: 2,
    })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    const inView = b.service.get(v.id)!
    assert.equal(inView.phase, 'done', JSON.stringify(inView.error))
    assert.equal(b.vms.get('pc-busy')?.instance.state, 'running')
    assert.equal(a.vms.has('pc-busy'), false)
    console.log(
      'postcopy busy',
      JSON.stringify({
        total: end.totalMs,
        down: end.downtimeMs,
        pages: end.pagesSent,
        faults: inView.faultPages,
      }),
    )
  })

  it('auto switches to post-copy when rounds stop shrinking', { timeout: 40_000 }, async () => {
    const vm = await a.createVm('auto-busy', { memoryMiB: 64, workload: { dirtyMiBps: 24, hotSetMiB: 24 } })
    await fillVm(vm, 4000, 10)
    await new Promise((r) => setTimeout(r, 200))
    // A link slower than the guest dirties memory: pre-copy cannot converge
    const v = a.service.migrate('auto-busy', b.host.peerId, {
      mode: 'auto',
      bandwidthMiBps: 16,
      downtimeMs: 5,
    })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.equal(end.postcopy, true)
    assert.ok(end.round >= 2, `rounds ${end.round}`)
    assert.equal(b.service.get(v.id)?.phase, 'done')
    console.log(
      'auto',
      JSON.stringify({ total: end.totalMs, down: end.downtimeMs, rounds: end.round, bytes: end.bytesSent }),
    )
  })

  it('auto on an idle VM stays pre-copy', { timeout: 30_000 }, async () => {
    const vm = await a.createVm('auto-idle')
    await fillVm(vm, 1000, 10)
    const digest = (await vm.digest()).combined
    const v = a.service.migrate('auto-idle', b.host.peerId, { mode: 'auto' })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.equal(end.postcopy, false)
    assert.equal((await b.vms.get('auto-idle')!.instance.digest()).combined, digest)
  })
})

function countNonZero(vm: { memory: { pageCount: number; isZeroPage(i: number): boolean } }): number {
  let n = 0
  for (let i = 0; i < vm.memory.pageCount; i++) if (!vm.memory.isZeroPage(i)) n++
  return n
}
