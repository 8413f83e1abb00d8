// `npm run test:faults` (cli.ts): runs every fault scenario against a real mesh, audits the invariants after
// each run, prints a table and writes bench/results/faults.json. Exits non-zero if any invariant broke
// or an agent crashed. `--short` is the version CI runs (test/cluster/faults.test.ts).
import { mkdir, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { seededRng } from '../../src/placement/core/index.js'
import { netnsUnavailable } from '../helpers/netns.js'
import { type AuditResult, audit, clean } from './audit.js'
import { FaultMesh } from './mesh.js'
import { SCENARIOS, type Scenario } from './scenarios.js'

export interface FaultOptions {
  scenarios: string[]
  /** Runs per scenario (churn: one run of `churnSec`). */
  runs: Record<string, number>
  churnSec: number
  seed: number
  verbose: boolean
}

export interface ScenarioRow {
  scenario: string
  what: string
  mesh: string
  skipped?: string
  runs: number
  faults: number
  migrations: number
  vms: number
  lost: number
  twice: number
  digestMismatch: number
  wrongState: number
  stuckMigrations: number
  stuckLeases: number
  notConverged: number
  crashedWithHost: number
  retryFailures: number
  convergeMsP50: number
  convergeMsMax: number
  agentCrashes: number
  /** The first broken invariants, for the reader of a failed run. */
  problems: string[]
}

export const FULL_RUNS: Record<string, number> = {
  'kill-destination': 25,
  'kill-source': 20,
  restart: 10,
  partition: 15,
  'partition-placement': 8,
  'lossy-link': 8,
  churn: 1,
}

export const SHORT_RUNS: Record<string, number> = {
  'kill-destination': 2,
  'kill-source': 2,
  restart: 1,
  partition: 2,
  'partition-placement': 1,
  'lossy-link': 1,
  churn: 1,
}

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!
}

async function runScenario(s: Scenario, opts: FaultOptions): Promise<ScenarioRow> {
  const row: ScenarioRow = {
    scenario: s.name,
    what: s.what,
    mesh:
      s.mesh.kind === 'loopback'
        ? `${s.mesh.hosts} agents, loopback`
        : `${s.mesh.sites.map((x) => x.hosts).join('+')} hosts in ${s.mesh.sites.length} sites (netns)`,
    runs: 0,
    faults: 0,
    migrations: 0,
    vms: 0,
    lost: 0,
    twice: 0,
    digestMismatch: 0,
    wrongState: 0,
    stuckMigrations: 0,
    stuckLeases: 0,
    notConverged: 0,
    crashedWithHost: 0,
    retryFailures: 0,
    convergeMsP50: Number.NaN,
    convergeMsMax: Number.NaN,
    agentCrashes: 0,
    problems: [],
  }
  if (s.mesh.kind === 'netns') {
    const why = await netnsUnavailable()
    if (why) {
      row.skipped = why
      return row
    }
  }
  const log = (line: string) => {
    if (opts.verbose) console.error(`[${new Date().toISOString().slice(11, 23)}] ${s.name}: ${line}`)
  }
  const mesh =
    s.mesh.kind === 'loopback'
      ? await FaultMesh.loopback(s.mesh.hosts, ['site-a', 'site-b'])
      : await FaultMesh.namespaces(s.mesh.sites)
  const converge: number[] = []
  try {
    const rng = seededRng(opts.seed ^ hash(s.name))
    const runs = opts.runs[s.name] ?? 1
    for (let r = 0; r < runs; r++) {
      const ctx = { mesh, rng, tracked: [], notes: [] as string[], durationMs: opts.churnSec * 1000, log }
      const out = await s.run(ctx)
      const a = await audit(mesh, ctx.tracked)
      log(`run ${r + 1}/${runs}: ${JSON.stringify(summary(a))}`)
      row.runs++
      row.faults += out.faults
      row.migrations += out.migrations
      row.retryFailures += out.retryFailures
      add(row, a)
      if (Number.isFinite(a.convergeMs)) converge.push(a.convergeMs)
      if (!clean(a) && row.problems.length < 5)
        row.problems.push(`run ${r + 1}: ${JSON.stringify(summary(a))}`)
      // The run's VMs go, so later runs do not pile up load
      await removeTracked(mesh, ctx.tracked)
    }
  } finally {
    row.agentCrashes = mesh.crashes.length
    for (const c of mesh.crashes.slice(0, 3))
      row.problems.push(`agent h${c.host} exited by itself (${c.code ?? c.signal}): ${c.tail.slice(-400)}`)
    await mesh.destroy()
  }
  row.convergeMsP50 = quantile(converge, 0.5)
  row.convergeMsMax = converge.length ? Math.max(...converge) : Number.NaN
  return row
}

