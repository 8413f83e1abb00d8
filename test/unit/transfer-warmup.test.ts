// The engine's start-up warm-up (src/transfer/warmup.ts): a small synthetic VM's pages and blocks go
// through the frame building and a real IncomingMigration's apply path, every frame is applied and
// acknowledged, and nothing is left behind (VM, temporary directory); other drivers are skipped, and
// an abort stops it. MigrationService runs it after start() only when asked (warmUp: true).
import assert from 'node:assert/strict'
import { readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { describe, it } from 'node:test'
import { pino } from 'pino'
import { createTestNode } from '../../src/transfer/testing.js'
import { warmUpEngine } from '../../src/transfer/warmup.js'
import { createDriver, type VmDriver } from '../../src/vm/index.js'

const logger = pino({ level: 'silent' })
const leftovers = async () => (await readdir(tmpdir())).filter((n) => n.startsWith('skymesh-warmup-'))

describe('transfer warm-up', () => {
  it('applies and acknowledges every frame, and removes its VM and directory', async () => {
    const before = await leftovers()
    const driver = createDriver('synthetic', { tickMs: 20 })
    try {
      const r = await warmUpEngine(driver, logger, new AbortController().signal, 2, 1)
      assert.ok(r)
      // 2 rounds of the 2 MiB VM's 512 pages, 1 of its 32 blocks, all sent as DATA
      assert.equal(r.pages, 1024)
      assert.equal(r.blocks, 32)
      assert.ok(r.frames >= 5, `${r.frames} frames`)
      assert.equal(r.acked, r.frames)
    } finally {
      await driver.close()
    }
    assert.deepEqual(await leftovers(), before)
  })

  it('does nothing for a driver that is not the synthetic one', async () => {
    const fake = { name: 'qemu' } as unknown as VmDriver
    assert.equal(await warmUpEngine(fake, logger, new AbortController().signal), undefined)
  })

  it('stops when aborted and still cleans up', async () => {
    const before = await leftovers()
    const driver = createDriver('synthetic', { tickMs: 20 })
    const ac = new AbortController()
    ac.abort(new Error('stop'))
    try {
      await assert.rejects(warmUpEngine(driver, logger, ac.signal))
    } finally {
      await driver.close()
    }
    assert.deepEqual(await leftovers(), before)
  })

  it('runs after MigrationService.start() only with warmUp: true', async () => {
    const on = await createTestNode({ warmUp: true })
    const off = await createTestNode()
    try {
      const r = await on.service.warmedUp
      assert.ok(r && r.acked === r.frames && r.frames > 0)
      assert.equal(await off.service.warmedUp, undefined)
    } finally {
      await on.stop()
      await off.stop()
    }
  })
})
