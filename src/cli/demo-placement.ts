// `skymesh demo --placement`: a throwaway mesh of 4 agents (256 MiB each, fast placement triggers) that
// shows cooperative placement at work: one host is overloaded and relieved by a live migration, another
// runs almost nothing and is emptied into a host that runs VMs. It prints each placement event as an
// agent reports it, then a summary (--json: one JSON object), and stops the agents and removes their dirs.
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { AGENT_NODE_FLAGS, agentEnv } from '../node/node-flags.js'
import type { PlacementEventView } from '../node/placement/index.js'
import { ApiClient } from './client.js'
import { CliError } from './errors.js'
import { formatDuration, shortId } from './format.js'
import type { CliIo } from './io.js'

export interface PlacementDemoOptions {
  binPath: string
  json?: boolean
  /** Give up after this long (default 180 s). */
  timeoutMs?: number
  signal?: AbortSignal
}

export interface PlacementDemoSummary {
  agents: { index: number; peerId: string; vmsBefore: number; vmsAfter: number }[]
  events: (PlacementEventView & { agent: number })[]
  overloadRelieved: boolean
  underloadEmptied: boolean
  durationMs: number
}

const AGENTS = 4
const CONFIG = `capacity:
  memoryMiB: 256
  vcpus: 4
  diskMiB: 4096
gossip:
  probeIntervalMs: 300
  probeTimeoutMs: 150
  heartbeatMs: 500
  debounceMs: 50
placement:
  tickMs: 250
  overloadGraceMs: 2000
  underloadGraceMs: 4000
  retryBackoffMs: 5000
`
// Host 0: 8 x 30 MiB (94 %: overloaded). Host 1: 2 x 16 MiB (12 %: underloaded). Host 2: 128 MiB.
const LAYOUT: number[][] = [Array(8).fill(30), [16, 16], [128], []]

interface Proc {
  index: number
  dataDir: string
  child: ChildProcess
  client?: ApiClient
  peerId?: string
}

export async function runPlacementDemo(opts: PlacementDemoOptions, io: CliIo): Promise<number> {
  const started = Date.now()
  const deadline = started + (opts.timeoutMs ?? 180_000)
  const root = await mkdtemp(join(tmpdir(), 'skymesh-demo-placement-'))
  const say = (line: string) => void (opts.json ? io.stderr : io.stdout).write(`${line}\n`)
  const procs: Proc[] = []
  // Ctrl-C stops the demo, which then stops its agents (they run in their own process group).
  const stop = new AbortController()
  const onSignal = () => stop.abort()
  for (const s of ['SIGINT', 'SIGTERM'] as const) process.on(s, onSignal)
  opts.signal?.addEventListener('abort', onSignal, { once: true })
  const signal = stop.signal
  try {
    const config = join(root, 'agent.yaml')
    await writeFile(config, CONFIG)
    say(`starting ${AGENTS} agents (256 MiB each) in ${root}`)
    for (let i = 0; i < AGENTS; i++) {
      const boot = procs[0] ? await bootstrap(procs[0]) : undefined
      const p = await spawnAgent(i, root, opts.binPath, config, boot)
      procs.push(p)
      await ready(p, deadline, signal)
    }
    await until('the mesh to form', deadline, signal, async () => {
      const c = await procs[0]!.client!.cluster()
      return c.counts.alive === AGENTS && c.hosts.every((h) => h.capacity)
    })
    for (const [i, sizes] of LAYOUT.entries()) {
      for (const [k, memoryMiB] of sizes.entries())
        await procs[i]!.client!.createVm({ name: `p${i}-${k}`, vcpus: 1, memoryMiB, diskMiB: 8 })
    }
    const before = await Promise.all(procs.map(async (p) => (await p.client!.listVms()).vms.length))
    say(`agent 0 runs 240 of 256 MiB (overloaded), agent 1 runs 32 MiB (underloaded), agent 2 runs 128 MiB`)
    const seen = new Set<string>()
    const events: PlacementDemoSummary['events'] = []
    let relieved = false
    let emptied = false
    while (!(relieved && emptied)) {
      signal.throwIfAborted()
      if (Date.now() > deadline) break
      for (const p of procs) {
        const st = await p.client!.placementEvents()
        for (const e of [...st.open, ...st.recent]) {
          const key = `${e.id}/${e.state}`
          if (seen.has(key)) continue
          seen.add(key)
          say(eventLine(p.index, e, procs))
          if (e.closedAt) events.push({ ...e, agent: p.index })
        }
      }
      relieved = events.some((e) => e.agent === 0 && e.kind === 'overload' && e.state === 'done')
      emptied = events.some((e) => e.agent === 1 && e.kind === 'underload' && e.state === 'done')
      await sleep(250)
    }
    const after = await Promise.all(procs.map(async (p) => (await p.client!.listVms()).vms.length))
    const summary: PlacementDemoSummary = {
      agents: procs.map((p, i) => ({
        index: i,
        peerId: p.peerId ?? '',
        vmsBefore: before[i]!,
        vmsAfter: after[i]!,
      })),
      events,
      overloadRelieved: relieved,
      underloadEmptied: emptied,
      durationMs: Date.now() - started,
    }
    if (opts.json) io.stdout.write(`${JSON.stringify(summary, null, 2)}\n`)
    else {
      for (const a of summary.agents)
        say(`agent ${a.index}: ${a.vmsBefore} VM(s) before, ${a.vmsAfter} after`)
      say(
        `${relieved ? 'overload relieved' : 'overload NOT relieved'}, ` +
          `${emptied ? 'underloaded host emptied' : 'underloaded host NOT emptied'} ` +
          `(${formatDuration(summary.durationMs)})`,
      )
    }
    return relieved && emptied ? 0 : 1
  } finally {
    for (const s of ['SIGINT', 'SIGTERM'] as const) process.off(s, onSignal)
    await Promise.all(procs.map((p) => stopAgent(p)))
    await rm(root, { recursive: true, force: true })
  }
}

