// What `skymesh demo` shows each tick: pure functions from a snapshot of the agents to text, and the
// bookkeeping of the scripted failure (when to kill and restart, what each agent saw and when).
import type { ClusterHost, ClusterView, ClusterVm, NodeInfo, VmRecord } from '../node/types.js'
import {
  type MigrationTrack,
  migrationLinePart,
  migrationsSection,
  vmMigrationNotes,
} from './demo-migrate.js'
import { formatDuration, formatMiB, formatRate, shortId, table } from './format.js'

export interface AgentSnapshot {
  index: number
  site: string
  dataDir: string
  api?: string
  peerId?: string
  node?: NodeInfo
  peers?: number
  /** The agent's own view of the VMs. */
  vms?: VmRecord[]
  /** Its own view of the mesh (`/v1/cluster`). */
  cluster?: ClusterView
  /** Why the agent could not be asked (exited, unreachable). */
  error?: string
}

/** Every VM any agent reports, once: the record with the highest location epoch wins. */
export function mergeVms(agents: AgentSnapshot[]): VmRecord[] {
  const byId = new Map<string, VmRecord>()
  for (const a of agents) {
    for (const vm of a.vms ?? []) {
      const seen = byId.get(vm.id)
      if (!seen || vm.epoch > seen.epoch || (vm.epoch === seen.epoch && vm.updatedAt > seen.updatedAt)) {
        byId.set(vm.id, vm)
      }
    }
  }
  return [...byId.values()].sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }))
}

/** `#2 12D3…abcdef` for a host that is one of the demo's agents, the short peer id otherwise. */
export function hostLabel(agents: AgentSnapshot[], peerId: string): string {
  const a = agents.find((x) => (x.node?.peerId ?? x.peerId) === peerId)
  return a ? `#${a.index} ${shortId(peerId)}` : shortId(peerId)
}

export function agentsTable(agents: AgentSnapshot[]): string {
  // MESH only once the agents answer /v1/cluster: an agent's own count of the live members.
  const mesh = agents.some((a) => a.cluster)
  const rows = agents.map((a) => [
    `#${a.index}`,
    shortId(a.node?.peerId ?? a.peerId),
    a.node?.site ?? a.site,
    ...(mesh ? [meshCell(a.cluster, agents.length)] : []),
    a.peers === undefined ? '-' : String(a.peers),
    a.node ? String(a.node.vmCount) : '-',
    a.node ? `${formatMiB(a.node.used.memoryMiB)} / ${formatMiB(a.node.capacity.memoryMiB)}` : '-',
    a.error ?? 'up',
  ])
  return table(
    ['AGENT', 'PEER', 'SITE', ...(mesh ? ['MESH (own view)'] : []), 'PEERS', 'VMS', 'MEMORY USED', 'STATUS'],
    rows,
    ['left', 'left', 'left', ...(mesh ? (['left'] as const) : []), 'right', 'right', 'right', 'left'],
  )
}

/** `4/4 alive`, `3/4 alive, 1 dead`: an agent's own /v1/cluster counts against the demo's size. */
export function meshCell(cluster: ClusterView | undefined, total: number): string {
  if (!cluster) return '-'
  const c = cluster.counts
  const parts = [`${c.alive}/${total} alive`]
  for (const k of ['suspect', 'dead', 'left'] as const) if (c[k] > 0) parts.push(`${c[k]} ${k}`)
  return parts.join(', ')
}

export function vmsTable(agents: AgentSnapshot[], vms: VmRecord[]): string {
  if (vms.length === 0) return 'no VMs\n'
  return table(
    ['VM', 'HOST', 'STATE', 'MEMORY', 'DIRTY', 'EPOCH'],
    vms.map((v) => [
      v.name,
      hostLabel(agents, v.host),
      v.state,
      formatMiB(v.memoryMiB),
      formatRate(v.workload?.dirtyMiBps),
      String(v.epoch),
    ]),
    ['left', 'left', 'left', 'right', 'right', 'right'],
  )
}

