// `skymesh demo`: the embedded default mesh comes up, creates VMs, and leaves nothing behind.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { describe, it } from 'node:test'
import { CLI, runCli, waitFor } from '../helpers/agent-process.js'

function removedRoot(stderr: string): string {
  const m = /removed (\S+)/.exec(stderr)
  assert.ok(m, `no 'removed DIR' line in:\n${stderr}`)
  return m[1]!
}

describe('skymesh demo', () => {
  it('starts a mesh, creates VMs, reports them, and cleans up after --duration', async () => {
    const r = await runCli(['demo', '--agents', '3', '--vms', '4', '--duration', '3', '--json'], {
      timeoutMs: 90_000,
    })
    assert.equal(r.code, 0, r.stderr)
    const summary = JSON.parse(r.stdout)
    assert.equal(summary.agents.length, 3)
    assert.equal(summary.created, 4)
    assert.equal(summary.vms.length, 4)
    for (const vm of summary.vms) assert.equal(vm.state, 'running')
    const peerIds = new Set(summary.agents.map((a: { peerId: string }) => a.peerId))
    assert.equal(peerIds.size, 3)
    // Every agent is connected to the mesh.
    for (const a of summary.agents) assert.ok(a.peers >= 1, JSON.stringify(a))
    assert.equal(existsSync(removedRoot(r.stderr)), false)
  })

  it('stops every agent and removes its dirs on Ctrl-C', async () => {
    const proc = spawn(process.execPath, [CLI, 'demo', '--agents', '2', '--vms', '2'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    proc.stdout.on('data', (d) => {
      stdout += d
    })
    proc.stderr.on('data', (d) => {
      stderr += d
    })
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)))
    try {
      // Not a TTY: one line per tick once the VMs exist.
      await waitFor(
        'the demo to show its mesh',
        async () => /demo-2/.test(stdout) || /vms/.test(stdout),
        60_000,
      )
      proc.kill('SIGINT')
      assert.equal(await exited, 0, stderr)
      assert.equal(existsSync(removedRoot(stderr)), false)
    } finally {
      if (proc.exitCode === null) proc.kill('SIGKILL')
    }
  })
})
