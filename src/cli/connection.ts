// Finds the agent to talk to: --data-dir (agent.json + api-token) or --api with a token, env as defaults.
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Command } from 'commander'
import { ApiClient } from './client.js'
import { CliError, UsageError } from './errors.js'
import type { CliIo } from './io.js'

export interface ConnectionOptions {
  dataDir?: string
  api?: string
  token?: string
  tokenFile?: string
}

/** What a running agent writes into its data dir (removed on a clean stop). */
export interface AgentFile {
  pid: number
  peerId: string
  api: string
  addrs: string[]
}

export interface Connection {
  api: string
  token: string
}

export function addConnectionOptions(cmd: Command): Command {
  return cmd
    .option(
      '--data-dir <dir>',
      "a local agent's data dir: reads agent.json and api-token (env SKYMESH_DATA_DIR)",
    )
    .option('--api <url>', "the agent's API as URL or HOST:PORT (env SKYMESH_API)")
    .option('--token <token>', 'API token for --api (env SKYMESH_TOKEN)')
    .option('--token-file <file>', 'file that holds the API token')
    .option('--json', 'print the raw API JSON')
}

/** `127.0.0.1:4711` or `http://host:4711/` → `http://host:4711`. */
export function normalizeApi(value: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`
  let url: URL
  try {
    url = new URL(withScheme)
  } catch {
    throw new UsageError(`invalid API address "${value}": expected a URL or HOST:PORT`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`invalid API address "${value}": only http and https are supported`)
  }
  return `${url.origin}${url.pathname}`.replace(/\/+$/, '')
}

const NONE =
  'no agent to talk to: pass --data-dir DIR or --api HOST:PORT with --token/--token-file ' +
  '(or set SKYMESH_DATA_DIR, or SKYMESH_API and SKYMESH_TOKEN)'

export async function resolveConnection(opts: ConnectionOptions, env: CliIo['env']): Promise<Connection> {
  const explicitToken = opts.token ?? (opts.tokenFile ? await readTokenFile(opts.tokenFile) : undefined)
  // flags beat the environment; --api beats --data-dir (whose token is then a fallback)
  let api = opts.api
  let dataDir = opts.dataDir
  if (api === undefined && dataDir === undefined) {
    api = env.SKYMESH_API || undefined
    dataDir = env.SKYMESH_DATA_DIR || undefined
  }
  if (api !== undefined) {
    const url = normalizeApi(api)
    const token =
      explicitToken ??
      (env.SKYMESH_TOKEN || undefined) ??
      (dataDir ? await readDataDirToken(dataDir) : undefined)
    if (!token) {
      throw new UsageError(
        `no API token for ${url}: pass --token TOKEN or --token-file FILE (or set SKYMESH_TOKEN)`,
      )
    }
    return { api: url, token }
  }
  if (dataDir !== undefined) {
    const agent = await readAgentFile(dataDir)
    const token = explicitToken ?? (await readDataDirToken(dataDir))
    return { api: normalizeApi(agent.api), token }
  }
  throw new UsageError(NONE)
}

export async function connect(opts: ConnectionOptions, io: CliIo): Promise<ApiClient> {
  const c = await resolveConnection(opts, io.env)
  return new ApiClient(c.api, c.token)
}

/** Reads DIR/agent.json; a missing one means no agent runs there. */
export async function readAgentFile(dataDir: string): Promise<AgentFile> {
  const file = join(dataDir, 'agent.json')
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if (code(err) !== 'ENOENT') throw new CliError(`cannot read ${file}: ${(err as Error).message}`)
    const dirExists = await stat(dataDir).then(
      (s) => s.isDirectory(),
      () => false,
    )
    if (!dirExists) throw new UsageError(`data dir ${dataDir} does not exist`)
    throw new CliError(
      `no agent running with data dir ${dataDir} (no agent.json; start one with \`skymesh agent --data-dir ${dataDir}\`)`,
    )
  }
  let parsed: Partial<AgentFile>
  try {
    parsed = JSON.parse(text) as Partial<AgentFile>
  } catch {
    throw new CliError(`${file} is not valid JSON (is the agent still starting?)`)
  }
  if (typeof parsed.api !== 'string' || parsed.api === '') throw new CliError(`${file} names no API address`)
  return {
    pid: typeof parsed.pid === 'number' ? parsed.pid : 0,
    peerId: typeof parsed.peerId === 'string' ? parsed.peerId : '',
    api: parsed.api,
    addrs: Array.isArray(parsed.addrs) ? parsed.addrs.filter((a): a is string => typeof a === 'string') : [],
  }
}

async function readDataDirToken(dataDir: string): Promise<string> {
  const file = join(dataDir, 'api-token')
  try {
    const token = (await readFile(file, 'utf8')).trim()
    if (token === '') throw new CliError(`${file} is empty`)
    return token
  } catch (err) {
    if (err instanceof CliError) throw err
    if (code(err) === 'ENOENT') throw new CliError(`no API token in ${dataDir} (${file} is missing)`)
    throw new CliError(`cannot read ${file}: ${(err as Error).message}`)
  }
}

async function readTokenFile(file: string): Promise<string> {
  let token: string
  try {
    token = (await readFile(file, 'utf8')).trim()
  } catch (err) {
    throw new UsageError(`cannot read --token-file ${file}: ${(err as Error).message}`)
  }
  if (token === '') throw new UsageError(`--token-file ${file} is empty`)
  return token
}

function code(err: unknown): string | undefined {
  return (err as { code?: string } | null)?.code
}