/**
 * The mesh's VMs as gossip tells one agent: a VM whose host was declared dead shows `host-lost`.
 * `notes` (by VM id) add a MIGRATION column: a VM on its way, or just moved.
 */
export function meshVmsTable(agents: AgentSnapshot[], vms: ClusterVm[], notes?: Map<string, string>): string {
  if (vms.length === 0) return 'no VMs\n'
  const sorted = [...vms].sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }))
  const noted = notes !== undefined && sorted.some((v) => notes.has(v.id))
  return table(
    ['VM', 'HOST', 'EPOCH', 'STATUS', 'STATE', 'MEMORY', 'DIRTY', ...(noted ? ['MIGRATION'] : [])],
    sorted.map((v) => [
      v.name,
      hostLabel(agents, v.host),
      String(v.epoch),
      v.status,
      v.state,
      formatMiB(v.memoryMiB),
      formatRate(v.dirtyMiBps),
      ...(noted ? [notes.get(v.id) ?? ''] : []),
    ]),
    ['left', 'left', 'right', 'left', 'left', 'right', 'right', 'left'],
  )
}

export function hint(dataDir: string): string {
  return (
    `talk to the mesh meanwhile:  skymesh status --data-dir ${dataDir}\n` +
    `                             skymesh vm ls --data-dir ${dataDir}\n`
  )
}

// --- the scripted failure: when to kill and restart (pure scheduling) ---

export const DEFAULT_KILL_AFTER_S = 20
export const DEFAULT_RESTART_AFTER_S = 15
/** With --duration, the default kill is scheduled only if at least this much of the run is left to watch. */
export const MIN_WATCH_S = 15

export interface FailurePlan {
  /** The agent to SIGKILL: the last one (never #0, whose address the others and the restart bootstrap from). */
  target: number
  /** Counted from when the VMs exist (like --duration). */
  killAfterMs: number
  /** Counted from the kill; absent: it stays dead. */
  restartAfterMs?: number
}

export interface FailureOptions {
  agents: number
  durationS?: number
  /** Absent: the default (if the run is long enough); 0: no kill. */
  killAfterS?: number
  /** Absent: the default; 0: no restart. */
  restartAfterS?: number
}

/** The plan from the flags, and notes on explicit flags that cannot take effect. */
export function planFailure(o: FailureOptions): { plan?: FailurePlan; notes: string[] } {
  const notes: string[] = []
  if (o.killAfterS === 0) return { notes }
  const explicit = o.killAfterS !== undefined
  if (o.agents < 2) {
    if (explicit) notes.push('--kill-after needs at least 2 agents (one to kill, one to notice): no kill')
    return { notes }
  }
  const end = o.durationS
  if (!explicit && end !== undefined && end < DEFAULT_KILL_AFTER_S + MIN_WATCH_S) return { notes }
  const killS = o.killAfterS ?? DEFAULT_KILL_AFTER_S
  if (end !== undefined && killS >= end) {
    notes.push(`--kill-after ${killS} is not before the end (--duration ${end}): no kill`)
    return { notes }
  }
  const plan: FailurePlan = { target: o.agents - 1, killAfterMs: killS * 1000 }
  const restartS = o.restartAfterS ?? DEFAULT_RESTART_AFTER_S
  if (restartS > 0) {
    if (end === undefined || killS + restartS < end) plan.restartAfterMs = restartS * 1000
    else if (o.restartAfterS !== undefined) {
      notes.push(`--restart-after ${restartS} falls after the end (--duration ${end}): no restart`)
    }
  }
  return { plan, notes }
}

/** Times (ms since epoch) the demo's steps happened. */
export interface FailureClock {
  /** When the VMs existed: the plan counts from it. */
  runningAt?: number
  killedAt?: number
  restartedAt?: number
}

export type FailureAction = 'kill' | 'restart'

