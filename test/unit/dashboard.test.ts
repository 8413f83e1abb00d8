// The dashboard's HTTP side on the agent's API server (sign-in, files, event stream, API proxy) and its
// event hub (snapshot then deltas, everything bounded), against an in-memory agent.
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'
import { request as httpRequest } from 'node:http'
import { describe, it } from 'node:test'
import pino from 'pino'
import { Registry } from 'prom-client'
import { DashboardHub, type DashboardSource, type SseSink } from '../../src/dashboard/index.js'
import { createApiServer } from '../../src/node/api/index.js'
import { AgentError } from '../../src/node/errors.js'
import type { AgentService, ClusterHost, ClusterVm, MigrationView, VmRecord } from '../../src/node/types.js'
import { fakeMigrationView } from '../helpers/migration-view.js'

const TOKEN = 'dashboard-test-token-0123456789'
const SELF = '12D3KooWSelfSelfSelfSelfSelfSelfSelfSelfSelfSelf'
const OTHER = '12D3KooWOtherOtherOtherOtherOtherOtherOtherOther'
const CAP = { vcpus: 4, memoryMiB: 4096, diskMiB: 10_000 }

function migration(
  id: string,
  vmId: string,
  phase: MigrationView['phase'],
  startedAt: number,
): MigrationView {
  return fakeMigrationView({
    id,
    vmId,
    from: SELF,
    to: OTHER,
    phase,
    round: 1,
    startedAt,
    bytesSent: 1024 * 1024,
    wireBytes: 1024 * 1024,
    bandwidthMiBps: 10,
  })
}

/** An agent with a few VMs; tests change its fields and fire `changes`. */
class FakeAgent {
  readonly metrics = new Registry()
  readonly changes = new EventEmitter()
  vms: ClusterVm[] = []
  migrations: MigrationView[] = []
  otherStatus: ClusterHost['status'] = 'alive'

  addVm(name: string, host = SELF): ClusterVm {
    const vm: ClusterVm = {
      id: `vm-${this.vms.length}-${Math.random().toString(16).slice(2, 8)}`,
      name,
      host,
      epoch: 1,
      status: 'ok',
      state: 'running',
      vcpus: 1,
      memoryMiB: 64,
      diskMiB: 64,
      cpu: 0.1,
      dirtyMiBps: 1,
    }
    this.vms.push(vm)
    return vm
  }

  nodeInfo() {
    return {
      peerId: SELF,
      addrs: [],
      version: 'test',
      site: 'a',
      driver: 'synthetic',
      startedAt: new Date(0).toISOString(),
      capacity: CAP,
      used: { vcpus: 0, memoryMiB: 0, diskMiB: 0 },
      vmCount: this.listVms().length,
    }
  }
  peers() {
    return []
  }
  cluster() {
    const host = (peerId: string, status: ClusterHost['status']): ClusterHost => ({
      peerId,
      self: peerId === SELF,
      status,
      site: peerId === SELF ? 'a' : 'b',
      addrs: [],
      capacity: CAP,
      used: { vcpus: 1, memoryMiB: 1024, diskMiB: 100 },
      cpuLoad: 0.5,
      vmCount: this.vms.filter((v) => v.host === peerId).length,
    })
    return {
      self: SELF,
      hosts: [host(SELF, 'alive'), host(OTHER, this.otherStatus)],
      counts: { alive: 2, suspect: 0, dead: 0, left: 0 },
    }
  }
  clusterVms() {
    return this.vms.map((v) => ({ ...v }))
  }
  listVms(): VmRecord[] {
    return this.vms
      .filter((v) => v.host === SELF)
      .map((v) => ({
        ...v,
        workload: { dirtyMiBps: 1, hotSetMiB: 8, cpu: 0, diskWriteMiBps: 0 },
        state: 'running' as const,
        createdAt: new Date(0).toISOString(),
        updatedAt: new Date(0).toISOString(),
        nics: [{ network: 'lan', mac: '02:00:00:00:00:01', ip: '10.0.0.5' }],
      }))
  }
  getVm(id: string): VmRecord {
    const vm = this.listVms().find((v) => v.id === id)
    if (!vm) throw new AgentError('VM_NOT_FOUND', `no VM ${id}`)
    return vm
  }
  listMigrations() {
    return this.migrations
  }
  watch(fn: (what: 'members' | 'hosts' | 'migrations') => void) {
    this.changes.on('change', fn)
    return () => void this.changes.off('change', fn)
  }
}

