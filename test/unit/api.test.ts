// The HTTP layer of the agent API against an in-memory AgentService (the real agent is tested
// through the same routes elsewhere).
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import pino from 'pino'
import { Counter, Registry } from 'prom-client'
import { createApiServer } from '../../src/node/api/index.js'
import { AgentError } from '../../src/node/errors.js'
import type {
  AgentService,
  ClusterView,
  ClusterVm,
  CreateVmRequest,
  MigrateVmRequest,
  MigrationView,
  NodeInfo,
  PeerInfo,
  VmDigest,
  VmRecord,
} from '../../src/node/types.js'
import { fakeMigrationView } from '../helpers/migration-view.js'

const TOKEN = 'test-token-0123456789abcdef'
const AUTH = { authorization: `Bearer ${TOKEN}` }
const CAPACITY = { vcpus: 8, memoryMiB: 4096, diskMiB: 100_000 }

class FakeAgent implements AgentService {
  readonly metrics = new Registry()
  readonly vms = new Map<string, VmRecord>()
  private seq = 0
  private readonly created: Counter

  constructor() {
    this.created = new Counter({
      name: 'skymesh_vms_created_total',
      help: 'VMs created',
      registers: [this.metrics],
    })
  }

  private used() {
    const u = { vcpus: 0, memoryMiB: 0, diskMiB: 0 }
    for (const vm of this.vms.values()) {
      u.vcpus += vm.vcpus
      u.memoryMiB += vm.memoryMiB
      u.diskMiB += vm.diskMiB
    }
    return u
  }

  migrateVm(id: string, req: MigrateVmRequest): MigrationView {
    const vm = this.getVm(id)
    const m = fakeMigrationView({
      id: `mig-${++this.seq}`,
      vmId: vm.id,
      from: vm.host,
      to: req.to,
      mode: req.mode ?? 'precopy',
    })
    this.migrations.set(m.id, m)
    return m
  }

  readonly migrations = new Map<string, MigrationView>()

  listMigrations(): MigrationView[] {
    return [...this.migrations.values()]
  }

  getMigration(id: string): MigrationView {
    const m = this.migrations.get(id)
    if (!m) throw new AgentError('NOT_FOUND', `no migration '${id}'`)
    return m
  }

  cancelMigration(id: string): MigrationView {
    const m = this.getMigration(id)
    m.phase = 'cancelled'
    return m
  }

  cluster(): ClusterView {
    return {
      self: '12D3KooWFake',
      hosts: [
        {
          peerId: '12D3KooWFake',
          self: true,
          status: 'alive',
          site: 'test',
          addrs: [],
          vmCount: this.vms.size,
        },
      ],
      counts: { alive: 1, suspect: 0, dead: 0, left: 0 },
    }
  }

  clusterVms(): ClusterVm[] {
    return [...this.vms.values()].map((vm) => ({
      id: vm.id,
      name: vm.name,
      host: vm.host,
      epoch: vm.epoch,
      status: 'ok' as const,
      state: vm.state,
      vcpus: vm.vcpus,
      memoryMiB: vm.memoryMiB,
      diskMiB: vm.diskMiB,
      cpu: 0,
      dirtyMiBps: 0,
    }))
  }

  where(idOrName: string): ClusterVm {
    const vm = this.clusterVms().find((v) => v.id === idOrName || v.name === idOrName)
    if (!vm) throw new AgentError('VM_NOT_FOUND', `no VM '${idOrName}' in the mesh`)
    return vm
  }

  nodeInfo(): NodeInfo {
    return {
      peerId: '12D3KooWFake',
      addrs: ['/ip4/127.0.0.1/tcp/4001'],
      version: '0.1.0',
      site: 'test',
      driver: 'synthetic',
      startedAt: '2024-01-01T00:00:00.000Z',
      capacity: CAPACITY,
      used: this.used(),
      vmCount: this.vms.size,
    }
  }