/** The step due now, if any, and when the next one falls due (so the loop can wake for it). */
export function nextFailureStep(
  plan: FailurePlan | undefined,
  c: FailureClock,
  now: number,
): { due?: FailureAction; at?: number } {
  if (!plan || c.runningAt === undefined) return {}
  if (c.killedAt === undefined) {
    const at = c.runningAt + plan.killAfterMs
    return now >= at ? { due: 'kill', at } : { at }
  }
  if (plan.restartAfterMs !== undefined && c.restartedAt === undefined) {
    const at = c.killedAt + plan.restartAfterMs
    return now >= at ? { due: 'restart', at } : { at }
  }
  return {}
}

/** One line on what the scripted failure does, or did. */
export function failureLine(plan: FailurePlan, c: FailureClock, startedAt: number, now: number): string {
  const t = `#${plan.target}`
  const restart =
    plan.restartAfterMs === undefined ? 'no restart' : `restart ${formatDuration(plan.restartAfterMs)} later`
  const at = (ms: number) => formatDuration(ms - startedAt)
  if (c.runningAt === undefined) {
    return `scripted failure: SIGKILL ${t} ${formatDuration(plan.killAfterMs)} after the VMs exist, ${restart}`
  }
  if (c.killedAt === undefined) {
    return `scripted failure: SIGKILL ${t} in ${formatDuration(c.runningAt + plan.killAfterMs - now)}, ${restart}`
  }
  if (c.restartedAt === undefined) {
    const next =
      plan.restartAfterMs === undefined
        ? 'it stays dead'
        : `restart in ${formatDuration(Math.max(0, c.killedAt + plan.restartAfterMs - now))}`
    return `scripted failure: ${t} killed (SIGKILL) at ${at(c.killedAt)}; ${next}`
  }
  return `scripted failure: ${t} killed (SIGKILL) at ${at(c.killedAt)}, restarted at ${at(c.restartedAt)} (same data dir, same peer id)`
}

// --- what the agents saw: events and detection times (pure bookkeeping, fed each tick) ---

export interface DemoEvent {
  /** ms since epoch. */
  at: number
  text: string
}

/** A moment an agent reported something: from its own statusSince, or the tick's time when `approx`. */
export interface Seen {
  at: number
  approx?: boolean
}

/** One surviving agent's view of the killed one. */
export interface ObserverTrack {
  suspect?: Seen
  dead?: Seen
  /** Alive again after the restart. */
  alive?: Seen
}

export interface DemoTracker {
  total: number
  target?: number
  targetPeerId?: string
  /** Per agent: it has answered /v1/cluster since its (re)start. */
  up: boolean[]
  convergedAt?: number
  killedAt?: number
  restartedAt?: number
  upAgainAt?: number
  firstSuspectAt?: number
  allDeadAt?: number
  rejoinedAt?: number
  observers: Record<number, ObserverTrack>
  events: DemoEvent[]
}

export function newTracker(total: number, plan?: FailurePlan): DemoTracker {
  return { total, target: plan?.target, up: Array(total).fill(false), observers: {}, events: [] }
}

function copy(t: DemoTracker): DemoTracker {
  return structuredClone(t)
}

function push(t: DemoTracker, at: number, text: string): void {
  t.events.push({ at, text })
  // detection events carry the agent's own time, which can precede an event logged earlier in the tick
  t.events.sort((a, b) => a.at - b.at)
}

export function noteEvent(t: DemoTracker, at: number, text: string): DemoTracker {
  const n = copy(t)
  push(n, at, text)
  return n
}

export function noteKill(t: DemoTracker, at: number): DemoTracker {
  const n = copy(t)
  if (n.target === undefined) return n
  n.killedAt = at
  n.up[n.target] = false
  push(n, at, `agent #${n.target} killed (SIGKILL)`)
  return n
}

