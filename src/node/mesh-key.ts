// The mesh's pre-shared key (libp2p private network, "swarm key" v1 format):
//   /key/swarm/psk/1.0.0/
//   /base16/
//   <64 hex digits>
import { readFile } from 'node:fs/promises'
import { ConfigError } from './errors.js'

const HEADER = '/key/swarm/psk/1.0.0/'

/** Reads and checks a swarm key file; returns the bytes @libp2p/pnet expects. */
export async function readMeshKey(file: string): Promise<Uint8Array> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    const message = `meshKey: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`
    throw new ConfigError(message, [message])
  }
  const lines = text.trim().split(/\r?\n/)
  if (
    lines.length !== 3 ||
    lines[0] !== HEADER ||
    lines[1] !== '/base16/' ||
    !/^[0-9a-fA-F]{64}$/.test(lines[2] ?? '')
  ) {
    const message = `meshKey: ${file} is not a swarm key (expected "${HEADER}", "/base16/", 64 hex digits; make one with \`skymesh mesh-key FILE\`)`
    throw new ConfigError(message, [message])
  }
  return new TextEncoder().encode(`${lines.join('\n')}\n`)
}
