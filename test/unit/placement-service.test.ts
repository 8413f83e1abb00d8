// The agent's placement service without libp2p: services wired to each other in-process, a fake gossip
// view and a fake migration engine that moves VMs at once. Plus its routes (dry run, drain, events)
// through the real API server, and the `placement:` config section.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import pino from 'pino'
import { Registry } from 'prom-client'
import type { HostStateView, MemberView } from '../../src/gossip/types.js'
import { createApiServer } from '../../src/node/api/index.js'
import { loadConfig } from '../../src/node/config.js'
import { ConfigError } from '../../src/node/errors.js'
import {
  constraintsOf,
  DEFAULT_PLACEMENT_SETTINGS,
  type LocalVm,
  PlacementConflictError,
  PlacementLookupError,
  PlacementService,
  type PlacementSettings,
} from '../../src/node/placement/index.js'
import type { AgentService } from '../../src/node/types.js'
import { PlacementNode, seededRng } from '../../src/placement/index.js'

const log = pino({ level: 'silent' })
const CAP = { vcpus: 4, memoryMiB: 256, diskMiB: 4096 }
const FAST: PlacementSettings = {
  ...DEFAULT_PLACEMENT_SETTINGS,
  tickMs: 10,
  overloadGraceMs: 30,
  underloadGraceMs: 60_000,
  leaseMs: 1000,
  joinTimeoutMs: 200,
  retryBackoffMs: 200,
}

/** In-process hosts: each has VMs, a service, and sees the others as alive gossip members. */
class Mesh {
  readonly vms = new Map<string, LocalVm[]>()
  readonly services = new Map<string, PlacementService>()
  readonly dead = new Set<string>()
  readonly migrations = new Map<string, { phase: string }>()
  private seq = 0

  constructor(
    hosts: Record<string, number[]>,
    settings: PlacementSettings = FAST,
    readonly migrateOk = true,
    /** Each host's level store, as far as placement uses it (kept across a Mesh: a restart). */
    readonly stores = new Map<string, unknown>(),
  ) {
    for (const [id, sizes] of Object.entries(hosts)) {
      this.vms.set(
        id,
        sizes.map((memoryMiB, k) => ({
          id: `${id}-vm${k}`,
          vcpus: 1,
          memoryMiB,
          diskMiB: 8,
          cpu: 0,
          state: 'running',
          epoch: 1,
          migrating: false,
        })),
      )
    }
    for (const id of this.vms.keys()) {
      const svc = new PlacementService({
        self: id,
        site: 'eu',
        capacity: CAP,
        settings,
        logger: log,
        metrics: new Registry(),
        gossip: { members: () => this.members(id), hosts: () => this.hostStates() },
        localVms: () => this.vms.get(id)!,
        migrate: (vm, to) => this.migrate(id, vm, to),
        migrationPhase: (mid) => this.migrations.get(mid)?.phase,
        store: {
          load: async () => this.stores.get(id),
          save: async (v) => {
            this.stores.set(id, v)
          },
        },
        send: (to, msg) =>
          setImmediate(() => {
            if (!this.dead.has(to) && !this.dead.has(id)) this.services.get(to)?.deliver(id, msg)
          }),
      })
      this.services.set(id, svc)
    }
  }

  async start() {
    for (const s of this.services.values()) await s.start()
  }

  async stop() {
    for (const s of this.services.values()) await s.stop()
  }

  used(id: string) {
    return this.vms.get(id)!.reduce((s, v) => s + v.memoryMiB, 0)
  }

  private members(self: string): MemberView[] {
    return [...this.vms.keys()].map((peerId) => ({
      peerId,
      addrs: [],
      status: this.dead.has(peerId) ? 'dead' : 'alive',
      incarnation: 0,
      site: 'eu',
      statusSince: 0,
      self: peerId === self,
    }))
  }

  private hostStates(): HostStateView[] {
    return [...this.vms.entries()].map(([peerId, vms]) => ({
      peerId,
      version: 1,
      site: 'eu',
      capacity: CAP,
      used: { vcpus: vms.length, memoryMiB: this.used(peerId), diskMiB: 8 * vms.length },
      cpuLoad: 0,
      vms: vms.map((v) => ({ ...v, name: v.id, dirtyMiBps: 0 })),
      timestampMs: 0,
      receivedAtMs: 0,
      agentVersion: 'test',
      addrs: [],
    }))
  }