  peers(): PeerInfo[] {
    return [
      {
        peerId: '12D3KooWPeer',
        addrs: ['/ip4/127.0.0.1/tcp/4002'],
        direction: 'outbound',
        connectedAt: '2024-01-01T00:00:01.000Z',
      },
    ]
  }

  listVms(): VmRecord[] {
    return [...this.vms.values()]
  }

  getVm(id: string): VmRecord {
    const vm = this.vms.get(id)
    if (!vm) throw new AgentError('VM_NOT_FOUND', `no VM ${id}`)
    return vm
  }

  async createVm(req: CreateVmRequest): Promise<VmRecord> {
    if ([...this.vms.values()].some((v) => v.name === req.name)) {
      throw new AgentError('NAME_TAKEN', `a VM named ${req.name} exists`)
    }
    const free = CAPACITY.memoryMiB - this.used().memoryMiB
    if (req.memoryMiB > free) {
      throw new AgentError('INSUFFICIENT_CAPACITY', `needs ${req.memoryMiB} MiB, ${free} MiB free`, {
        freeMiB: free,
      })
    }
    const now = new Date().toISOString()
    const vm: VmRecord = {
      id: `vm-${++this.seq}`,
      name: req.name,
      vcpus: req.vcpus,
      memoryMiB: req.memoryMiB,
      diskMiB: req.diskMiB,
      workload: {
        dirtyMiBps: req.workload?.dirtyMiBps ?? 0,
        hotSetMiB: req.workload?.hotSetMiB ?? Math.min(64, req.memoryMiB),
        cpu: req.workload?.cpu ?? 0,
        diskWriteMiBps: req.workload?.diskWriteMiBps ?? 0,
      },
      state: 'running',
      host: '12D3KooWFake',
      epoch: 1,
      createdAt: now,
      updatedAt: now,
    }
    this.vms.set(vm.id, vm)
    this.created.inc()
    return vm
  }

  async deleteVm(id: string): Promise<void> {
    this.getVm(id)
    this.vms.delete(id)
  }

  private setState(id: string, state: VmRecord['state']): VmRecord {
    const vm = { ...this.getVm(id), state, updatedAt: new Date().toISOString() }
    this.vms.set(id, vm)
    return vm
  }

  async pauseVm(id: string): Promise<VmRecord> {
    return this.setState(id, 'paused')
  }

  async resumeVm(id: string): Promise<VmRecord> {
    return this.setState(id, 'running')
  }

  async vmDigest(id: string): Promise<VmDigest> {
    const vm = this.getVm(id)
    if (vm.id === 'boom') throw new Error('secret internal detail')
    if (vm.state === 'crashed') throw new AgentError('INVALID_STATE', `VM ${id} crashed`)
    return { id, memory: 'aa', disk: 'bb', combined: 'cc' }
  }
}

function setup(opts: { bodyLimit?: number } = {}) {
  const agent = new FakeAgent()
  const server = createApiServer({ agent, token: TOKEN, logger: pino({ level: 'silent' }), ...opts })
  return { agent, server, app: server.app }
}

const VM = { name: 'web-1', vcpus: 2, memoryMiB: 512, diskMiB: 1024 }

async function createOne(app: ReturnType<typeof setup>['app'], body: object = VM) {
  const res = await app.inject({ method: 'POST', url: '/v1/vms', headers: AUTH, payload: body })
  assert.equal(res.statusCode, 201, res.body)
  return res.json() as VmRecord
}

