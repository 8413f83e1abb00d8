// src/transfer/malloc-threshold.ts: with glibc's mmap threshold raised, the cipher's 1 MiB outputs
// reuse heap memory instead of fresh mappings, so a process sealing 256 MiB takes far fewer page
// faults. Each case runs in a fresh process (the threshold is per process and cannot be lowered).
// Page faults are counted, not timed: the count does not depend on how busy the machine is.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { describe, it } from 'node:test'
import { promisify } from 'node:util'

const run = promisify(execFile)
const moduleUrl = new URL('../../src/transfer/malloc-threshold.js', import.meta.url).href

/** Minor page faults of a fresh process that encrypts 256 MiB in 1 MiB cipher calls. */
async function faultsSealing256MiB(raise: 'on' | 'off'): Promise<number> {
  const script = `
    import { createCipheriv, randomBytes } from 'node:crypto'
    import { raiseMallocMmapThreshold } from ${JSON.stringify(moduleUrl)}
    raiseMallocMmapThreshold()
    const key = randomBytes(16), src = randomBytes(1 << 20)
    const f0 = process.resourceUsage().minorPageFault
    for (let i = 0; i < 256; i++) {
      const c = createCipheriv('aes-128-gcm', key, randomBytes(12))
      c.update(src)
      c.final()
    }
    console.log(process.resourceUsage().minorPageFault - f0)
  `
  const env = { ...process.env, SKYMESH_MALLOC_THRESHOLD: raise === 'off' ? 'off' : '' }
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { env })
  return Number(stdout.trim())
}

const glibc = Boolean(
  (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
    ?.glibcVersionRuntime,
)

describe('malloc threshold', () => {
  it('cuts the page faults of 1 MiB cipher outputs at least in half (glibc)', {
    skip: !glibc && 'not glibc',
  }, async () => {
    const off = await faultsSealing256MiB('off')
    const on = await faultsSealing256MiB('on')
    // Measured here: ~42k faults without, ~8.6k with (256 MiB = 65536 pages)
    assert.ok(off > 10_000, `without: ${off} faults (expected most outputs to be fresh mappings)`)
    assert.ok(on * 2 < off, `with: ${on} faults, without: ${off}`)
  })
})
