// QEMU migration through the mesh between two migration services in one process (two libp2p hosts,
// two QEMUs): QEMU's migration stream straight from QEMU to QEMU with QEMU's own TLS-PSK (the
// default; the disk mirror through a direct TLS-PSK tunnel), or both tunnelled over direct TLS-PSK
// connections (SKYMESH_QEMU_TLS=0) or libp2p streams (`channel: 'libp2p'`), the handover of
// the engine (COMMIT -> RUNNING -> the source QEMU quits). The guest's writer carries on at the
// destination, its memory check never fails, the disk marker written at the source is on the
// destination's disk, exactly one QEMU runs it. The agents' version is test/cluster/qemu-mesh-migrate.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { connect } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { generateKeyPair } from '@libp2p/crypto/keys'
import pino from 'pino'
import '../../src/node/polyfill.js'
import { createHost } from '../../src/node/p2p.js'
import { type LocalVm, MigrationService } from '../../src/transfer/index.js'
import { addPskCreds, QemuDriver, type QemuVm } from '../../src/vm/qemu/index.js'
import {
  guestSpec,
  memLines,
  postcopySkipReason,
  qemuPids,
  qemuSkipReason,
  readGuestDisk,
  serialLines,
  shortTmpDir,
  waitSerial,
} from '../helpers/qemu.js'

const skip = qemuSkipReason()
if (skip) console.log(`# qemu tunnel tests skipped: ${skip}`)