describe('api: auth', () => {
  it('401 without a token, with a wrong one, or a wrong scheme, and nothing changes', async () => {
    const { app, agent } = setup()
    const cases: Record<string, string>[] = [
      {},
      { authorization: 'Bearer wrong' },
      { authorization: `Bearer ${TOKEN}x` },
      { authorization: `Basic ${TOKEN}` },
      { authorization: TOKEN },
    ]
    for (const headers of cases) {
      const res = await app.inject({ method: 'POST', url: '/v1/vms', headers, payload: VM })
      assert.equal(res.statusCode, 401)
      assert.equal(res.json().error.code, 'UNAUTHORIZED')
      assert.equal(typeof res.json().error.message, 'string')
      for (const url of ['/v1/node', '/v1/vms', '/metrics', '/nope']) {
        assert.equal((await app.inject({ url, headers })).statusCode, 401, url)
      }
    }
    assert.equal(agent.vms.size, 0)
    await app.close()
  })

  it('accepts a case-insensitive scheme', async () => {
    const { app } = setup()
    const res = await app.inject({ url: '/v1/node', headers: { authorization: `bearer ${TOKEN}` } })
    assert.equal(res.statusCode, 200)
    await app.close()
  })

  it('/healthz needs no token and says nothing else', async () => {
    const { app } = setup()
    const res = await app.inject({ url: '/healthz' })
    assert.equal(res.statusCode, 200)
    assert.deepEqual(res.json(), { ok: true })
    assert.equal((await app.inject({ method: 'HEAD', url: '/healthz' })).statusCode, 200)
    await app.close()
  })

  it('refuses an empty token at construction', () => {
    assert.throws(() =>
      createApiServer({ agent: new FakeAgent(), token: '', logger: pino({ level: 'silent' }) }),
    )
  })
})