function add(row: ScenarioRow, a: AuditResult): void {
  row.vms += a.vms
  row.lost += a.lost.length
  row.twice += a.twice.length
  row.digestMismatch += a.digestMismatch.length
  row.wrongState += a.wrongState.length
  row.stuckMigrations += a.stuckMigrations
  row.stuckLeases += a.stuckLeases
  row.crashedWithHost += a.crashedWithHost
  if (!Number.isFinite(a.convergeMs)) row.notConverged++
}

function summary(a: AuditResult) {
  return {
    vms: a.vms,
    lost: a.lost,
    twice: a.twice,
    digest: a.digestMismatch,
    wrongState: a.wrongState,
    stuck: a.stuckMigrations,
    leases: a.stuckLeases,
    crashedWithHost: a.crashedWithHost,
    convergeMs: a.convergeMs,
  }
}

async function removeTracked(mesh: FaultMesh, tracked: { id: string }[]): Promise<void> {
  for (const vm of tracked) {
    for (const a of mesh.live()) {
      try {
        await a.request('DELETE', `/v1/vms/${vm.id}`)
      } catch {
        // gone with its host, or never arrived here
      }
    }
  }
}

function hash(s: string): number {
  let h = 2166136261
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619)
  return h >>> 0
}

export async function runFaults(opts: FaultOptions): Promise<ScenarioRow[]> {
  const rows: ScenarioRow[] = []
  for (const s of SCENARIOS.filter((x) => opts.scenarios.includes(x.name))) {
    if (opts.verbose) console.error(`test:faults: ${s.name} (${s.what})`)
    rows.push(await runScenario(s, opts))
  }
  return rows
}

/** True when no row broke an invariant or saw an agent crash. */
export function allClean(rows: ScenarioRow[]): boolean {
  return rows.every(
    (r) =>
      r.lost +
        r.twice +
        r.digestMismatch +
        r.wrongState +
        r.stuckMigrations +
        r.stuckLeases +
        r.notConverged +
        r.retryFailures +
        r.agentCrashes ===
      0,
  )
}

export function formatTable(rows: ScenarioRow[]): string {
  const f = (x: number) => (Number.isFinite(x) ? String(Math.round(x)) : '-')
  const head = [
    'scenario',
    'runs',
    'faults',
    'migrations',
    'VMs',
    'lost',
    'twice',
    'digest mismatch',
    'wrong state',
    'stuck migr.',
    'stuck leases',
    'retry failed',
    'converge p50/max ms',
    'crashed w/ host',
    'agent crashes',
  ]
  const body = rows.map((r) =>
    r.skipped
      ? [r.scenario, `skipped: ${r.skipped}`, '', '', '', '', '', '', '', '', '', '', '', '', '']
      : [
          r.scenario,
          String(r.runs),
          String(r.faults),
          String(r.migrations),
          String(r.vms),
          String(r.lost),
          String(r.twice),
          String(r.digestMismatch),
          String(r.wrongState),
          String(r.stuckMigrations),
          String(r.stuckLeases),
          String(r.retryFailures),
          `${f(r.convergeMsP50)}/${f(r.convergeMsMax)}${r.notConverged ? ` (${r.notConverged} never)` : ''}`,
          String(r.crashedWithHost),
          String(r.agentCrashes),
        ],
  )
  const ran = rows.filter((r) => !r.skipped)
  const sum = (k: keyof ScenarioRow) => String(ran.reduce((a, r) => a + (r[k] as number), 0))
  body.push([
    'total',
    sum('runs'),
    sum('faults'),
    sum('migrations'),
    sum('vms'),
    sum('lost'),
    sum('twice'),
    sum('digestMismatch'),
    sum('wrongState'),
    sum('stuckMigrations'),
    sum('stuckLeases'),
    sum('retryFailures'),
    '',
    sum('crashedWithHost'),
    sum('agentCrashes'),
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)))
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n')
}

