// `skymesh demo`'s scripted live migrations, pure: when one is due, which busy VM goes where, the
// bookkeeping of each one from the request to its end (fed the source agent's MigrationView), and
// the text the view shows of them.
import type { MigrateVmRequest, MigrationView } from '../node/types.js'
import type { AgentSnapshot, DemoTracker, FailureClock, FailurePlan } from './demo-view.js'
import { formatDuration, formatMiB, table } from './format.js'

export type DemoMode = NonNullable<MigrateVmRequest['mode']>

/** The modes in turn, one per migration. */
export const MODES: readonly DemoMode[] = ['precopy', 'auto', 'postcopy']
export const DEFAULT_MIGRATE_EVERY_S = 8
/** With --duration, the default migrations run only in a run at least this long. */
export const MIN_MIGRATE_RUN_S = 20
/** No migration starts this close to the end of the run (it would be cut by the stop). */
export const END_MARGIN_MS = 3000
/** A due migration that found no VM or no destination is tried again this much later. */
export const RETRY_MS = 2000
/** The agent the scripted failure kills is left alone from this long before the kill. */
export const KILL_GUARD_MS = 8000
/** Finished migrations the view lists. */
export const SHOW_FINISHED = 3
/** How long the mesh VM table marks a VM as moved. */
export const MOVED_NOTE_MS = 10_000

const MiB = 1024 * 1024
const TERMINAL: ReadonlySet<string> = new Set(['done', 'failed', 'cancelled'])

// --- when ---

export interface MigrationPlan {
  everyMs: number
}

export interface MigrationOptions {
  agents: number
  vms: number
  durationS?: number
  /** Absent: the default if the run is long enough; 0: none. */
  migrateEveryS?: number
}

/** The plan from the flags, and notes on an explicit flag that cannot take effect. */
export function planMigrations(o: MigrationOptions): { plan?: MigrationPlan; notes: string[] } {
  const notes: string[] = []
  if (o.migrateEveryS === 0) return { notes }
  const explicit = o.migrateEveryS !== undefined
  const say = (why: string) => {
    if (explicit) notes.push(`--migrate-every ${why}: no migration`)
    return { notes }
  }
  if (o.agents < 2) return say('needs at least 2 agents (a source and a destination)')
  if (o.vms < 1) return say('needs at least one VM')
  const end = o.durationS
  if (!explicit && end !== undefined && end < MIN_MIGRATE_RUN_S) return { notes }
  const every = o.migrateEveryS ?? DEFAULT_MIGRATE_EVERY_S
  if (end !== undefined && every * 1000 > end * 1000 - END_MARGIN_MS) {
    return say(`${every} leaves no time for one before the end (--duration ${end})`)
  }
  return { plan: { everyMs: every * 1000 }, notes }
}

/** Whether a migration is due now, or when the next one is (absent: none, or one still runs). */
export function nextMigrationStep(
  plan: MigrationPlan | undefined,
  t: MigrationTrack,
  runningAt: number | undefined,
  endsAt: number | undefined,
  now: number,
): { due?: boolean; at?: number; waiting?: boolean } {
  if (!plan || runningAt === undefined) return {}
  const at = t.retryAt ?? (t.lastStartAt ?? runningAt) + plan.everyMs
  if (endsAt !== undefined && at > endsAt - END_MARGIN_MS) return {}
  // one at a time: the view follows the migration in progress
  if (activeMigrations(t).length > 0) return { waiting: true }
  return now >= at ? { due: true, at } : { at }
}

/** The agent of the scripted failure while it must not be a source or destination (about to die, dead, not back). */
export function agentsToAvoid(
  plan: FailurePlan | undefined,
  clock: FailureClock,
  tracker: Pick<DemoTracker, 'rejoinedAt'>,
  now: number,
): number[] {
  if (!plan || clock.runningAt === undefined) return []
  if (clock.killedAt === undefined) {
    return now >= clock.runningAt + plan.killAfterMs - KILL_GUARD_MS ? [plan.target] : []
  }
  // back only once every agent sees it alive again: a source checks that its destination is live
  return clock.restartedAt !== undefined && tracker.rejoinedAt !== undefined ? [] : [plan.target]
}

// --- what and where ---

export interface MigrationPick {
  vmId: string
  vmName: string
  memoryMiB: number
  epoch: number
  from: number
  to: number
  fromPeer: string
  toPeer: string
  mode: DemoMode
}