  /** Moves the VM at once (a real engine takes a while; the service polls the phase either way). */
  private migrate(from: string, vmId: string, to: string): { id: string } {
    const src = this.vms.get(from)!
    const vm = src.find((v) => v.id === vmId)
    if (!vm) throw new Error(`no VM ${vmId}`)
    const id = `m${++this.seq}`
    if (this.migrateOk) {
      src.splice(src.indexOf(vm), 1)
      this.vms.get(to)!.push({ ...vm, epoch: vm.epoch + 1 })
      this.migrations.set(id, { phase: 'done' })
    } else this.migrations.set(id, { phase: 'failed' })
    return { id }
  }
}

async function until<T>(what: string, fn: () => T | undefined | false, ms = 15_000): Promise<T> {
  const end = Date.now() + ms
  for (;;) {
    const v = fn()
    if (v) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

describe('placement service', () => {
  it('relieves an overloaded host through the migration port, then stays still', async () => {
    const mesh = new Mesh({ a: Array(8).fill(30), b: [], c: [100] })
    await mesh.start()
    try {
      const a = mesh.services.get('a')!
      const ev = await until('the overload event', () =>
        a.status().recent.find((e) => e.kind === 'overload' && e.state === 'done'),
      )
      assert.ok(mesh.used('a') <= 0.9 * 256)
      assert.ok(ev.moves.every((m) => m.from === 'a' && m.reason === 'overload'))
      assert.ok(ev.members.includes('a'))
      // A steady load causes no more events.
      const n = a.status().recent.length
      await new Promise((r) => setTimeout(r, 200))
      assert.equal(a.status().recent.length, n)
      for (const s of mesh.services.values()) assert.equal(s.status().reservedBy, undefined)
    } finally {
      await mesh.stop()
    }
  })

  it('drains a host on request, spread over several hosts', async () => {
    const mesh = new Mesh({ a: [60, 60, 60], b: [], c: [], d: [] })
    await mesh.start()
    try {
      const a = mesh.services.get('a')!
      const r = mesh.services.get('b')!.drain('a')
      assert.deepEqual(r, { host: 'a', self: false, vms: 3 })
      await until('a to be empty', () => mesh.used('a') === 0)
      const holders = ['b', 'c', 'd'].filter((h) => mesh.used(h) > 0)
      assert.ok(holders.length >= 2, `spread over ${holders.length}`)
      assert.equal(a.status().draining, true)
      assert.throws(() => a.drain('nobody'), PlacementLookupError)
    } finally {
      await mesh.stop()
    }
  })

  it('a failed migration fails the event and frees every member', async () => {
    const mesh = new Mesh({ a: Array(8).fill(30), b: [] }, FAST, false)
    await mesh.start()
    try {
      const a = mesh.services.get('a')!
      await until('a failed event', () => a.status().recent.find((e) => e.state === 'failed'))
      await until('b to be free', () => !mesh.services.get('b')!.status().reservedBy)
      assert.equal(mesh.used('a'), 240, 'nothing moved')
    } finally {
      await mesh.stop()
    }
  })

  it('dry runs: the moves and why, the same plan twice, 404 for unknown hosts and VMs', async () => {
    const mesh = new Mesh({ a: Array(8).fill(30), b: [] }, { ...FAST, enabled: false })
    const a = mesh.services.get('a')!
    const p1 = a.dryRun({ policies: ['balance'] })
    const p2 = a.dryRun({ policies: ['balance'] })
    assert.ok(p1.moves.length >= 1)
    assert.match(p1.moves[0]!.why, /a is at 94 %, over the 90 % threshold/)
    assert.deepEqual({ ...p1, at: '' }, { ...p2, at: '' })
    assert.throws(() => a.dryRun({ policies: ['balance'], hosts: ['zz'] }), /no live host zz/)
    assert.throws(() => a.dryRun({ policies: ['balance'], vms: ['nope'] }), /no VM nope/)
    // Only the VMs given may move.
    const only = a.dryRun({ policies: ['balance'], vms: ['a-vm7'] })
    assert.deepEqual(
      only.moves.map((m) => m.vm),
      ['a-vm7'],
    )
  })

  it("applies a dry run's plan by its id: exactly those moves run; a plan id not current is refused", async () => {
    const patient = { ...FAST, overloadGraceMs: 3_600_000 }
    const mesh = new Mesh({ a: Array(8).fill(30), b: [200], c: [], d: [100] }, patient)
    await mesh.start()
    try {
      const a = mesh.services.get('a')!
      const dry = a.dryRun({ policies: ['balance'], hosts: ['a'] })
      const ev = dry.events[0]!
      assert.equal(ev.leader, 'a')
      assert.match(ev.planId ?? '', /^[0-9a-f]{16}$/)
      assert.deepEqual(ev.partition[0], 'a')
      assert.deepEqual(a.dryRun({ policies: ['balance'], hosts: ['a'] }).events[0]!.planId, ev.planId)
      await assert.rejects(a.applyPlan('0123456789abcdef'), PlacementConflictError)
      const applied = await a.applyPlan(ev.planId!)
      const key = (ms: { vm: string; from: string; to: string; wave: number }[]) =>
        ms.map((m) => [m.vm, m.from, m.to, m.wave])
      assert.deepEqual(key(applied.moves), key(ev.moves))
      const done = await until('the applied event', () =>
        a.status().recent.find((e) => e.id === applied.event && e.state === 'done'),
      )
      assert.deepEqual(key(done.moves), key(ev.moves))
      assert.ok(mesh.used('a') <= 0.9 * 256)
      // Relieved: the old plan is not current any more.
      await assert.rejects(a.applyPlan(ev.planId!), /changed since the dry run/)
    } finally {
      await mesh.stop()
    }
  })

  it('a drain survives a restart (kept in the store) and ends on request, here or from a peer', async () => {
    const stores = new Map<string, unknown>()
    const idle = { ...FAST, overloadGraceMs: 3_600_000 }
    const first = new Mesh({ a: [], b: [] }, idle, true, stores)
    await first.start()
    first.services.get('b')!.drain('a')
    await until('a to drain', () => first.services.get('a')!.status().draining)
    await first.stop()
    assert.deepEqual(stores.get('a'), { draining: true })
    const again = new Mesh({ a: [], b: [] }, idle, true, stores)
    await again.start()
    try {
      const a = again.services.get('a')!
      assert.equal(a.status().draining, true, 'still draining after the restart')
      assert.deepEqual(again.services.get('b')!.undrain('a'), { host: 'a', self: false })
      await until('the drain to end', () => !a.status().draining)
      assert.deepEqual(stores.get('a'), { draining: false })
      assert.throws(() => a.undrain('nobody'), PlacementLookupError)
      a.drain('a')
      assert.deepEqual(a.undrain('a'), { host: 'a', self: true, wasDraining: true })
    } finally {
      await again.stop()
    }
  })

  it('placement rules by VM name: an anti-affinity group broken on a host is repaired by an event', async () => {
    const rules = [{ vms: 'a-vm*', antiAffinity: 'web' }]
    const mesh = new Mesh({ a: [30, 30], b: [] }, { ...FAST, rules })
    await mesh.start()
    try {
      const a = mesh.services.get('a')!
      const ev = await until('the misplaced event', () =>
        a.status().recent.find((e) => e.kind === 'misplaced' && e.state === 'done'),
      )
      assert.deepEqual(
        ev.moves.map((m) => [m.from, m.to, m.reason]),
        [['a', 'b', 'anti-affinity']],
      )
      assert.equal(mesh.vms.get('a')!.length, 1)
      assert.equal(mesh.vms.get('b')!.length, 1)
      assert.deepEqual(constraintsOf('a-vm1', [...rules, { vms: '*', ban: ['x'] }]), {
        antiAffinity: 'web',
        ban: ['x'],
      })
      assert.deepEqual(constraintsOf('b-vm1', rules), {})
    } finally {
      await mesh.stop()
    }
  })

  it('a lease ends when its leader is declared dead', () => {
    const b = new PlacementNode({
      self: 'b',
      ring: { next: () => 'a', size: () => 2 },
      local: () => ({
        host: { id: 'b', site: 'eu', capacity: { cpu: 1, mem: 1, disk: 1 }, state: 'up' },
        vms: [],
      }),
      rng: seededRng(1),
    })
    const event = { id: 'a#1', leader: 'a', kind: 'overload' as const, openedAt: 0 }
    b.handle('a', { type: 'join', event, leaseMs: 60_000 }, 0)
    assert.equal(b.reservedBy()?.id, 'a#1')
    b.peerGone('c', 1)
    assert.equal(b.reservedBy()?.id, 'a#1', 'another peer dying changes nothing')
    b.peerGone('a', 2)
    assert.equal(b.reservedBy(), undefined)
  })
})

describe('placement routes', () => {
  const mesh = new Mesh({ a: Array(8).fill(30), b: [] }, { ...FAST, enabled: false })
  const server = createApiServer({
    agent: {} as AgentService,
    placement: mesh.services.get('a')!,
    token: 'tok-0123456789abcdef',
    logger: log,
  })
  const call = (method: 'GET' | 'POST' | 'DELETE', url: string, payload?: object) =>
    server.app.inject({ method, url, payload, headers: { authorization: 'Bearer tok-0123456789abcdef' } })

  it('POST /v1/placement/plan answers a dry run, 400 for a bad policy or dryRun, 404 for unknowns', async () => {
    const ok = await call('POST', '/v1/placement/plan', { policy: 'balance', dryRun: true })
    assert.equal(ok.statusCode, 200, ok.body)
    assert.equal(ok.json().dryRun, true)
    assert.ok(ok.json().moves.length >= 1)
    const all = await call('POST', '/v1/placement/plan', { dryRun: true })
    assert.deepEqual(all.json().policies, ['repair', 'balance', 'affinity', 'consolidate'])
    const bad = await call('POST', '/v1/placement/plan', { policy: 'magic', dryRun: true })
    assert.equal(bad.statusCode, 400)
    assert.match(bad.json().error.message, /unknown policy "magic"/)
    const notDry = await call('POST', '/v1/placement/plan', { policy: 'balance', dryRun: false })
    assert.equal(notDry.statusCode, 400)
    assert.match(notDry.json().error.message, /dryRun/)
    const badId = await call('POST', '/v1/placement/plan', { dryRun: false, planId: 'x' })
    assert.equal(badId.statusCode, 400)
    assert.match(badId.json().error.message, /planId/)
    // Placement is off on this agent: nothing can run.
    const off = await call('POST', '/v1/placement/plan', { dryRun: false, planId: '0123456789abcdef' })
    assert.equal(off.statusCode, 409, off.body)
    assert.equal(ok.json().events[0].leader, 'a')
    assert.match(ok.json().events[0].planId, /^[0-9a-f]{16}$/)
    const host = await call('POST', '/v1/placement/plan', { dryRun: true, hosts: ['nobody'] })
    assert.equal(host.statusCode, 404)
    assert.equal(host.json().error.code, 'NOT_FOUND')
    const vm = await call('POST', '/v1/placement/plan', { dryRun: true, vms: ['vm-none'] })
    assert.equal(vm.statusCode, 404)
    assert.equal(vm.json().error.code, 'VM_NOT_FOUND')
  })

  it('GET /v1/placement/events, POST and DELETE /v1/hosts/:peerId/drain', async () => {
    const ev = await call('GET', '/v1/placement/events')
    assert.equal(ev.statusCode, 200)
    assert.deepEqual(ev.json(), { self: 'a', enabled: false, draining: false, open: [], recent: [] })
    const missing = await call('POST', '/v1/hosts/nobody/drain')
    assert.equal(missing.statusCode, 404)
    const own = await call('POST', '/v1/hosts/a/drain')
    assert.equal(own.statusCode, 202)
    assert.equal((await call('GET', '/v1/placement/events')).json().draining, true)
    const end = await call('DELETE', '/v1/hosts/a/drain')
    assert.equal(end.statusCode, 200, end.body)
    assert.deepEqual(end.json(), { host: 'a', self: true, wasDraining: true, draining: false })
    assert.equal((await call('GET', '/v1/placement/events')).json().draining, false)
    assert.equal((await call('DELETE', '/v1/hosts/nobody/drain')).statusCode, 404)
  })
})

describe('placement config', () => {
  it('defaults, overrides and refuses an underload above the overload', () => {
    const d = loadConfig({ dataDir: '/tmp/x' }, {})
    assert.equal(d.placement.enabled, true)
    assert.equal(d.placement.overloadGraceMs, DEFAULT_PLACEMENT_SETTINGS.overloadGraceMs)
    const dir = mkdtempSync(join(tmpdir(), 'skymesh-placement-config-'))
    try {
      const file = join(dir, 'agent.yaml')
      writeFileSync(file, 'placement:\n  enabled: false\n  tickMs: 250\n')
      const c = loadConfig({ dataDir: dir, config: file }, {})
      assert.equal(c.placement.enabled, false)
      assert.equal(c.placement.tickMs, 250)
      writeFileSync(file, 'placement:\n  tickMs: fast\n')
      assert.throws(() => loadConfig({ dataDir: dir, config: file }, {}), /placement\.tickMs/)
      writeFileSync(
        file,
        'placement:\n  rules:\n    - vms: "web-*"\n      antiAffinity: web\n      sites: [{ site: eu, fromHour: 6, toHour: 18 }]\n',
      )
      assert.deepEqual(loadConfig({ dataDir: dir, config: file }, {}).placement.rules, [
        { vms: 'web-*', antiAffinity: 'web', sites: [{ site: 'eu', fromHour: 6, toHour: 18 }] },
      ])
      writeFileSync(
        file,
        'placement:\n  rules:\n    - vms: "web-*"\n      sites: [{ site: eu, fromHour: 25, toHour: 1 }]\n',
      )
      assert.throws(() => loadConfig({ dataDir: dir, config: file }, {}), /placement\.rules/)
      writeFileSync(file, 'placement:\n  underload: 0.95\n')
      assert.throws(() => loadConfig({ dataDir: dir, config: file }, {}), ConfigError)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