describe('api: routes', () => {
  it('GET /v1/node and /v1/peers', async () => {
    const { app, agent } = setup()
    const node = await app.inject({ url: '/v1/node', headers: AUTH })
    assert.equal(node.statusCode, 200)
    assert.deepEqual(node.json(), agent.nodeInfo())
    const peers = await app.inject({ url: '/v1/peers', headers: AUTH })
    assert.equal(peers.statusCode, 200)
    assert.deepEqual(peers.json(), { peers: agent.peers() })
    await app.close()
  })

  it('VM lifecycle: create 201, list, get, pause, resume, digest, delete 204', async () => {
    const { app, agent } = setup()
    const vm = await createOne(app, { ...VM, workload: { dirtyMiBps: 10, cpu: 1.5 } })
    assert.equal(vm.name, 'web-1')
    assert.equal(vm.workload.dirtyMiBps, 10)
    assert.equal(vm.workload.cpu, 1.5)
    assert.equal(vm.workload.hotSetMiB, 64, 'the agent fills defaults')
    assert.deepEqual(vm, agent.vms.get(vm.id))

    const list = await app.inject({ url: '/v1/vms', headers: AUTH })
    assert.equal(list.statusCode, 200)
    assert.deepEqual(list.json(), { vms: [vm] })

    const got = await app.inject({ url: `/v1/vms/${vm.id}`, headers: AUTH })
    assert.equal(got.statusCode, 200)
    assert.deepEqual(got.json(), vm)

    const paused = await app.inject({ method: 'POST', url: `/v1/vms/${vm.id}/pause`, headers: AUTH })
    assert.equal(paused.statusCode, 200)
    assert.equal(paused.json().state, 'paused')

    // A client that always sends a JSON content type, with an empty body or `{}`.
    const resumed = await app.inject({
      method: 'POST',
      url: `/v1/vms/${vm.id}/resume`,
      headers: { ...AUTH, 'content-type': 'application/json' },
      payload: '',
    })
    assert.equal(resumed.statusCode, 200, resumed.body)
    assert.equal(resumed.json().state, 'running')
    const paused2 = await app.inject({
      method: 'POST',
      url: `/v1/vms/${vm.id}/pause`,
      headers: AUTH,
      payload: {},
    })
    assert.equal(paused2.statusCode, 200, paused2.body)

    const digest = await app.inject({ url: `/v1/vms/${vm.id}/digest`, headers: AUTH })
    assert.equal(digest.statusCode, 200)
    assert.deepEqual(digest.json(), { id: vm.id, memory: 'aa', disk: 'bb', combined: 'cc' })

    const del = await app.inject({ method: 'DELETE', url: `/v1/vms/${vm.id}`, headers: AUTH })
    assert.equal(del.statusCode, 204)
    assert.equal(del.body, '')
    assert.equal(agent.vms.size, 0)
    await app.close()
  })

  it('GET /metrics serves the registry text with its content type', async () => {
    const { app } = setup()
    await createOne(app)
    const res = await app.inject({ url: '/metrics', headers: AUTH })
    assert.equal(res.statusCode, 200)
    assert.match(String(res.headers['content-type']), /^text\/plain/)
    assert.match(res.body, /# TYPE skymesh_vms_created_total counter/)
    assert.match(res.body, /skymesh_vms_created_total 1/)
    await app.close()
  })
})

describe('api: validation', () => {
  async function bad(payload: unknown, field: string, pattern?: RegExp) {
    const { app, agent } = setup()
    const res = await app.inject({
      method: 'POST',
      url: '/v1/vms',
      headers: AUTH,
      payload: payload as object,
    })
    assert.equal(res.statusCode, 400, `${JSON.stringify(payload)} -> ${res.body}`)
    const { error } = res.json()
    assert.equal(error.code, 'BAD_REQUEST')
    assert.ok(error.message.includes(`${field}:`), `message names ${field}: ${error.message}`)
    assert.equal(error.details.field, field)
    if (pattern) assert.match(error.message, pattern)
    assert.equal(agent.vms.size, 0)
    await app.close()
  }

  it('rejects each bad field and names it', async () => {
    await bad({ ...VM, name: '' }, 'name')
    await bad({ ...VM, name: '-web' }, 'name')
    await bad({ ...VM, name: 'web 1' }, 'name')
    await bad({ ...VM, name: 'a'.repeat(64) }, 'name')
    await bad({ ...VM, name: 7 }, 'name')
    await bad({ ...VM, vcpus: 0 }, 'vcpus', /integer from 1 to 256, got 0/)
    await bad({ ...VM, vcpus: 1.5 }, 'vcpus')
    await bad({ ...VM, vcpus: 257 }, 'vcpus')
    await bad({ ...VM, vcpus: '2' }, 'vcpus', /got "2"/)
    await bad({ ...VM, memoryMiB: 0 }, 'memoryMiB', /memoryMiB: expected an integer from 1 to 1048576, got 0/)
    await bad({ ...VM, memoryMiB: 1_048_577 }, 'memoryMiB')
    await bad({ ...VM, memoryMiB: null }, 'memoryMiB', /got null/)
    await bad({ ...VM, diskMiB: -1 }, 'diskMiB')
    await bad({ ...VM, diskMiB: 16_777_217 }, 'diskMiB')
    await bad({ ...VM, workload: { dirtyMiBps: -1 } }, 'workload.dirtyMiBps', />= 0/)
    await bad({ ...VM, workload: { hotSetMiB: 'x' } }, 'workload.hotSetMiB')
    await bad({ ...VM, workload: { diskWriteMiBps: -0.5 } }, 'workload.diskWriteMiBps')
    await bad({ ...VM, workload: [] }, 'workload')
    await bad({ ...VM, workload: { cpu: 3 } }, 'workload.cpu', /<= vcpus \(2\)/)
    await bad({ ...VM, workload: { hotSetMiB: 513 } }, 'workload.hotSetMiB', /<= memoryMiB \(512\)/)
  })

  it('names a missing field', async () => {
    const { name: _, ...noName } = VM
    await bad(noName, 'name', /name: required/)
  })

  it('rejects unknown fields, at the top and in workload', async () => {
    await bad({ ...VM, color: 'red' }, 'color', /color: unknown field/)
    await bad({ ...VM, workload: { cpu: 1, turbo: true } }, 'workload.turbo', /unknown field/)
  })

  it('rejects a body that is not an object, or none at all', async () => {
    await bad([VM], 'body')
    const { app } = setup()
    const res = await app.inject({ method: 'POST', url: '/v1/vms', headers: AUTH })
    assert.equal(res.statusCode, 400)
    assert.match(res.json().error.message, /^body: required/)
    await app.close()
  })

  it('400 on malformed JSON, with the field named', async () => {
    const { app, agent } = setup()
    const res = await app.inject({
      method: 'POST',
      url: '/v1/vms',
      headers: { ...AUTH, 'content-type': 'application/json' },
      payload: '{"name": "web-1", ',
    })
    assert.equal(res.statusCode, 400)
    assert.equal(res.json().error.code, 'BAD_REQUEST')
    assert.match(res.json().error.message, /^body: malformed JSON/)
    assert.equal(agent.vms.size, 0)
    await app.close()
  })

  it('400 on a number JSON cannot hold (1e400 parses to Infinity)', async () => {
    const { app } = setup()
    const res = await app.inject({
      method: 'POST',
      url: '/v1/vms',
      headers: { ...AUTH, 'content-type': 'application/json' },
      payload: '{"name":"a","vcpus":1,"memoryMiB":1,"diskMiB":1,"workload":{"dirtyMiBps":1e400}}',
    })
    assert.equal(res.statusCode, 400)
    assert.match(
      res.json().error.message,
      /^workload\.dirtyMiBps: expected a finite number >= 0, got Infinity/,
    )
    await app.close()
  })

  it('router errors (bad percent-encoding, over-long id) keep the error shape', async () => {
    const { app } = setup()
    const long = await app.inject({ url: `/v1/vms/${'a'.repeat(300)}`, headers: AUTH })
    assert.equal(long.statusCode, 414)
    assert.equal(long.json().error.code, 'BAD_REQUEST')
    const enc = await app.inject({ url: '/v1/vms/%ZZ', headers: AUTH })
    assert.equal(enc.statusCode, 400)
    assert.equal(enc.json().error.code, 'BAD_REQUEST')
    await app.close()
  })

  it('400 on a prototype-poisoning key', async () => {
    const { app } = setup()
    const res = await app.inject({
      method: 'POST',
      url: '/v1/vms',
      headers: { ...AUTH, 'content-type': 'application/json' },
      payload: `{"name":"a","vcpus":1,"memoryMiB":1,"diskMiB":1,"__proto__":{"x":1}}`,
    })
    assert.equal(res.statusCode, 400)
    assert.equal(res.json().error.code, 'BAD_REQUEST')
    await app.close()
  })

  it('415 on a content type other than JSON, in the same error shape', async () => {
    const { app, agent } = setup()
    for (const ct of ['text/plain', 'application/x-www-form-urlencoded']) {
      const res = await app.inject({
        method: 'POST',
        url: '/v1/vms',
        headers: { ...AUTH, 'content-type': ct },
        payload: JSON.stringify(VM),
      })
      assert.equal(res.statusCode, 415, ct)
      assert.equal(res.json().error.code, 'BAD_REQUEST')
      assert.match(res.json().error.message, /content-type/)
    }
    assert.equal(agent.vms.size, 0)
    await app.close()
  })

  it('413 on a body over the limit', async () => {
    const { app, agent } = setup()
    const res = await app.inject({
      method: 'POST',
      url: '/v1/vms',
      headers: AUTH,
      payload: { ...VM, pad: 'x'.repeat(70 * 1024) },
    })
    assert.equal(res.statusCode, 413)
    assert.equal(res.json().error.code, 'BAD_REQUEST')
    assert.match(res.json().error.message, /body: larger than the limit of 65536 bytes/)
    assert.equal(agent.vms.size, 0)
    await app.close()
  })

  it('honours a custom body limit', async () => {
    const { app } = setup({ bodyLimit: 32 })
    const res = await app.inject({ method: 'POST', url: '/v1/vms', headers: AUTH, payload: VM })
    assert.equal(res.statusCode, 413)
    await app.close()
  })

  it('400 on a bad id, a body on pause', async () => {
    const { app, agent } = setup()
    const vm = await createOne(app)
    for (const id of ['%20x', '.hidden', 'a%2Fb', 'a'.repeat(129), 'x%00']) {
      const res = await app.inject({ url: `/v1/vms/${id}`, headers: AUTH })
      assert.equal(res.statusCode, 400, `${id}: ${res.body}`)
      assert.match(res.json().error.message, /^id: /)
    }
    const res = await app.inject({
      method: 'POST',
      url: `/v1/vms/${vm.id}/pause`,
      headers: AUTH,
      payload: { force: true },
    })
    assert.equal(res.statusCode, 400)
    assert.match(res.json().error.message, /force: unknown field/)
    assert.equal(agent.vms.get(vm.id)?.state, 'running')
    await app.close()
  })
})

describe('api: agent errors', () => {
  it('404 VM_NOT_FOUND for an unknown id on every VM route', async () => {
    const { app } = setup()
    const routes: [string, string][] = [
      ['GET', '/v1/vms/vm-404'],
      ['DELETE', '/v1/vms/vm-404'],
      ['POST', '/v1/vms/vm-404/pause'],
      ['POST', '/v1/vms/vm-404/resume'],
      ['GET', '/v1/vms/vm-404/digest'],
    ]
    for (const [method, url] of routes) {
      const res = await app.inject({ method: method as 'GET', url, headers: AUTH })
      assert.equal(res.statusCode, 404, `${method} ${url}`)
      assert.equal(res.json().error.code, 'VM_NOT_FOUND')
      assert.match(res.json().error.message, /vm-404/)
    }
    await app.close()
  })

  it('404 NOT_FOUND for an unknown route', async () => {
    const { app } = setup()
    for (const [method, url] of [
      ['GET', '/v1/nope'],
      ['PUT', '/v1/vms'],
      ['GET', '/'],
    ] as const) {
      const res = await app.inject({ method, url, headers: AUTH })
      assert.equal(res.statusCode, 404, `${method} ${url}`)
      assert.equal(res.json().error.code, 'NOT_FOUND')
    }
    await app.close()
  })

  it('409 INSUFFICIENT_CAPACITY leaves the VM list unchanged', async () => {
    const { app } = setup()
    const first = await createOne(app, { ...VM, memoryMiB: 3072 })
    const res = await app.inject({
      method: 'POST',
      url: '/v1/vms',
      headers: AUTH,
      payload: { ...VM, name: 'big', memoryMiB: 2048 },
    })
    assert.equal(res.statusCode, 409)
    assert.equal(res.json().error.code, 'INSUFFICIENT_CAPACITY')
    assert.deepEqual(res.json().error.details, { freeMiB: 1024 })
    const list = await app.inject({ url: '/v1/vms', headers: AUTH })
    assert.deepEqual(list.json(), { vms: [first] })
    await app.close()
  })

  it('409 NAME_TAKEN', async () => {
    const { app, agent } = setup()
    await createOne(app)
    const res = await app.inject({ method: 'POST', url: '/v1/vms', headers: AUTH, payload: VM })
    assert.equal(res.statusCode, 409)
    assert.equal(res.json().error.code, 'NAME_TAKEN')
    assert.equal(agent.vms.size, 1)
    await app.close()
  })

  it('409 INVALID_STATE, and a plain Error becomes a generic 500', async () => {
    const { app, agent } = setup()
    const vm = await createOne(app)
    agent.vms.set(vm.id, { ...vm, state: 'crashed' })
    agent.vms.set('boom', { ...vm, id: 'boom' })
    const invalid = await app.inject({ url: `/v1/vms/${vm.id}/digest`, headers: AUTH })
    assert.equal(invalid.statusCode, 409)
    assert.equal(invalid.json().error.code, 'INVALID_STATE')
    const boom = await app.inject({ url: '/v1/vms/boom/digest', headers: AUTH })
    assert.equal(boom.statusCode, 500)
    assert.equal(boom.json().error.code, 'INTERNAL')
    assert.doesNotMatch(boom.body, /secret/)
    // Still serving.
    assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200)
    await app.close()
  })
})

