// The short version of `npm run test:faults`: every fault scenario a few times (churn for 25 s),
// against real agents; no VM lost or running twice, no digest changed, no agent crashed.
// Scenarios that need network namespaces are reported as skipped, with the reason, where the
// machine cannot create them.
import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { allClean, formatTable, runFaults, SHORT_RUNS } from '../faults/run.js'
import { SCENARIOS } from '../faults/scenarios.js'

describe('fault scenarios (short)', { timeout: 900_000 }, () => {
  it('keeps every VM on exactly one host with its bytes, whatever fails', async () => {
    const seed = Number(process.env.SKYMESH_FAULTS_SEED ?? Date.now() % 1_000_000)
    const rows = await runFaults({
      scenarios: SCENARIOS.map((s) => s.name),
      runs: SHORT_RUNS,
      churnSec: 25,
      seed,
      verbose: process.env.SKYMESH_FAULTS_TRACE !== undefined,
    })
    console.log(`seed ${seed}\n${formatTable(rows)}`)
    for (const r of rows) if (r.skipped) console.log(`# ${r.scenario} skipped: ${r.skipped}`)
    const ran = rows.filter((r) => !r.skipped)
    assert.ok(ran.length >= 4, 'the loopback scenarios always run')
    assert.ok(ran.reduce((a, r) => a + r.faults, 0) >= 8, 'faults were injected')
    assert.ok(allClean(rows), rows.flatMap((r) => r.problems.map((p) => `${r.scenario}: ${p}`)).join('\n'))
  })
})