export interface PickInput {
  /** The tick's snapshot: each agent's own VMs are the truth about where a VM runs. */
  agents: AgentSnapshot[]
  /** VM ids not to move (migrating, or moved since the snapshot). */
  exclude?: ReadonlySet<string>
  /** Agents to use neither as source nor as destination. */
  avoid?: readonly number[]
  /** When each VM last started to move: the one that waited longest goes next. */
  lastMoved?: ReadonlyMap<string, number>
  /** Migrations started so far: turns the destination and the mode. */
  seq: number
}

/**
 * A busy (workload-running) VM, in turn (never moved first, by name, then the longest unmoved), to a
 * live agent with room for it, preferring the other site; the mode in turn (pre-copy, auto, post-copy).
 * Undefined when nothing can move.
 */
export function pickMigration(i: PickInput): MigrationPick | undefined {
  const avoid = new Set(i.avoid ?? [])
  const live = i.agents.filter((a) => a.node && !a.error && !avoid.has(a.index))
  const vms = new Map<string, { vm: NonNullable<AgentSnapshot['vms']>[number]; host: AgentSnapshot }>()
  for (const a of live) {
    for (const vm of a.vms ?? []) {
      // a VM an agent lists but no longer hosts is on its way out
      if (vm.host !== a.node!.peerId || vm.state !== 'running' || vm.migration) continue
      if (!((vm.workload?.dirtyMiBps ?? 0) > 0) || i.exclude?.has(vm.id)) continue
      const seen = vms.get(vm.id)
      if (!seen || vm.epoch > seen.vm.epoch) vms.set(vm.id, { vm, host: a })
    }
  }
  const moved = (id: string) => i.lastMoved?.get(id) ?? Number.NEGATIVE_INFINITY
  const busy = [...vms.values()].sort(
    (a, b) => moved(a.vm.id) - moved(b.vm.id) || a.vm.name.localeCompare(b.vm.name, 'en', { numeric: true }),
  )
  for (const { vm, host } of busy) {
    const fits = live.filter((a) => {
      const n = a.node!
      return a.index !== host.index && n.capacity.memoryMiB - n.used.memoryMiB >= vm.memoryMiB
    })
    if (fits.length === 0) continue
    const site = (a: AgentSnapshot) => a.node?.site ?? a.site
    const away = fits.filter((a) => site(a) !== site(host))
    const pool = (away.length > 0 ? away : fits).sort((a, b) => a.index - b.index)
    const to = pool[i.seq % pool.length]!
    return {
      vmId: vm.id,
      vmName: vm.name,
      memoryMiB: vm.memoryMiB,
      epoch: vm.epoch,
      from: host.index,
      to: to.index,
      fromPeer: host.node!.peerId,
      toPeer: to.node!.peerId,
      mode: MODES[i.seq % MODES.length]!,
    }
  }
  return undefined
}

// --- bookkeeping ---

export interface DemoMigration extends MigrationPick {
  /** The demo's own number for it (the agent's id comes with the first answer). */
  key: number
  requestedAt: number
  id?: string
  /** The source's last view of it. */
  view?: MigrationView
  endedAt?: number
  /** Why it did not start, or could not be followed to its end. */
  error?: string
}

export interface MigrationTrack {
  /** Migrations started so far. */
  seq: number
  lastStartAt?: number
  /** Set when a due migration found nothing to move. */
  retryAt?: number
  skipped?: string
  /** In start order. */
  migrations: DemoMigration[]
}

export function newMigrationTrack(): MigrationTrack {
  return { seq: 0, migrations: [] }
}

export function activeMigrations(t: MigrationTrack): DemoMigration[] {
  return t.migrations.filter((m) => m.endedAt === undefined)
}

export function finishedMigrations(t: MigrationTrack): DemoMigration[] {
  return t.migrations.filter((m) => m.endedAt !== undefined)
}

const copy = (t: MigrationTrack): MigrationTrack => structuredClone(t)

export function noteMigrationStart(
  t: MigrationTrack,
  pick: MigrationPick,
  at: number,
): { track: MigrationTrack; key: number; event: string } {
  const n = copy(t)
  const key = n.seq++
  n.lastStartAt = at
  n.retryAt = undefined
  n.skipped = undefined
  n.migrations.push({ ...pick, key, requestedAt: at })
  return { track: n, key, event: `${pick.vmName} migrating #${pick.from} → #${pick.to} (${pick.mode})` }
}

export function noteMigrationSkip(t: MigrationTrack, at: number, why: string): MigrationTrack {
  const n = copy(t)
  n.retryAt = at + RETRY_MS
  n.skipped = why
  return n
}

