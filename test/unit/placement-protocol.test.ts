import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  type EventRef,
  gatherPartition,
  type HostView,
  type MemberSnapshot,
  type Move,
  type Output,
  outranks,
  type PlacementMessage,
  PlacementNode,
  type ProtocolConfig,
  seededRng,
  type VmView,
} from '../../src/placement/index.js'

/** A tiny hand-driven network: nodes, VMs that really move, message latency, crashes. */
class Net {
  readonly nodes = new Map<string, PlacementNode>()
  readonly hosts = new Map<string, HostView>()
  readonly vms = new Map<string, VmView>()
  readonly crashed = new Set<string>()
  readonly records: Extract<Output, { kind: 'event' }>['record'][] = []
  readonly migrated: string[] = []
  /** Every (time, host, event) reservation seen, to check no host is held by two events at once. */
  readonly holds: string[] = []
  readonly ring: { next: (id: string) => string; size: () => number }
  now = 0
  private queue: { at: number; seq: number; fn: () => void }[] = []
  private seq = 0

  constructor(
    hostLoads: Record<string, number[]>,
    proto: Partial<ProtocolConfig> = {},
    readonly latency = 5,
    placement = { overloadGraceMs: 0, underloadGraceMs: 1_000_000_000 },
  ) {
    const ids = Object.keys(hostLoads).sort()
    const ring = {
      next: (id: string) => ids[(ids.indexOf(id) + 1) % ids.length]!,
      size: () => ids.length,
    }
    this.ring = ring
    for (const id of ids) {
      this.hosts.set(id, { id, site: 'eu', capacity: { cpu: 10, mem: 100, disk: 0 }, state: 'up' })
      hostLoads[id]!.forEach((cpu, k) => {
        this.vms.set(`${id}-v${k}`, {
          id: `${id}-v${k}`,
          host: id,
          demand: { cpu, mem: 1, disk: 0 },
          memoryBytes: 1 << 20,
        })
      })
      const rng = seededRng(ids.indexOf(id) + 1)
      this.nodes.set(
        id,
        new PlacementNode({
          self: id,
          ring,
          local: () => this.snapshot(id),
          rng,
          placement,
          protocol: { leaseMs: 1000, joinTimeoutMs: 100, ...proto },
        }),
      )
    }
  }

  snapshot(id: string): MemberSnapshot {
    return { host: this.hosts.get(id)!, vms: [...this.vms.values()].filter((v) => v.host === id) }
  }

  cpu(id: string): number {
    return this.snapshot(id).vms.reduce((s, v) => s + v.demand.cpu, 0)
  }

  at(t: number, fn: () => void): void {
    this.queue.push({ at: t, seq: this.seq++, fn })
  }

  drive(id: string, fn: (n: PlacementNode) => Output[]): void {
    if (this.crashed.has(id)) return
    const node = this.nodes.get(id)!
    for (const o of fn(node)) {
      if (o.kind === 'send') {
        const msg: PlacementMessage = o.msg
        this.at(this.now + this.latency, () => this.drive(o.to, (n) => n.handle(id, msg, this.now)))
      } else if (o.kind === 'wake') this.at(o.at, () => this.drive(id, (n) => n.tick(this.now)))
      else if (o.kind === 'migrate') {
        const { vm, from, to } = o.move
        this.at(this.now + 50, () => {
          const ok = !this.crashed.has(from) && !this.crashed.has(to)
          if (ok) {
            this.vms.set(vm, { ...this.vms.get(vm)!, host: to, lastMovedAt: this.now })
            this.migrated.push(vm)
          }
          this.drive(id, (n) => n.migrationFinished(o.id, ok, this.now))
        })
      } else this.records.push(o.record)
    }
    this.checkHolds()
  }

  private checkHolds(): void {
    for (const [id, n] of this.nodes) {
      const e = n.reservedBy()
      if (e) this.holds.push(`${this.now}:${id}:${e.id}`)
    }
  }

  run(until: number): void {
    for (const id of this.nodes.keys()) this.at(0, () => this.drive(id, (n) => n.tick(this.now)))
    while (this.queue.length > 0) {
      this.queue.sort((a, b) => a.at - b.at || a.seq - b.seq)
      const e = this.queue.shift()!
      if (e.at > until) break
      this.now = e.at
      e.fn()
    }
  }
}

