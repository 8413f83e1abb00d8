// The API bearer token: DATA_DIR/api-token, created once, readable by its owner only (0600).
import { randomBytes } from 'node:crypto'
import { chmod, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

export const TOKEN_FILE = 'api-token'

export async function loadOrCreateToken(dataDir: string): Promise<string> {
  const file = join(dataDir, TOKEN_FILE)
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
  const tmp = `${file}.tmp`
  await writeFile(tmp, `${token}\n`, { mode: 0o600 })
  await chmod(tmp, 0o600)
  await rename(tmp, file)
  return token
}