export function noteRestart(t: DemoTracker, at: number): DemoTracker {
  const n = copy(t)
  if (n.target === undefined) return n
  n.restartedAt = at
  push(n, at, `agent #${n.target} restarted (same data dir, same identity)`)
  return n
}

/** `4.1 s`, or `~4.1 s` when only the tick's time is known. */
export function secs(ms: number, approx?: boolean): string {
  return `${approx ? '~' : ''}${(Math.max(0, ms) / 1000).toFixed(1)} s`
}

function seenAt(h: ClusterHost, from: number, now: number): Seen {
  const since = h.statusSince ? Date.parse(h.statusSince) : Number.NaN
  // the agent's own time of the change (same machine, same clock); the tick if it predates `from`
  return Number.isFinite(since) && since >= from && since <= now ? { at: since } : { at: now, approx: true }
}

/** Feeds one tick's snapshots (taken at `now`); returns the tracker with what changed and its events. */
export function trackTick(t: DemoTracker, agents: AgentSnapshot[], now: number): DemoTracker {
  const n = copy(t)
  const total = n.total
  for (const a of agents) {
    if (a.index === n.target && !n.targetPeerId) n.targetPeerId = a.node?.peerId ?? a.peerId
    if (!a.node || !a.cluster || n.up[a.index]) continue
    n.up[a.index] = true
    if (a.index === n.target && n.restartedAt !== undefined) {
      n.upAgainAt = now
      push(n, now, `#${a.index} answers again, sees ${meshCell(a.cluster, total)}`)
    } else {
      push(n, now, `agent #${a.index} up, sees ${meshCell(a.cluster, total)}`)
    }
  }
  const allAlive = (a: AgentSnapshot | undefined) =>
    a?.cluster !== undefined && a.cluster.counts.alive === total && a.cluster.counts.suspect === 0
  if (n.convergedAt === undefined && n.killedAt === undefined && agents.length === total) {
    if (agents.every(allAlive)) {
      n.convergedAt = now
      push(n, now, `mesh converged: all ${total} agents see ${total}/${total} alive`)
    }
  }

  const target = n.target
  const killedAt = n.killedAt
  if (target === undefined || killedAt === undefined || !n.targetPeerId) return n
  const survivors = Array.from({ length: total }, (_, i) => i).filter((i) => i !== target)
  for (const a of agents) {
    if (a.index === target) continue
    const h = a.cluster?.hosts.find((x) => x.peerId === n.targetPeerId)
    if (!h) continue
    const o = n.observers[a.index] ?? {}
    n.observers[a.index] = o
    if (h.status === 'suspect' && !o.suspect && !o.dead && n.upAgainAt === undefined) {
      o.suspect = seenAt(h, killedAt, now)
      if (n.firstSuspectAt === undefined) {
        n.firstSuspectAt = o.suspect.at
        push(
          n,
          o.suspect.at,
          `#${a.index} suspects #${target} first, ${secs(o.suspect.at - killedAt, o.suspect.approx)} after the kill`,
        )
      }
    }
    if (h.status === 'dead' && !o.dead && n.upAgainAt === undefined) {
      o.dead = seenAt(h, killedAt, now)
      push(
        n,
        o.dead.at,
        `#${a.index} sees #${target} dead after ${secs(o.dead.at - killedAt, o.dead.approx)}`,
      )
    }
    const restartedAt = n.restartedAt
    if (restartedAt !== undefined && h.status === 'alive' && !o.alive) {
      // alive before the restart answered may be a view that never noticed the kill: only a change counts
      const s = seenAt(h, restartedAt, now)
      if (!s.approx || n.upAgainAt !== undefined) o.alive = s
    }
  }
  if (n.allDeadAt === undefined && survivors.every((i) => n.observers[i]?.dead)) {
    const seen = survivors.map((i) => n.observers[i]!.dead!).sort((a, b) => a.at - b.at)
    const first = seen[0]!
    const last = seen[seen.length - 1]!
    n.allDeadAt = last.at
    const lo = secs(first.at - killedAt, first.approx)
    const hi = secs(last.at - killedAt, last.approx)
    const range = lo === hi ? hi : `${lo} to ${hi}`
    const who =
      survivors.length === 1
        ? 'the survivor sees'
        : survivors.length === 2
          ? 'both survivors see'
          : `all ${survivors.length} survivors see`
    push(n, n.allDeadAt, `${who} #${target} dead (${range} after the kill)`)
  }
  const restartedAt = n.restartedAt
  if (restartedAt !== undefined && n.rejoinedAt === undefined && n.upAgainAt !== undefined) {
    const self = agents.find((a) => a.index === target)
    if (self?.cluster && allAlive(self) && survivors.every((i) => n.observers[i]?.alive)) {
      // the restarted agent's own part of the rejoin: when it learned of the last member
      const own = self.cluster.hosts.filter((h) => !h.self).map((h) => seenAt(h, restartedAt, now).at)
      const at = Math.max(...own, ...survivors.map((i) => n.observers[i]!.alive!.at))
      n.rejoinedAt = at
      push(
        n,
        at,
        `all ${total} agents see #${target} alive again, ${secs(at - restartedAt)} after the restart`,
      )
    }
  }
  return n
}