/** The source's latest view; an event once it ended. */
export function noteMigrationView(
  t: MigrationTrack,
  key: number,
  view: MigrationView,
  at: number,
): { track: MigrationTrack; event?: string } {
  const n = copy(t)
  const m = n.migrations.find((x) => x.key === key)
  if (!m || m.endedAt !== undefined) return { track: n }
  m.id = view.id
  m.view = view
  if (!TERMINAL.has(view.phase)) return { track: n }
  m.endedAt = at
  return { track: n, event: endEvent(m) }
}

/** It did not start, or its source stopped answering: it ends here. */
export function noteMigrationError(
  t: MigrationTrack,
  key: number,
  why: string,
  at: number,
): { track: MigrationTrack; event?: string } {
  const n = copy(t)
  const m = n.migrations.find((x) => x.key === key)
  if (!m || m.endedAt !== undefined) return { track: n }
  m.endedAt = at
  m.error = why
  const what = m.id ? 'lost track of the migration' : 'could not start the migration'
  return { track: n, event: `${m.vmName}: ${what} #${m.from} → #${m.to}: ${why}` }
}

function endEvent(m: DemoMigration): string {
  const v = m.view!
  if (v.phase === 'done') {
    const total = v.totalMs ?? (m.endedAt ?? m.requestedAt) - m.requestedAt
    const epoch = v.epoch === undefined ? '' : `, epoch ${v.epoch}`
    const switched = v.postcopy && v.mode === 'auto' ? ' (switched to post-copy)' : ''
    return `${m.vmName} arrived on #${m.to} in ${seconds(total)}, downtime ${millis(v.downtimeMs)}${epoch}${switched}`
  }
  if (v.phase === 'cancelled')
    return `${m.vmName} migration #${m.from} → #${m.to} cancelled, stays on #${m.from}`
  const why = v.error ? `${v.error.code}: ${v.error.message}` : 'no reason given'
  return `${m.vmName} migration #${m.from} → #${m.to} failed (${why})`
}

// --- text ---

/** `0.9 s`. */
export function seconds(ms: number): string {
  return `${(Math.max(0, ms) / 1000).toFixed(1)} s`
}

/** `80 ms`, `1.2 s`, `-` when unknown. */
export function millis(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms) || ms < 0) return '-'
  return ms < 1000 ? `${Math.round(ms)} ms` : seconds(ms)
}

/** `[#########...........]  45%`: the share capped to 0..100 %. */
export function progressBar(fraction: number, width = 20): string {
  const f = Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0
  const filled = Math.round(f * width)
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${`${Math.floor(f * 100)}%`.padStart(4)}`
}

/** Content sent against the VM's memory: re-sent dirty pages can pass it, zero pages keep it under. */
export function migrationFraction(m: DemoMigration): number {
  if (m.view?.phase === 'done') return 1
  const total = m.memoryMiB * MiB
  return total > 0 ? Math.min(1, (m.view?.bytesSent ?? 0) / total) : 0
}

function modeCell(m: DemoMigration): string {
  return m.view?.postcopy && m.mode !== 'postcopy' ? `${m.mode}→postcopy` : m.mode
}

function wireCell(m: DemoMigration): string {
  const wire = m.view?.wireBytes ?? 0
  const ratio =
    m.memoryMiB > 0 ? ` (${(wire / (m.memoryMiB * MiB)).toFixed(2)}× ${formatMiB(m.memoryMiB)})` : ''
  return `${wire === 0 ? '0 B' : formatMiB(wire / MiB)}${ratio}`
}

function resultCell(m: DemoMigration): string {
  if (m.error) return `lost: ${m.error}`
  const v = m.view
  if (!v) return '-'
  if (v.phase === 'failed') return `failed${v.error ? `: ${v.error.code}` : ''}`
  return v.phase
}

/** The MIGRATIONS section: what is moving now, then the last few that ended. */
export function migrationsSection(t: MigrationTrack, line?: string): string {
  let out = `MIGRATIONS${line ? `  ${line}` : ''}\n`
  const active = activeMigrations(t)
  const finished = finishedMigrations(t).slice(-SHOW_FINISHED)
  if (active.length === 0 && finished.length === 0) return `${out}  none yet\n`
  if (active.length > 0) {
    out += table(
      ['VM', 'FROM → TO', 'MODE', 'PHASE', 'ROUND', 'PROGRESS (sent / memory)', 'MiB/s', 'ETA'],
      active.map((m) => [
        m.vmName,
        `#${m.from} → #${m.to}`,
        modeCell(m),
        m.view?.phase ?? 'requested',
        m.view ? String(m.view.round) : '-',
        progressBar(migrationFraction(m)),
        m.view?.bandwidthMiBps ? m.view.bandwidthMiBps.toFixed(1) : '-',
        millis(m.view?.etaMs),
      ]),
      ['left', 'left', 'left', 'left', 'right', 'left', 'right', 'right'],
    )
  } else out += '  none in progress\n'
  if (finished.length > 0) {
    out += `last ${finished.length === 1 ? 'one' : `${finished.length}`} finished:\n`
    out += table(
      ['VM', 'FROM → TO', 'MODE', 'RESULT', 'TOTAL', 'DOWNTIME', 'ON THE WIRE (vs memory)', 'EPOCH'],
      finished.map((m) => [
        m.vmName,
        `#${m.from} → #${m.to}`,
        modeCell(m),
        resultCell(m),
        millis(m.view?.totalMs),
        millis(m.view?.downtimeMs),
        m.view ? wireCell(m) : '-',
        m.view?.epoch === undefined ? '-' : String(m.view.epoch),
      ]),
      ['left', 'left', 'left', 'left', 'right', 'right', 'right', 'right'],
    )
  }
  return out
}