function server(agent: FakeAgent) {
  return createApiServer({
    agent: agent as unknown as AgentService,
    token: TOKEN,
    logger: pino({ level: 'silent' }),
    port: 0,
    dashboard: { hub: { flushMs: 10, refreshMs: 50 } },
  })
}

const cookieOf = (setCookie: string | string[] | undefined): string => {
  const c = Array.isArray(setCookie) ? setCookie[0] : setCookie
  assert.ok(c, 'a cookie was set')
  return c.split(';')[0]!
}

describe('dashboard: sign-in and what needs it', () => {
  it('serves no page, data file, stream or API call without a session', async () => {
    const api = server(new FakeAgent())
    try {
      const page = await api.app.inject({ method: 'GET', url: '/dashboard/' })
      assert.equal(page.statusCode, 303)
      assert.equal(page.headers.location, '/dashboard/login')
      for (const url of [
        '/dashboard/events',
        '/dashboard/static/app.js',
        '/dashboard/static/vms.js',
        '/dashboard/vendor/preact.js',
        '/dashboard/api/v1/cluster',
      ]) {
        const r = await api.app.inject({ method: 'GET', url, headers: { 'x-skymesh-dashboard': '1' } })
        assert.equal(r.statusCode, 401, url)
      }
      // a bearer token is for the API, not a session: the page still asks to sign in
      const bearer = await api.app.inject({
        method: 'GET',
        url: '/dashboard/events',
        headers: { authorization: `Bearer ${TOKEN}` },
      })
      assert.equal(bearer.statusCode, 401)
      // the login page and its own script and style are public (no data in them)
      for (const url of ['/dashboard/login', '/dashboard/static/login.js', '/dashboard/static/style.css']) {
        const r = await api.app.inject({ method: 'GET', url })
        assert.equal(r.statusCode, 200, url)
        assert.match(String(r.headers['content-security-policy']), /script-src 'self'/)
      }
    } finally {
      await api.close()
    }
  })

  it('trades the token for an HttpOnly session cookie; a wrong token gets none', async () => {
    const api = server(new FakeAgent())
    try {
      const wrong = await api.app.inject({
        method: 'POST',
        url: '/dashboard/login',
        payload: { token: 'nope' },
      })
      assert.equal(wrong.statusCode, 401)
      assert.equal(wrong.headers['set-cookie'], undefined)
      const ok = await api.app.inject({ method: 'POST', url: '/dashboard/login', payload: { token: TOKEN } })
      assert.equal(ok.statusCode, 204)
      const raw = String(ok.headers['set-cookie'])
      assert.match(raw, /HttpOnly/)
      assert.match(raw, /SameSite=Strict/)
      const cookie = cookieOf(ok.headers['set-cookie'])
      const page = await api.app.inject({ method: 'GET', url: '/dashboard/', headers: { cookie } })
      assert.equal(page.statusCode, 200)
      assert.match(page.body, /<div id="app">/)
      const app = await api.app.inject({
        method: 'GET',
        url: '/dashboard/static/app.js',
        headers: { cookie },
      })
      assert.equal(app.statusCode, 200)
      // vendor modules are rewritten to our URLs: no bare import is left for the browser to fail on
      const hooks = await api.app.inject({
        method: 'GET',
        url: '/dashboard/vendor/preact-hooks.js',
        headers: { cookie },
      })
      assert.equal(hooks.statusCode, 200)
      assert.doesNotMatch(hooks.body, /from\s*["']preact["']/)
      assert.match(hooks.body, /\/dashboard\/vendor\/preact\.js/)
      // sign out: the cookie is worth nothing after
      await api.app.inject({ method: 'POST', url: '/dashboard/logout', headers: { cookie } })
      const after = await api.app.inject({ method: 'GET', url: '/dashboard/', headers: { cookie } })
      assert.equal(after.statusCode, 303)
    } finally {
      await api.close()
    }
  })

  it('a one-time code (bearer-issued) signs in once', async () => {
    const api = server(new FakeAgent())
    try {
      const denied = await api.app.inject({ method: 'POST', url: '/v1/dashboard/codes' })
      assert.equal(denied.statusCode, 401)
      const issued = await api.app.inject({
        method: 'POST',
        url: '/v1/dashboard/codes',
        headers: { authorization: `Bearer ${TOKEN}` },
      })
      assert.equal(issued.statusCode, 201)
      const { path } = issued.json() as { path: string }
      const first = await api.app.inject({ method: 'GET', url: path })
      assert.equal(first.statusCode, 303)
      assert.equal(first.headers.location, '/dashboard/')
      const cookie = cookieOf(first.headers['set-cookie'])
      assert.equal(
        (await api.app.inject({ method: 'GET', url: '/dashboard/', headers: { cookie } })).statusCode,
        200,
      )
      const again = await api.app.inject({ method: 'GET', url: path })
      assert.equal(again.statusCode, 303)
      assert.equal(again.headers.location, '/dashboard/login?expired=1')
      assert.equal(again.headers['set-cookie'], undefined)
      const bogus = await api.app.inject({ method: 'GET', url: '/dashboard/login?code=made-up' })
      assert.equal(bogus.headers.location, '/dashboard/login?expired=1')
    } finally {
      await api.close()
    }
  })

  it('proxies the page’s API calls to the same routes, only with its header and from its origin', async () => {
    const agent = new FakeAgent()
    agent.addVm('web')
    const api = server(agent)
    try {
      const login = await api.app.inject({
        method: 'POST',
        url: '/dashboard/login',
        payload: { token: TOKEN },
      })
      const cookie = cookieOf(login.headers['set-cookie'])
      const noHeader = await api.app.inject({
        method: 'GET',
        url: '/dashboard/api/v1/vms',
        headers: { cookie },
      })
      assert.equal(noHeader.statusCode, 400)
      const cross = await api.app.inject({
        method: 'POST',
        url: '/dashboard/api/v1/vms',
        headers: {
          cookie,
          'x-skymesh-dashboard': '1',
          origin: 'http://evil.example',
          host: '127.0.0.1:4711',
        },
        payload: { name: 'x', vcpus: 1, memoryMiB: 8, diskMiB: 8 },
      })
      assert.equal(cross.statusCode, 400)
      const ok = await api.app.inject({
        method: 'GET',
        url: '/dashboard/api/v1/vms',
        headers: { cookie, 'x-skymesh-dashboard': '1' },
      })
      assert.equal(ok.statusCode, 200)
      assert.equal((ok.json() as { vms: VmRecord[] }).vms[0]?.name, 'web')
      // the API's own validation answers, as it does for the CLI
      const bad = await api.app.inject({
        method: 'POST',
        url: '/dashboard/api/v1/vms/nope/migrate',
        headers: { cookie, 'x-skymesh-dashboard': '1' },
        payload: { to: 42 },
      })
      assert.equal(bad.statusCode, 400)
      assert.equal((bad.json() as { error: { code: string } }).error.code, 'BAD_REQUEST')
      const codes = await api.app.inject({
        method: 'POST',
        url: '/dashboard/api/v1/dashboard/codes',
        headers: { cookie, 'x-skymesh-dashboard': '1' },
      })
      assert.equal(codes.statusCode, 404)
    } finally {
      await api.close()
    }
  })
})

/** One parsed server-sent event; its data is JSON the assertions walk into. */
// biome-ignore lint/suspicious/noExplicitAny: parsed JSON of the stream, checked field by field below
type StreamEvent = { event: string; data: any }

/** Reads server-sent events from a real socket until `until` says stop. */
function readEvents(
  url: string,
  cookie: string,
  until: (events: StreamEvent[]) => boolean,
): Promise<StreamEvent[]> {
  return new Promise((resolve, reject) => {
    const events: StreamEvent[] = []
    const req = httpRequest(url, { headers: { cookie } }, (res) => {
      assert.equal(res.statusCode, 200)
      assert.match(String(res.headers['content-type']), /text\/event-stream/)
      let buf = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        buf += chunk
        let end = buf.indexOf('\n\n')
        while (end >= 0) {
          const block = buf.slice(0, end)
          buf = buf.slice(end + 2)
          end = buf.indexOf('\n\n')
          const event = /^event: (.*)$/m.exec(block)?.[1]
          const data = /^data: (.*)$/m.exec(block)?.[1]
          if (event && data) events.push({ event, data: JSON.parse(data) })
        }
        if (until(events)) {
          req.destroy()
          resolve(events)
        }
      })
    })
    req.on('error', (err) => {
      if (!req.destroyed) reject(err)
    })
    req.setTimeout(10_000, () => {
      req.destroy()
      reject(new Error(`no such events in time: ${JSON.stringify(events.map((e) => e.event))}`))
    })
    req.end()
  })
}

