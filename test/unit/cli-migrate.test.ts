// `skymesh vm migrate` and `skymesh migrations` in-process against a node:http server playing the API.
import assert from 'node:assert/strict'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { after, before, beforeEach, describe, it } from 'node:test'
import { findPeer, type MigrateDeps, runCli } from '../../src/cli/index.js'
import type { ClusterHost, MigrationView, VmRecord } from '../../src/node/types.js'
import {
  type CliRun,
  type FakeApi,
  readBody,
  runCliCaptured,
  sendError,
  sendJson,
  startFakeApi,
} from '../helpers/cli-harness.js'
import { fakeMigrationView } from '../helpers/migration-view.js'

const TOKEN = 'migrate-token-42'
const MiB = 1024 * 1024
// base58, so a full id is taken as is; DEST and TWIN share a long prefix
const SELF = '12D3KooWRmFv7N3xYwq5T8bZcKd2EjHsPa9LtU4gBn6VkXr1Mh3p9q'
const DEST = '12D3KooWHx8vGk3pQmZ7rT2sW9yN4cJfLbXeA1uVdKqE6o5iPx2AzLD'
const TWIN = '12D3KooWHx8vGk3pYmZ7rT2sW9yN4cJfLbXeA1uVdKqE6o5iPw7Ty2'

function host(peerId: string, self = false): ClusterHost {
  return { peerId, self, status: 'alive', site: 'site', addrs: [], vmCount: 0 }
}

const hosts = [host(SELF, true), host(DEST), host(TWIN)]

function vm(id: string, name: string, memoryMiB: number, diskMiB: number): VmRecord {
  const now = new Date().toISOString()
  return {
    id,
    name,
    vcpus: 1,
    memoryMiB,
    diskMiB,
    workload: { dirtyMiBps: 4, hotSetMiB: 16, cpu: 0, diskWriteMiBps: 0 },
    state: 'running',
    host: SELF,
    epoch: 1,
    createdAt: now,
    updatedAt: now,
  }
}

const vms = [vm('a1b2c3d4-0001', 'web', 96, 32), vm('e5f6a7b8-0002', 'db', 256, 64)]

function view(id: string, over: Partial<MigrationView> = {}): MigrationView {
  return fakeMigrationView({ id, vmId: 'a1b2c3d4-0001', from: SELF, to: DEST, ...over })
}

/** A migration that ends done: one step per GET. */
const toDone: Partial<MigrationView>[] = [
  { phase: 'precopy', round: 1, bytesSent: 64 * MiB, wireBytes: 20 * MiB, bandwidthMiBps: 300, etaMs: 400 },
  { phase: 'precopy', round: 2, bytesSent: 120 * MiB, wireBytes: 40 * MiB, bandwidthMiBps: 310, etaMs: 100 },
  { phase: 'postcopy', postcopy: true, round: 3, bytesSent: 130 * MiB, wireBytes: 44 * MiB },
  { phase: 'verify' },
  { phase: 'handover' },
  {
    phase: 'done',
    pagesSent: 33280,
    zeroPages: 1200,
    dedupPages: 340,
    faultPages: 17,
    totalMs: 2345,
    downtimeMs: 42,
    epoch: 2,
  },
]

const toFailed: Partial<MigrationView>[] = [
  { phase: 'precopy', round: 1, bytesSent: 10 * MiB },
  { phase: 'failed', totalMs: 800, error: { code: 'STREAM_RESET', message: 'the destination went away' } },
]

interface Seen {
  method: string
  url: string
  body: unknown
}

interface Tracked {
  view: MigrationView
  steps: Partial<MigrationView>[]
}

