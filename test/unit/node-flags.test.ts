// How agent processes run (src/node/node-flags.ts): the V8 flags and the glibc tunable are the same in
// bin/skymesh.js's shebang (what a user's `skymesh agent` runs with) as in AGENT_NODE_FLAGS and agentEnv
// (what the demo, the tests and the benches pass); node accepts the flags; and the tunable gives a large
// Buffer transparent huge pages where glibc and the kernel offer them (page faults counted, not timed).
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { AGENT_NODE_FLAGS, AGENT_SHEBANG, agentEnv } from '../../src/node/node-flags.js'

const BIN = fileURLToPath(new URL('../../bin/skymesh.js', import.meta.url)).replace(
  /\/dist\/bin\/skymesh\.js$/,
  '/bin/skymesh.js',
)

/** glibc 2.35+ (the hugetlb tunable) and a kernel whose THP mode is not `never`. */
function hugePagesOffered(): boolean {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)
    ?.header
  const [major, minor] = (header?.glibcVersionRuntime ?? '0.0').split('.').map(Number)
  const mode = '/sys/kernel/mm/transparent_hugepage/enabled'
  const thp = existsSync(mode) && !readFileSync(mode, 'utf8').includes('[never]')
  return thp && (major! > 2 || (major === 2 && minor! >= 35))
}

/** Minor page faults of a fresh node that zero-allocates 64 MiB and writes a byte into each 4 KiB page. */
function faultsTouching64MiB(env: NodeJS.ProcessEnv): number {
  const script = `
    const f0 = process.resourceUsage().minorPageFault
    const b = Buffer.alloc(64 << 20)
    for (let i = 0; i < b.length; i += 4096) b[i] = 1
    console.log(process.resourceUsage().minorPageFault - f0)`
  const r = spawnSync(process.execPath, ['-e', script], { env, encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  return Number(r.stdout.trim())
}

describe('agent node flags', () => {
  it('bin/skymesh.js runs node with AGENT_NODE_FLAGS and the tunable (env -S shebang)', () => {
    const first = readFileSync(BIN, 'utf8').split('\n')[0]!
    assert.equal(first, AGENT_SHEBANG)
    assert.ok(first.endsWith(`node ${AGENT_NODE_FLAGS.join(' ')}`), first)
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

  it("the shebang's environment keeps the caller's tunables and adds hugetlb", () => {
    const command = AGENT_SHEBANG.replace(/^#!\/usr\/bin\/env -S /, '')
    const run = (env: NodeJS.ProcessEnv) =>
      spawnSync('/usr/bin/env', ['-S', `${command} -p process.env.GLIBC_TUNABLES`], { env, encoding: 'utf8' })
    const plain = run({ PATH: process.env.PATH })
    assert.equal(plain.status, 0, plain.stderr)
    assert.equal(plain.stdout.trim(), ':glibc.malloc.hugetlb=1')
    const kept = run({ PATH: process.env.PATH, GLIBC_TUNABLES: 'glibc.malloc.check=0' })
    assert.equal(kept.stdout.trim(), 'glibc.malloc.check=0:glibc.malloc.hugetlb=1')
  })

  it('agentEnv adds the tunable to GLIBC_TUNABLES, keeping what is there', () => {
    assert.equal(agentEnv({}).GLIBC_TUNABLES, 'glibc.malloc.hugetlb=1')
    assert.equal(
      agentEnv({ GLIBC_TUNABLES: 'glibc.malloc.check=0', X: '1' }).GLIBC_TUNABLES,
      'glibc.malloc.check=0:glibc.malloc.hugetlb=1',
    )
    assert.equal(agentEnv({ X: '1' }).X, '1')
    // A caller's own choice stands
    assert.equal(
      agentEnv({ GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' }).GLIBC_TUNABLES,
      'glibc.malloc.hugetlb=0',
    )
  })

  it('with agentEnv a large Buffer takes huge pages: far fewer page faults', {
    skip: !hugePagesOffered() && 'no glibc 2.35+ or THP off',
  }, () => {
    const without = faultsTouching64MiB({ ...process.env, GLIBC_TUNABLES: '' })
    const withTunable = faultsTouching64MiB(agentEnv({ ...process.env, GLIBC_TUNABLES: '' }))
    // 64 MiB is 16384 pages of 4 KiB, 32 of 2 MiB
    assert.ok(without >= 16_384, `without: ${without} faults`)
    assert.ok(withTunable * 4 < without, `with: ${withTunable}, without: ${without}`)
  })
})