describe('dashboard: the event stream', () => {
  it('sends a snapshot, then a delta when a host dies and when a migration moves', async () => {
    const agent = new FakeAgent()
    agent.addVm('<script>alert(1)</script>')
    const api = server(agent)
    const base = await api.listen()
    try {
      const login = await api.app.inject({
        method: 'POST',
        url: '/dashboard/login',
        payload: { token: TOKEN },
      })
      const cookie = cookieOf(login.headers['set-cookie'])
      setTimeout(() => {
        agent.otherStatus = 'dead'
        agent.changes.emit('change', 'members')
        agent.migrations = [migration('m1', agent.vms[0]!.id, 'precopy', Date.now())]
        agent.changes.emit('change', 'migrations')
      }, 200)
      const events = await readEvents(`${base}/dashboard/events`, cookie, (evs) => {
        const hostsDead = evs.some(
          (e) => e.event === 'delta' && e.data.section === 'hosts' && e.data.data[1]?.status === 'dead',
        )
        const mig = evs.some((e) => e.event === 'delta' && e.data.section === 'migration')
        return hostsDead && mig
      })
      const snap = events[0]!
      assert.equal(snap.event, 'snapshot')
      assert.equal(snap.data.hosts.length, 2)
      // names travel as data; the page renders them as text
      assert.equal(snap.data.vms[0].name, '<script>alert(1)</script>')
      assert.deepEqual(snap.data.vms[0].ips, ['10.0.0.5'])
      const mig = events.find((e) => e.data.section === 'migration')!.data.data
      assert.equal(mig.vmName, '<script>alert(1)</script>')
      assert.ok(mig.progress > 0 && mig.progress < 1)
    } finally {
      await api.close()
    }
  })

  it('stays bounded: many events, many clients, a stalled client, a long history', () => {
    const agent = new FakeAgent()
    for (let i = 0; i < 50; i++) agent.addVm(`vm${i}`, i % 2 ? SELF : OTHER)
    const source: DashboardSource = { agent }
    const hub = new DashboardHub({
      source,
      historyMax: 100,
      maxFinished: 10,
      maxClients: 4,
      maxBacklogBytes: 64 * 1024,
    })
    hub.start()
    try {
      assert.equal(agent.changes.listenerCount('change'), 1)
      const sink = (stalled: boolean): SseSink & { bytes: number } => {
        const s = {
          bytes: 0,
          ended: false,
          get writableLength() {
            return stalled ? s.bytes : 0
          },
          write(chunk: string) {
            s.bytes += chunk.length
            return !stalled
          },
          end() {
            s.ended = true
          },
        }
        return s
      }
      // clients come and go: the agent still has one listener, the hub none of theirs
      for (let i = 0; i < 100; i++) hub.addClient(sink(false))()
      assert.equal(hub.clientCount, 0)
      assert.equal(agent.changes.listenerCount('change'), 1)
      const reader = sink(false)
      hub.addClient(reader)
      const stalled = sink(true)
      hub.addClient(stalled)
      hub.addClient(sink(false))
      hub.addClient(sink(false))
      assert.throws(() => hub.addClient(sink(false)), /at most 4/)
      const t0 = Date.now()
      for (let i = 0; i < 600; i++) {
        // VMs move, migrations start and finish, hosts flap
        const vm = agent.vms[i % agent.vms.length]!
        vm.host = vm.host === SELF ? OTHER : SELF
        vm.epoch++
        agent.migrations.push(migration(`m${i}`, vm.id, i % 7 ? 'done' : 'precopy', t0 + i))
        if (agent.migrations.length > 200) agent.migrations.shift()
        agent.otherStatus = i % 2 ? 'alive' : 'suspect'
        agent.changes.emit('change', i % 2 ? 'migrations' : 'members')
        hub.flush()
        if (i % 2 === 0) hub.sample()
      }
      const f = hub.footprint()
      assert.ok(f.history <= 100, `history ${f.history}`)
      assert.ok(f.migrations <= 10 + 200 / 7 + 1, `migrations ${f.migrations}`)
      assert.ok(f.tracked <= agent.vms.length, `tracked ${f.tracked}`)
      assert.equal(hub.dropped, 1, 'the stalled client was dropped')
      assert.equal(f.clients, 3)
      assert.ok(stalled.bytes < 64 * 1024 + 256 * 1024, `stalled got ${stalled.bytes} bytes before the drop`)
      assert.ok(reader.bytes > 0)
      assert.equal(agent.changes.listenerCount('change'), 1)
    } finally {
      hub.stop()
    }
    assert.equal(agent.changes.listenerCount('change'), 0)
    assert.equal(hub.clientCount, 0)
  })
})
