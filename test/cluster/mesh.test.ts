// Real agents as child processes on loopback: they find each other through bootstrap addresses and
// exchange hellos; a private mesh (pre-shared key) keeps out a peer without the key.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import {
  type RunningAgent,
  removeDir,
  runCli,
  sleep,
  startAgent,
  tempDir,
  waitFor,
} from '../helpers/agent-process.js'

const started: RunningAgent[] = []
const dirs: string[] = []

after(async () => {
  await Promise.all(started.map((a) => a.stop()))
  await Promise.all([...started.map((a) => a.dataDir), ...dirs].map(removeDir))
})

async function start(opts: Parameters<typeof startAgent>[0] = {}): Promise<RunningAgent> {
  const a = await startAgent(opts)
  started.push(a)
  return a
}

async function peerIds(a: RunningAgent): Promise<string[]> {
  const res = await a.request('GET', '/v1/peers')
  assert.equal(res.status, 200)
  return (res.body.peers as { peerId: string }[]).map((p) => p.peerId)
}

describe('a mesh of agents on loopback', () => {
  it('connects agents through bootstrap addresses and exchanges hellos', async () => {
    const a = await start({ site: 'site-a' })
    const b = await start({ site: 'site-b', bootstrap: [a.addrs[0]!] })
    const c = await start({ site: 'site-b', bootstrap: [a.addrs[0]!] })
    await waitFor('a to see b and c', async () => {
      const ids = await peerIds(a)
      return ids.includes(b.peerId) && ids.includes(c.peerId)
    })
    assert.ok((await peerIds(b)).includes(a.peerId))
    // The hello exchange tells b where a is.
    const seen = await waitFor('b to learn a site', async () => {
      const res = await b.request('GET', '/v1/peers')
      return (res.body.peers as { peerId: string; site?: string }[]).find(
        (p) => p.peerId === a.peerId && p.site,
      )
    })
    assert.equal(seen.site, 'site-a')
    const node = await c.request('GET', '/v1/node')
    assert.equal(node.status, 200)
    assert.equal(node.body.peerId, c.peerId)
    assert.equal(node.body.site, 'site-b')
    assert.equal(node.body.driver, 'synthetic')
    assert.match(node.body.version, /^\d+\.\d+\.\d+/)
    assert.ok(Date.parse(node.body.startedAt) <= Date.now())
    // The CLI shows the same peers.
    const cli = await runCli(['peers', '--data-dir', b.dataDir, '--json'])
    assert.equal(cli.code, 0, cli.stderr)
    assert.ok(JSON.parse(cli.stdout).peers.some((p: { peerId: string }) => p.peerId === a.peerId))
  })

  it('keeps a peer without the mesh key out of a private mesh', async () => {
    const dir = await tempDir()
    dirs.push(dir)
    const key1 = join(dir, 'mesh1.key')
    const key2 = join(dir, 'mesh2.key')
    for (const k of [key1, key2]) {
      const r = await runCli(['mesh-key', k])
      assert.equal(r.code, 0, r.stderr)
    }
    const a = await start({ args: ['--mesh-key', key1, '--log-level', 'info'] })
    const b = await start({ args: ['--mesh-key', key1], bootstrap: [a.addrs[0]!] })
    const wrongKey = await start({
      args: ['--mesh-key', key2, '--log-level', 'info'],
      bootstrap: [a.addrs[0]!],
    })
    const noKey = await start({ bootstrap: [a.addrs[0]!] })
    await waitFor('b to join the private mesh', async () => (await peerIds(a)).includes(b.peerId))
    // Give the outsiders time for several dial attempts (their dials time out after 5 s).
    await sleep(6000)
    const aPeers = await peerIds(a)
    assert.ok(!aPeers.includes(wrongKey.peerId), 'a peer with another key connected')
    assert.ok(!aPeers.includes(noKey.peerId), 'a peer without a key connected')
    assert.deepEqual(await peerIds(wrongKey), [])
    assert.deepEqual(await peerIds(noKey), [])
  })

  it('refuses a mesh key file that is not a swarm key, exit 2, starting nothing', async () => {
    const dir = await tempDir()
    dirs.push(dir)
    const bad = join(dir, 'bad.key')
    await writeFile(bad, 'not a key\n')
    const dataDir = join(dir, 'data')
    const r = await runCli(['agent', '--data-dir', dataDir, '--mesh-key', bad, '--api', '127.0.0.1:0'])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /meshKey/)
    const { existsSync } = await import('node:fs')
    assert.equal(existsSync(dataDir), false, 'data dir was created for a bad config')
  })
})