const USAGE = `usage: npm run test:faults -- [--short] [--scenarios a,b] [--runs N] [--churn-sec S] [--seed N]
                             [--json FILE] [--quiet]
scenarios: ${SCENARIOS.map((s) => s.name).join(', ')}
  --short      the CI version: a few runs of each scenario, 25 s of churn
  --runs N     runs of every chosen scenario (churn: always one run of --churn-sec)
  --json FILE  where the results go (default bench/results/faults.json)`

function parseArgs(argv: string[]): FaultOptions & { json: string } {
  const opts = {
    scenarios: SCENARIOS.map((s) => s.name),
    runs: { ...FULL_RUNS },
    churnSec: 180,
    seed: Number(process.env.SKYMESH_FAULTS_SEED ?? Date.now() % 1_000_000),
    verbose: true,
    json: join(process.cwd(), 'bench/results/faults.json'),
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    const v = argv[i + 1]
    const need = () => {
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`)
      i++
      return v
    }
    if (a === '--help' || a === '-h') {
      console.log(USAGE)
      process.exit(0)
    } else if (a === '--short') {
      opts.runs = { ...SHORT_RUNS }
      opts.churnSec = 25
    } else if (a === '--scenarios') {
      const names = need().split(',')
      const unknown = names.filter((n) => !SCENARIOS.some((s) => s.name === n))
      if (unknown.length) throw new Error(`unknown scenario ${unknown.join(', ')}\n${USAGE}`)
      opts.scenarios = names
    } else if (a === '--runs') {
      const n = Number(need())
      if (!Number.isInteger(n) || n < 1) throw new Error(`--runs: a whole number >= 1\n${USAGE}`)
      for (const k of Object.keys(opts.runs)) opts.runs[k] = k === 'churn' ? 1 : n
    } else if (a === '--churn-sec') {
      opts.churnSec = Number(need())
      if (!(opts.churnSec > 0)) throw new Error(`--churn-sec: seconds > 0\n${USAGE}`)
    } else if (a === '--seed') opts.seed = Number(need())
    else if (a === '--json') opts.json = need()
    else if (a === '--quiet') opts.verbose = false
    else throw new Error(`unknown option ${a}\n${USAGE}`)
  }
  return opts
}

export async function main(): Promise<void> {
  let opts: ReturnType<typeof parseArgs>
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (err) {
    console.error((err as Error).message)
    process.exit(2)
  }
  console.error(`test:faults: seed ${opts.seed} (replay with --seed ${opts.seed})`)
  const started = Date.now()
  const rows = await runFaults(opts)
  console.log(formatTable(rows))
  for (const r of rows) for (const p of r.problems) console.log(`! ${r.scenario}: ${p}`)
  await mkdir(dirname(opts.json), { recursive: true })
  const machine = {
    cpus: os.cpus().length,
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
  }
  await writeFile(
    opts.json,
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        seed: opts.seed,
        seconds: Math.round((Date.now() - started) / 1000),
        machine,
        rows,
      },
      null,
      2,
    )}\n`,
  )
  console.error(`wrote ${opts.json}`)
  process.exit(allClean(rows) ? 0 : 1)
}
