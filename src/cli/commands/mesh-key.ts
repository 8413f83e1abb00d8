// `skymesh mesh-key [FILE]`: a new pre-shared key for a private mesh, in libp2p's swarm key format.
import { chmod, writeFile } from 'node:fs/promises'
import type { Command } from 'commander'
import { CliError } from '../errors.js'
import { type CliIo, printJson } from '../io.js'

/** `/key/swarm/psk/1.0.0/\n/base16/\n` + 64 hex digits. */
export const SWARM_KEY_LENGTH = 95

export async function newSwarmKey(): Promise<Uint8Array> {
  const { generateKey } = await import('@libp2p/pnet')
  const key = new Uint8Array(SWARM_KEY_LENGTH)
  generateKey(key)
  return key
}

export function registerMeshKeyCommand(program: Command, io: CliIo): void {
  program
    .command('mesh-key')
    .description('generate a pre-shared key for a private mesh (give the same file to every agent)')
    .argument('[file]', 'write the key here (mode 0600) instead of to stdout')
    .option('--force', 'overwrite FILE if it exists')
    .option('--json', 'print { file } (or { key } without FILE) as JSON')
    .action(async (file: string | undefined, opts: { force?: boolean; json?: boolean }) => {
      const key = await newSwarmKey()
      if (file === undefined) {
        const text = new TextDecoder().decode(key)
        if (opts.json) return printJson(io, { key: text })
        io.stdout.write(`${text}\n`)
        return
      }
      try {
        await writeFile(file, key, { mode: 0o600, flag: opts.force ? 'w' : 'wx' })
      } catch (err) {
        if ((err as { code?: string }).code === 'EEXIST') {
          throw new CliError(`${file} exists; pass --force to overwrite it`)
        }
        throw new CliError(`cannot write ${file}: ${(err as Error).message}`)
      }
      // `mode` applies only when the file is created: an overwritten file keeps its old mode
      await chmod(file, 0o600)
      if (opts.json) return printJson(io, { file })
      io.stdout.write(`wrote a new mesh key to ${file}; start every agent with --mesh-key ${file}\n`)
    })
}
