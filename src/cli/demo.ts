// `skymesh demo`: a throwaway local mesh. Spawns N agents (two sites) in temp data dirs, creates a
// few small VMs over the API, shows a live view, and on --duration / SIGINT / SIGTERM stops every
// agent (SIGKILL after 5 s) and removes the temp dirs.
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { CreateVmRequest, VmRecord } from '../node/types.js'
import { ApiClient } from './client.js'
import type { AgentFile } from './connection.js'
import { type AgentSnapshot, hint, mergeVms, renderLine, renderView } from './demo-view.js'
import { ApiError, CliError } from './errors.js'
import type { CliIo } from './io.js'

export interface DemoOptions {
  agents: number
  vms: number
  /** Seconds to run once the VMs exist; until a signal when absent. */
  durationS?: number
  json?: boolean
  /** The skymesh entry script the agents run (default: bin/skymesh.js of this package). */
  binPath?: string
  startTimeoutMs?: number
  tickMs?: number
  /** Aborting it stops the demo like SIGINT (for in-process callers). */
  signal?: AbortSignal
}

export interface DemoSummary {
  agents: (Omit<AgentSnapshot, 'vms'> & { pid?: number; addrs?: string[] })[]
  vms: VmRecord[]
  created: number
  warnings: string[]
  durationS: number
}

const KILL_AFTER_MS = 5000
const TAIL_CHARS = 4000
const CLEAR_HOME = '\x1b[2J\x1b[H'

interface Agent {
  index: number
  site: string
  dataDir: string
  child: ChildProcess
  /** Last output (stdout and stderr as they came), shown when the agent fails to start. */
  tail: string
  exit?: { code: number | null; signal: NodeJS.Signals | null }
  exited: Promise<void>
  file?: AgentFile
  client?: ApiClient
}

/** bin/skymesh.js: three levels up from dist/src/cli/demo.js, two from src/cli/demo.ts under tsx. */
export function defaultBinPath(): string {
  for (const rel of ['../../../bin/skymesh.js', '../../bin/skymesh.js']) {
    const p = fileURLToPath(new URL(rel, import.meta.url))
    if (existsSync(p)) return p
  }
  return fileURLToPath(new URL('../../../bin/skymesh.js', import.meta.url))
}