/** How each survivor sees the killed agent: now, and when it turned suspect, dead, alive again. */
export function failureTable(t: DemoTracker, agents: AgentSnapshot[]): string {
  const target = t.target
  if (target === undefined) return ''
  const rows = agents
    .filter((a) => a.index !== target)
    .map((a) => {
      const h = t.targetPeerId ? a.cluster?.hosts.find((x) => x.peerId === t.targetPeerId) : undefined
      const o = t.observers[a.index] ?? {}
      const since = (s: Seen | undefined, from: number | undefined) =>
        s && from !== undefined ? secs(s.at - from, s.approx) : '-'
      return [
        `#${a.index}`,
        a.cluster ? (h?.status ?? 'not a member') : '-',
        since(o.suspect, t.killedAt),
        since(o.dead, t.killedAt),
        since(o.alive, t.restartedAt),
      ]
    })
  return table(['AGENT', `SEES #${target}`, 'SUSPECT AFTER', 'DEAD AFTER', 'ALIVE AGAIN AFTER'], rows, [
    'left',
    'left',
    'right',
    'right',
    'right',
  ])
}

/** The last `max` events, with their time since the demo started. */
export function eventLog(events: DemoEvent[], startedAt: number, max = 8): string {
  if (events.length === 0) return ''
  return events
    .slice(-max)
    .map((e) => `  [${formatDuration(e.at - startedAt).padStart(5)}] ${e.text}\n`)
    .join('')
}

/** One event as its own line (non-TTY output). */
export function eventLine(e: DemoEvent, startedAt: number): string {
  return `[${formatDuration(e.at - startedAt)}] event: ${e.text}\n`
}

/** For the --json summary: the detection and rejoin times in seconds. */
export function failureSummary(t: DemoTracker, startedAt: number) {
  if (t.target === undefined || t.killedAt === undefined) return undefined
  const killedAt = t.killedAt
  const s = (ms: number) => Math.round(ms / 100) / 10
  const after = (x: Seen | undefined, from: number | undefined) =>
    x && from !== undefined ? s(x.at - from) : undefined
  return {
    target: t.target,
    peerId: t.targetPeerId,
    killedAtS: s(killedAt - startedAt),
    restartedAtS: t.restartedAt === undefined ? undefined : s(t.restartedAt - startedAt),
    allDeadAfterS: t.allDeadAt === undefined ? undefined : s(t.allDeadAt - killedAt),
    rejoinedAfterS:
      t.rejoinedAt === undefined || t.restartedAt === undefined ? undefined : s(t.rejoinedAt - t.restartedAt),
    observers: Object.entries(t.observers).map(([i, o]) => ({
      agent: Number(i),
      suspectAfterS: after(o.suspect, killedAt),
      deadAfterS: after(o.dead, killedAt),
      aliveAgainAfterS: after(o.alive, t.restartedAt),
      approx: Boolean(o.suspect?.approx || o.dead?.approx || o.alive?.approx) || undefined,
    })),
  }
}

