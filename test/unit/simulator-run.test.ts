import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  EventQueue,
  type ModeResult,
  migrationCost,
  parseCsvTrace,
  simulate,
  svg,
  syntheticTrace,
  TraceError,
  table,
} from '../../src/simulator/index.js'

const small = (seed = 1, extra: Partial<Parameters<typeof syntheticTrace>[0]> = {}) =>
  syntheticTrace({ hosts: 30, vms: 300, seed, durationMs: 20 * 60_000, ...extra })

/** The parts of a result that depend only on the simulation (not on wall-clock measurements). */
function simulated(r: ModeResult): unknown {
  const { wallMs: _w, plannerMs: _p, ...rest } = r
  return rest
}

describe('simulator', () => {
  it('the event queue runs events by time, then in the order they were scheduled', () => {
    const q = new EventQueue()
    const seen: string[] = []
    for (const [t, name] of [
      [5, 'a'],
      [1, 'b'],
      [5, 'c'],
      [0, 'd'],
      [1, 'e'],
    ] as const)
      q.push(t, () => seen.push(name))
    while (q.size > 0) q.pop()![1]()
    assert.deepEqual(seen, ['d', 'b', 'e', 'a', 'c'])
  })

  it('migration cost follows the engine model: at least memory / bandwidth + downtime, more when dirtier', () => {
    const GiB = 1024 ** 3
    const idle = migrationCost(8 * GiB, 0, 1.25e9, 300)
    assert.ok(Math.abs(idle.ms - ((8 * GiB) / 1.25e9) * 1000 - 300) < 1)
    assert.equal(idle.bytes, 8 * GiB)
    const busy = migrationCost(8 * GiB, 200 * 1024 ** 2, 1.25e9, 300)
    assert.ok(busy.ms > idle.ms && busy.bytes > idle.bytes)
  })

  it('a small cooperative simulation runs, is deterministic for a seed, and its numbers add up', () => {
    const a = simulate(small(), { mode: 'cooperative', seed: 1, keepRecords: true })
    const b = simulate(small(), { mode: 'cooperative', seed: 1, keepRecords: true })
    assert.deepEqual(simulated(a), simulated(b))
    const c = simulate(small(2), { mode: 'cooperative', seed: 2 })
    assert.notDeepEqual(simulated(a), simulated(c), 'another seed, another run')

    assert.ok(a.records!.length > 0, 'events happened')
    assert.ok(a.migrations > 0)
    // Every migration that ran was a step of an accepted plan (dry run == the plan that runs).
    const planned = new Map<string, string[]>()
    for (const r of a.records!)
      planned.set(
        r.id,
        r.moves.map((m) => `${m.vm}:${m.from}>${m.to}`),
      )
    for (const s of a.started!) {
      const moves = planned.get(s.eventId)
      if (moves) assert.ok(moves.includes(`${s.move.vm}:${s.move.from}>${s.move.to}`))
    }
    assert.ok(a.started!.length >= a.migrations + a.failedMigrations)
    assert.ok(a.bytes >= a.migrations * 2 * 1024 ** 3, 'each migration copies at least its memory (>= 2 GiB)')
    assert.deepEqual(a.violations, { overcommit: 0, unreserved: 0, doubleMove: 0, invalidPlans: 0 })
    for (const s of a.series) {
      assert.ok(s.active >= s.lowerBound, 'never fewer active hosts than the lower bound')
      if (s.ffd !== undefined) assert.ok(s.ffd >= s.lowerBound)
    }
    assert.ok(a.activeHosts.end < a.activeHosts.start, 'consolidation emptied hosts')
    assert.ok(a.overload.cumulativeS >= 0 && a.overload.p99S >= a.overload.p50S)
    assert.match(table([a]), /cooperative/)
    assert.match(svg([a], 'test'), /^<svg/)
  })

  it('many concurrent partitions under heavy load never over-commit a host', () => {
    const trace = syntheticTrace({
      hosts: 60,
      vms: 900,
      seed: 4,
      durationMs: 15 * 60_000,
      hotPerMinute: 0.01,
    })
    const r = simulate(trace, { mode: 'cooperative', seed: 4, keepRecords: true })
    assert.deepEqual(r.violations, { overcommit: 0, unreserved: 0, doubleMove: 0, invalidPlans: 0 })
    // Partitions really overlapped in time.
    const spans = r.records!.map((e) => [e.openedAt, e.closedAt] as const).sort((x, y) => x[0] - y[0])
    let overlaps = 0
    for (let i = 1; i < spans.length; i++) if (spans[i]![0] < spans[i - 1]![1]) overlaps++
    assert.ok(overlaps > 5, `overlapping events: ${overlaps}`)
    assert.ok((r.events.outcomes.done ?? 0) > 5)
  })

  it('crashed leaders and members: leases free their hosts and other events still complete', () => {
    const trace = syntheticTrace({
      hosts: 60,
      vms: 900,
      seed: 4,
      durationMs: 15 * 60_000,
      hotPerMinute: 0.01,
    })
    // Crash hosts while they lead or serve partitions (found by a first run of the same seed).
    const probe = simulate(trace, { mode: 'cooperative', seed: 4, keepRecords: true })
    const busy = probe.records!.filter((e) => e.members.length > 1).slice(3, 9)
    const crashes = busy.map((e, i) => ({
      host: i % 2 ? e.members[1]! : e.leader,
      atMs: e.openedAt - trace.startMs + 3,
    }))
    const r = simulate(trace, { mode: 'cooperative', seed: 4, crashes, keepRecords: true })
    assert.deepEqual(r.violations, { overcommit: 0, unreserved: 0, doubleMove: 0, invalidPlans: 0 })
    assert.equal(r.stranded, 0, 'no live host stays reserved by a dead leader')
    const last = Math.max(...crashes.map((c) => c.atMs)) + trace.startMs
    assert.ok(
      r.records!.some((e) => e.openedAt > last && e.outcome === 'done'),
      'events complete after the crashes',
    )
  })

  it('the central solver runs the same planner every 30 s; its plans validate', () => {
    const r = simulate(small(), { mode: 'central', seed: 1, validatePlans: true })
    assert.deepEqual(r.violations, { overcommit: 0, unreserved: 0, doubleMove: 0, invalidPlans: 0 })
    assert.ok(r.plannerMs.count > 0 && r.plannerMs.count <= 40)
    const none = simulate(small(), { mode: 'none', seed: 1 })
    assert.equal(none.migrations, 0)
    assert.ok(none.overload.cumulativeS >= r.overload.cumulativeS, 'scheduling reduces overload')
  })

  it('overload relief by post-copy frees the hot host at the switch-over, before the copy ends', () => {
    const trace = () =>
      syntheticTrace({ hosts: 40, vms: 500, seed: 3, durationMs: 20 * 60_000, hotPerMinute: 0.01 })
    const post = simulate(trace(), { mode: 'cooperative', seed: 3 })
    const pre = simulate(trace(), { mode: 'cooperative', seed: 3, reliefMode: 'precopy' })
    assert.ok(post.events.toReliefP50Ms > 0, 'relief times were measured')
    assert.ok(post.events.toReliefP50Ms < post.events.toDoneP50Ms, 'relieved before the last byte arrived')
    assert.ok(post.events.toReliefP50Ms < pre.events.toReliefP50Ms, 'sooner than pre-copy')
    assert.deepEqual(post.violations, { overcommit: 0, unreserved: 0, doubleMove: 0, invalidPlans: 0 })
  })

  it('reads the CSV trace format and rejects bad records with the line number', () => {
    const t = parseCsvTrace(
      [
        '# two hosts, three VMs',
        'host,a,eu,8,16384',
        'host,b,eu,8,16384',
        'vm,v1,a,4,4096',
        'vm,v2,a,4,4096,50',
        'vm,v3,,2,2048',
        'load,0,v1,1',
        'load,60,v1,4',
        'load,60,v2,3.5',
        'load,120,v3,9',
      ].join('\n'),
    )
    assert.equal(t.hosts.length, 2)
    assert.deepEqual(
      t.vms.map((v) => [v.id, v.host, v.cpu0]),
      [
        ['v1', 0, 1],
        ['v2', 0, 1.2],
        ['v3', 0, 0.6],
      ],
    )
    const batches = [...{ [Symbol.iterator]: t.loads }]
    assert.deepEqual(
      batches.map((b) => [b.t, b.vms, b.cpu]),
      [
        [60_000, [0, 1], [4, 3.5]],
        [120_000, [2], [2]],
      ],
      'time order, capped at the vcpus',
    )
    assert.throws(() => parseCsvTrace('vm,v1,zz,1,1'), /line 1: unknown host zz/)
    assert.throws(() => parseCsvTrace('host,a,eu,x,1'), TraceError)
    assert.throws(() => parseCsvTrace('host,a,eu,1,1\nload,5,nope,1'), /line 2: load for unknown vm/)
    assert.throws(() => parseCsvTrace('what,1'), /unknown record/)
    const r = simulate(t, { mode: 'cooperative', seed: 1 })
    assert.equal(r.vms, 3)
  })
})
