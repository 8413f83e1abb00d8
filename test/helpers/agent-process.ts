// Starts real `skymesh agent` processes (the built CLI) on loopback for cluster tests.
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import { join, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { AGENT_NODE_FLAGS, agentEnv } from '../../src/node/node-flags.js'

/** bin/skymesh.js, from dist/test/helpers/ or test/helpers/. */
export const CLI = fileURLToPath(new URL('../../bin/skymesh.js', import.meta.url)).replace(
  /\/dist\/bin\/skymesh\.js$/,
  '/bin/skymesh.js',
)

export interface AgentInfo {
  pid: number
  peerId: string
  api: string
  addrs: string[]
}

export interface RunningAgent extends AgentInfo {
  dataDir: string
  token: string
  proc: ChildProcess
  output: () => string
  /** fetch against the agent's API with its token; returns status and parsed JSON (or text). */
  request: (
    method: string,
    path: string,
    body?: unknown,
    headers?: Record<string, string>,
  ) => Promise<ApiResponse>
  /** SIGTERM and wait for the exit code. */
  stop: () => Promise<number | null>
  /** SIGKILL and wait. */
  kill9: () => Promise<void>
}

export interface ApiResponse {
  status: number
  body: any
}

export async function tempDir(prefix = 'skymesh-test-'): Promise<string> {
  return mkdtemp(join(os.tmpdir(), prefix))
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true })
}

/** Runs the CLI to completion; for commands that exit (bad config, vm ls, demo). */
export function runCli(
  args: string[],
  opts: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, SKYMESH_LOG_FORMAT: 'json', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    proc.stdout.on('data', (d) => {
      stdout += d
    })
    proc.stderr.on('data', (d) => {
      stderr += d
    })
    const timer = setTimeout(() => {
      proc.kill('SIGKILL')
      reject(new Error(`skymesh ${args.join(' ')} timed out\nstdout: ${stdout}\nstderr: ${stderr}`))
    }, opts.timeoutMs ?? 60_000)
    proc.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

function waitExit(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode)
  return new Promise((resolve) => proc.once('exit', (code) => resolve(code)))
}

export async function startAgent(
  opts: {
    dataDir?: string
    args?: string[]
    site?: string
    bootstrap?: string[]
    timeoutMs?: number
    /** Run inside this network namespace (`ip netns exec`; see netns.ts). */
    netns?: string
    /** Address for libp2p and the API (default 127.0.0.1). */
    listenHost?: string
    /** libp2p listen multiaddr (default: any free port on listenHost). */
    listen?: string
  } = {},
): Promise<RunningAgent> {
  const dataDir = opts.dataDir ?? (await tempDir())
  const listenHost = opts.listenHost ?? '127.0.0.1'
  const args = [
    'agent',
    '--data-dir',
    dataDir,
    '--listen',
    opts.listen ?? `/ip4/${listenHost}/tcp/0`,
    '--api',
    `${listenHost}:0`,
    '--log-level',
    'debug',
    ...(opts.site ? ['--site', opts.site] : []),
    ...(opts.bootstrap ?? []).flatMap((b) => ['--bootstrap', b]),
    ...(opts.args ?? []),
  ]
  const agentFile = join(dataDir, 'agent.json')
  await rm(agentFile, { force: true })
  // `ip netns exec` execs the command in place: the child's pid is the agent's
  const [cmd, cmdArgs] = opts.netns
    ? ['ip', ['netns', 'exec', opts.netns, process.execPath, ...AGENT_NODE_FLAGS, CLI, ...args]]
    : [process.execPath, [...AGENT_NODE_FLAGS, CLI, ...args]]
  const proc = spawn(cmd, cmdArgs, {
    env: { ...agentEnv(), SKYMESH_LOG_FORMAT: 'json' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  proc.stdout?.on('data', (d) => {
    output += d
  })
  proc.stderr?.on('data', (d) => {
    output += d
  })
  keepLogOnExit(proc, dataDir, () => output)
  const deadline = Date.now() + (opts.timeoutMs ?? 60_000)
  let info: AgentInfo | undefined
  while (!info) {
    if (proc.exitCode !== null)
      throw new Error(`agent exited with ${proc.exitCode} before it was ready:\n${output}`)
    if (Date.now() > deadline) {
      proc.kill('SIGKILL')
      throw new Error(`agent not ready in time:\n${output}`)
    }
    if (existsSync(agentFile)) {
      try {
        info = JSON.parse(await readFile(agentFile, 'utf8')) as AgentInfo
      } catch {
        // written atomically, but be lenient
      }
    }
    if (!info) await sleep(50)
  }
  const token = (await readFile(join(dataDir, 'api-token'), 'utf8')).trim()
  const agent: RunningAgent = {
    ...info,
    dataDir,
    token,
    proc,
    output: () => output,
    async request(method, path, body, headers = {}) {
      const res = await fetch(`${info.api}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...headers,
        },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      })
      const text = await res.text()
      let parsed: unknown = text
      try {
        parsed = text ? JSON.parse(text) : undefined
      } catch {
        // not JSON (e.g. /metrics)
      }
      return { status: res.status, body: parsed }
    },
    async stop() {
      proc.kill('SIGTERM')
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000)
      const code = await waitExit(proc)
      clearTimeout(timer)
      return code
    },
    async kill9() {
      proc.kill('SIGKILL')
      await waitExit(proc)
    },
  }
  return agent
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** Polls `fn` until it returns a truthy value or the time is up (then throws with `what`). */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

/**
 * With SKYMESH_TEST_LOG_DIR set, an agent's whole output is written there when it exits (one file per
 * agent process, named after its data dir): the way to read what the agents said in a flaky CI run.
 */
function keepLogOnExit(proc: ChildProcess, dataDir: string, output: () => string): void {
  const dir = process.env.SKYMESH_TEST_LOG_DIR
  if (!dir) return
  proc.once('exit', () => {
    try {
      mkdirSync(dir, { recursive: true })
      const name = `${dataDir.split(sep).slice(-2).join('-')}-${proc.pid}.log`
      writeFileSync(join(dir, name), output())
    } catch {
      // a log that cannot be kept must not fail the test
    }
  })
}
