// `skymesh demo`: a throwaway local mesh. Spawns N agents (two sites) in temp data dirs, creates a
// few small VMs over the API, shows a live view (each agent's own view of the mesh, the mesh's VMs),
// optionally SIGKILLs the last agent and restarts it to show failure detection and rejoin, live-migrates
// a busy VM every few seconds (following it on its source agent), and on --duration / SIGINT / SIGTERM
// stops every agent (SIGKILL after 5 s) and removes the temp dirs.
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { AGENT_NODE_FLAGS, agentEnv } from '../node/node-flags.js'
import type { ClusterView, ClusterVm, CreateVmRequest, VmRecord } from '../node/types.js'
import { ApiClient } from './client.js'
import { dashboardLink } from './commands/dashboard.js'
import type { AgentFile } from './connection.js'
import {
  agentsToAvoid,
  type MigrationPick,
  type MigrationTrack,
  migrationLine,
  migrationSummary,
  newMigrationTrack,
  nextMigrationStep,
  noteMigrationError,
  noteMigrationSkip,
  noteMigrationStart,
  noteMigrationView,
  pickMigration,
  planMigrations,
} from './demo-migrate.js'
import {
  type AgentSnapshot,
  eventLine,
  type FailureClock,
  failureLine,
  failureSummary,
  hint,
  mergeVms,
  newTracker,
  nextFailureStep,
  noteEvent,
  noteKill,
  noteRestart,
  planFailure,
  renderLine,
  renderView,
  trackTick,
  type ViewExtras,
} from './demo-view.js'
import { ApiError, CliError } from './errors.js'
import { formatDuration } from './format.js'
import type { CliIo } from './io.js'

export interface DemoOptions {
  agents: number
  vms: number
  /** Seconds to run once the VMs exist; until a signal when absent. */
  durationS?: number
  /** SIGKILL the last agent this many seconds after the VMs exist (0: never; absent: the default if the run is long enough). */
  killAfterS?: number
  /** Restart it this many seconds after the kill (0: never; absent: the default). */
  restartAfterS?: number
  /** Live-migrate a busy VM this often, in seconds (0: never; absent: the default if the run is long enough). */
  migrateEveryS?: number
  json?: boolean
  /** The skymesh entry script the agents run (default: bin/skymesh.js of this package). */
  binPath?: string
  startTimeoutMs?: number
  tickMs?: number
  /** Aborting it stops the demo like SIGINT (for in-process callers). */
  signal?: AbortSignal
}

export interface DemoSummary {
  agents: (Omit<AgentSnapshot, 'vms' | 'cluster'> & {
    pid?: number
    addrs?: string[]
    /** Its own /v1/cluster counts at the end. */
    cluster?: ClusterView['counts']
  })[]
  vms: VmRecord[]
  /** The mesh's VMs at the end, as the first reachable agent's /v1/cluster/vms tells them. */
  meshVms?: ClusterVm[]
  created: number
  warnings: string[]
  durationS: number
  events: { atS: number; text: string }[]
  failure?: ReturnType<typeof failureSummary>
  /** The scripted live migrations, in start order. */
  migrations: ReturnType<typeof migrationSummary>
}