// --- the two renderings ---

export interface ViewExtras {
  /** The mesh's VMs as one agent sees them (its /v1/cluster/vms). */
  meshVms?: { from: number; vms: ClusterVm[] }
  tracker?: DemoTracker
  /** ms since epoch the demo started: event times are shown from it. */
  startedAt?: number
  /** What the scripted failure does (failureLine). */
  failure?: string
  /** The scripted migrations: the track, what the schedule does next (migrationLine), the time. */
  migrations?: { track: MigrationTrack; line?: string; now: number }
}

/** The full-screen view (the caller clears the screen first). */
export function renderView(
  agents: AgentSnapshot[],
  elapsedMs: number,
  stopHint: string,
  extras: ViewExtras = {},
): string {
  const up = agents.filter((a) => a.node).length
  const vmCount = extras.meshVms ? extras.meshVms.vms.length : mergeVms(agents).length
  let out = `skymesh demo: ${up}/${agents.length} agents up, ${vmCount} VMs, ${formatDuration(elapsedMs)}  (${stopHint})\n\n`
  out += agentsTable(agents)
  const t = extras.tracker
  if (extras.failure) {
    out += `\n${extras.failure}\n`
    if (t?.target !== undefined) out += failureTable(t, agents)
  }
  if (extras.meshVms) {
    out += `\nVMs of the mesh as agent #${extras.meshVms.from} sees them (its /v1/cluster/vms):\n`
    const m = extras.migrations
    out += meshVmsTable(agents, extras.meshVms.vms, m && vmMigrationNotes(m.track, m.now))
  } else {
    out += `\n${vmsTable(agents, mergeVms(agents))}`
  }
  if (extras.migrations) out += `\n${migrationsSection(extras.migrations.track, extras.migrations.line)}`
  if (t && t.events.length > 0) {
    out +=
      '\nevents (detection times from each agent\'s own status change; "~": known only to the 1 s tick):\n'
    out += eventLog(t.events, extras.startedAt ?? 0)
  }
  return `${out}\n${hint(agents[0]?.dataDir ?? '?')}`
}

/** One line per tick when stdout is not a terminal. */
export function renderLine(agents: AgentSnapshot[], elapsedMs: number, extras: ViewExtras = {}): string {
  const vms = mergeVms(agents)
  const up = agents.filter((a) => a.node)
  const used = up.reduce((s, a) => s + (a.node?.used.memoryMiB ?? 0), 0)
  const cap = up.reduce((s, a) => s + (a.node?.capacity.memoryMiB ?? 0), 0)
  const peers = agents.map((a) => (a.peers === undefined ? '-' : String(a.peers))).join('/')
  let vmPart: string
  if (extras.meshVms) {
    const mv = extras.meshVms.vms
    const lost = mv.filter((v) => v.status !== 'ok').length
    vmPart = `vms ${mv.length} (${mv.filter((v) => v.state === 'running').length} running${lost ? `, ${lost} host-lost/left` : ''})`
  } else {
    vmPart = `vms ${vms.length} (${vms.filter((v) => v.state === 'running').length} running)`
  }
  let line =
    `[${formatDuration(elapsedMs)}] agents ${up.length}/${agents.length} up, peers ${peers}, ` +
    `${vmPart}, memory ${formatMiB(used)} / ${formatMiB(cap)}`
  if (agents.some((a) => a.cluster)) {
    line += `, mesh ${agents.map((a) => `#${a.index} ${meshCell(a.cluster, agents.length)}`).join('; ')}`
  }
  const moving = extras.migrations ? migrationLinePart(extras.migrations.track) : ''
  if (moving) line += `, ${moving}`
  return `${line}\n`
}