export async function runDemo(opts: DemoOptions, io: CliIo): Promise<number> {
  const stop = new AbortController()
  let signals = 0
  const agents: Agent[] = []
  const onSignal = () => {
    signals++
    stop.abort()
    // a second Ctrl-C: do not wait for a graceful stop
    if (signals > 1) for (const a of agents) if (!a.exit) a.child.kill('SIGKILL')
  }
  const sigs: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']
  for (const s of sigs) process.on(s, onSignal)
  opts.signal?.addEventListener('abort', onSignal, { once: true })

  const log = (line: string) => void io.stderr.write(`${line}\n`)
  const root = await mkdtemp(join(tmpdir(), 'skymesh-demo-'))
  const bin = opts.binPath ?? defaultBinPath()
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000
  try {
    log(`starting ${opts.agents} agents in ${root}`)
    const first = await startAgent(0, root, bin, [])
    agents.push(first)
    await waitReady(first, startTimeoutMs, stop.signal)
    const boot = bootstrapAddr(first)
    const rest = await Promise.all(
      Array.from({ length: opts.agents - 1 }, (_, i) => startAgent(i + 1, root, bin, ['--bootstrap', boot])),
    )
    agents.push(...rest)
    await Promise.all(rest.map((a) => waitReady(a, startTimeoutMs, stop.signal)))

    const { created, warnings } = await createVms(agents, opts.vms)
    for (const w of warnings) log(`warning: ${w}`)
    const dir0 = first.dataDir
    if (opts.json || !io.stdout.isTTY) io[opts.json ? 'stderr' : 'stdout'].write(hint(dir0))

    const started = Date.now()
    const deadline = opts.durationS === undefined ? Number.POSITIVE_INFINITY : started + opts.durationS * 1000
    const tickMs = opts.tickMs ?? 1000
    const stopHint = opts.durationS === undefined ? 'Ctrl-C to stop' : `stops after ${opts.durationS}s`
    while (!stop.signal.aborted) {
      if (!opts.json) {
        const snap = await snapshot(agents)
        const elapsed = Date.now() - started
        if (io.stdout.isTTY) io.stdout.write(CLEAR_HOME + renderView(snap, elapsed, stopHint))
        else io.stdout.write(renderLine(snap, elapsed))
      }
      const left = deadline - Date.now()
      if (left <= 0) break
      await sleep(Math.min(tickMs, left), undefined, { signal: stop.signal }).catch(() => {})
    }
    if (opts.json) {
      const snap = await snapshot(agents)
      const summary: DemoSummary = {
        agents: snap.map(({ vms: _vms, ...a }, i) => ({
          ...a,
          pid: agents[i]?.child.pid,
          addrs: agents[i]?.file?.addrs,
        })),
        vms: mergeVms(snap),
        created,
        warnings,
        durationS: Math.round((Date.now() - started) / 100) / 10,
      }
      io.stdout.write(`${JSON.stringify(summary, null, 2)}\n`)
    }
    return 0
  } catch (err) {
    // Ctrl-C while the agents start is a normal way out
    if (stop.signal.aborted && !(err instanceof CliError)) return 0
    throw err
  } finally {
    for (const s of sigs) process.off(s, onSignal)
    opts.signal?.removeEventListener('abort', onSignal)
    if (agents.length > 0) log(`stopping ${agents.length} agents`)
    await Promise.all(agents.map(stopAgent))
    await rm(root, { recursive: true, force: true })
    log(`stopped; removed ${root}`)
  }
}

async function startAgent(index: number, root: string, bin: string, extra: string[]): Promise<Agent> {
  const dataDir = join(root, `agent-${index}`)
  await mkdir(dataDir, { recursive: true })
  const site = index % 2 === 0 ? 'site-a' : 'site-b'
  const args = [bin, 'agent', '--data-dir', dataDir, '--listen', '/ip4/127.0.0.1/tcp/0']
  args.push('--api', '127.0.0.1:0', '--site', site, ...extra)
  // own process group: a Ctrl-C in the terminal reaches only the demo, which then stops the agents in order
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  const agent: Agent = { index, site, dataDir, child, tail: '', exited: Promise.resolve() }
  const keep = (chunk: Buffer) => {
    agent.tail = (agent.tail + chunk.toString('utf8')).slice(-TAIL_CHARS)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  agent.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      agent.exit = { code, signal }
      resolve()
    })
    child.once('error', (err) => {
      keep(Buffer.from(`spawn failed: ${err.message}\n`))
      agent.exit = { code: null, signal: null }
      resolve()
    })
  })
  return agent
}

/** Polls for DIR/agent.json (written once the agent listens) and its API token. */
async function waitReady(agent: Agent, timeoutMs: number, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    signal.throwIfAborted()
    if (agent.exit) {
      const how = agent.exit.signal ? `by ${agent.exit.signal}` : `with code ${agent.exit.code}`
      throw new CliError(`agent #${agent.index} exited ${how} before it was ready${tailOf(agent)}`)
    }
    const file = await tryReadAgentFile(agent.dataDir)
    if (file) {
      const token = (await readFile(join(agent.dataDir, 'api-token'), 'utf8').catch(() => '')).trim()
      if (token) {
        agent.file = file
        agent.client = new ApiClient(normalize(file.api), token, { timeoutMs: 3000 })
        return
      }
    }
    if (Date.now() > deadline) {
      throw new CliError(
        `agent #${agent.index} did not write ${join(agent.dataDir, 'agent.json')} within ${timeoutMs / 1000} s${tailOf(agent)}`,
      )
    }
    await sleep(100)
  }
}

