// A configuration typo stops the agent before anything starts: exit status 2, the key named.
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { removeDir, runCli, tempDir } from '../helpers/agent-process.js'

const dirs: string[] = []
after(async () => {
  await Promise.all(dirs.map(removeDir))
})

async function scratch(): Promise<string> {
  const d = await tempDir()
  dirs.push(d)
  return d
}

describe('skymesh agent configuration', () => {
  it('rejects an unknown key in a YAML config file by name', async () => {
    const dir = await scratch()
    const file = join(dir, 'agent.yaml')
    await writeFile(file, `dataDir: ${join(dir, 'data')}\nsite: here\nlisen:\n  - /ip4/127.0.0.1/tcp/0\n`)
    const r = await runCli(['agent', '--config', file])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /unknown key 'lisen'/)
    assert.equal(existsSync(join(dir, 'data')), false)
  })

  it('rejects a bad value in a JSON config file by name', async () => {
    const dir = await scratch()
    const file = join(dir, 'agent.json')
    await writeFile(file, JSON.stringify({ dataDir: join(dir, 'data'), capacity: { memoryMiB: 'lots' } }))
    const r = await runCli(['agent', '--config', file])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /capacity\.memoryMiB/)
    assert.equal(existsSync(join(dir, 'data')), false)
  })

  it('rejects bad flag values by name', async () => {
    const dir = await scratch()
    const data = join(dir, 'data')
    const cases: [string[], RegExp][] = [
      [['--listen', 'not-a-multiaddr'], /listen\[0\]/],
      [['--bootstrap', '/ip4/127.0.0.1/tcp/1', '--bootstrap', '/garbage'], /bootstrap\[1\]/],
      [['--api', 'localhost'], /api/],
      [['--driver', 'vmware'], /driver/],
      [['--site', 'a site with spaces'], /site/],
    ]
    for (const [flags, pattern] of cases) {
      const r = await runCli(['agent', '--data-dir', data, ...flags])
      assert.equal(r.code, 2, `${flags.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, pattern, flags.join(' '))
    }
    assert.equal(existsSync(data), false)
  })

  it('rejects an unparsable config file and a missing data dir', async () => {
    const dir = await scratch()
    const file = join(dir, 'broken.json')
    await writeFile(file, '{ "site": ')
    const r1 = await runCli(['agent', '--config', file])
    assert.equal(r1.code, 2)
    assert.match(r1.stderr, /not valid JSON/)
    const r2 = await runCli(['agent'], { env: { SKYMESH_DATA_DIR: '' } })
    assert.equal(r2.code, 2)
    assert.match(r2.stderr, /dataDir/)
  })
})