const KILL_AFTER_MS = 5000
/** How often a migration in progress is asked for its progress, and the live view redrawn meanwhile. */
const MIGRATION_POLL_MS = 250
/** A source that does not answer this many polls in a row (while its process lives) loses its migration. */
const MIGRATION_POLL_FAILURES = 20
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
  /** Killed on purpose by the scripted failure. */
  killed?: boolean
  /** The killed agent's entry once its restart began. */
  restarting?: boolean
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
  // Indexed by agent number; a restarted agent replaces its entry. Cleanup stops whatever is here.
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
  const tickMs = opts.tickMs ?? 1000
  const live = !opts.json && Boolean(io.stdout.isTTY)
  const { plan, notes } = planFailure({
    agents: opts.agents,
    durationS: opts.durationS,
    killAfterS: opts.killAfterS,
    restartAfterS: opts.restartAfterS,
  })
  const migration = planMigrations({
    agents: opts.agents,
    vms: opts.vms,
    durationS: opts.durationS,
    migrateEveryS: opts.migrateEveryS,
  })
  for (const n of [...notes, ...migration.notes]) log(`note: ${n}`)
  // Background work (the other agents starting, a restart) is awaited before cleanup, so no agent
  // is spawned after the stop and every child ends up in `agents`.
  const background: Promise<unknown>[] = []
  try {
    log(`starting ${opts.agents} agents in ${root}`)
    const startedAt = Date.now()
    const first = await startAgent(0, root, bin, [])
    agents.push(first)
    await waitReady(first, startTimeoutMs, stop.signal)
    const boot = bootstrapAddr(first)
    const dir0 = first.dataDir
    // The web dashboard of the first agent: a one-time link (a new one: `skymesh dashboard`).
    const dashboard = first.client
      ? await dashboardLink(first.client).then(
          (l) =>
            `dashboard:  ${l.url}\n            (one-time link; a new one: skymesh dashboard --data-dir ${dir0})\n`,
          () => '',
        )
      : ''
    if (opts.json || !io.stdout.isTTY) io[opts.json ? 'stderr' : 'stdout'].write(hint(dir0) + dashboard)

    // The rest join while the view already runs, so the mesh is seen converging.
    let created = 0
    const warnings: string[] = []
    let bootError: unknown
    const clock: FailureClock = {}
    let tracker = newTracker(opts.agents, plan)
    let migs: MigrationTrack = newMigrationTrack()
    const booting = (async () => {
      for (let i = 1; i < opts.agents; i++) {
        stop.signal.throwIfAborted()
        agents.push(await startAgent(i, root, bin, ['--bootstrap', boot]))
      }
      await Promise.all(agents.slice(1).map((a) => waitReady(a, startTimeoutMs, stop.signal)))
      const r = await createVms(agents, opts.vms, stop.signal)
      created = r.created
      warnings.push(...r.warnings)
      for (const w of r.warnings) log(`warning: ${w}`)
      clock.runningAt = Date.now()
      tracker = noteEvent(tracker, clock.runningAt, `${opts.agents} agents ready, ${created} VMs created`)
    })().catch((err: unknown) => {
      bootError = err
    })
    background.push(booting)

    const restart = async (index: number) => {
      const old = agents[index]!
      // the old process must be gone (it holds the store's lock); its agent.json outlived the
      // SIGKILL: drop it so waitReady sees the new one
      await old.exited
      stop.signal.throwIfAborted()
      await rm(join(old.dataDir, 'agent.json'), { force: true })
      const a = await startAgent(index, root, bin, ['--bootstrap', bootstrapAddr(agents[0]!)])
      a.restarting = true
      agents[index] = a
      await waitReady(a, startTimeoutMs, stop.signal)
    }

    // Asks the source for the migration until it ends; the source keeps it after the VM left.
    const migrate = async (pick: MigrationPick, key: number) => {
      const ended = (r: { track: MigrationTrack; event?: string }) => {
        migs = r.track
        if (r.event) tracker = noteEvent(tracker, Date.now(), r.event)
        return r.event !== undefined
      }
      const source = agents[pick.from]
      if (!source?.client) return void ended(noteMigrationError(migs, key, 'no client', Date.now()))
      let id: string
      try {
        const first = await source.client.migrateVm(pick.vmId, { to: pick.toPeer, mode: pick.mode })
        id = first.id
        if (ended(noteMigrationView(migs, key, first, Date.now()))) return
      } catch (err) {
        return void ended(noteMigrationError(migs, key, reason(err), Date.now()))
      }
      let failures = 0
      while (!stop.signal.aborted) {
        await sleep(MIGRATION_POLL_MS, undefined, { signal: stop.signal }).catch(() => {})
        if (stop.signal.aborted) return
        // a restart replaces the entry: that process never knew the migration
        if (agents[pick.from] !== source || source.exit) {
          return void ended(noteMigrationError(migs, key, `agent #${pick.from} went away`, Date.now()))
        }
        try {
          const view = await source.client.getMigration(id)
          failures = 0
          if (ended(noteMigrationView(migs, key, view, Date.now()))) return
        } catch (err) {
          if (++failures >= MIGRATION_POLL_FAILURES) {
            return void ended(noteMigrationError(migs, key, reason(err), Date.now()))
          }
        }
      }
    }

    // events can be inserted before later ones (an agent's own time of a change), so remember each
    const printed = new Set<string>()
    let deadline = Number.POSITIVE_INFINITY
    let snap: AgentSnapshot[] = []
    let meshVms: Awaited<ReturnType<typeof meshVmsOf>>
    let snapAt = Number.NEGATIVE_INFINITY
    let snapAsked = snapAt
    let lineAt = snapAt
    for (;;) {
      if (bootError !== undefined) throw bootError
      if (stop.signal.aborted) break
      const now0 = Date.now()
      if (clock.runningAt !== undefined && opts.durationS !== undefined) {
        deadline = clock.runningAt + opts.durationS * 1000
      }
      const endsAt = Number.isFinite(deadline) ? deadline : undefined
      const step = nextFailureStep(plan, clock, now0)
      if (step.due === 'kill' && plan) {
        const victim = agents[plan.target]!
        victim.killed = true
        victim.child.kill('SIGKILL')
        clock.killedAt = now0
        tracker = noteKill(tracker, now0)
      } else if (step.due === 'restart' && plan) {
        clock.restartedAt = now0
        agents[plan.target]!.restarting = true
        tracker = noteRestart(tracker, now0)
        background.push(
          restart(plan.target).catch((err: unknown) => {
            if (stop.signal.aborted) return
            const why = err instanceof Error ? err.message.split('\n')[0] : String(err)
            tracker = noteEvent(tracker, Date.now(), `agent #${plan.target} did not come back: ${why}`)
            warnings.push(`agent #${plan.target} did not restart: ${why}`)
          }),
        )
      }

      // a due migration is picked from a fresh snapshot; between ticks (a migration in progress) the
      // view is only redrawn from the last one
      const mstep = nextMigrationStep(migration.plan, migs, clock.runningAt, endsAt, now0)
      const fresh = step.due !== undefined || mstep.due === true || now0 >= snapAt + tickMs - 20
      if (fresh) {
        snapAsked = Date.now()
        snap = await snapshot(agents, opts.agents, root)
        snapAt = Date.now()
        tracker = trackTick(tracker, snap, snapAt)
        meshVms = await meshVmsOf(agents, plan?.target)
      }

      if (mstep.due) {
        const now1 = Date.now()
        // a VM that moved while the snapshot was taken may still be listed on its old host there
        const exclude = new Set(
          migs.migrations.filter((m) => (m.endedAt ?? now1) >= snapAsked).map((m) => m.vmId),
        )
        const pick = pickMigration({
          agents: snap,
          exclude,
          avoid: agentsToAvoid(plan, clock, tracker, now1),
          lastMoved: new Map(migs.migrations.map((m) => [m.vmId, m.requestedAt])),
          seq: migs.seq,
        })
        if (pick) {
          const r = noteMigrationStart(migs, pick, now1)
          migs = r.track
          tracker = noteEvent(tracker, now1, r.event)
          background.push(migrate(pick, r.key))
        } else migs = noteMigrationSkip(migs, now1, 'no busy VM with a live destination')
      }

      const now = Date.now()
      if (!opts.json) {
        const extras: ViewExtras = {
          meshVms,
          tracker,
          startedAt,
          failure: plan ? failureLine(plan, clock, startedAt, now) : undefined,
          migrations: migration.plan
            ? {
                track: migs,
                line: migrationLine(migration.plan, migs, clock.runningAt, endsAt, now),
                now,
              }
            : undefined,
        }
        const elapsed = now - startedAt
        if (live) {
          const stopHint =
            clock.runningAt === undefined
              ? 'starting'
              : opts.durationS === undefined
                ? 'Ctrl-C to stop'
                : `stops at ${formatDuration(deadline - startedAt)}`
          io.stdout.write(CLEAR_HOME + renderView(snap, elapsed, stopHint, extras) + dashboard)
        } else {
          for (const e of tracker.events) {
            const key = `${e.at} ${e.text}`
            if (printed.has(key)) continue
            printed.add(key)
            io.stdout.write(eventLine(e, startedAt))
          }
          // a due migration takes its own snapshot: one status line a tick is enough
          if (fresh && now - lineAt >= tickMs / 2) {
            lineAt = now
            io.stdout.write(renderLine(snap, elapsed, extras))
          }
        }
      }

      const moving = live && migs.migrations.some((m) => m.endedAt === undefined)
      const wake = Math.min(
        snapAt + tickMs,
        moving ? now + MIGRATION_POLL_MS : Number.POSITIVE_INFINITY,
        deadline,
        nextFailureStep(plan, clock, now).at ?? Number.POSITIVE_INFINITY,
        nextMigrationStep(migration.plan, migs, clock.runningAt, endsAt, now).at ?? Number.POSITIVE_INFINITY,
      )
      if (Date.now() >= deadline) break
      await sleep(Math.max(0, wake - Date.now()), undefined, { signal: stop.signal }).catch(() => {})
    }
    if (clock.runningAt === undefined) return 0 // stopped while the agents started

    if (opts.json) {
      const snap = await snapshot(agents, opts.agents, root)
      tracker = trackTick(tracker, snap, Date.now())
      const meshVms = await meshVmsOf(agents, plan?.target)
      const summary: DemoSummary = {
        agents: snap.map(({ vms: _vms, cluster, ...a }) => ({
          ...a,
          pid: agents[a.index]?.child.pid,
          addrs: agents[a.index]?.file?.addrs,
          cluster: cluster?.counts,
        })),
        vms: mergeVms(snap),
        meshVms: meshVms?.vms,
        created,
        warnings,
        durationS: Math.round((Date.now() - clock.runningAt) / 100) / 10,
        events: tracker.events.map((e) => ({ atS: Math.round((e.at - startedAt) / 100) / 10, text: e.text })),
        failure: failureSummary(tracker, startedAt),
        migrations: migrationSummary(migs, startedAt),
      }
      io.stdout.write(`${JSON.stringify(summary, null, 2)}\n`)
    }
    return 0
  } catch (err) {
    // Ctrl-C while the agents start is a normal way out
    if (stop.signal.aborted && !(err instanceof CliError)) return 0
    throw err
  } finally {
    // an error above leaves the starts and restarts running: abort them before waiting for them
    stop.abort()
    await Promise.allSettled(background)
    for (const s of sigs) process.off(s, onSignal)
    opts.signal?.removeEventListener('abort', onSignal)
    if (agents.length > 0) log(`stopping ${agents.length} agents`)
    await Promise.all(agents.map(stopAgent))
    await rm(root, { recursive: true, force: true })
    log(`stopped; removed ${root}`)
  }
}