async function tryReadAgentFile(dataDir: string): Promise<AgentFile | undefined> {
  try {
    const f = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as Partial<AgentFile>
    if (typeof f.api !== 'string' || !Array.isArray(f.addrs)) return undefined
    return { pid: f.pid ?? 0, peerId: f.peerId ?? '', api: f.api, addrs: f.addrs }
  } catch {
    // absent, or caught half-written
    return undefined
  }
}

function normalize(api: string): string {
  return /^https?:\/\//.test(api) ? api : `http://${api}`
}

function tailOf(agent: Agent): string {
  const lines = agent.tail.trimEnd().split('\n').slice(-20)
  return lines.length && lines[0] !== ''
    ? `\n--- agent #${agent.index} output (last lines) ---\n${lines.join('\n')}`
    : ''
}

/** The first agent's loopback TCP address, with its /p2p/ id. */
function bootstrapAddr(agent: Agent): string {
  const addrs = agent.file?.addrs ?? []
  const addr = addrs.find((a) => a.startsWith('/ip4/127.0.0.1/tcp/')) ?? addrs[0]
  if (!addr) throw new CliError(`agent #0 listens on no address (agent.json has no addrs)${tailOf(agent)}`)
  const peerId = agent.file?.peerId
  return addr.includes('/p2p/') || !peerId ? addr : `${addr}/p2p/${peerId}`
}

/** Small VMs, round-robin over the agents, some of them busy writing memory. */
export function demoVmSpecs(count: number): CreateVmRequest[] {
  const memory = [32, 48, 64]
  const dirty = [2, 0, 8, 4]
  return Array.from({ length: count }, (_, i) => ({
    name: `demo-${i + 1}`,
    vcpus: 1,
    memoryMiB: memory[i % memory.length]!,
    diskMiB: 64,
    workload: { dirtyMiBps: dirty[i % dirty.length]!, hotSetMiB: 16 },
  }))
}

async function createVms(agents: Agent[], count: number): Promise<{ created: number; warnings: string[] }> {
  const warnings: string[] = []
  let created = 0
  const specs = demoVmSpecs(count)
  for (const [i, spec] of specs.entries()) {
    const agent = agents[i % agents.length]!
    try {
      await agent.client!.createVm(spec)
      created++
    } catch (err) {
      const why = err instanceof ApiError ? `${err.code}: ${err.message}` : (err as Error).message
      warnings.push(`could not create ${spec.name} on agent #${agent.index}: ${why}`)
    }
  }
  return { created, warnings }
}

async function snapshot(agents: Agent[]): Promise<AgentSnapshot[]> {
  return Promise.all(
    agents.map(async (a): Promise<AgentSnapshot> => {
      const base: AgentSnapshot = {
        index: a.index,
        site: a.site,
        dataDir: a.dataDir,
        api: a.client?.baseUrl,
        peerId: a.file?.peerId,
      }
      if (a.exit) return { ...base, error: `exited (${a.exit.signal ?? `code ${a.exit.code}`})` }
      if (!a.client) return { ...base, error: 'starting' }
      try {
        const [node, peers, vms] = await Promise.all([a.client.node(), a.client.peers(), a.client.listVms()])
        return { ...base, node, peers: peers.peers.length, vms: vms.vms }
      } catch (err) {
        return { ...base, error: err instanceof ApiError ? err.code : 'unreachable' }
      }
    }),
  )
}

/** SIGTERM, then SIGKILL if it has not exited after 5 s. */
async function stopAgent(agent: Agent): Promise<void> {
  if (agent.exit) return
  agent.child.kill('SIGTERM')
  const timer = setTimeout(() => agent.child.kill('SIGKILL'), KILL_AFTER_MS)
  await agent.exited
  clearTimeout(timer)
}