describe('QEMU migration through the mesh (two services, one process)', { skip, timeout: 300_000 }, () => {
  let tmp: ReturnType<typeof shortTmpDir>
  const hosts: Awaited<ReturnType<typeof createHost>>[] = []
  const drivers: QemuDriver[] = []
  const services: MigrationService[] = []
  const vms = [new Map<string, LocalVm>(), new Map<string, LocalVm>()]

  before(async () => {
    tmp = shortTmpDir('skq-tun-')
    const logger = pino({ level: 'warn' })
    for (const i of [0, 1]) {
      const host = await createHost({
        privateKey: await generateKeyPair('Ed25519'),
        listen: ['/ip4/127.0.0.1/tcp/0'],
      })
      const driver = new QemuDriver()
      const svc = new MigrationService({
        host,
        logger,
        driver,
        vmDir: (id) => `${tmp.path}/${i}/${id}`,
        lookupVm: (id) => vms[i]!.get(id),
        hooks: {
          onCommit: async (_m, instance, epoch) => {
            vms[i]!.set(instance.spec.id, { instance, spec: instance.spec, epoch })
          },
          onReleased: async (m, instance) => {
            vms[i]!.delete(m.vmId)
            await instance.destroy()
          },
        },
      })
      await svc.start()
      hosts.push(host)
      drivers.push(driver)
      services.push(svc)
    }
    await hosts[0]!.dial(hosts[1]!.getMultiaddrs()[0]!)
  })

  after(async () => {
    await Promise.all(services.map((s) => s.stop()))
    await Promise.all(drivers.map((d) => d.close()))
    await Promise.all(hosts.map((h) => h.stop()))
    await tmp?.remove()
  })

  /** Boots a guest at host 0, moves it to host 1 with `options`, checks it there; returns the destination QEMU. */
  async function moveGuest(
    id: string,
    options: {
      streams: number
      mode?: 'precopy' | 'postcopy'
      channel?: 'libp2p'
      compression?: 'auto' | 'on' | 'off'
    },
    want: 'qemu-tls' | 'direct-tls' | 'libp2p' = options.channel ?? 'qemu-tls',
  ) {
    const spec = guestSpec(id, { rateMiBps: 1 })
    const src = (await drivers[0]!.create(spec, { dir: `${tmp.path}/0/${id}` })) as QemuVm
    vms[0]!.set(spec.id, { instance: src, spec, epoch: 1 })
    // The source QEMU's migration parameters as it starts (it is gone once the guest moved)
    let srcParams: Record<string, unknown> | undefined
    const migrate = src.migrate.bind(src)
    src.migrate = async (uri, opts) => {
      await migrate(uri, opts)
      srcParams = await src.qmp.execute<Record<string, unknown>>('query-migrate-parameters')
    }
    await waitSerial(
      src.serialLog,
      (l) =>
        l.some((x) => x.startsWith('SKYMESH DISK MARK')) &&
        memLines(src.serialLog).filter((x) => x.ok).length >= 3,
      180_000,
      'the guest at the source',
    )
    const mark = serialLines(src.serialLog)
      .find((l) => l.startsWith('SKYMESH DISK MARK'))!
      .split(' ')[3]!
    const genBefore = memLines(src.serialLog).at(-1)!.gen
    const started = services[0]!.migrate(spec.id, hosts[1]!.peerId, { ...options, downtimeMs: 300 })
    const end = await services[0]!.done(started.id)
    assert.equal(end.phase, 'done', JSON.stringify(end.error))
    assert.equal(end.epoch, 2)
    assert.ok(end.bytesSent > 0 && end.wireBytes > 0)
    const { totalMs, downtimeMs, bytesSent, wireBytes } = end
    console.log(
      `# qemu through the mesh (128 MiB guest, writer 1 MiB/s, ${JSON.stringify(options)}): ${JSON.stringify({ totalMs, downtimeMs, bytesSent, wireBytes })}`,
    )
    const dst = vms[1]!.get(spec.id)?.instance as QemuVm | undefined
    assert.ok(dst, 'the destination holds the VM')
    assert.equal(dst.state, 'running')
    assert.equal(vms[0]!.has(spec.id), false)
    assert.deepEqual(qemuPids(`skymesh-${id}`), [dst.pid])
    await waitSerial(
      dst.serialLog,
      () => memLines(dst.serialLog).filter((l) => l.ok).length >= 2,
      120_000,
      'writer at dst',
    )
    const atDst = memLines(dst.serialLog)
    assert.deepEqual(
      atDst.filter((l) => !l.ok).map((l) => l.line),
      [],
    )
    assert.ok(atDst[0]!.gen > genBefore)
    assert.equal((await readGuestDisk(dst.paths.disk, 1 << 20, mark.length)).toString('latin1'), mark)
    // Both ends say what carried the tunnels
    assert.equal(end.channel, want, end.channelNote)
    assert.equal(services[1]!.get(started.id)?.channel, want)
    return { dst, end, srcParams: srcParams! }
  }

  it("moves a running guest, memory and disk, with QEMU's own TLS (multifd, 2 channels, zstd)", async () => {
    const { dst, end, srcParams } = await moveGuest('tun1', { streams: 2, compression: 'on' })
    assert.equal(end.postcopy, false)
    // The destination QEMU took the stream with TLS creds, its key file already gone
    const params = await dst.qmp.execute<Record<string, unknown>>('query-migrate-parameters')
    assert.equal(params['tls-creds'], 'skymesh-mig-tls')
    assert.equal(params['multifd-channels'], 2)
    // compression 'on': multifd packets zstd-compressed, level 1, the same on both QEMUs
    for (const p of [srcParams, params]) {
      assert.equal(p['multifd-compression'], 'zstd')
      assert.equal(p['multifd-zstd-level'], 1)
    }
    await dst.destroy()
  })

  it("moves a guest through the agents' direct TLS tunnels when QEMU TLS is off", async () => {
    process.env.SKYMESH_QEMU_TLS = '0'
    try {
      const { dst } = await moveGuest('tun6', { streams: 1 }, 'direct-tls')
      const params = await dst.qmp.execute<Record<string, unknown>>('query-migrate-parameters')
      assert.equal(params['tls-creds'], '')
      await dst.destroy()
    } finally {
      delete process.env.SKYMESH_QEMU_TLS
    }
  })

  it('moves a guest with multifd: several QEMU channels, each its own libp2p stream', async () => {
    const { dst, srcParams } = await moveGuest('tun3', { streams: 3, channel: 'libp2p' })
    // The destination QEMU took the stream as multifd with 3 channels
    const caps = await dst.qmp.execute<Array<{ capability: string; state: boolean }>>(
      'query-migrate-capabilities',
    )
    assert.equal(caps.find((c) => c.capability === 'multifd')?.state, true)
    const params = await dst.qmp.execute<Record<string, unknown>>('query-migrate-parameters')
    assert.equal(params['multifd-channels'], 3)
    // compression 'auto' (the default): plain multifd packets on both QEMUs
    assert.equal(params['multifd-compression'], 'none')
    assert.equal(srcParams['multifd-compression'], 'none')
    await dst.destroy()
  })

  const noPostcopy = postcopySkipReason()
  it('moves a guest in post-copy: it runs at the destination before its last pages are there', {
    skip: noPostcopy,
  }, async () => {
    const { dst, end } = await moveGuest('tun4', { streams: 1, mode: 'postcopy' })
    assert.equal(end.postcopy, true, 'QEMU switched to post-copy (status postcopy-active)')
    // every page arrived: the destination's incoming migration completed
    const info = await dst.waitMigration(60_000)
    assert.equal(info.status, 'completed')
    await dst.destroy()
  })

  it('refuses post-copy with several streams, saying why; the guest stays', async () => {
    const spec = guestSpec('tun5', { rateMiBps: 0 })
    const src = (await drivers[0]!.create(spec, { dir: `${tmp.path}/0/tun5` })) as QemuVm
    vms[0]!.set(spec.id, { instance: src, spec, epoch: 1 })
    const started = services[0]!.migrate(spec.id, hosts[1]!.peerId, { streams: 2, mode: 'postcopy' })
    const end = await services[0]!.done(started.id)
    assert.equal(end.phase, 'failed')
    assert.match(end.error?.message ?? '', /multifd/)
    assert.equal(src.state, 'running')
    vms[0]!.delete(spec.id)
    await src.destroy()
  })

  it("a destination QEMU's TLS listener takes nothing from a peer without the key", async () => {
    const dst = (await drivers[1]!.prepareIncoming(guestSpec('tlsk', { rateMiBps: 0 }), {
      dir: `${tmp.path}/1/tlsk`,
    })) as QemuVm
    const creds = await addPskCreds(dst, 'skymesh-mig-tls', 'server', 'migration-a', randomBytes(32))
    await dst.migrateIncoming('tcp:127.0.0.1:0', { tlsCreds: creds.id })
    const port = await dst.incomingPort()
    // A plain stream that starts like QEMU's (magic QEVM, version 3): no TLS, refused
    const plain = connect(port, '127.0.0.1')
    plain.on('error', () => undefined)
    plain.write(Buffer.from('5145564d00000003', 'hex'))
    await new Promise((r) => plain.once('close', r))
    // A QEMU with the identity but another key: its migration fails, the guest runs on there
    const src = (await drivers[0]!.create(guestSpec('tlsk-src', { rateMiBps: 0 }), {
      dir: `${tmp.path}/0/tlsk-src`,
    })) as QemuVm
    const wrong = await addPskCreds(src, 'skymesh-mig-tls', 'client', 'migration-a', randomBytes(32))
    await src.migrate(`tcp:127.0.0.1:${port}`, { tlsCreds: wrong.id })
    const out = await src.waitMigration(60_000)
    assert.equal(out.status, 'failed')
    assert.equal(await src.refreshState(), 'running')
    // The destination QEMU took no stream (an incoming failure would have ended it): still waiting
    assert.equal(dst.process.exitCode, null)
    assert.ok(['none', 'setup'].includes((await dst.queryMigrate()).status))
    await creds.remove()
    await wrong.remove()
    await src.destroy()
    await dst.destroy()
  })

  it('keeps the guest running at the source when the destination dies mid-migration', async () => {
    const spec = guestSpec('tun2', { rateMiBps: 1 })
    const src = (await drivers[0]!.create(spec, { dir: `${tmp.path}/0/tun2` })) as QemuVm
    vms[0]!.set(spec.id, { instance: src, spec, epoch: 1 })
    await waitSerial(
      src.serialLog,
      () => memLines(src.serialLog).filter((x) => x.ok).length >= 3,
      180_000,
      'boot',
    )
    // A bandwidth cap keeps the migration going long enough to kill the destination in the middle
    const m = services[0]!.migrate(spec.id, hosts[1]!.peerId, { streams: 1, bandwidthMiBps: 2 })
    for (let i = 0; i < 1200 && (services[0]!.get(m.id)?.pagesSent ?? 0) < 256; i++) await sleep(100)
    assert.equal(services[0]!.get(m.id)?.phase, 'precopy')
    // The destination host dies: its QEMUs with it, its libp2p host without a goodbye
    await drivers[1]!.close()
    await hosts[1]!.stop()
    const end = await services[0]!.done(m.id)
    assert.equal(end.phase, 'failed')
    assert.equal(src.state, 'running')
    assert.equal(vms[0]!.get(spec.id)?.instance, src)
    assert.deepEqual(qemuPids('skymesh-tun2'), [src.pid])
    const last = memLines(src.serialLog).at(-1)!.gen
    await waitSerial(
      src.serialLog,
      () => (memLines(src.serialLog).at(-1)?.gen ?? 0) >= last + 3,
      60_000,
      'writer',
    )
    assert.deepEqual(
      memLines(src.serialLog)
        .filter((l) => !l.ok)
        .map((l) => l.line),
      [],
    )
    await src.destroy()
  })
})
