// The agent's libp2p identity lives in DATA_DIR/peer-key so its peer id survives restarts.
import { chmod, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { ConfigError } from './errors.js'

export const PEER_KEY_FILE = 'peer-key'

export async function loadOrCreatePeerKey(dataDir: string): Promise<PrivateKey> {
  const file = join(dataDir, PEER_KEY_FILE)
  let bytes: Uint8Array | undefined
  try {
    bytes = await readFile(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (bytes) {
    try {
      return privateKeyFromProtobuf(bytes)
    } catch (err) {
      throw new ConfigError(
        `${file} is not a libp2p private key (${(err as Error).message}); move it away to make a new identity`,
      )
    }
  }
  const key = await generateKeyPair('Ed25519')
  const tmp = `${file}.tmp`
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600 })
  await chmod(tmp, 0o600)
  await rename(tmp, file)
  return key
}
