// The agent's V8 flags (src/node/node-flags.ts) are the same in bin/skymesh.js's shebang (what a user's
// `skymesh agent` runs with) as in AGENT_NODE_FLAGS (what the demo, the tests and the benches pass), and
// node accepts them.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { AGENT_NODE_FLAGS } from '../../src/node/node-flags.js'

const BIN = fileURLToPath(new URL('../../bin/skymesh.js', import.meta.url)).replace(
  /\/dist\/bin\/skymesh\.js$/,
  '/bin/skymesh.js',
)

describe('agent node flags', () => {
  it('bin/skymesh.js runs node with AGENT_NODE_FLAGS (env -S shebang)', () => {
    const first = readFileSync(BIN, 'utf8').split('\n')[0]!
    assert.equal(first, `#!/usr/bin/env -S node ${AGENT_NODE_FLAGS.join(' ')}`)
  })

  it('node starts with them (a flag it does not know exits 9, "bad option")', () => {
    const r = spawnSync(process.execPath, [...AGENT_NODE_FLAGS, '-p', 'process.execArgv.join(" ")'], {
      encoding: 'utf8',
    })
    assert.equal(r.status, 0, r.stderr)
    assert.ok(r.stdout.startsWith(AGENT_NODE_FLAGS.join(' ')), r.stdout)
  })

  it('the shebang line runs the CLI (env -S splits it)', () => {
    const r = spawnSync(BIN, ['--version'], { encoding: 'utf8' })
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stdout, /\d+\.\d+\.\d+/)
  })
})