describe('api: listen', () => {
  it('serves over real HTTP on 127.0.0.1:0, then closes', async () => {
    const { server } = setup()
    const server2 = createApiServer({
      agent: new FakeAgent(),
      token: TOKEN,
      logger: pino({ level: 'silent' }),
      port: 0,
    })
    const base = await server2.listen()
    assert.match(base, /^http:\/\/127\.0\.0\.1:\d+$/)
    try {
      const health = await fetch(`${base}/healthz`)
      assert.equal(health.status, 200)
      assert.deepEqual(await health.json(), { ok: true })
      const unauth = await fetch(`${base}/v1/vms`)
      assert.equal(unauth.status, 401)
      const created = await fetch(`${base}/v1/vms`, {
        method: 'POST',
        headers: { ...AUTH, 'content-type': 'application/json' },
        body: JSON.stringify(VM),
      })
      assert.equal(created.status, 201)
      const list = await fetch(`${base}/v1/vms`, { headers: AUTH })
      assert.equal(((await list.json()) as { vms: VmRecord[] }).vms.length, 1)
    } finally {
      await server2.close()
      await server2.close()
      await server.close()
    }
    await assert.rejects(fetch(`${base}/healthz`))
  })
})

describe('api: migrations and cluster', () => {
  it('starts a migration (202), lists, shows and cancels it', async () => {
    const { app } = setup()
    const vm = await createOne(app)
    const res = await app.inject({
      method: 'POST',
      url: `/v1/vms/${vm.id}/migrate`,
      headers: AUTH,
      payload: { to: '12D3KooWOther', mode: 'auto', downtimeMs: 30, streams: 4, compression: 'off' },
    })
    assert.equal(res.statusCode, 202)
    const m = res.json()
    assert.equal(m.vmId, vm.id)
    assert.equal(m.mode, 'auto')
    const list = await app.inject({ method: 'GET', url: '/v1/migrations', headers: AUTH })
    assert.equal(list.json().migrations.length, 1)
    assert.equal(
      (await app.inject({ method: 'GET', url: `/v1/migrations/${m.id}`, headers: AUTH })).json().id,
      m.id,
    )
    const del = await app.inject({ method: 'DELETE', url: `/v1/migrations/${m.id}`, headers: AUTH })
    assert.equal(del.json().phase, 'cancelled')
    assert.equal(
      (await app.inject({ method: 'GET', url: '/v1/migrations/nope', headers: AUTH })).statusCode,
      404,
    )
  })

  it('rejects bad migrate bodies by field, and starts nothing', async () => {
    const { app, agent } = setup()
    const vm = await createOne(app)
    const cases: [unknown, RegExp][] = [
      [{}, /to: required/],
      [{ to: 'peer', mode: 'teleport' }, /mode/],
      [{ to: 'peer', downtimeMs: 0 }, /downtimeMs/],
      [{ to: 'peer', streams: 64 }, /streams/],
      [{ to: 'peer', bandwidthMiBps: -1 }, /bandwidthMiBps/],
      [{ to: 'peer', compression: 'max' }, /compression/],
      [{ to: 'peer', speed: 'fast' }, /speed/],
    ]
    for (const [payload, pattern] of cases) {
      const res = await app.inject({
        method: 'POST',
        url: `/v1/vms/${vm.id}/migrate`,
        headers: AUTH,
        payload: payload as object,
      })
      assert.equal(res.statusCode, 400, JSON.stringify(payload))
      assert.match(res.json().error.message, pattern)
    }
    assert.equal(agent.migrations.size, 0)
  })

  it('GET /v1/cluster, /v1/cluster/vms and one VM by name', async () => {
    const { app } = setup()
    const vm = await createOne(app)
    const c = await app.inject({ method: 'GET', url: '/v1/cluster', headers: AUTH })
    assert.equal(c.json().counts.alive, 1)
    const vms = await app.inject({ method: 'GET', url: '/v1/cluster/vms', headers: AUTH })
    assert.equal(vms.json().vms[0].id, vm.id)
    const one = await app.inject({ method: 'GET', url: `/v1/cluster/vms/${vm.name}`, headers: AUTH })
    assert.equal(one.json().id, vm.id)
    assert.equal(
      (await app.inject({ method: 'GET', url: '/v1/cluster/vms/nope', headers: AUTH })).statusCode,
      404,
    )
  })
})
