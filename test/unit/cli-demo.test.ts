// `skymesh demo`'s pure parts: the mesh column, the mesh VM table, the event log, the scripted
// failure's schedule and the bookkeeping of what each agent saw.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  agentsToAvoid,
  KILL_GUARD_MS,
  type MigrationPick,
  type MigrationTrack,
  migrationLine,
  migrationLinePart,
  migrationSummary,
  migrationsSection,
  newMigrationTrack,
  nextMigrationStep,
  noteMigrationError,
  noteMigrationSkip,
  noteMigrationStart,
  noteMigrationView,
  pickMigration,
  planMigrations,
  progressBar,
  vmMigrationNotes,
} from '../../src/cli/demo-migrate.js'
import {
  type AgentSnapshot,
  agentsTable,
  type DemoTracker,
  eventLine,
  eventLog,
  failureLine,
  failureSummary,
  failureTable,
  meshCell,
  meshVmsTable,
  newTracker,
  nextFailureStep,
  noteKill,
  noteRestart,
  planFailure,
  renderLine,
  renderView,
  secs,
  trackTick,
} from '../../src/cli/demo-view.js'
import type {
  ClusterHost,
  ClusterView,
  ClusterVm,
  MigrationView,
  NodeInfo,
  VmRecord,
} from '../../src/node/types.js'
import { fakeMigrationView } from '../helpers/migration-view.js'

const PEERS = [0, 1, 2, 3].map((i) => `12D3KooWPeer${i}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxabcde${i}`)
const T0 = Date.parse('2026-01-01T00:00:00Z')

function nodeInfo(i: number): NodeInfo {
  return {
    peerId: PEERS[i]!,
    addrs: [],
    version: '0.1.0',
    site: i % 2 ? 'site-b' : 'site-a',
    driver: 'synthetic',
    startedAt: new Date(T0).toISOString(),
    capacity: { vcpus: 8, memoryMiB: 4096, diskMiB: 102400 },
    used: { vcpus: 1, memoryMiB: 32, diskMiB: 64 },
    vmCount: 1,
  }
}

type Status = ClusterHost['status']

/** Agent `self`'s view: `statuses[i]` for agent i (undefined: not a member), `since[i]` its statusSince. */
function view(
  self: number,
  statuses: (Status | undefined)[],
  since: (number | undefined)[] = [],
): ClusterView {
  const counts = { alive: 0, suspect: 0, dead: 0, left: 0 }
  const hosts: ClusterHost[] = []
  statuses.forEach((status, i) => {
    if (!status) return
    if (status !== 'unknown') counts[status]++
    const s = since[i]
    hosts.push({
      peerId: PEERS[i]!,
      self: i === self,
      status,
      statusSince: s === undefined ? undefined : new Date(s).toISOString(),
      site: i % 2 ? 'site-b' : 'site-a',
      addrs: [],
      vmCount: 1,
    })
  })
  return { self: PEERS[self]!, hosts, counts }
}

function agent(i: number, cluster?: ClusterView, error?: string): AgentSnapshot {
  const base = { index: i, site: i % 2 ? 'site-b' : 'site-a', dataDir: `/d${i}`, peerId: PEERS[i] }
  if (error) return { ...base, error }
  return { ...base, node: nodeInfo(i), peers: 3, vms: [], cluster }
}

function clusterVm(name: string, host: number, status: ClusterVm['status']): ClusterVm {
  return {
    id: `vm-${name}`,
    name,
    host: PEERS[host]!,
    epoch: 1,
    status,
    state: 'running',
    vcpus: 1,
    memoryMiB: 32,
    diskMiB: 64,
    cpu: 0,
    dirtyMiBps: 2,
  }
}

const ALL = ['alive', 'alive', 'alive', 'alive'] as Status[]