/** What the schedule does next, for the section's title. */
export function migrationLine(
  plan: MigrationPlan,
  t: MigrationTrack,
  runningAt: number | undefined,
  endsAt: number | undefined,
  now: number,
): string {
  const every = `every ${formatDuration(plan.everyMs)}, modes in turn`
  if (runningAt === undefined) return `(${every}, from when the VMs exist)`
  const step = nextMigrationStep(plan, t, runningAt, endsAt, now)
  if (step.waiting) return `(${every}; next once this one ends)`
  if (step.at === undefined) return `(${every}; no more before the end)`
  const mode = MODES[t.seq % MODES.length]
  const why = t.skipped ? `; ${t.skipped}, trying again` : ''
  return `(${every}; next, ${mode}, in ${formatDuration(Math.max(0, step.at - now))}${why})`
}

/** Per VM id, a note for the mesh VM table: on its way, or moved a moment ago. */
export function vmMigrationNotes(t: MigrationTrack, now: number): Map<string, string> {
  const notes = new Map<string, string>()
  for (const m of t.migrations) {
    if (m.endedAt === undefined) {
      notes.set(m.vmId, `migrating → #${m.to} (${m.view?.phase ?? 'requested'})`)
    } else if (m.view?.phase === 'done' && now - m.endedAt < MOVED_NOTE_MS) {
      notes.set(m.vmId, `moved #${m.from} → #${m.to}`)
    } else notes.delete(m.vmId)
  }
  return notes
}

/** For the one-line (non-TTY) view: the migration in progress, and how many ended. */
export function migrationLinePart(t: MigrationTrack): string {
  const parts: string[] = []
  for (const m of activeMigrations(t)) {
    const pct = Math.floor(migrationFraction(m) * 100)
    parts.push(
      `migrating ${m.vmName} #${m.from} → #${m.to} (${m.mode}) ${m.view?.phase ?? 'requested'} ${pct}%`,
    )
  }
  const ended = finishedMigrations(t)
  if (ended.length > 0) {
    const done = ended.filter((m) => m.view?.phase === 'done').length
    parts.push(`migrations ${done}/${ended.length} done`)
  }
  return parts.join(', ')
}

const whole = (ms: number | undefined) => (ms === undefined ? undefined : Math.round(ms))

/** For the --json summary. */
export function migrationSummary(t: MigrationTrack, startedAt: number) {
  const s = (ms: number) => Math.round(ms / 100) / 10
  return t.migrations.map((m) => ({
    vm: m.vmName,
    vmId: m.vmId,
    id: m.id,
    from: m.from,
    to: m.to,
    fromPeer: m.fromPeer,
    toPeer: m.toPeer,
    mode: m.mode,
    postcopy: m.view?.postcopy,
    phase: m.view?.phase ?? (m.error ? 'lost' : 'requested'),
    requestedAtS: s(m.requestedAt - startedAt),
    rounds: m.view?.round,
    totalMs: whole(m.view?.totalMs),
    downtimeMs: whole(m.view?.downtimeMs),
    memoryMiB: m.memoryMiB,
    bytesSent: m.view?.bytesSent,
    wireBytes: m.view?.wireBytes,
    epochBefore: m.epoch,
    epoch: m.view?.epoch,
    error: m.view?.error ?? (m.error ? { code: 'DEMO', message: m.error } : undefined),
  }))
}
