// The direct data channel (src/transfer/direct.ts): data units over sealed connections negotiated on
// the libp2p control stream, the fallback to libp2p streams, and a cut of the direct connection
// (through a TCP relay in front of the destination's listener) aborting like a cut libp2p stream.
import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { setTimeout as delay } from 'node:timers/promises'
import { pino } from 'pino'
import { connectDirect, DirectListener } from '../../src/transfer/direct.js'
import type { SealedFramed } from '../../src/transfer/sealed.js'
import { connect, createTestNode, fillVm, type TestNode } from '../../src/transfer/testing.js'
import { freePort, TcpRelay } from '../helpers/tcp-relay.js'

const timeouts = { stepTimeoutMs: 5000, stallTimeoutMs: 5000, statusTimeoutMs: 5000, dialTimeoutMs: 3000 }
const busy = { memoryMiB: 32, workload: { dirtyMiBps: 2, hotSetMiB: 4 } }

async function digestOf(n: TestNode, vmId: string): Promise<string> {
  return (await n.vms.get(vmId)!.instance.digest()).combined
}

describe('direct data channel', { timeout: 180_000 }, () => {
  const nodes: TestNode[] = []
  let a: TestNode
  let b: TestNode
  let off: TestNode
  let dead: TestNode
  let relayed: TestNode
  let relay: TcpRelay

  before(async () => {
    a = await createTestNode({ timeouts })
    b = await createTestNode({ timeouts })
    // Direct channel turned off at the destination
    off = await createTestNode({ timeouts, direct: { enabled: false } })
    // Announces a port nothing listens on: the direct connection cannot be made
    dead = await createTestNode({
      timeouts,
      direct: { announcePort: await freePort(), connectTimeoutMs: 1000 },
    })
    // Listens on a fixed port behind a relay the test can cut
    const port = await freePort()
    relay = await TcpRelay.start(port)
    relayed = await createTestNode({ timeouts, direct: { port, announcePort: relay.port } })
    nodes.push(a, b, off, dead, relayed)
    for (const n of [b, off, dead, relayed]) await connect(a, n)
  })

  after(async () => {
    await Promise.all(nodes.map((n) => n.stop()))
    await relay.close()
  })

  it('carries a migration over direct TLS by default; the copy is exact', async () => {
    const vm = await a.createVm('d-1', busy)
    await fillVm(vm, 3000, 20)
    const v = a.service.migrate('d-1', b.host.peerId, { streams: 2 })
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.equal(end.channel, 'direct-sealed')
    assert.equal(b.service.get(v.id)?.channel, 'direct-sealed')
    const commit = b.calls.find((c) => c.hook === 'onCommit' && c.migrationId === v.id)
    const handover = a.calls.find((c) => c.hook === 'onHandover' && c.migrationId === v.id)
    assert.ok(
      commit?.digest && commit.digest === handover?.digest,
      'destination copy equals the paused source',
    )
    assert.ok(b.vms.has('d-1') && !a.vms.has('d-1'))
  })

  it('uses libp2p streams when asked, or when the destination offers no direct channel', async () => {
    const vm = await a.createVm('d-2', busy)
    await fillVm(vm, 500, 5)
    const asked = await a.service.done(a.service.migrate('d-2', b.host.peerId, { channel: 'libp2p' }).id)
    assert.equal(asked.phase, 'done')
    assert.equal(asked.channel, 'libp2p')
    assert.match(asked.channelNote ?? '', /libp2p channel asked for/)
    // to a host with the direct channel turned off
    await fillVm(await a.createVm('d-2b', busy), 500, 5)
    const back = await a.service.done(a.service.migrate('d-2b', off.host.peerId).id)
    assert.equal(back.phase, 'done', JSON.stringify(back.error))
    assert.equal(back.channel, 'libp2p')
    assert.match(back.channelNote ?? '', /offers no direct channel/)
  })

  it('falls back to libp2p streams when the direct connection cannot be made', async () => {
    const vm = await a.createVm('d-3', busy)
    await fillVm(vm, 500, 5)
    const end = await a.service.done(a.service.migrate('d-3', dead.host.peerId).id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.equal(end.channel, 'libp2p')
    assert.match(end.channelNote ?? '', /direct connection failed/)
    assert.equal(dead.service.get(end.id)?.channel, 'libp2p')
    assert.ok(dead.vms.has('d-3'))
  })

  it('a digest mismatch answers the committing switchover: nothing commits, the VM resumes at the source', async () => {
    const vm = await a.createVm('d-5', busy)
    await fillVm(vm, 500, 5)
    const driver = b.driver as { prepareIncoming: typeof b.driver.prepareIncoming }
    const prepare = driver.prepareIncoming.bind(b.driver)
    driver.prepareIncoming = async (spec, opts) => {
      const inst = await prepare(spec, opts)
      const digest = inst.digest.bind(inst)
      inst.digest = async () => ({ ...(await digest()), combined: 'f'.repeat(64) })
      return inst
    }
    try {
      const end = await a.service.done(a.service.migrate('d-5', b.host.peerId).id)
      assert.equal(end.phase, 'failed')
      assert.equal(end.error?.code, 'VERIFY_FAILED', JSON.stringify(end.error))
      assert.equal(end.epoch, undefined, 'no new epoch')
      assert.equal(a.vms.get('d-5')?.instance.state, 'running')
      assert.equal(b.vms.has('d-5'), false)
      assert.ok(!b.calls.some((c) => c.hook === 'onCommit' && c.migrationId === end.id), 'nothing committed')
      assert.ok(a.calls.some((c) => c.hook === 'onAborted' && c.migrationId === end.id))
      assert.ok(!a.calls.some((c) => c.hook === 'onInDoubt' && c.migrationId === end.id))
      assert.equal((await b.service.done(end.id)).phase, 'failed')
    } finally {
      driver.prepareIncoming = prepare
    }
  })

  it('a cut of the direct connection aborts: the VM runs at the source, a retry succeeds', async () => {
    const vm = await a.createVm('d-4', busy)
    await fillVm(vm, 4000, 20)
    const v = a.service.migrate('d-4', relayed.host.peerId, { bandwidthMiBps: 2, compression: 'off' })
    // Until data flows over the relayed direct connection
    while (relay.accepted === 0 || (a.service.get(v.id)?.bytesSent ?? 0) < 1024 * 1024) {
      assert.ok(!['done', 'failed'].includes(a.service.get(v.id)?.phase ?? ''), 'still migrating')
      await delay(50)
    }
    assert.equal(a.service.get(v.id)?.channel, 'direct-sealed')
    relay.cut()
    const end = await a.service.done(v.id)
    assert.equal(end.phase, 'failed')
    assert.equal(end.error?.code, 'LINK')
    const local = a.vms.get('d-4')
    assert.equal(local?.instance.state, 'running')
    assert.equal(relayed.vms.has('d-4'), false)
    const incoming = await relayed.service.done(v.id)
    assert.equal(incoming.phase, 'failed', 'the destination discarded its copy')
    relay.heal()
    const retry = await a.service.done(a.service.migrate('d-4', relayed.host.peerId).id)
    assert.equal(retry.phase, 'done', JSON.stringify(retry.error))
    assert.equal(retry.channel, 'direct-sealed')
    assert.ok(relayed.vms.has('d-4') && !a.vms.has('d-4'))
    assert.ok((await digestOf(relayed, 'd-4')).length > 0)
  })
})

describe('DirectListener', { timeout: 30_000 }, () => {
  it('accepts only the key and identity it granted, bound to its migration', async () => {
    const got: { framed: SealedFramed; id: string }[] = []
    const l = new DirectListener({}, pino({ level: 'silent' }), (framed, id) => got.push({ framed, id }))
    try {
      const g = await l.grant('127.0.0.1', 'm-1')
      const signal = AbortSignal.timeout(10_000)
      const [ok] = await connectDirect('127.0.0.1', g, 1, 5000, signal)
      await ok!.write(new Uint8Array([1, 2, 3]))
      while (got.length === 0) await delay(10)
      assert.equal(got[0]!.id, 'm-1')
      assert.deepEqual([...((await got[0]!.framed.read()) ?? [])], [1, 2, 3])
      await assert.rejects(connectDirect('127.0.0.1', { ...g, key: randomBytes(32) }, 1, 3000, signal))
      await assert.rejects(connectDirect('127.0.0.1', { ...g, identity: 'ab'.repeat(16) }, 1, 3000, signal))
      assert.equal(got.length, 1, 'no connection with a wrong key or identity')
      // a released grant accepts nothing more
      g.release()
      await assert.rejects(connectDirect('127.0.0.1', g, 1, 3000, signal))
      await ok!.close()
      await got[0]!.framed.close()
      // garbage: a length over the limit is a protocol error at the reader, and nothing is delivered
      const [bad] = await connectDirect('127.0.0.1', await l.grant('127.0.0.1', 'm-3'), 1, 5000, signal)
      bad!.socket.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]))
      while (got.length < 2) await delay(10)
      await assert.rejects(
        got[1]!.framed.read(AbortSignal.timeout(5000)),
        (e: Error) => e.name === 'ProtocolError',
      )
      bad!.abort(new Error('done'))
      await assert.rejects(l.grant('192.0.2.1', 'm-2'), /not an address of this host/)
      // a peer cannot make the listener open on every interface
      await assert.rejects(l.grant('0.0.0.0', 'm-4'), /not an address of this host: 0\.0\.0\.0/)
      await assert.rejects(l.grant('::', 'm-5'), /not an address of this host: ::/)
    } finally {
      l.close()
    }
  })
})
