import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import { lpStream } from '@libp2p/utils'
import { pb } from '../../src/proto/index.js'
import { CONTROL_PROTOCOL, DATA_PROTOCOL, MigrationRefusedError } from '../../src/transfer/index.js'
import { connect, createTestNode, fillVm, type TestNode } from '../../src/transfer/testing.js'

const timeouts = { stepTimeoutMs: 5000, stallTimeoutMs: 5000, statusTimeoutMs: 5000, dialTimeoutMs: 3000 }

/** The VM runs at `a` (its digest moves as its workload writes) and is held by no other node. */
async function assertRunsOnlyAt(a: TestNode, vmId: string, others: TestNode[]): Promise<void> {
  const vm = a.vms.get(vmId)
  assert.ok(vm, 'still registered at the source')
  assert.equal(vm.instance.state, 'running')
  const d1 = (await vm.instance.digest()).combined
  await delay(200)
  const d2 = (await vm.instance.digest()).combined
  assert.notEqual(d1, d2, 'its workload still runs')
  for (const o of others) assert.equal(o.vms.has(vmId), false, 'no other copy')
}

describe('migration failures leave the VM running at the source', { timeout: 180_000 }, () => {
  const nodes: TestNode[] = []
  let a: TestNode
  let b: TestNode
  let c: TestNode

  before(async () => {
    a = await createTestNode({ timeouts })
    b = await createTestNode({ timeouts, maxIncoming: 1 })
    c = await createTestNode({ timeouts })
    nodes.push(a, b, c)
    await connect(a, b)
    await connect(a, c)
  })

  after(async () => {
    await Promise.all(nodes.map((n) => n.stop()))
  })

  const busy = { memoryMiB: 32, workload: { dirtyMiBps: 2, hotSetMiB: 4, diskWriteMiBps: 0.5 } }

  it('refuses an unknown VM and a migration of a VM already moving', { timeout: 20_000 }, async () => {
    assert.throws(
      () => a.service.migrate('nope', b.host.peerId),
      (e: unknown) => e instanceof MigrationRefusedError && e.code === 'UNKNOWN_VM',
    )
    const vm = await a.createVm('dup-1', busy)
    await fillVm(vm, 2000, 10)
    const v = a.service.migrate('dup-1', c.host.peerId, { bandwidthMiBps: 8 })
    assert.throws(
      () => a.service.migrate('dup-1', b.host.peerId),
      (e: unknown) => e instanceof MigrationRefusedError && e.code === 'ALREADY_MIGRATING',
    )
    a.service.cancel(v.id)
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'cancelled')
    await assertRunsOnlyAt(a, 'dup-1', [b, c])
  })

  it('reports the destination refusing for capacity and for being busy', { timeout: 30_000 }, async () => {
    await a.createVm('cap-1', busy)
    b.overrides.reserve = async () => ({ ok: false, code: 'NO_CAPACITY', message: 'full' })
    try {
      const end = await a.service.done(a.service.migrate('cap-1', b.host.peerId).id)
      assert.equal(end.phase, 'failed')
      assert.equal(end.error?.code, 'NO_CAPACITY')
    } finally {
      delete b.overrides.reserve
    }
    await assertRunsOnlyAt(a, 'cap-1', [b, c])
    // b takes one incoming migration at a time
    const slow = await a.createVm('busy-a', busy)
    await fillVm(slow, 3000, 10)
    const first = a.service.migrate('busy-a', b.host.peerId, { bandwidthMiBps: 8 })
    await delay(300)
    const second = await a.service.done(a.service.migrate('cap-1', b.host.peerId).id)
    assert.equal(second.error?.code, 'BUSY')
    a.service.cancel(first.id)
    await a.service.done(first.id)
    await assertRunsOnlyAt(a, 'busy-a', [b, c])
    await assertRunsOnlyAt(a, 'cap-1', [b, c])
  })

  it('refuses a VM the destination already holds', { timeout: 20_000 }, async () => {
    await a.createVm('twin', busy)
    await c.createVm('twin', busy)
    const end = await a.service.done(a.service.migrate('twin', c.host.peerId).id)
    assert.equal(end.error?.code, 'VM_EXISTS')
    assert.equal(a.vms.get('twin')?.instance.state, 'running')
  })

  it('a VM the destination cannot make after accepting aborts: nothing left there, a retry succeeds', {
    timeout: 30_000,
  }, async () => {
    const vm = await a.createVm('prep-1', busy)
    await fillVm(vm, 2000, 10)
    const driver = c.driver as { prepareIncoming: typeof c.driver.prepareIncoming }
    const prepare = driver.prepareIncoming.bind(c.driver)
    // The offer is accepted while the VM is made: this failure comes after the accept went out
    let made = 0
    driver.prepareIncoming = async () => {
      made++
      await delay(300)
      throw new Error('no room for its memory')
    }
    let failed: Awaited<ReturnType<typeof a.service.done>>
    try {
      failed = await a.service.done(a.service.migrate('prep-1', c.host.peerId).id)
    } finally {
      driver.prepareIncoming = prepare
    }
    assert.equal(made, 1)
    assert.equal(failed.phase, 'failed')
    const inEnd = await waitFor(
      () => c.service.get(failed.id),
      (x) => x?.phase === 'failed',
    )
    assert.equal(inEnd?.error?.code, 'NO_CAPACITY', JSON.stringify(inEnd?.error))
    assert.match(inEnd?.error?.message ?? '', /no room for its memory/)
    await assertRunsOnlyAt(a, 'prep-1', [b, c])
    // A VM made late, after the source gave up, is discarded once it exists
    driver.prepareIncoming = async (spec, opts) => {
      await delay(600)
      return prepare(spec, opts)
    }
    let cancelled: Awaited<ReturnType<typeof a.service.done>>
    try {
      const v = a.service.migrate('prep-1', c.host.peerId)
      await delay(150)
      a.service.cancel(v.id)
      cancelled = await a.service.done(v.id)
      await waitFor(
        () => c.service.get(v.id),
        (x) => x?.phase === 'cancelled' || x?.phase === 'failed',
      )
    } finally {
      driver.prepareIncoming = prepare
    }
    assert.equal(cancelled.phase, 'cancelled')
    await assert.rejects(stat(join(c.dir, 'prep-1')), { code: 'ENOENT' }, 'the late VM was destroyed')
    await assertRunsOnlyAt(a, 'prep-1', [b, c])
    const retry = await a.service.done(a.service.migrate('prep-1', c.host.peerId).id)
    assert.equal(retry.phase, 'done', JSON.stringify(retry.error))
    assert.ok(c.vms.has('prep-1'))
  })

  it('cancel rolls back: running at the source, discarded at the destination', {
    timeout: 20_000,
  }, async () => {
    const vm = await a.createVm('cancel-1', busy)
    await fillVm(vm, 4000, 10)
    const v = a.service.migrate('cancel-1', c.host.peerId, { bandwidthMiBps: 8 })
    await delay(400)
    a.service.cancel(v.id)
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'cancelled')
    assert.equal(end.error?.code, 'CANCELLED')
    const inEnd = await waitFor(
      () => c.service.get(v.id),
      (x) => x?.phase === 'failed' || x?.phase === 'cancelled',
    )
    assert.ok(inEnd)
    await assertRunsOnlyAt(a, 'cancel-1', [b, c])
    assert.equal(a.calls.filter((x) => x.migrationId === v.id && x.hook === 'onAborted').length, 1)
  })

  it('destination host stopped mid-transfer: VM stays at the source; a retry elsewhere succeeds', {
    timeout: 40_000,
  }, async () => {
    const victim = await createTestNode({ timeouts })
    nodes.push(victim)
    await connect(a, victim)
    const vm = await a.createVm('cut-1', busy)
    await fillVm(vm, 6000, 20)
    const v = a.service.migrate('cut-1', victim.host.peerId, { bandwidthMiBps: 10 })
    await waitFor(
      () => a.service.get(v.id),
      (x) => (x?.bytesSent ?? 0) > 2 * 1024 * 1024,
    )
    await victim.host.stop()
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'failed')
    assert.ok(['LINK', 'TIMEOUT'].includes(end.error!.code), JSON.stringify(end.error))
    await assertRunsOnlyAt(a, 'cut-1', [b, c, victim])
    const retry = await a.service.done(a.service.migrate('cut-1', c.host.peerId).id)
    assert.equal(retry.phase, 'done', JSON.stringify(retry.error))
    assert.equal(c.vms.get('cut-1')?.instance.state, 'running')
    assert.equal(a.vms.has('cut-1'), false)
  })

  it('garbage from a fake destination aborts cleanly; the retry succeeds', { timeout: 30_000 }, async () => {
    const evil = await createTestNode({ timeouts })
    nodes.push(evil)
    await evil.service.stop()
    // Accepts the offer, then answers garbage
    await evil.host.handle(CONTROL_PROTOCOL, async (stream) => {
      const lp = lpStream(stream, { maxDataLength: 1 << 20 })
      await lp.read()
      await lp.write(pb.MigrationControl.encode({ accept: { reservationId: 'x' } }).finish())
      await lp.write(Uint8Array.from([0xff, 0xff, 0xff, 0x01, 0x02, 0x99]))
    })
    await evil.host.handle(DATA_PROTOCOL, async (stream) => {
      for await (const _ of stream) {
        // swallow
      }
    })
    await connect(a, evil)
    const vm = await a.createVm('garbage-1', busy)
    await fillVm(vm, 500, 5)
    const end = await a.service.done(a.service.migrate('garbage-1', evil.host.peerId).id)
    assert.equal(end.phase, 'failed')
    assert.equal(end.error?.code, 'PROTOCOL', JSON.stringify(end.error))
    await assertRunsOnlyAt(a, 'garbage-1', [b, c, evil])
    const retry = await a.service.done(a.service.migrate('garbage-1', c.host.peerId).id)
    assert.equal(retry.phase, 'done', JSON.stringify(retry.error))
  })

  /** A forged source: offer (1 data stream) and DataHello; returns the control and data streams. */
  async function forgedSource(id: string) {
    const spec = { id, name: id, vcpus: 1, memoryMib: 32, diskMib: 64 }
    const control = lpStream(await a.host.dialProtocol(b.host.peerId, CONTROL_PROTOCOL), {
      maxDataLength: 1 << 20,
    })
    await control.write(
      pb.MigrationControl.encode({
        offer: {
          migrationId: `${id}-1`,
          spec,
          epoch: 1,
          pageSize: 4096,
          pageCount: (32 * 1024 * 1024) / 4096,
          blockSize: 65536,
          blockCount: 1024,
          streams: 1,
        },
      }).finish(),
    )
    const accept = pb.MigrationControl.decode((await control.read()).subarray())
    assert.equal(accept.msg, 'accept')
    const data = lpStream(await a.host.dialProtocol(b.host.peerId, DATA_PROTOCOL), { maxDataLength: 1 << 20 })
    await data.write(
      pb.DataHello.encode({
        migrationId: `${id}-1`,
        reservationId: accept.accept!.reservationId,
        streamIndex: 0,
      }).finish(),
    )
    // Zero runs only: valid frames that carry no payload
    const frame = (seq: number) =>
      pb.DataFrame.encode({ seq, round: 0, runs: [{ space: 0, kind: 1, first: seq, count: 1 }] }).finish()
    const switchover = (streamFrames: number[]) =>
      pb.MigrationControl.encode({
        switchover: { round: 0, digest: 'not-the-digest', commitEpoch: 2, streamFrames },
      }).finish()
    return { control, data, frame, switchover }
  }

  /** Until the destination has taken in `n` data frames of the forged migration `${id}-1`. */
  async function framesReceived(id: string, n: number): Promise<void> {
    await waitFor(
      () => b.service.get(`${id}-1`),
      (x) => (x?.frames ?? 0) >= n,
    )
  }

  /** Until the destination's migration `${id}-1` fails with `code`; it kept nothing of VM `id`. */
  async function assertDiscarded(id: string, code: string): Promise<void> {
    const end = await waitFor(
      () => b.service.get(`${id}-1`),
      (x) => x?.phase === 'failed',
    )
    assert.equal(end?.error?.code, code, JSON.stringify(end?.error))
    assert.equal(b.vms.has(id), false)
  }

  it('garbage data frames make the destination discard its copy', { timeout: 30_000 }, async () => {
    const f = await forgedSource('forged')
    // A frame whose run points past the end of memory
    await f.data.write(
      pb.DataFrame.encode({ seq: 0, runs: [{ space: 0, kind: 1, first: 1 << 30, count: 5 }] }).finish(),
    )
    await assertDiscarded('forged', 'PROTOCOL')
  })

  it('early switchover: the destination applies the frames it counts before it verifies', {
    timeout: 30_000,
  }, async () => {
    const f = await forgedSource('early')
    await f.data.write(f.frame(0))
    await f.control.write(f.switchover([2]))
    // One frame is still missing: no verdict yet (the phase turns to verify once all are applied)
    await framesReceived('early', 1)
    await delay(300)
    assert.equal(b.service.get('early-1')?.phase, 'precopy')
    await f.data.write(f.frame(1))
    for (const seq of [0, 1]) assert.equal(pb.DataAck.decode((await f.data.read()).subarray()).seq, seq)
    // Then the (wrong) digest is checked: refused, nothing committed
    const v = pb.MigrationControl.decode((await f.control.read()).subarray())
    assert.equal(v.msg, 'verified')
    assert.equal(v.verified?.ok, false)
    await assertDiscarded('early', 'VERIFY_FAILED')
  })

  it('early switchover: counting fewer frames than came aborts the migration', {
    timeout: 30_000,
  }, async () => {
    const f = await forgedSource('short')
    await f.data.write(f.frame(0))
    await f.data.write(f.frame(1))
    await framesReceived('short', 2)
    await f.control.write(f.switchover([1]))
    await assertDiscarded('short', 'PROTOCOL')
  })

  it('commit refused by the destination journal: the source resumes the VM', {
    timeout: 30_000,
  }, async () => {
    const vm = await a.createVm('journal-1', busy)
    await fillVm(vm, 500, 5)
    c.overrides.onCommit = async () => {
      throw new Error('disk full')
    }
    try {
      const end = await a.service.done(a.service.migrate('journal-1', c.host.peerId).id)
      assert.equal(end.phase, 'failed')
      assert.equal(end.error?.code, 'LINK', JSON.stringify(end.error))
      // The status reply says why the destination gave up (src/transfer/status.ts)
      assert.match(
        end.error?.message ?? '',
        /^commit not acknowledged and the destination did not commit \(.+; the destination: \w+: disk full\)$/,
      )
    } finally {
      delete c.overrides.onCommit
    }
    await assertRunsOnlyAt(a, 'journal-1', [b, c])
  })

  it('link cut right after COMMIT: the source asks, learns it committed, releases', {
    timeout: 30_000,
  }, async () => {
    const vm = await a.createVm('cut-commit', busy)
    await fillVm(vm, 500, 5)
    c.overrides.onCommit = async () => {
      // The worst moment: the destination has COMMIT, the source will never see RUNNING on this stream
      await c.host.hangUp(a.host.peerId)
    }
    try {
      const end = await a.service.done(a.service.migrate('cut-commit', c.host.peerId).id)
      assert.equal(end.phase, 'done', JSON.stringify(end.error))
    } finally {
      delete c.overrides.onCommit
    }
    assert.equal(a.vms.has('cut-commit'), false)
    assert.equal(c.vms.get('cut-commit')?.instance.state, 'running')
  })
})

async function waitFor<T>(get: () => T, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    const v = get()
    if (ok(v)) return v
    await delay(20)
  }
  throw new Error('condition not met in time')
}
