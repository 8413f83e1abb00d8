// QEMU's own live migration between two local QEMU processes over a unix socket, with the guest's
// memory writer on (no mesh yet): the destination runs on, its memory self-check never fails, the
// source is left paused and ended — exactly one guest runs. Prints total time and downtime from
// query-migrate: the direct baseline that migration through the mesh is compared against.
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { QemuDriver } from '../../src/vm/qemu/index.js'
import {
  guestSpec,
  memLines,
  processAlive,
  qemuSkipReason,
  shortTmpDir,
  waitSerial,
} from '../helpers/qemu.js'

const skip = qemuSkipReason()
if (skip) console.log(`# qemu migration tests skipped: ${skip}`)

describe('QEMU live migration between two local QEMUs (unix socket)', { skip, timeout: 300_000 }, () => {
  let driver: QemuDriver
  let tmp: ReturnType<typeof shortTmpDir>

  before(() => {
    driver = new QemuDriver()
    tmp = shortTmpDir()
  })

  after(async () => {
    await driver?.close()
    await tmp?.remove()
  })

  it('moves a running guest with its memory writer on; the destination continues, memory check OK', {
    timeout: 240_000,
  }, async () => {
    const spec = guestSpec('mig1', { rateMiBps: 2, hotSetMiB: 16 })
    const src = await driver.create(spec, { dir: `${tmp.path}/src`, ip: '10.9.0.3/24' })
    await waitSerial(
      src.serialLog,
      () => memLines(src.serialLog).filter((l) => l.ok).length >= 3,
      120_000,
      'the writer at the source',
    )

    const dst = await driver.prepareIncoming(spec, { dir: `${tmp.path}/dst`, ip: '10.9.0.3/24' })
    assert.equal(dst.state, 'paused')
    const uri = `unix:${tmp.path}/migrate.sock`
    await dst.migrateIncoming(uri)
    for (let i = 0; i < 100 && !existsSync(`${tmp.path}/migrate.sock`); i++) await sleep(50)

    const genBefore = memLines(src.serialLog).at(-1)?.gen ?? 0
    const t0 = Date.now()
    await src.migrate(uri, { downtimeLimitMs: 300 })
    const info = await src.waitMigration(180_000)
    const wallMs = Date.now() - t0
    assert.equal(info.status, 'completed', info.errorDesc)
    const dstEnd = await dst.waitMigration(30_000)
    assert.equal(dstEnd.status, 'completed')
    assert.equal(await src.refreshState(), 'paused', 'the source is left stopped (postmigrate)')
    assert.equal(await dst.refreshState(), 'paused', 'the destination waits for the handover (-S)')
    await dst.resume()
    await src.stop()
    assert.equal(processAlive(src.pid as number), false)
    assert.deepEqual(
      driver.instances().map((v) => v.spec.id),
      ['mig1'],
      'exactly one QEMU runs the guest',
    )

    // The guest carries on at the destination: later generations of its writer, never a FAIL.
    await waitSerial(
      dst.serialLog,
      () => memLines(dst.serialLog).filter((l) => l.ok).length >= 3,
      60_000,
      'the writer at the destination',
    )
    const atDst = memLines(dst.serialLog)
    assert.deepEqual(
      atDst.filter((l) => !l.ok).map((l) => l.line),
      [],
      'memory check never failed',
    )
    assert.deepEqual(
      memLines(src.serialLog)
        .filter((l) => !l.ok)
        .map((l) => l.line),
      [],
    )
    assert.ok(
      (atDst[0]?.gen ?? 0) > genBefore,
      `destination continues the writer (gen ${atDst[0]?.gen} > ${genBefore})`,
    )
    console.log(
      `# qemu direct migration (unix socket, TCG, ${spec.memoryMiB} MiB guest, writer ${spec.workload.dirtyMiBps} MiB/s): ` +
        JSON.stringify({
          totalMs: info.totalTimeMs,
          downtimeMs: info.downtimeMs,
          setupMs: info.setupTimeMs,
          wallMs,
          transferredBytes: info.transferredBytes,
          dirtySyncs: info.dirtySyncCount,
        }),
    )
    await dst.destroy()
  })

  it('suspends a guest to its directory and restores it running, memory check still OK', {
    timeout: 240_000,
  }, async () => {
    const spec = guestSpec('sus1', { rateMiBps: 1 })
    const dir = `${tmp.path}/sus`
    const vm = await driver.create(spec, { dir, nic: 'none' })
    await waitSerial(
      vm.serialLog,
      () => memLines(vm.serialLog).filter((l) => l.ok).length >= 2,
      120_000,
      'the writer',
    )
    assert.equal(await driver.hasSuspendImage(dir), false)
    await vm.suspend()
    assert.equal(vm.state, 'suspended')
    assert.equal(processAlive(vm.pid as number), false)
    assert.equal(await driver.hasSuspendImage(dir), true)
    const lastGen = memLines(vm.serialLog).at(-1)?.gen ?? 0
    const back = await driver.restore(spec, { dir, nic: 'none' })
    assert.equal(back.state, 'running')
    await waitSerial(
      back.serialLog,
      () => (memLines(back.serialLog).at(-1)?.gen ?? 0) >= lastGen + 2,
      60_000,
      'the writer after restore',
    )
    assert.deepEqual(
      memLines(back.serialLog)
        .filter((l) => !l.ok)
        .map((l) => l.line),
      [],
    )
    await back.destroy()
  })
})
