// The API token: generated once into DATA_DIR/api-token (0600), or taken from a given file.
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { ConfigError } from '../../src/node/errors.js'
import { loadOrCreateToken } from '../../src/node/token.js'

const dirs: string[] = []
const dir = async () => {
  const d = await mkdtemp(join(os.tmpdir(), 'skymesh-token-'))
  dirs.push(d)
  return d
}
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

describe('API token', () => {
  it('is generated once, kept in a 0600 file, and the same on the next start', async () => {
    const d = await dir()
    const first = await loadOrCreateToken(d)
    assert.ok(first.length >= 32)
    assert.equal((await stat(join(d, 'api-token'))).mode & 0o777, 0o600)
    assert.equal(await loadOrCreateToken(d), first)
  })

  it('comes from a given file (a shared secret) and is copied for the CLI', async () => {
    const d = await dir()
    const secret = join(d, 'secret')
    await writeFile(secret, 'a-shared-token-of-enough-length\n')
    assert.equal(await loadOrCreateToken(d, secret), 'a-shared-token-of-enough-length')
    assert.equal((await readFile(join(d, 'api-token'), 'utf8')).trim(), 'a-shared-token-of-enough-length')
    assert.equal((await stat(join(d, 'api-token'))).mode & 0o777, 0o600)
  })

  it('refuses a missing or too short token file with a config error, writing nothing', async () => {
    const d = await dir()
    await assert.rejects(loadOrCreateToken(d, join(d, 'missing')), ConfigError)
    const short = join(d, 'short')
    await writeFile(short, 'short\n')
    await assert.rejects(loadOrCreateToken(d, short), /at least 16/)
    await assert.rejects(stat(join(d, 'api-token')), /ENOENT/)
  })
})
