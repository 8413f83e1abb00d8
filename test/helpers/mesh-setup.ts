// Setting up a mesh of real agents for cluster tests: their config file and the wait for the
// members to find each other.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type RunningAgent, waitFor } from './agent-process.js'

/** Config lines for gossip that notices a joining or dead member within about a second. */
export const FAST_GOSSIP = [
  'gossip:',
  '  probeIntervalMs: 300',
  '  probeTimeoutMs: 150',
  '  suspicionMult: 3',
]

/** Writes `lines` as the YAML file `dir/name`; returns its path. */
export async function writeConfig(dir: string, name: string, lines: string[]): Promise<string> {
  const path = join(dir, name)
  await writeFile(path, [...lines, ''].join('\n'))
  return path
}

/** Until `agent` counts `alive` live members. */
export async function meshFormed(
  agent: RunningAgent,
  alive: number,
  opts: { what?: string; timeoutMs?: number } = {},
): Promise<void> {
  await waitFor(
    opts.what ?? 'the mesh to form',
    async () => (await agent.request('GET', '/v1/cluster')).body.counts.alive === alive,
    opts.timeoutMs,
  )
}