let fakeApi: FakeApi
let seen: Seen[] = []
let migrations = new Map<string, Tracked>()
/** What the next POST .../migrate plays. */
let script: Partial<MigrationView>[] = []
/** DELETE answers 409 (past the handover) instead of cancelling. */
let tooLate = false

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const raw = await readBody(req)
  const method = req.method ?? 'GET'
  const url = req.url ?? '/'
  seen.push({ method, url, body: raw ? JSON.parse(raw) : undefined })
  if (req.headers.authorization !== `Bearer ${TOKEN}`) return sendError(res, 401, 'UNAUTHORIZED', 'bad token')
  if (method === 'GET' && url === '/v1/vms') return sendJson(res, 200, { vms })
  if (method === 'GET' && url === '/v1/cluster') {
    return sendJson(res, 200, { self: SELF, hosts, counts: { alive: 3, suspect: 0, dead: 0, left: 0 } })
  }
  if (method === 'GET' && url === '/v1/cluster/vms') return sendJson(res, 200, { vms })
  const start = /^\/v1\/vms\/([^/]+)\/migrate$/.exec(url)
  if (method === 'POST' && start) {
    const id = `m${String(migrations.size + 1).padStart(3, '0')}-7f3e-4b1a-9c2d-000000000000`
    const body = JSON.parse(raw) as { to: string; mode?: MigrationView['mode'] }
    const v = view(id, { vmId: decodeURIComponent(start[1]!), to: body.to, mode: body.mode ?? 'precopy' })
    migrations.set(id, { view: v, steps: [...script] })
    return sendJson(res, 202, v)
  }
  if (method === 'GET' && url === '/v1/migrations') {
    return sendJson(res, 200, { migrations: [...migrations.values()].map((t) => t.view) })
  }
  const one = /^\/v1\/migrations\/([^/]+)$/.exec(url)
  const tracked = one ? migrations.get(decodeURIComponent(one[1]!)) : undefined
  if (one && !tracked) return sendError(res, 404, 'NOT_FOUND', `no migration '${one[1]}' on this host`)
  if (tracked && method === 'GET') {
    const step = tracked.steps.shift()
    if (step) tracked.view = { ...tracked.view, ...step }
    return sendJson(res, 200, tracked.view)
  }
  if (tracked && method === 'DELETE') {
    if (tooLate) {
      return sendError(res, 409, 'INVALID_STATE', `migration ${tracked.view.id} is past its handover`, {
        reason: 'TOO_LATE',
      })
    }
    tracked.steps = [{ phase: 'cancelled', error: { code: 'CANCELLED', message: 'cancelled by the user' } }]
    return sendJson(res, 200, tracked.view)
  }
  sendError(res, 404, 'NOT_FOUND', `no route ${method} ${url}`)
}

const fast: MigrateDeps = { pollMs: 1, onInterrupt: () => () => {} }

function cli(argv: string[], migrate: MigrateDeps = fast, tty = false): Promise<CliRun> {
  return runCliCaptured([...argv, '--api', fakeApi.api, '--token', TOKEN], {
    deps: { migrate },
    stderr: { isTTY: tty, columns: 160 },
  })
}

const posts = () => seen.filter((s) => s.method === 'POST')

before(async () => {
  fakeApi = await startFakeApi(handle)
})
after(() => fakeApi.close())

beforeEach(() => {
  seen = []
  migrations = new Map()
  script = []
  tooLate = false
})

describe('cli: vm migrate', () => {
  it('builds the request body from the flags and says how to follow it', async () => {
    const r = await cli([
      'vm',
      'migrate',
      'web',
      '--to',
      DEST,
      '--mode',
      'auto',
      '--downtime',
      '300',
      '--bandwidth',
      '12.5',
      '--max-rounds',
      '5',
      '--streams',
      '4',
      '--compression',
      'off',
    ])
    assert.equal(r.code, 0, r.err)
    assert.equal(posts().length, 1)
    assert.equal(posts()[0]?.url, '/v1/vms/a1b2c3d4-0001/migrate')
    assert.deepEqual(posts()[0]?.body, {
      to: DEST,
      mode: 'auto',
      downtimeMs: 300,
      bandwidthMiBps: 12.5,
      maxRounds: 5,
      streams: 4,
      compression: 'off',
    })
    // a full id is sent as is: no cluster look-up
    assert.ok(!seen.some((s) => s.url === '/v1/cluster'))
    const id = [...migrations.keys()][0]!
    assert.match(
      r.out,
      new RegExp(`^migrating VM web \\(a1b2c3d4-0001\\) to 12D3…x2AzLD: migration ${id}$`, 'm'),
    )
    assert.match(r.out, new RegExp(`skymesh migrations show ${id}`))
    assert.match(r.out, new RegExp(`skymesh migrations cancel ${id}`))
  })

  it('sends only `to` without flags; --json prints the first view', async () => {
    const r = await cli(['vm', 'migrate', 'e5f6a7b8-0002', '--to', DEST, '--json'])
    assert.equal(r.code, 0, r.err)
    assert.deepEqual(posts()[0]?.body, { to: DEST })
    const doc = JSON.parse(r.out) as MigrationView
    assert.equal(doc.vmId, 'e5f6a7b8-0002')
    assert.equal(doc.phase, 'offer')
  })

  it('bad flag values are usage errors and send nothing', async () => {
    for (const bad of [
      ['--mode', 'teleport'],
      ['--compression', 'max'],
      ['--streams', '0'],
      ['--bandwidth', '0'],
    ]) {
      const r = await cli(['vm', 'migrate', 'web', '--to', DEST, ...bad])
      assert.equal(r.code, 2, bad.join(' '))
      assert.match(r.err, new RegExp(bad[0]!))
    }
    const missing = await cli(['vm', 'migrate', 'web'])
    assert.equal(missing.code, 2)
    assert.match(missing.err, /--to <peer>/)
    assert.equal(posts().length, 0)
  })

  it('an unknown VM is VM_NOT_FOUND', async () => {
    const r = await cli(['vm', 'migrate', 'nope', '--to', DEST])
    assert.equal(r.code, 1)
    assert.match(r.err, /VM_NOT_FOUND/)
    assert.equal(posts().length, 0)
  })
})