describe('cooperative protocol', () => {
  it('ranks events: overloads and drains before consolidations, then the older, a total order', () => {
    const e = (id: string, kind: EventRef['kind'], openedAt: number): EventRef => ({
      id,
      leader: id,
      kind,
      openedAt,
    })
    assert.ok(outranks(e('a', 'overload', 10), e('b', 'underload', 1)))
    assert.ok(!outranks(e('b', 'underload', 1), e('a', 'overload', 10)))
    assert.ok(outranks(e('a', 'drain', 5), e('b', 'underload', 1)))
    assert.ok(outranks(e('a', 'overload', 1), e('b', 'overload', 2)))
    assert.ok(outranks(e('a', 'overload', 1), e('b', 'overload', 1)), 'ties by id')
    assert.ok(!outranks(e('b', 'overload', 1), e('a', 'overload', 1)))
  })

  it('an overloaded host forms a partition along the ring, migrates, and releases everyone', () => {
    const net = new Net({ a: [4, 4, 2], b: [7], c: [2], d: [6] })
    net.run(10_000)
    assert.ok(net.cpu('a') <= 9, `a relieved (${net.cpu('a')})`)
    const ev = net.records.find((r) => r.leader === 'a')!
    assert.equal(ev.outcome, 'done')
    assert.equal(ev.kind, 'overload')
    assert.ok(ev.members.includes('b') && ev.members.includes('c'), 'b (full) was asked, then c')
    assert.deepEqual(
      net.migrated.filter((v) => v.startsWith('a-')),
      ev.moves.map((m) => m.vm),
      'exactly the planned moves ran',
    )
    for (const n of net.nodes.values()) assert.equal(n.reservedBy(), undefined, 'all released')
    for (const h of ['a', 'b', 'c', 'd']) assert.ok(net.cpu(h) <= 10, `${h} within capacity`)
  })

  it('a crashed leader leaves no host reserved once the leases expire', () => {
    // a overloaded, every other host busy-ish so the partition grows; the leader dies while growing.
    const net = new Net({ a: [5, 5], b: [8], c: [8], d: [8], e: [8] }, { leaseMs: 1000 })
    net.at(12, () => {
      net.crashed.add('a')
      net.nodes.get('a')!.crash()
    })
    net.run(500)
    const held = [...net.nodes.entries()].filter(([id, n]) => id !== 'a' && n.reservedBy())
    assert.ok(held.length >= 1, 'a member is reserved right after the crash')
    net.run(3000)
    for (const [id, n] of net.nodes) assert.equal(n.reservedBy(), undefined, `${id} free after lease expiry`)
  })

  it('a member that crashes after joining fails its migration; the leader retries without it', () => {
    const net = new Net({ a: [4, 4, 2], b: [1], c: [1] }, { leaseMs: 1000, retryBackoffMs: 5000 })
    net.at(6, () => {
      net.crashed.add('b')
      net.nodes.get('b')!.crash()
    })
    net.run(60_000)
    const mine = net.records.filter((r) => r.leader === 'a')
    assert.equal(mine[0]?.outcome, 'failed', 'the plan used b, which crashed')
    assert.equal(mine[mine.length - 1]?.outcome, 'done')
    assert.ok(!mine[mine.length - 1]!.members.includes('b'))
    assert.ok(net.cpu('a') <= 9)
    for (const [id, n] of net.nodes) if (id !== 'b') assert.equal(n.reservedBy(), undefined)
  })

  it('concurrent partitions: no host is ever held by two events, the older wins, all resolve', () => {
    // Two overloaded hosts next to each other on the ring compete for the same free hosts.
    const net = new Net({ a: [5, 5], b: [5, 5], c: [1], d: [1], e: [1], f: [1] })
    net.run(20_000)
    const byTime = new Map<string, string>()
    for (const h of net.holds) {
      const [t, id, ev] = h.split(':')
      const key = `${t}:${id}`
      assert.ok(!byTime.has(key) || byTime.get(key) === ev, `host ${id} held twice at ${t}`)
      byTime.set(key, ev!)
    }
    assert.ok(net.cpu('a') <= 9 && net.cpu('b') <= 9, 'both overloads relieved')
    for (const h of net.hosts.keys()) assert.ok(net.cpu(h) <= 10)
    assert.ok(net.records.filter((r) => r.outcome === 'done').length >= 2)
  })

  it('a host that does not answer a join is skipped after the timeout', () => {
    const net = new Net({ a: [5, 5], b: [1], c: [1] })
    net.crashed.add('b')
    net.nodes.get('b')!.crash()
    net.run(10_000)
    const ev = net.records.find((r) => r.leader === 'a' && r.outcome === 'done')!
    assert.ok(ev.members.includes('c') && !ev.members.includes('b'))
    assert.ok(net.cpu('a') <= 9)
  })

  it('a partition that cannot find a plan gives up, releases, and backs off', () => {
    const net = new Net({ a: [5, 5], b: [9], c: [9] })
    net.run(5_000)
    const ev = net.records.find((r) => r.leader === 'a')!
    assert.equal(ev.outcome, 'unresolved')
    assert.equal(ev.moves.length, 0)
    assert.equal(net.records.filter((r) => r.leader === 'a').length, 1, 'no retry within the back-off')
    for (const n of net.nodes.values()) assert.equal(n.reservedBy(), undefined)
  })

  it('a misplaced VM (anti-affinity broken, or a site it prefers now) opens an event that moves it', () => {
    // Both events want b at first; the one that loses retries soon.
    const net = new Net({ a: [2, 2], b: [1], c: [1] }, { retryBackoffMs: 500 })
    for (const id of ['a-v0', 'a-v1'])
      net.vms.set(id, { ...net.vms.get(id)!, constraints: { antiAffinity: 'g' } })
    net.hosts.set('c', { ...net.hosts.get('c')!, site: 'us' })
    // b-v0 wants to be in us at every hour.
    net.vms.set('b-v0', {
      ...net.vms.get('b-v0')!,
      constraints: { sites: [{ site: 'us', fromHour: 0, toHour: 24 }] },
    })
    net.run(10_000)
    const mine = net.records.filter((r) => r.kind === 'misplaced' && r.outcome === 'done')
    assert.ok(
      mine.some((r) => r.leader === 'a') && mine.some((r) => r.leader === 'b'),
      JSON.stringify(net.records),
    )
    assert.notEqual(net.vms.get('a-v0')!.host, net.vms.get('a-v1')!.host)
    assert.equal(net.vms.get('b-v0')!.host, 'c')
    for (const n of net.nodes.values()) assert.equal(n.reservedBy(), undefined)
  })

  it('gatherPartition replays the partition and the plan a live event reaches', () => {
    const net = new Net({ a: [4, 4, 2], b: [7], c: [2], d: [6] })
    const shown = gatherPartition({
      self: 'a',
      kind: 'overload',
      ring: net.ring,
      snapshot: (id) => net.snapshot(id),
      now: 0,
      placement: { overloadGraceMs: 0 },
      maxPartition: 12,
      maxScan: 64,
    })
    assert.ok(shown.plan && shown.plan.moves.length > 0)
    net.run(10_000)
    const ev = net.records.find((r) => r.leader === 'a')!
    assert.equal(ev.outcome, 'done')
    assert.deepEqual(key(ev.moves), key(shown.plan.moves))
    assert.deepEqual(ev.members, shown.members)
    assert.equal(ev.asked, shown.asked)
  })

  it('an operator plan (openFixed) runs only if it is the plan shown, else ends rejected', () => {
    const patient = { overloadGraceMs: 1_000_000_000, underloadGraceMs: 1_000_000_000 }
    const shownFor = (net: Net) =>
      gatherPartition({
        self: 'a',
        kind: 'overload',
        ring: net.ring,
        snapshot: (id) => net.snapshot(id),
        now: 0,
        placement: patient,
        maxPartition: 12,
        maxScan: 64,
      })
    // Shown, then applied unchanged: exactly those moves run.
    const ok = new Net({ a: [5, 5], b: [8], c: [1], d: [1] }, {}, 5, patient)
    const shown = shownFor(ok)
    const want = JSON.stringify(key(shown.plan!.moves))
    ok.at(1, () =>
      ok.drive(
        'a',
        (n) => n.openFixed('overload', shown.members, (p) => JSON.stringify(key(p.moves)) === want, 1)!.out,
      ),
    )
    ok.run(10_000)
    const done = ok.records.find((r) => r.leader === 'a')!
    assert.equal(done.outcome, 'done')
    assert.deepEqual(key(done.moves), key(shown.plan!.moves))
    assert.deepEqual(
      ok.migrated,
      shown.plan!.moves.map((m) => m.vm),
    )
    // The hosts changed between the dry run and the apply: nothing runs, everyone is free.
    const moved = new Net({ a: [5, 5], b: [8], c: [1], d: [1] }, {}, 5, patient)
    const before = shownFor(moved)
    const was = JSON.stringify(key(before.plan!.moves))
    moved.vms.set('c-v1', {
      id: 'c-v1',
      host: 'c',
      demand: { cpu: 8, mem: 1, disk: 0 },
      memoryBytes: 1 << 20,
    })
    moved.at(1, () =>
      moved.drive(
        'a',
        (n) => n.openFixed('overload', before.members, (p) => JSON.stringify(key(p.moves)) === was, 1)!.out,
      ),
    )
    moved.run(10_000)
    const rejected = moved.records.find((r) => r.leader === 'a')!
    assert.equal(rejected.outcome, 'rejected')
    assert.match(rejected.note ?? '', /changed since the dry run/)
    assert.deepEqual(moved.migrated, [])
    for (const n of moved.nodes.values()) assert.equal(n.reservedBy(), undefined)
    // Nothing opens while the host is held by an event.
    const held = new Net({ a: [5, 5], b: [1] }, {}, 5, patient)
    held.drive('a', (n) =>
      n.handle(
        'b',
        { type: 'join', event: { id: 'b#1', leader: 'b', kind: 'underload', openedAt: 0 }, leaseMs: 60_000 },
        0,
      ),
    )
    assert.equal(
      held.nodes.get('a')!.openFixed('overload', ['a', 'b'], () => true, 0),
      undefined,
    )
  })
})

function key(moves: readonly Move[]) {
  return moves.map((m) => [m.vm, m.from, m.to, m.wave])
}
