// `skymesh plan`, `drain` and `events` in-process against a small node:http server playing the agent.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { type CliIo, runCli } from '../../src/cli/index.js'
import { type FakeApi, readBody, runCliCaptured, sendJson, startFakeApi } from '../helpers/cli-harness.js'

const TOKEN = 'tok-0123456789abcdef'
const PEER_A = '12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
const PEER_B = '12D3KooWBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'
let fakeApi: FakeApi
const seen: { method: string; url: string; body: string }[] = []

const PLAN = {
  dryRun: true,
  policies: ['balance'],
  at: '2026-01-01T00:00:00.000Z',
  hosts: 2,
  vms: 8,
  moves: [
    {
      vm: 'vm-1',
      from: PEER_A,
      to: PEER_B,
      reason: 'overload',
      wave: 0,
      bytes: 31457280,
      why: 'A is at 94 %, over the 90 % threshold',
    },
  ],
  waves: 1,
  emptied: [],
  resolved: [{ kind: 'overload', host: PEER_A }],
  unresolved: [],
  stats: {},
}
const EVENTS = {
  self: PEER_A,
  enabled: true,
  draining: false,
  open: [],
  recent: [
    {
      id: `${PEER_A}#1`,
      kind: 'overload',
      leader: PEER_A,
      state: 'done',
      openedAt: '2026-01-01T00:00:01.000Z',
      closedAt: '2026-01-01T00:00:03.000Z',
      durationMs: 2000,
      members: [PEER_A, PEER_B],
      moves: PLAN.moves,
    },
  ],
}

before(async () => {
  fakeApi = await startFakeApi(async (req, res) => {
    const body = await readBody(req)
    seen.push({ method: req.method ?? '', url: req.url ?? '', body })
    const send = (status: number, v: unknown) => sendJson(res, status, v)
    if (req.url === '/v1/placement/plan') {
      if (JSON.parse(body).dryRun === false)
        return send(202, {
          dryRun: false,
          planId: '0123456789abcdef',
          event: `${PEER_A}#2`,
          kind: 'overload',
          partition: [PEER_A, PEER_B],
          moves: PLAN.moves,
        })
      return send(200, PLAN)
    }
    if (req.url === '/v1/placement/events') return send(200, EVENTS)
    if (req.url === '/v1/cluster') {
      return send(200, {
        self: PEER_A,
        counts: { alive: 2, suspect: 0, dead: 0, left: 0 },
        hosts: [
          { peerId: PEER_A, self: true, status: 'alive', vmCount: 7 },
          { peerId: PEER_B, self: false, status: 'alive', vmCount: 0 },
        ],
      })
    }
    if (req.url === `/v1/hosts/${PEER_B}/drain` && req.method === 'DELETE')
      return send(200, { host: PEER_B, self: false, draining: false })
    if (req.url === `/v1/hosts/${PEER_B}/drain`)
      return send(202, { host: PEER_B, self: false, vms: 0, draining: true })
    send(404, { error: { code: 'NOT_FOUND', message: 'no such route' } })
  })
})

after(() => fakeApi.close())

function cli(argv: string[]) {
  return runCliCaptured([...argv, '--api', fakeApi.api, '--token', TOKEN])
}

describe('cli: placement', () => {
  it('plan --dry-run --policy balance: what would move and why', async () => {
    const r = await cli(['plan', '--dry-run', '--policy', 'balance'])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /1 migration\(s\) in 1 wave\(s\)/)
    assert.match(r.out, /over the 90 % threshold/)
    const sent = seen.findLast((s) => s.url === '/v1/placement/plan')!
    assert.deepEqual(JSON.parse(sent.body), { dryRun: true, policy: ['balance'] })
    const json = await cli(['plan', '--json'])
    assert.deepEqual(JSON.parse(json.out), PLAN)
  })

  it('plan --apply ID runs the plan a dry run showed; it takes no other option', async () => {
    const r = await cli(['plan', '--apply', '0123456789abcdef'])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /plan 0123456789abcdef running as event .*#2: 1 migration\(s\) over 2 host\(s\)/)
    const sent = seen.findLast((s) => s.url === '/v1/placement/plan')!
    assert.deepEqual(JSON.parse(sent.body), { dryRun: false, planId: '0123456789abcdef' })
    const bad = await cli(['plan', '--apply', '0123456789abcdef', '--policy', 'balance'])
    assert.notEqual(bad.code, 0)
    assert.match(bad.err, /--apply takes the plan id alone/)
  })

  it('undrain HOST ends its drain', async () => {
    const r = await cli(['undrain', PEER_B.slice(-10)])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /no longer draining/)
    const sent = seen.findLast((s) => s.url === `/v1/hosts/${PEER_B}/drain`)!
    assert.equal(sent.method, 'DELETE')
  })

  it('drain HOST by a part of its id, and --wait until it runs no VM', async () => {
    const r = await cli(['drain', PEER_B.slice(-10)])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /draining/)
    const w = await cli(['drain', PEER_B, '--wait', '--json'])
    assert.equal(w.code, 0, w.err)
    assert.equal(JSON.parse(w.out).drained, true)
  })

  it('events: a table of open and recent events', async () => {
    const r = await cli(['events'])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /placement on; not held/)
    assert.match(r.out, /overload\s+done/)
    const json = await cli(['events', '--json'])
    assert.deepEqual(JSON.parse(json.out), EVENTS)
  })

  it('--help of each command says what it does', async () => {
    for (const [cmd, text] of [
      ['plan', /dry run/],
      ['drain', /move every VM off a host/],
      ['events', /placement events/],
    ] as const) {
      let out = ''
      const io: CliIo = {
        stdout: { write: (s: string) => (out += s) },
        stderr: { write: () => true },
        env: {},
      }
      await runCli([cmd, '--help'], io)
      assert.match(out, text)
    }
  })
})