function reason(err: unknown): string {
  if (err instanceof ApiError) return `${err.code}: ${err.message}`
  return err instanceof Error ? (err.message.split('\n')[0] ?? '') : String(err)
}

function siteOf(index: number): string {
  return index % 2 === 0 ? 'site-a' : 'site-b'
}

async function startAgent(index: number, root: string, bin: string, extra: string[]): Promise<Agent> {
  const dataDir = join(root, `agent-${index}`)
  await mkdir(dataDir, { recursive: true })
  const site = siteOf(index)
  const args = [bin, 'agent', '--data-dir', dataDir, '--listen', '/ip4/127.0.0.1/tcp/0']
  args.push('--api', '127.0.0.1:0', '--site', site, ...extra)
  // own process group: a Ctrl-C in the terminal reaches only the demo, which then stops the agents in order
  const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, ...args], {
    env: agentEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
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
    // a pid from another process: the agent.json of an earlier run of this data dir
    if (file && (file.pid === 0 || file.pid === agent.child.pid)) {
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

async function createVms(
  agents: Agent[],
  count: number,
  signal: AbortSignal,
): Promise<{ created: number; warnings: string[] }> {
  const warnings: string[] = []
  let created = 0
  const specs = demoVmSpecs(count)
  for (const [i, spec] of specs.entries()) {
    signal.throwIfAborted()
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

/** One row per agent, also for those not spawned yet (`starting`). */
async function snapshot(agents: Agent[], total: number, root: string): Promise<AgentSnapshot[]> {
  return Promise.all(
    Array.from({ length: total }, async (_, index): Promise<AgentSnapshot> => {
      const a = agents[index]
      if (!a) return { index, site: siteOf(index), dataDir: join(root, `agent-${index}`), error: 'starting' }
      const base: AgentSnapshot = {
        index: a.index,
        site: a.site,
        dataDir: a.dataDir,
        api: a.client?.baseUrl,
        peerId: a.file?.peerId,
      }
      if (a.killed && a.exit) return { ...base, error: a.restarting ? 'restarting' : 'killed (SIGKILL)' }
      if (a.exit) return { ...base, error: `exited (${a.exit.signal ?? `code ${a.exit.code}`})` }
      if (!a.client) return { ...base, error: a.restarting ? 'restarting' : 'starting' }
      try {
        const [node, peers, vms, cluster] = await Promise.all([
          a.client.node(),
          a.client.peers(),
          a.client.listVms(),
          a.client.cluster(),
        ])
        return { ...base, node, peers: peers.peers.length, vms: vms.vms, cluster }
      } catch (err) {
        return { ...base, error: err instanceof ApiError ? err.code : 'unreachable' }
      }
    }),
  )
}

/** The mesh's VMs from the first agent that answers (never the one to be killed, so the source stays put). */
async function meshVmsOf(
  agents: Agent[],
  target: number | undefined,
): Promise<{ from: number; vms: ClusterVm[] } | undefined> {
  for (const a of agents) {
    if (!a || a.index === target || a.exit || !a.client) continue
    try {
      return { from: a.index, vms: (await a.client.clusterVms()).vms }
    } catch {
      // try the next one
    }
  }
  return undefined
}

/** SIGTERM, then SIGKILL if it has not exited after 5 s. */
async function stopAgent(agent: Agent): Promise<void> {
  if (agent.exit) return
  agent.child.kill('SIGTERM')
  const timer = setTimeout(() => agent.child.kill('SIGKILL'), KILL_AFTER_MS)
  await agent.exited
  clearTimeout(timer)
}
