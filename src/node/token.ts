// The API bearer token: DATA_DIR/api-token, created once, readable by its owner only (0600).
import { randomBytes } from 'node:crypto'
import { chmod, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ConfigError } from './errors.js'

export const TOKEN_FILE = 'api-token'

/**
 * The token of DATA_DIR/api-token, created if missing. With `fromFile` (a secret shared with a
 * scraper, say) that token is used instead, and copied to DATA_DIR/api-token for the CLI.
 */
export async function loadOrCreateToken(dataDir: string, fromFile?: string): Promise<string> {
  const file = join(dataDir, TOKEN_FILE)
  if (fromFile) {
    let given: string
    try {
      given = (await readFile(fromFile, 'utf8')).trim()
    } catch (err) {
      throw new ConfigError(`apiTokenFile: cannot read ${fromFile}: ${(err as Error).message}`, [
        `apiTokenFile: cannot read ${fromFile}`,
      ])
    }
    if (given.length < 16 || /\s/.test(given)) {
      throw new ConfigError(`apiTokenFile: ${fromFile} must hold one token of at least 16 characters`, [
        'apiTokenFile: too short',
      ])
    }
    await writeToken(file, given)
    return given
  }
  try {
    const token = (await readFile(file, 'utf8')).trim()
    if (token.length >= 16) {
      // Someone may have loosened it by hand: a token others can read is no secret.
      if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600)
      return token
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const token = randomBytes(32).toString('base64url')
  await writeToken(file, token)
  return token
}

async function writeToken(file: string, token: string): Promise<void> {
  const tmp = `${file}.tmp`
  await writeFile(tmp, `${token}\n`, { mode: 0o600 })
  await chmod(tmp, 0o600)
  await rename(tmp, file)
}