describe('demo view: the mesh as each agent sees it', () => {
  it('counts alive members against the demo size and names the others', () => {
    assert.equal(meshCell(undefined, 4), '-')
    assert.equal(meshCell(view(0, ALL), 4), '4/4 alive')
    assert.equal(meshCell(view(0, ['alive', 'alive']), 4), '2/4 alive')
    assert.equal(meshCell(view(0, ['alive', 'alive', 'alive', 'suspect']), 4), '3/4 alive, 1 suspect')
    assert.equal(meshCell(view(0, ['alive', 'dead', 'alive', 'dead']), 4), '2/4 alive, 2 dead')
  })

  it('adds a MESH column to the agents table once the agents answer /v1/cluster', () => {
    const without = agentsTable([agent(0), agent(1)])
    assert.doesNotMatch(without, /MESH/)
    const out = agentsTable([
      agent(0, view(0, ['alive', 'alive', 'alive', 'dead'])),
      agent(1, view(1, ['alive', 'alive'])),
      agent(2, undefined, 'starting'),
      agent(3, undefined, 'killed (SIGKILL)'),
    ])
    const lines = out.split('\n')
    assert.match(lines[0]!, /^AGENT\s+PEER\s+SITE\s+MESH \(own view\)\s+PEERS/)
    assert.match(lines[1]!, /^#0 .* 3\/4 alive, 1 dead .* up$/)
    assert.match(lines[2]!, /^#1 .* 2\/4 alive /)
    assert.match(lines[3]!, /^#2 .* starting$/)
    assert.match(lines[4]!, /^#3 .* killed \(SIGKILL\)$/)
  })

  it('shows a VM whose host was declared dead as host-lost', () => {
    const agents = [agent(0, view(0, ALL)), agent(3, undefined, 'killed (SIGKILL)')]
    const out = meshVmsTable(agents, [clusterVm('demo-10', 0, 'ok'), clusterVm('demo-2', 3, 'host-lost')])
    const lines = out.trimEnd().split('\n')
    assert.match(lines[0]!, /^VM\s+HOST\s+EPOCH\s+STATUS\s+STATE\s+MEMORY\s+DIRTY$/)
    // numeric name order, host as `#index short-id`
    assert.match(lines[1]!, /^demo-2\s+#3 12D3…abcde3\s+1\s+host-lost\s+running\s+32 MiB\s+2 MiB\/s$/)
    assert.match(lines[2]!, /^demo-10\s+#0 12D3…abcde0\s+1\s+ok\s+running/)
    assert.equal(meshVmsTable(agents, []), 'no VMs\n')
  })

  it('renders the full view: mesh column, failure table, mesh VMs and the event log', () => {
    let t = newTracker(4, { target: 3, killAfterMs: 10_000, restartAfterMs: 10_000 })
    t = trackTick(
      t,
      [0, 1, 2, 3].map((i) => agent(i, view(i, ALL))),
      T0 + 5000,
    )
    t = noteKill(t, T0 + 20_000)
    const snap = [
      agent(0, view(0, ['alive', 'alive', 'alive', 'dead'], [T0, T0, T0, T0 + 24_100])),
      agent(1, view(1, ['alive', 'alive', 'alive', 'suspect'], [T0, T0, T0, T0 + 21_000])),
      agent(2, view(2, ['alive', 'alive', 'alive', 'alive'])),
      agent(3, undefined, 'killed (SIGKILL)'),
    ]
    t = trackTick(t, snap, T0 + 25_000)
    const out = renderView(snap, 25_000, 'stops at 55s', {
      tracker: t,
      startedAt: T0,
      meshVms: { from: 0, vms: [clusterVm('demo-1', 0, 'ok'), clusterVm('demo-4', 3, 'host-lost')] },
      failure: 'scripted failure: #3 killed (SIGKILL) at 20s; restart in 5s',
    })
    assert.match(out, /^skymesh demo: 3\/4 agents up, 2 VMs, 25s {2}\(stops at 55s\)\n/)
    assert.match(out, /#0 .* 3\/4 alive, 1 dead/)
    assert.match(out, /#1 .* 3\/4 alive, 1 suspect/)
    assert.match(out, /AGENT\s+SEES #3\s+SUSPECT AFTER\s+DEAD AFTER\s+ALIVE AGAIN AFTER/)
    assert.match(out, /\n#0\s+dead\s+-\s+4\.1 s\s+-\n/)
    assert.match(out, /\n#1\s+suspect\s+1\.0 s\s+-\s+-\n/)
    assert.match(out, /\n#2\s+alive\s+-\s+-\s+-\n/)
    assert.match(out, /VMs of the mesh as agent #0 sees them/)
    assert.match(out, /demo-4\s+#3 \S+\s+1\s+host-lost/)
    assert.match(out, / {2}\[ {2}20s\] agent #3 killed \(SIGKILL\)\n/)
    assert.match(out, / {2}\[ {2}24s\] #0 sees #3 dead after 4\.1 s\n/)
    assert.match(out, /talk to the mesh meanwhile: {2}skymesh status --data-dir \/d0/)
  })

  it('prints one line per tick, with each agent mesh and the host-lost VMs', () => {
    const snap = [agent(0, view(0, ['alive', 'dead'])), agent(1, undefined, 'killed (SIGKILL)')]
    const line = renderLine(snap, 3000, {
      meshVms: { from: 0, vms: [clusterVm('demo-1', 0, 'ok'), clusterVm('demo-2', 1, 'host-lost')] },
    })
    assert.equal(
      line,
      '[3s] agents 1/2 up, peers 3/-, vms 2 (2 running, 1 host-lost/left), memory 32 MiB / 4 GiB, ' +
        'mesh #0 1/2 alive, 1 dead; #1 -\n',
    )
  })
})

describe('demo view: event log', () => {
  it('keeps the last events with their time since the start', () => {
    const events = Array.from({ length: 10 }, (_, i) => ({ at: T0 + i * 1500, text: `event ${i}` }))
    const out = eventLog(events, T0, 6)
    const lines = out.trimEnd().split('\n')
    assert.equal(lines.length, 6)
    assert.equal(lines[0], '  [   6s] event 4')
    assert.equal(lines[5], '  [  13s] event 9')
    assert.equal(eventLog([], T0), '')
    assert.equal(
      eventLine({ at: T0 + 61_000, text: 'agent #3 killed (SIGKILL)' }, T0),
      '[1m01s] event: agent #3 killed (SIGKILL)\n',
    )
  })

  it('formats seconds, marking times known only to the tick', () => {
    assert.equal(secs(4123), '4.1 s')
    assert.equal(secs(4000, true), '~4.0 s')
    assert.equal(secs(-5), '0.0 s')
  })
})

describe('demo: scripted failure schedule', () => {
  it('kills the last agent after 20 s and restarts it 15 s later by default', () => {
    assert.deepEqual(planFailure({ agents: 4 }), {
      plan: { target: 3, killAfterMs: 20_000, restartAfterMs: 15_000 },
      notes: [],
    })
  })

  it('leaves a short run alone unless asked, and fits the restart in the run', () => {
    assert.deepEqual(planFailure({ agents: 3, durationS: 3 }), { notes: [] })
    assert.deepEqual(planFailure({ agents: 3, durationS: 34 }), { notes: [] })
    // long enough to watch the detection, not for the default restart
    assert.deepEqual(planFailure({ agents: 3, durationS: 35 }), {
      plan: { target: 2, killAfterMs: 20_000 },
      notes: [],
    })
    assert.deepEqual(planFailure({ agents: 4, durationS: 45, killAfterS: 10, restartAfterS: 10 }), {
      plan: { target: 3, killAfterMs: 10_000, restartAfterMs: 10_000 },
      notes: [],
    })
    assert.deepEqual(planFailure({ agents: 4, durationS: 20, killAfterS: 5, restartAfterS: 30 }), {
      plan: { target: 3, killAfterMs: 5000 },
      notes: ['--restart-after 30 falls after the end (--duration 20): no restart'],
    })
  })

  it('turns off with 0, and says why an explicit kill cannot happen', () => {
    assert.deepEqual(planFailure({ agents: 4, killAfterS: 0 }), { notes: [] })
    assert.deepEqual(planFailure({ agents: 4, restartAfterS: 0 }), {
      plan: { target: 3, killAfterMs: 20_000 },
      notes: [],
    })
    assert.deepEqual(planFailure({ agents: 1 }), { notes: [] })
    assert.equal(planFailure({ agents: 1, killAfterS: 5 }).plan, undefined)
    assert.match(planFailure({ agents: 1, killAfterS: 5 }).notes[0]!, /at least 2 agents/)
    assert.match(planFailure({ agents: 4, durationS: 10, killAfterS: 10 }).notes[0]!, /not before the end/)
  })

  it('says which step is due and when the next one falls due', () => {
    const plan = { target: 3, killAfterMs: 10_000, restartAfterMs: 5000 }
    assert.deepEqual(nextFailureStep(undefined, { runningAt: T0 }, T0 + 99_000), {})
    assert.deepEqual(nextFailureStep(plan, {}, T0), {}, 'nothing before the VMs exist')
    assert.deepEqual(nextFailureStep(plan, { runningAt: T0 }, T0 + 9000), { at: T0 + 10_000 })
    assert.deepEqual(nextFailureStep(plan, { runningAt: T0 }, T0 + 10_000), { due: 'kill', at: T0 + 10_000 })
    // the restart counts from the actual kill, not the planned one
    const killed = { runningAt: T0, killedAt: T0 + 10_400 }
    assert.deepEqual(nextFailureStep(plan, killed, T0 + 11_000), { at: T0 + 15_400 })
    assert.deepEqual(nextFailureStep(plan, killed, T0 + 15_500), { due: 'restart', at: T0 + 15_400 })
    assert.deepEqual(nextFailureStep(plan, { ...killed, restartedAt: T0 + 15_500 }, T0 + 20_000), {})
    assert.deepEqual(
      nextFailureStep({ target: 3, killAfterMs: 10_000 }, killed, T0 + 60_000),
      {},
      'no restart planned',
    )
  })

  it('describes the failure before, during and after', () => {
    const plan = { target: 3, killAfterMs: 10_000, restartAfterMs: 15_000 }
    assert.equal(
      failureLine(plan, {}, T0, T0 + 3000),
      'scripted failure: SIGKILL #3 10s after the VMs exist, restart 15s later',
    )
    assert.equal(
      failureLine(plan, { runningAt: T0 + 5000 }, T0, T0 + 8000),
      'scripted failure: SIGKILL #3 in 7s, restart 15s later',
    )
    assert.equal(
      failureLine(plan, { runningAt: T0 + 5000, killedAt: T0 + 15_000 }, T0, T0 + 20_000),
      'scripted failure: #3 killed (SIGKILL) at 15s; restart in 10s',
    )
    assert.equal(
      failureLine(
        { target: 3, killAfterMs: 10_000 },
        { runningAt: T0, killedAt: T0 + 10_000 },
        T0,
        T0 + 20_000,
      ),
      'scripted failure: #3 killed (SIGKILL) at 10s; it stays dead',
    )
    assert.match(
      failureLine(plan, { runningAt: T0, killedAt: T0 + 10_000, restartedAt: T0 + 25_000 }, T0, T0 + 30_000),
      /#3 killed \(SIGKILL\) at 10s, restarted at 25s/,
    )
  })
})

describe('demo: what each agent saw of the killed one', () => {
  const PLAN = { target: 3, killAfterMs: 10_000, restartAfterMs: 10_000 }

  /** The whole story, one tick per step; returns the tracker after each. */
  function story(): Record<string, DemoTracker> {
    const out: Record<string, DemoTracker> = {}
    let t = newTracker(4, PLAN)
    // joining: #0 alone, then everyone
    t = trackTick(
      t,
      [agent(0, view(0, ['alive'])), ...[1, 2, 3].map((i) => agent(i, undefined, 'starting'))],
      T0 + 2000,
    )
    out.joining = t
    t = trackTick(
      t,
      [0, 1, 2, 3].map((i) => agent(i, view(i, ALL))),
      T0 + 5000,
    )
    out.converged = t
    const K = T0 + 20_000
    t = noteKill(t, K)
    out.killed = t
    // #0 suspects at +1.2 s (its own time), #1 and #2 still alive
    t = trackTick(
      t,
      [
        agent(0, view(0, ['alive', 'alive', 'alive', 'suspect'], [T0, T0, T0, K + 1200])),
        agent(1, view(1, ALL, [T0, T0, T0, T0])),
        agent(2, view(2, ALL, [T0, T0, T0, T0])),
        agent(3, undefined, 'killed (SIGKILL)'),
      ],
      K + 2000,
    )
    out.suspected = t
    // #0 and #1 dead with their own times; #2 jumped to dead between ticks and has no statusSince
    t = trackTick(
      t,
      [
        agent(0, view(0, ['alive', 'alive', 'alive', 'dead'], [T0, T0, T0, K + 5100])),
        agent(1, view(1, ['alive', 'alive', 'alive', 'dead'], [T0, T0, T0, K + 5300])),
        agent(2, view(2, ['alive', 'alive', 'alive', 'dead'])),
        agent(3, undefined, 'killed (SIGKILL)'),
      ],
      K + 6000,
    )
    out.dead = t
    const R = K + 10_000
    t = noteRestart(t, R)
    out.restarted = t
    // survivors see it alive again before its API answers
    t = trackTick(
      t,
      [
        agent(0, view(0, ALL, [T0, T0, T0, R + 1500])),
        agent(1, view(1, ALL, [T0, T0, T0, R + 1700])),
        agent(2, view(2, ['alive', 'alive', 'alive', 'dead'])),
        agent(3, undefined, 'restarting'),
      ],
      R + 2000,
    )
    out.partly = t
    t = trackTick(
      t,
      [
        agent(0, view(0, ALL, [T0, T0, T0, R + 1500])),
        agent(1, view(1, ALL, [T0, T0, T0, R + 1700])),
        agent(2, view(2, ALL, [T0, T0, T0, R + 2100])),
        agent(3, view(3, ALL, [R + 1400, R + 1600, R + 1800, R + 1000])),
      ],
      R + 3000,
    )
    out.rejoined = t
    return out
  }

  it('logs agents coming up and the mesh converging', () => {
    const s = story()
    assert.deepEqual(
      s.joining!.events.map((e) => e.text),
      ['agent #0 up, sees 1/4 alive'],
    )
    assert.deepEqual(
      s.converged!.events.slice(1).map((e) => e.text),
      [
        'agent #1 up, sees 4/4 alive',
        'agent #2 up, sees 4/4 alive',
        'agent #3 up, sees 4/4 alive',
        'mesh converged: all 4 agents see 4/4 alive',
      ],
    )
    assert.equal(s.converged!.targetPeerId, PEERS[3])
  })

  it('measures suspicion and detection per survivor from its own status change', () => {
    const s = story()
    assert.deepEqual(s.suspected!.observers[0], { suspect: { at: T0 + 21_200 } })
    assert.deepEqual(s.suspected!.observers[1], {})
    const d = s.dead!
    assert.deepEqual(d.observers[0]!.dead, { at: T0 + 25_100 })
    assert.deepEqual(d.observers[1]!.dead, { at: T0 + 25_300 })
    assert.deepEqual(d.observers[2]!.dead, { at: T0 + 26_000, approx: true }, 'the tick when no statusSince')
    assert.equal(d.allDeadAt, T0 + 26_000)
    assert.deepEqual(d.events.map((e) => e.text).slice(-6), [
      'agent #3 killed (SIGKILL)',
      '#0 suspects #3 first, 1.2 s after the kill',
      '#0 sees #3 dead after 5.1 s',
      '#1 sees #3 dead after 5.3 s',
      '#2 sees #3 dead after ~6.0 s',
      'all 3 survivors see #3 dead (5.1 s to ~6.0 s after the kill)',
    ])
  })

  it('reports the rejoin once every agent, the restarted one included, sees it alive', () => {
    const s = story()
    assert.equal(s.partly!.rejoinedAt, undefined)
    assert.deepEqual(s.partly!.observers[0]!.alive, { at: T0 + 31_500 })
    assert.equal(s.partly!.observers[2]!.alive, undefined)
    const r = s.rejoined!
    assert.equal(r.upAgainAt, T0 + 33_000)
    assert.equal(r.rejoinedAt, T0 + 32_100)
    const texts = r.events.map((e) => e.text)
    assert.ok(texts.includes('agent #3 restarted (same data dir, same identity)'))
    assert.ok(texts.includes('all 4 agents see #3 alive again, 2.1 s after the restart'))
    assert.ok(texts.includes('#3 answers again, sees 4/4 alive'))
    // sorted by time
    const ats = r.events.map((e) => e.at)
    assert.deepEqual(
      ats,
      [...ats].sort((a, b) => a - b),
    )
  })

  it('tabulates and summarizes the detection', () => {
    const r = story().rejoined!
    const snap = [0, 1, 2, 3].map((i) => agent(i, view(i, ALL)))
    const lines = failureTable(r, snap).trimEnd().split('\n')
    assert.equal(lines.length, 4, 'one row per survivor')
    assert.match(lines[1]!, /^#0\s+alive\s+1\.2 s\s+5\.1 s\s+1\.5 s$/)
    assert.match(lines[3]!, /^#2\s+alive\s+-\s+~6\.0 s\s+2\.1 s$/)
    const sum = failureSummary(r, T0)
    assert.equal(sum?.target, 3)
    assert.equal(sum?.killedAtS, 20)
    assert.equal(sum?.restartedAtS, 30)
    assert.equal(sum?.allDeadAfterS, 6)
    assert.equal(sum?.rejoinedAfterS, 2.1)
    assert.deepEqual(sum?.observers[0], {
      agent: 0,
      suspectAfterS: 1.2,
      deadAfterS: 5.1,
      aliveAgainAfterS: 1.5,
      approx: undefined,
    })
    assert.equal(sum?.observers[2]?.approx, true)
    assert.equal(failureSummary(newTracker(4, PLAN), T0), undefined, 'nothing before the kill')
  })

  it('does not change the tracker it is given', () => {
    const t = noteKill(newTracker(2, { target: 1, killAfterMs: 1000 }), T0)
    const before = structuredClone(t)
    trackTick(
      t,
      [agent(0, view(0, ['alive', 'dead'], [T0, T0 + 3000])), agent(1, undefined, 'killed')],
      T0 + 4000,
    )
    noteRestart(t, T0 + 5000)
    assert.deepEqual(t, before)
  })

  it('gives one time when every survivor saw the death at the same moment', () => {
    let t = noteKill(newTracker(3, { target: 2, killAfterMs: 1000 }), T0)
    t = { ...t, targetPeerId: PEERS[2] }
    const dead = (i: number) => agent(i, view(i, ['alive', 'alive', 'dead'], [T0, T0, T0 + 4520]))
    t = trackTick(t, [dead(0), dead(1), agent(2, undefined, 'killed (SIGKILL)')], T0 + 5000)
    assert.ok(
      t.events.some((e) => e.text === 'both survivors see #2 dead (4.5 s after the kill)'),
      JSON.stringify(t.events),
    )
  })

  it('counts a view that never noticed the kill as alive again only once the agent is back', () => {
    let t = newTracker(2, { target: 1, killAfterMs: 1000, restartAfterMs: 1000 })
    t = trackTick(t, [agent(0, view(0, ['alive', 'alive'])), agent(1, view(1, ['alive', 'alive']))], T0)
    t = noteKill(t, T0 + 1000)
    t = noteRestart(t, T0 + 2000)
    // #0 still has the old alive record (statusSince before the kill): not a rejoin yet
    t = trackTick(
      t,
      [agent(0, view(0, ['alive', 'alive'], [T0, T0])), agent(1, undefined, 'restarting')],
      T0 + 2500,
    )
    assert.equal(t.observers[0]?.alive, undefined)
    t = trackTick(
      t,
      [
        agent(0, view(0, ['alive', 'alive'], [T0, T0])),
        agent(1, view(1, ['alive', 'alive'], [T0 + 2600, T0 + 2600])),
      ],
      T0 + 3000,
    )
    assert.deepEqual(t.observers[0]?.alive, { at: T0 + 3000, approx: true })
    assert.equal(t.rejoinedAt, T0 + 3000)
    assert.equal(t.allDeadAt, undefined, 'it never saw #1 dead')
  })
})

// --- live migrations ---

const MiB = 1024 * 1024

function vmRecord(name: string, host: number, over: Partial<VmRecord> = {}): VmRecord {
  return {
    id: `vm-${name}`,
    name,
    vcpus: 1,
    memoryMiB: 32,
    diskMiB: 64,
    workload: { dirtyMiBps: 4, hotSetMiB: 16, cpu: 0, diskWriteMiBps: 0 },
    state: 'running',
    host: PEERS[host]!,
    epoch: 1,
    createdAt: new Date(T0).toISOString(),
    updatedAt: new Date(T0).toISOString(),
    ...over,
  }
}

/** Agent i hosting `vms` (its own /v1/vms). */
function hosting(i: number, vms: VmRecord[], error?: string): AgentSnapshot {
  return error ? agent(i, undefined, error) : { ...agent(i, view(i, ALL)), vms }
}

function migrationView(over: Partial<MigrationView> = {}): MigrationView {
  return fakeMigrationView({
    vmId: 'vm-demo-3',
    from: PEERS[0]!,
    to: PEERS[2]!,
    mode: 'auto',
    phase: 'precopy',
    round: 1,
    startedAt: T0,
    dirtyRateMiBps: 4,
    ...over,
  })
}

const PICK: MigrationPick = {
  vmId: 'vm-demo-3',
  vmName: 'demo-3',
  memoryMiB: 64,
  epoch: 1,
  from: 0,
  to: 2,
  fromPeer: PEERS[0]!,
  toPeer: PEERS[2]!,
  mode: 'auto',
}

describe('demo: live migration schedule', () => {
  it('migrates every 8 s by default when the run is long enough, never in a short run unless asked', () => {
    assert.deepEqual(planMigrations({ agents: 4, vms: 6 }), { plan: { everyMs: 8000 }, notes: [] })
    assert.deepEqual(planMigrations({ agents: 3, vms: 3, durationS: 4 }), { notes: [] })
    assert.deepEqual(planMigrations({ agents: 4, vms: 6, durationS: 45 }), {
      plan: { everyMs: 8000 },
      notes: [],
    })
    assert.deepEqual(planMigrations({ agents: 4, vms: 4, durationS: 40, migrateEveryS: 6 }), {
      plan: { everyMs: 6000 },
      notes: [],
    })
    assert.deepEqual(planMigrations({ agents: 2, vms: 2, durationS: 10, migrateEveryS: 2 }), {
      plan: { everyMs: 2000 },
      notes: [],
    })
  })

  it('turns off with 0, and says why an explicit interval cannot take effect', () => {
    assert.deepEqual(planMigrations({ agents: 4, vms: 6, migrateEveryS: 0 }), { notes: [] })
    assert.deepEqual(planMigrations({ agents: 1, vms: 6 }), { notes: [] })
    assert.match(planMigrations({ agents: 1, vms: 6, migrateEveryS: 5 }).notes[0]!, /at least 2 agents/)
    assert.match(planMigrations({ agents: 3, vms: 0, migrateEveryS: 5 }).notes[0]!, /at least one VM/)
    const late = planMigrations({ agents: 3, vms: 3, durationS: 4, migrateEveryS: 2 })
    assert.equal(late.plan, undefined)
    assert.match(late.notes[0]!, /--migrate-every 2 leaves no time .* \(--duration 4\)/)
  })

  it('says when the next one is due, waits for the one in progress, and stops before the end', () => {
    const plan = { everyMs: 8000 }
    const t0 = newMigrationTrack()
    assert.deepEqual(nextMigrationStep(undefined, t0, T0, undefined, T0 + 99_000), {})
    assert.deepEqual(
      nextMigrationStep(plan, t0, undefined, undefined, T0),
      {},
      'nothing before the VMs exist',
    )
    assert.deepEqual(nextMigrationStep(plan, t0, T0, undefined, T0 + 1000), { at: T0 + 8000 })
    assert.deepEqual(nextMigrationStep(plan, t0, T0, undefined, T0 + 8000), { due: true, at: T0 + 8000 })
    const started = noteMigrationStart(t0, PICK, T0 + 8200).track
    assert.deepEqual(nextMigrationStep(plan, started, T0, undefined, T0 + 17_000), { waiting: true })
    const done = noteMigrationView(started, 0, migrationView({ phase: 'done' }), T0 + 9000).track
    // counted from the start of the last one
    assert.deepEqual(nextMigrationStep(plan, done, T0, undefined, T0 + 10_000), { at: T0 + 16_200 })
    // the run ends at +18 s: one at +16.2 s would be cut by the stop
    assert.deepEqual(nextMigrationStep(plan, done, T0, T0 + 18_000, T0 + 10_000), {})
    const skipped = noteMigrationSkip(t0, T0 + 8000, 'no busy VM with a live destination')
    assert.deepEqual(nextMigrationStep(plan, skipped, T0, undefined, T0 + 8100), { at: T0 + 10_000 })
  })

  it('keeps the failure target out from shortly before the kill until every agent sees it back', () => {
    const plan = { target: 3, killAfterMs: 20_000, restartAfterMs: 15_000 }
    assert.deepEqual(agentsToAvoid(undefined, { runningAt: T0 }, {}, T0), [])
    assert.deepEqual(agentsToAvoid(plan, { runningAt: T0 }, {}, T0 + 20_000 - KILL_GUARD_MS - 1), [])
    assert.deepEqual(agentsToAvoid(plan, { runningAt: T0 }, {}, T0 + 20_000 - KILL_GUARD_MS), [3])
    const killed = { runningAt: T0, killedAt: T0 + 20_000 }
    assert.deepEqual(agentsToAvoid(plan, killed, {}, T0 + 30_000), [3])
    const restarted = { ...killed, restartedAt: T0 + 35_000 }
    assert.deepEqual(agentsToAvoid(plan, restarted, {}, T0 + 37_000), [3], 'restarting')
    assert.deepEqual(agentsToAvoid(plan, restarted, { rejoinedAt: T0 + 38_000 }, T0 + 39_000), [])
  })
})

describe('demo: which VM moves where', () => {
  // #0 and #2 on site-a, #1 and #3 on site-b
  const snap = () => [
    hosting(0, [
      vmRecord('demo-1', 0),
      vmRecord('demo-5', 0, { workload: { ...vmRecord('x', 0).workload, dirtyMiBps: 0 } }),
    ]),
    hosting(1, [vmRecord('demo-2', 1, { workload: { ...vmRecord('x', 0).workload, dirtyMiBps: 0 } })]),
    hosting(2, [vmRecord('demo-3', 2, { memoryMiB: 64 })]),
    hosting(3, [vmRecord('demo-4', 3)]),
  ]

  it('moves a busy VM to an agent of the other site, modes in turn', () => {
    const p0 = pickMigration({ agents: snap(), seq: 0 })
    assert.deepEqual(p0, {
      vmId: 'vm-demo-1',
      vmName: 'demo-1',
      memoryMiB: 32,
      epoch: 1,
      from: 0,
      to: 1,
      fromPeer: PEERS[0],
      toPeer: PEERS[1],
      mode: 'precopy',
    })
    const p1 = pickMigration({ agents: snap(), seq: 1 })
    assert.equal(p1?.mode, 'auto')
    assert.equal(p1?.to, 3, 'round-robin over the other site')
    assert.equal(pickMigration({ agents: snap(), seq: 2 })?.mode, 'postcopy')
    assert.equal(pickMigration({ agents: snap(), seq: 3 })?.mode, 'precopy')
  })

  it('moves the VM that waited longest next, never one without a workload', () => {
    const lastMoved = new Map([['vm-demo-1', T0]])
    assert.equal(pickMigration({ agents: snap(), seq: 1, lastMoved })?.vmName, 'demo-3')
    lastMoved.set('vm-demo-3', T0 + 8000)
    assert.equal(pickMigration({ agents: snap(), seq: 2, lastMoved })?.vmName, 'demo-4')
    lastMoved.set('vm-demo-4', T0 + 16_000)
    assert.equal(pickMigration({ agents: snap(), seq: 3, lastMoved })?.vmName, 'demo-1')
  })

  it('skips VMs migrating or just moved, and agents that are down or to avoid', () => {
    const s = snap()
    s[0]!.vms![0]!.migration = { id: 'm', direction: 'out', peer: PEERS[1]!, phase: 'precopy' }
    const exclude = new Set(['vm-demo-3'])
    // demo-1 is migrating, demo-3 just moved, demo-4's host is the one to avoid: nothing left
    assert.equal(pickMigration({ agents: s, exclude, avoid: [3], seq: 0 }), undefined)
    const p = pickMigration({ agents: snap(), exclude, avoid: [1], seq: 0 })
    assert.equal(p?.vmName, 'demo-1')
    // the only other-site agent left is #3
    assert.equal(p?.to, 3)
    const down = snap()
    down[1] = hosting(1, [], 'killed (SIGKILL)')
    down[3] = hosting(3, [], 'restarting')
    // no agent on the other site: the same site will do
    assert.equal(pickMigration({ agents: down, seq: 0 })?.to, 2)
  })

  it('ignores a VM an agent lists but no longer hosts, and agents without room', () => {
    const s = [
      hosting(0, [vmRecord('demo-1', 2, { epoch: 1 })]),
      hosting(2, [vmRecord('demo-1', 2, { epoch: 2 })]),
      hosting(1, []),
    ]
    const p = pickMigration({ agents: s, seq: 0 })
    assert.equal(p?.from, 2)
    assert.equal(p?.epoch, 2)
    const full = s.map((a) =>
      a.index === 1 ? { ...a, node: { ...a.node!, used: { ...a.node!.used, memoryMiB: 4090 } } } : a,
    )
    assert.equal(pickMigration({ agents: full, seq: 0 })?.to, 0)
  })
})

describe('demo: following a migration', () => {
  function story(): {
    started: MigrationTrack
    running: MigrationTrack
    done: MigrationTrack
    events: string[]
  } {
    const events: string[] = []
    const s = noteMigrationStart(newMigrationTrack(), PICK, T0)
    events.push(s.event)
    const r = noteMigrationView(
      s.track,
      s.key,
      migrationView({ bytesSent: 29 * MiB, bandwidthMiBps: 96.5, etaMs: 400, round: 1 }),
      T0 + 500,
    )
    const d = noteMigrationView(
      r.track,
      s.key,
      migrationView({
        phase: 'done',
        round: 3,
        bytesSent: 40 * MiB,
        wireBytes: 20 * MiB,
        totalMs: 912,
        downtimeMs: 80,
        epoch: 2,
      }),
      T0 + 1000,
    )
    events.push(d.event!)
    return { started: s.track, running: r.track, done: d.track, events }
  }

  it('logs the start and the arrival with its time, downtime and epoch', () => {
    const s = story()
    assert.deepEqual(s.events, [
      'demo-3 migrating #0 → #2 (auto)',
      'demo-3 arrived on #2 in 0.9 s, downtime 80 ms, epoch 2',
    ])
    assert.equal(s.done.migrations[0]!.endedAt, T0 + 1000)
    assert.equal(s.started.migrations[0]!.endedAt, undefined, 'the track it was given is unchanged')
    // a late view of an ended migration changes nothing
    const again = noteMigrationView(s.done, 0, migrationView({ phase: 'precopy' }), T0 + 2000)
    assert.equal(again.event, undefined)
    assert.equal(again.track.migrations[0]!.view?.phase, 'done')
  })

  it('logs failures, cancels, a switch to post-copy, and migrations that could not start', () => {
    const s = noteMigrationStart(newMigrationTrack(), PICK, T0)
    const failed = noteMigrationView(
      s.track,
      0,
      migrationView({ phase: 'failed', error: { code: 'PEER_GONE', message: 'stream reset' } }),
      T0 + 1,
    )
    assert.equal(failed.event, 'demo-3 migration #0 → #2 failed (PEER_GONE: stream reset)')
    const cancelled = noteMigrationView(s.track, 0, migrationView({ phase: 'cancelled' }), T0 + 1)
    assert.equal(cancelled.event, 'demo-3 migration #0 → #2 cancelled, stays on #0')
    const switched = noteMigrationView(
      s.track,
      0,
      migrationView({ phase: 'done', postcopy: true, totalMs: 1500, downtimeMs: 12, epoch: 2 }),
      T0 + 1,
    )
    assert.equal(
      switched.event,
      'demo-3 arrived on #2 in 1.5 s, downtime 12 ms, epoch 2 (switched to post-copy)',
    )
    const refused = noteMigrationError(s.track, 0, 'BAD_REQUEST: not a live host', T0 + 1)
    assert.equal(refused.event, 'demo-3: could not start the migration #0 → #2: BAD_REQUEST: not a live host')
    assert.equal(noteMigrationError(refused.track, 0, 'again', T0 + 2).event, undefined)
  })

  it('draws a text progress bar capped at 100 %', () => {
    assert.equal(progressBar(0, 10), '[..........]   0%')
    assert.equal(progressBar(0.45, 20), '[#########...........]  45%')
    assert.equal(progressBar(1.7, 10), '[##########] 100%')
    assert.equal(progressBar(Number.NaN, 4), '[....]   0%')
  })

  it('shows the migration in progress and the last finished ones', () => {
    const s = story()
    const running = migrationsSection(s.running, '(every 8s)')
    const lines = running.trimEnd().split('\n')
    assert.equal(lines[0], 'MIGRATIONS  (every 8s)')
    assert.match(
      lines[1]!,
      /^VM\s+FROM → TO\s+MODE\s+PHASE\s+ROUND\s+PROGRESS \(sent \/ memory\)\s+MiB\/s\s+ETA$/,
    )
    // 29 of the VM's 64 MiB
    assert.match(
      lines[2]!,
      /^demo-3\s+#0 → #2\s+auto\s+precopy\s+1\s+\[#########\.{11}\] {2}45%\s+96\.5\s+400 ms$/,
    )
    assert.equal(lines.length, 3)
    const done = migrationsSection(s.done).trimEnd().split('\n')
    assert.equal(done[1], '  none in progress')
    assert.equal(done[2], 'last one finished:')
    assert.match(
      done[3]!,
      /^VM\s+FROM → TO\s+MODE\s+RESULT\s+TOTAL\s+DOWNTIME\s+ON THE WIRE \(vs memory\)\s+EPOCH$/,
    )
    assert.match(done[4]!, /^demo-3\s+#0 → #2\s+auto\s+done\s+912 ms\s+80 ms\s+20 MiB \(0\.31× 64 MiB\)\s+2$/)
    assert.equal(migrationsSection(newMigrationTrack()), 'MIGRATIONS\n  none yet\n')
  })

  it('lists only the last three finished, marks a switch to post-copy and failures', () => {
    let t = newMigrationTrack()
    for (let k = 0; k < 5; k++) {
      const s = noteMigrationStart(t, { ...PICK, vmName: `demo-${k}`, vmId: `vm-${k}` }, T0 + k)
      const v =
        k === 4
          ? migrationView({ phase: 'failed', error: { code: 'VERIFY_FAILED', message: 'x' } })
          : migrationView({ phase: 'done', postcopy: k === 3 })
      t = noteMigrationView(s.track, s.key, v, T0 + k + 1).track
    }
    const out = migrationsSection(t)
    assert.match(out, /last 3 finished:/)
    assert.doesNotMatch(out, /demo-1 /)
    assert.match(out, /demo-3\s+#0 → #2\s+auto→postcopy\s+done/)
    assert.match(out, /demo-4\s+#0 → #2\s+auto\s+failed: VERIFY_FAILED/)
    assert.equal(migrationLinePart(t), 'migrations 4/5 done')
  })

  it('marks the VM in the mesh table while it moves and a moment after', () => {
    const s = story()
    assert.deepEqual([...vmMigrationNotes(s.started, T0)], [['vm-demo-3', 'migrating → #2 (requested)']])
    assert.deepEqual([...vmMigrationNotes(s.running, T0)], [['vm-demo-3', 'migrating → #2 (precopy)']])
    assert.deepEqual([...vmMigrationNotes(s.done, T0 + 2000)], [['vm-demo-3', 'moved #0 → #2']])
    assert.equal(vmMigrationNotes(s.done, T0 + 60_000).size, 0)
  })

  it('describes the schedule for the section title', () => {
    const plan = { everyMs: 8000 }
    const t = newMigrationTrack()
    assert.equal(
      migrationLine(plan, t, undefined, undefined, T0),
      '(every 8s, modes in turn, from when the VMs exist)',
    )
    assert.equal(
      migrationLine(plan, t, T0, undefined, T0 + 3000),
      '(every 8s, modes in turn; next, precopy, in 5s)',
    )
    assert.equal(
      migrationLine(plan, story().running, T0, undefined, T0 + 3000),
      '(every 8s, modes in turn; next once this one ends)',
    )
    assert.equal(
      migrationLine(plan, t, T0, T0 + 10_000, T0 + 3000),
      '(every 8s, modes in turn; no more before the end)',
    )
    assert.match(
      migrationLine(plan, noteMigrationSkip(t, T0 + 8000, 'no busy VM'), T0, undefined, T0 + 8000),
      /next, precopy, in 2s; no busy VM, trying again\)$/,
    )
  })

  it('puts the section in the full view and the VM with its new host and epoch in the mesh table', () => {
    const s = story()
    const snap = [0, 1, 2, 3].map((i) => agent(i, view(i, ALL)))
    const before = renderView(snap, 20_000, 'stops at 45s', {
      meshVms: { from: 0, vms: [clusterVm('demo-3', 0, 'ok')] },
      migrations: { track: s.running, line: '(every 8s)', now: T0 + 500 },
    })
    assert.match(
      before,
      /\ndemo-3\s+#0 12D3…abcde0\s+1\s+ok\s+running\s+32 MiB\s+2 MiB\/s\s+migrating → #2 \(precopy\)\n/,
    )
    assert.match(before, /\nMIGRATIONS {2}\(every 8s\)\n/)
    assert.match(before, /demo-3\s+#0 → #2\s+auto\s+precopy\s+1\s+\[#+\.+\]/)
    const after = renderView(snap, 22_000, 'stops at 45s', {
      meshVms: { from: 0, vms: [{ ...clusterVm('demo-3', 2, 'ok'), epoch: 2 }] },
      migrations: { track: s.done, now: T0 + 2000 },
    })
    assert.match(after, /\ndemo-3\s+#2 12D3…abcde2\s+2\s+ok\s+running\s+32 MiB\s+2 MiB\/s\s+moved #0 → #2\n/)
    assert.match(after, /last one finished:/)
    // no MIGRATION column without notes
    const plain = renderView(snap, 99_000, 'x', {
      meshVms: { from: 0, vms: [clusterVm('demo-3', 2, 'ok')] },
      migrations: { track: s.done, now: T0 + 60_000 },
    })
    assert.doesNotMatch(plain, /MIGRATION\b(?!S)/)
    assert.doesNotMatch(renderView(snap, 1000, 'x', {}), /MIGRATIONS/)
  })

  it('adds the migration in progress to the one-line view', () => {
    const snap = [agent(0, view(0, ['alive', 'alive'])), agent(1, view(1, ['alive', 'alive']))]
    const line = renderLine(snap, 3000, { migrations: { track: story().running, now: T0 } })
    assert.match(line, /, migrating demo-3 #0 → #2 \(auto\) precopy 45%\n$/)
    assert.doesNotMatch(renderLine(snap, 3000, {}), /migrat/)
  })

  it('summarizes the migrations for --json', () => {
    const [m] = migrationSummary(story().done, T0 - 20_000)
    assert.deepEqual(m, {
      vm: 'demo-3',
      vmId: 'vm-demo-3',
      id: 'mig-1',
      from: 0,
      to: 2,
      fromPeer: PEERS[0],
      toPeer: PEERS[2],
      mode: 'auto',
      postcopy: false,
      phase: 'done',
      requestedAtS: 20,
      rounds: 3,
      totalMs: 912,
      downtimeMs: 80,
      memoryMiB: 64,
      bytesSent: 40 * MiB,
      wireBytes: 20 * MiB,
      epochBefore: 1,
      epoch: 2,
      error: undefined,
    })
    const lost = noteMigrationError(noteMigrationStart(newMigrationTrack(), PICK, T0).track, 0, 'gone', T0)
    assert.deepEqual(migrationSummary(lost.track, T0)[0]!.error, { code: 'DEMO', message: 'gone' })
    assert.equal(migrationSummary(lost.track, T0)[0]!.phase, 'lost')
  })
})