function eventLine(agent: number, e: PlacementEventView, procs: Proc[]): string {
  const name = (peer: string) => {
    const i = procs.findIndex((p) => p.peerId === peer)
    return i >= 0 ? `agent ${i}` : shortId(peer)
  }
  const moves = e.moves.map((m) => `${m.vm} -> ${name(m.to)}`).join(', ')
  const ms = e.durationMs
  const took = ms === undefined ? '' : ` in ${ms < 1000 ? `${ms} ms` : formatDuration(ms)}`
  return `agent ${agent}: ${e.kind} event ${e.state}${took}, partition of ${e.members.length}${moves ? `: ${moves}` : ''}`
}

async function spawnAgent(
  index: number,
  root: string,
  bin: string,
  config: string,
  boot?: string,
): Promise<Proc> {
  const dataDir = join(root, `agent-${index}`)
  await mkdir(dataDir, { recursive: true })
  const args = [
    bin,
    'agent',
    '--data-dir',
    dataDir,
    '--listen',
    '/ip4/127.0.0.1/tcp/0',
    '--api',
    '127.0.0.1:0',
  ]
  args.push('--config', config, '--log-level', 'warn', ...(boot ? ['--bootstrap', boot] : []))
  const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, ...args], {
    env: agentEnv(),
    stdio: ['ignore', 'ignore', 'ignore'],
    detached: true,
  })
  return { index, dataDir, child }
}

async function ready(p: Proc, deadline: number, signal?: AbortSignal): Promise<void> {
  await until(`agent ${p.index} to start`, deadline, signal, async () => {
    if (p.child.exitCode !== null) throw new CliError(`agent ${p.index} exited with ${p.child.exitCode}`)
    try {
      const f = JSON.parse(await readFile(join(p.dataDir, 'agent.json'), 'utf8')) as {
        api: string
        peerId: string
      }
      const token = (await readFile(join(p.dataDir, 'api-token'), 'utf8')).trim()
      if (!token) return false
      p.client = new ApiClient(f.api, token, { timeoutMs: 5000 })
      p.peerId = f.peerId
      return true
    } catch {
      return false
    }
  })
}

async function bootstrap(p: Proc): Promise<string> {
  const f = JSON.parse(await readFile(join(p.dataDir, 'agent.json'), 'utf8')) as {
    addrs: string[]
    peerId: string
  }
  const addr = f.addrs.find((a) => a.startsWith('/ip4/127.0.0.1/')) ?? f.addrs[0]
  if (!addr) throw new CliError('agent 0 listens on no address')
  return addr.includes('/p2p/') ? addr : `${addr}/p2p/${f.peerId}`
}

async function until(
  what: string,
  deadline: number,
  signal: AbortSignal | undefined,
  fn: () => Promise<boolean>,
): Promise<void> {
  for (;;) {
    signal?.throwIfAborted()
    if (await fn().catch(() => false)) return
    if (Date.now() > deadline) throw new CliError(`timed out waiting for ${what}`)
    await sleep(200)
  }
}

async function stopAgent(p: Proc): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return
  const exited = new Promise<void>((r) => p.child.once('exit', () => r()))
  p.child.kill('SIGTERM')
  const timer = setTimeout(() => p.child.kill('SIGKILL'), 10_000)
  await exited
  clearTimeout(timer)
}