describe('cli: vm migrate --to resolution', () => {
  for (const [label, ref] of [
    ['unique suffix', 'x2AzLD'],
    ['the short form', '12D3…x2AzLD'],
    ['the short form with dots', '12D3...x2AzLD'],
    ['unique prefix', '12D3KooWHx8vGk3pQ'],
  ] as const) {
    it(`accepts ${label}`, async () => {
      const r = await cli(['vm', 'migrate', 'web', '--to', ref])
      assert.equal(r.code, 0, r.err)
      assert.deepEqual(posts()[0]?.body, { to: DEST })
    })
  }

  it('an ambiguous reference is an error that names the candidates', async () => {
    const r = await cli(['vm', 'migrate', 'web', '--to', '12D3KooWHx8vGk3p'])
    assert.equal(r.code, 1)
    assert.match(r.err, /^error: AMBIGUOUS: "12D3KooWHx8vGk3p" matches 2 hosts/)
    assert.match(r.err, new RegExp(DEST))
    assert.match(r.err, new RegExp(TWIN))
    assert.equal(posts().length, 0)
  })

  it('an unknown or too short reference is an error', async () => {
    const unknown = await cli(['vm', 'migrate', 'web', '--to', 'zzzzzzzz'])
    assert.equal(unknown.code, 1)
    assert.match(unknown.err, /^error: PEER_NOT_FOUND: no host of the mesh has a peer id like "zzzzzzzz"/)
    const short = await cli(['vm', 'migrate', 'web', '--to', 'AzLD'])
    assert.equal(short.code, 1)
    assert.match(short.err, /at least 6 of its characters/)
    const self = await cli(['vm', 'migrate', 'web', '--to', 'Mh3p9q'])
    assert.equal(self.code, 1)
    assert.match(self.err, /this agent's own host/)
    assert.equal(posts().length, 0)
  })

  it('findPeer: exact id first, then short form, prefix, suffix', () => {
    assert.equal(findPeer(hosts, DEST), DEST)
    assert.equal(findPeer(hosts, 'Pw7Ty2'), TWIN)
    assert.equal(findPeer(hosts, '12D3KooWHx8vGk3pY'), TWIN)
    assert.equal(findPeer(hosts, '12D3…w7Ty2'), TWIN)
    // a full id the gossip has not seen yet goes to the agent, which checks it
    const unseen = '12D3KooWNewHostNotGossipedYetAbCdEfGhJkMnPqRsTuVwXyZ2'
    assert.equal(findPeer(hosts, unseen), unseen)
    assert.throws(() => findPeer(hosts, '12D3Ko'), /matches 3 hosts/)
    assert.throws(() => findPeer(hosts, '12D3…zzzzzz'), /PEER_NOT_FOUND|no host/)
  })
})

describe('cli: vm migrate --wait', () => {
  it('polls to done: a line per phase on stderr, the summary on stdout, exit 0', async () => {
    script = toDone
    const r = await cli(['vm', 'migrate', 'web', '--to', DEST, '--mode', 'auto', '--wait'])
    assert.equal(r.code, 0, r.err)
    const gets = seen.filter((s) => s.method === 'GET' && s.url.startsWith('/v1/migrations/'))
    assert.equal(gets.length, toDone.length)
    // one line per phase change: offer, precopy (2 rounds, one line), postcopy, verify, handover, done
    const lines = r.err.trimEnd().split('\n')
    assert.deepEqual(
      lines.map((l) => /^\[ *\d+\.\ds\] (\w+)/.exec(l)?.[1]),
      ['offer', 'precopy', 'postcopy', 'verify', 'handover', 'done'],
    )
    assert.match(lines[1]!, /round 1, 64 MiB sent, 300 MiB\/s$/)
    assert.match(r.out, /^phase +done$/m)
    assert.match(r.out, /^mode +auto, switched to post-copy$/m)
    assert.match(r.out, /^rounds +3$/m)
    assert.match(r.out, /^total +2\.35 s$/m)
    assert.match(r.out, /^downtime +42 ms$/m)
    // the VM is 96 MiB memory + 32 MiB disk
    assert.match(r.out, /^sent +130 MiB \(1\.02× the VM's 128 MiB\)$/m)
    assert.match(r.out, /^on the wire +44 MiB \(0\.34×\)$/m)
    assert.match(r.out, /^pages +33280 sent, 1200 zero, 340 dedup$/m)
    assert.match(r.out, /^faults +17 pages/m)
    assert.match(r.out, /^epoch +2$/m)
  })

  it('polls to failed: exit 1 with the error code', async () => {
    script = toFailed
    const r = await cli(['vm', 'migrate', 'web', '--to', DEST, '--wait'])
    assert.equal(r.code, 1)
    assert.match(r.out, /^phase +failed$/m)
    assert.match(r.out, /^error +STREAM_RESET: the destination went away$/m)
    assert.match(r.err, /^error: STREAM_RESET: the destination went away$/m)
  })

  it('--json prints only the final view', async () => {
    script = toDone
    const r = await cli(['vm', 'migrate', 'web', '--to', DEST, '--wait', '--json'])
    assert.equal(r.code, 0, r.err)
    assert.equal(r.err, '')
    const doc = JSON.parse(r.out) as MigrationView
    assert.equal(doc.phase, 'done')
    assert.equal(doc.downtimeMs, 42)
    script = toFailed
    const failed = await cli(['vm', 'migrate', 'web', '--to', DEST, '--wait', '--json'])
    assert.equal(failed.code, 1)
    assert.equal((JSON.parse(failed.out) as MigrationView).error?.code, 'STREAM_RESET')
  })

  it('Ctrl-C cancels the migration: DELETE, then exit 1 as cancelled', async () => {
    script = [
      { phase: 'precopy', round: 1 },
      { phase: 'precopy', round: 2 },
      { phase: 'precopy', round: 3 },
    ]
    const onInterrupt = (handler: () => void) => {
      setImmediate(handler)
      return () => {}
    }
    const r = await cli(['vm', 'migrate', 'web', '--to', DEST, '--wait'], { pollMs: 1, onInterrupt })
    assert.equal(r.code, 1)
    assert.equal(seen.filter((s) => s.method === 'DELETE').length, 1)
    assert.match(r.err, /Ctrl-C: cancelling the migration/)
    assert.match(r.err, /cancel requested: the VM stays on its source host/)
    assert.match(r.err, /^error: CANCELLED: cancelled by the user$/m)
    assert.match(r.out, /^phase +cancelled$/m)
  })

  it('Ctrl-C past the handover says it is too late and waits for the end', async () => {
    script = toDone
    tooLate = true
    const onInterrupt = (handler: () => void) => {
      setImmediate(handler)
      return () => {}
    }
    const r = await cli(['vm', 'migrate', 'web', '--to', DEST, '--wait'], { pollMs: 1, onInterrupt })
    assert.equal(r.code, 0, r.err)
    assert.match(r.err, /too late to cancel \(migration \S+ is past its handover\): waiting for it to finish/)
    assert.match(r.out, /^phase +done$/m)
  })

  it('a second Ctrl-C stops waiting (exit 130) and says how to follow it', async () => {
    script = Array.from({ length: 10_000 }, (_, i) => ({ phase: 'handover' as const, round: i }))
    tooLate = true
    let fire: () => void = () => {}
    const onInterrupt = (handler: () => void) => {
      fire = handler
      setImmediate(handler)
      return () => {}
    }
    const run = cli(['vm', 'migrate', 'web', '--to', DEST, '--wait'], { pollMs: 1, onInterrupt })
    // the second Ctrl-C once the first one's DELETE was answered
    while (!seen.some((s) => s.method === 'DELETE')) await new Promise((r) => setTimeout(r, 1))
    fire()
    const r = await run
    assert.equal(r.code, 130)
    assert.match(r.err, /stopped waiting; follow it with: skymesh migrations show /)
  })

  it('a TTY gets a progress bar on stderr', async () => {
    script = toDone
    const r = await cli(['vm', 'migrate', 'web', '--to', DEST, '--wait'], fast, true)
    assert.equal(r.code, 0, r.err)
    assert.match(r.err, /100% \| done \| round 3 \| 130 MiB \/ ~128 MiB/)
    assert.match(r.out, /^phase +done$/m)
  })
})

describe('cli: migrations', () => {
  function seed(n: number): void {
    for (let i = 0; i < n; i++) {
      const id = `${String(i).padStart(8, '0')}-aaaa-bbbb-cccc-dddddddddddd`
      migrations.set(id, {
        view: view(id, {
          phase: 'done',
          round: 4,
          bytesSent: 256 * MiB,
          totalMs: 2000,
          downtimeMs: 31,
          mode: 'auto',
          postcopy: true,
        }),
        steps: [],
      })
    }
  }

  it('lists running ones and the recent finished ones as a table', async () => {
    const running = 'fe00aa11-0000-0000-0000-000000000000'
    migrations.set(running, {
      view: view(running, {
        vmId: 'e5f6a7b8-0002',
        direction: 'in',
        from: TWIN,
        to: SELF,
        phase: 'precopy',
        round: 2,
        bytesSent: 1.5 * MiB,
        bandwidthMiBps: 87.25,
      }),
      steps: [],
    })
    seed(12)
    const r = await cli(['migrations'])
    assert.equal(r.code, 0, r.err)
    const lines = r.out.trimEnd().split('\n')
    assert.match(lines[0]!, /^ID +VM +DIRECTION +PEER +MODE +PHASE +ROUND +SENT +MiB\/s +TOTAL +DOWNTIME$/)
    assert.match(lines[1]!, /^fe00aa11 +db +in +12D3…Pw7Ty2 +precopy +precopy +2 +1\.5 MiB +87\.3 +- +-$/)
    assert.match(
      lines[2]!,
      /^00000000 +web +out +12D3…x2AzLD +auto→postcopy +done +4 +256 MiB +128\.0 +2\.00 s +31 ms$/,
    )
    // 1 running + 10 finished, then the note
    assert.equal(lines.length, 1 + 11 + 1)
    assert.equal(lines.at(-1), '(2 older finished migrations; --all lists them)')
    const all = await cli(['migrations', '--all'])
    assert.equal(all.out.trimEnd().split('\n').length, 1 + 13)
    const alias = await cli(['migration', 'ls', '--json'])
    assert.equal(alias.code, 0, alias.err)
    assert.equal((JSON.parse(alias.out) as { migrations: unknown[] }).migrations.length, 13)
  })

  it('says so when there are none', async () => {
    const r = await cli(['migrations', 'ls'])
    assert.equal(r.code, 0, r.err)
    assert.equal(r.out, 'no migrations\n')
  })

  it('show takes an id prefix', async () => {
    seed(2)
    const r = await cli(['migrations', 'show', '00000001'])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /^migration +00000001-aaaa-bbbb-cccc-dddddddddddd$/m)
    assert.match(r.out, /^vm +web \(a1b2c3d4-0001\)$/m)
    assert.match(r.out, /^sent +256 MiB \(2\.00× the VM's 128 MiB\)$/m)
    const j = await cli(['migrations', 'show', '00000001', '--json'])
    assert.equal((JSON.parse(j.out) as MigrationView).id, '00000001-aaaa-bbbb-cccc-dddddddddddd')
    const ambiguous = await cli(['migrations', 'show', '0000'])
    assert.equal(ambiguous.code, 1)
    assert.match(ambiguous.err, /AMBIGUOUS/)
    const unknown = await cli(['migrations', 'show', 'ffff'])
    assert.equal(unknown.code, 1)
    assert.match(unknown.err, /^error: NOT_FOUND: no migration "ffff"/)
  })

  it('cancel sends DELETE; past the handover it is an error', async () => {
    seed(1)
    const id = '00000000-aaaa-bbbb-cccc-dddddddddddd'
    migrations.get(id)!.view.phase = 'precopy'
    const r = await cli(['migrations', 'cancel', '00000000'])
    assert.equal(r.code, 0, r.err)
    assert.deepEqual(
      seen.filter((s) => s.method === 'DELETE').map((s) => s.url),
      [`/v1/migrations/${id}`],
    )
    assert.match(r.out, new RegExp(`^cancelling migration ${id} \\(VM a1b2c3d4-0001, to 12D3…x2AzLD\\)`))
    const j = await cli(['migrations', 'cancel', id, '--json'])
    assert.equal((JSON.parse(j.out) as MigrationView).id, id)
    tooLate = true
    const late = await cli(['migrations', 'cancel', id])
    assert.equal(late.code, 1)
    assert.equal(late.err, `error: INVALID_STATE: too late to cancel: migration ${id} is past its handover\n`)
  })

  it('every request carries the bearer token', async () => {
    const r = await runCli(['migrations', '--api', fakeApi.api, '--token', 'wrong'], {
      stdout: { write: () => true },
      stderr: { write: () => true },
      env: {},
    })
    assert.equal(r, 1)
    assert.ok(seen.length > 0)
  })
})
