// The CLI in-process against a small node:http server that plays the agent's API.
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, beforeEach, describe, it } from 'node:test'
import { mergeVms, renderLine } from '../../src/cli/demo-view.js'
import {
  type CliIo,
  formatDuration,
  formatMiB,
  type ProgramDeps,
  SWARM_KEY_LENGTH,
  shortId,
  table,
} from '../../src/cli/index.js'
import type { AgentFlags } from '../../src/node/run.js'
import type { SitesView } from '../../src/node/sites.js'
import type { NodeInfo, PeerInfo, VmRecord } from '../../src/node/types.js'
import {
  type CliRun,
  type FakeApi,
  readBody,
  runCliCaptured,
  sendError,
  sendJson,
  startFakeApi,
} from '../helpers/cli-harness.js'

const TOKEN = 'test-token-123'
const PEER = '12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh'
const OTHER = '12D3KooWZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210zyxwvu'

const node: NodeInfo = {
  peerId: PEER,
  addrs: [`/ip4/127.0.0.1/tcp/4710/p2p/${PEER}`],
  version: '0.1.0',
  site: 'site-a',
  driver: 'synthetic',
  startedAt: new Date(Date.now() - 192_000).toISOString(),
  capacity: { vcpus: 8, memoryMiB: 4096, diskMiB: 102400 },
  used: { vcpus: 2, memoryMiB: 256, diskMiB: 128 },
  vmCount: 2,
  dataChannel: "AES-GCM by skymesh's native addon (node's OpenSSL 3.0.19, into reused buffers)",
}

const peers: PeerInfo[] = [
  {
    peerId: OTHER,
    addrs: ['/ip4/127.0.0.1/tcp/4720'],
    direction: 'outbound',
    site: 'site-b',
    latencyMs: 0.42,
    connection: 'relayed',
    connectedAt: new Date(Date.now() - 65_000).toISOString(),
  },
]

const sites: SitesView = {
  self: { peerId: PEER, site: 'site-a' },
  sites: [
    { name: 'site-a', hosts: [PEER], alive: 1 },
    { name: 'site-b', hosts: [OTHER], alive: 1 },
  ],
  links: [
    { from: 'site-a', to: 'site-b', rttMs: 41.5, bandwidthMiBps: 12.25, reporters: 1 },
    { from: 'site-b', to: 'site-a', rttMs: 40.2, reporters: 1 },
  ],
}

function vm(id: string, name: string, memoryMiB: number, host = PEER): VmRecord {
  const now = new Date().toISOString()
  return {
    id,
    name,
    vcpus: 1,
    memoryMiB,
    diskMiB: 64,
    workload: { dirtyMiBps: 4, hotSetMiB: 16, cpu: 0, diskWriteMiBps: 0 },
    state: 'running',
    host,
    epoch: 1,
    createdAt: now,
    updatedAt: now,
  }
}

interface Seen {
  method: string
  url: string
  auth: string | undefined
  body: unknown
}

let fakeApi: FakeApi
let seen: Seen[] = []
let vms: VmRecord[] = []

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const raw = await readBody(req)
  const body = raw ? JSON.parse(raw) : undefined
  const method = req.method ?? 'GET'
  const url = req.url ?? '/'
  seen.push({ method, url, auth: req.headers.authorization, body })
  if (req.headers.authorization !== `Bearer ${TOKEN}`)
    return sendError(res, 401, 'UNAUTHORIZED', 'bad or missing token')
  if (method === 'GET' && url === '/v1/node') return sendJson(res, 200, node)
  if (method === 'GET' && url === '/v1/peers') return sendJson(res, 200, { peers })
  if (method === 'GET' && url === '/v1/sites') return sendJson(res, 200, sites)
  if (method === 'GET' && url === '/v1/vms') return sendJson(res, 200, { vms })
  if (method === 'POST' && url === '/v1/vms') {
    if (body.memoryMiB > 4096) {
      return sendError(
        res,
        409,
        'INSUFFICIENT_CAPACITY',
        `no room for ${body.memoryMiB} MiB (256 MiB of 4096 MiB used)`,
      )
    }
    const created = {
      ...vm(`vm-${vms.length + 1}`, body.name, body.memoryMiB),
      vcpus: body.vcpus,
      diskMiB: body.diskMiB,
    }
    vms.push(created)
    return sendJson(res, 201, created)
  }
  const m = /^\/v1\/vms\/([^/]+)(?:\/(pause|resume|digest))?$/.exec(url)
  const found = m ? vms.find((v) => v.id === decodeURIComponent(m[1]!)) : undefined
  if (m && !found) return sendError(res, 404, 'VM_NOT_FOUND', `no VM ${m[1]}`)
  if (m && found) {
    if (method === 'GET' && !m[2]) return sendJson(res, 200, found)
    if (method === 'DELETE' && !m[2]) {
      vms = vms.filter((v) => v !== found)
      return sendJson(res, 204)
    }
    if (method === 'POST' && m[2] === 'pause') return sendJson(res, 200, { ...found, state: 'paused' })
    if (method === 'POST' && m[2] === 'resume') return sendJson(res, 200, { ...found, state: 'running' })
    if (method === 'GET' && m[2] === 'digest') {
      return sendJson(res, 200, {
        id: found.id,
        memory: 'aa'.repeat(32),
        disk: 'bb'.repeat(32),
        combined: 'cc'.repeat(32),
      })
    }
  }
  sendError(res, 404, 'NOT_FOUND', `no route ${method} ${url}`)
}

function cli(argv: string[], env: CliIo['env'] = {}, deps: ProgramDeps = {}): Promise<CliRun> {
  return runCliCaptured(argv, { env, deps })
}

/** The connection flags for the fake agent. */
const conn = () => ['--api', fakeApi.api, '--token', TOKEN]

before(async () => {
  fakeApi = await startFakeApi(handle)
})
after(() => fakeApi.close())

beforeEach(() => {
  seen = []
  vms = [vm('a1b2c3d4-0001', 'web', 64), vm('e5f6a7b8-0002', 'db', 256, OTHER)]
})

describe('cli: status and peers', () => {
  it('prints the node as a table with sizes and the peer count', async () => {
    const r = await cli(['status', ...conn()])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, new RegExp(`^peer id +${PEER}$`, 'm'))
    assert.match(r.out, /^site +site-a$/m)
    assert.match(r.out, /^memory +256 MiB \/ 4 GiB$/m)
    assert.match(r.out, /^disk +128 MiB \/ 100 GiB$/m)
    assert.match(r.out, /^uptime +3m1[12]s$/m)
    assert.match(r.out, /^peers +1$/m)
    assert.match(r.out, /^data channel +AES-GCM by skymesh's native addon/m)
    assert.ok(seen.every((s) => s.auth === `Bearer ${TOKEN}`))
  })

  it('--json prints the raw NodeInfo', async () => {
    const r = await cli(['status', ...conn(), '--json'])
    assert.equal(r.code, 0, r.err)
    assert.deepEqual(JSON.parse(r.out), node)
  })

  it('peers lists connected peers', async () => {
    const r = await cli(['peers', ...conn()])
    assert.equal(r.code, 0, r.err)
    const [head, row] = r.out.trimEnd().split('\n')
    assert.match(head!, /^PEER +SITE +DIRECTION +LINK +LATENCY +CONNECTED +ADDRESS$/)
    assert.match(
      row!,
      new RegExp(`^${OTHER} +site-b +outbound +relayed +0.4 ms +1m0[56]s +/ip4/127.0.0.1/tcp/4720$`),
    )
    const j = await cli(['peers', ...conn(), '--json'])
    assert.deepEqual(JSON.parse(j.out), { peers })
  })

  it('sites lists the sites, their hosts and the measured links', async () => {
    const r = await cli(['sites', ...conn()])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /^SITE +HOSTS +ALIVE$/m)
    assert.match(r.out, /^site-a \* +1 +1$/m)
    assert.match(r.out, /^FROM +TO +RTT +BANDWIDTH +REPORTERS$/m)
    assert.match(r.out, /^site-a +site-b +41.5 ms +12.3 MiB\/s +1$/m)
    assert.match(r.out, /^site-b +site-a +40.2 ms +- +1$/m)
    const j = await cli(['sites', ...conn(), '--json'])
    assert.deepEqual(JSON.parse(j.out), sites)
  })

  it('a wrong token is reported as the API error', async () => {
    const r = await cli(['status', '--api', fakeApi.api, '--token', 'nope'])
    assert.equal(r.code, 1)
    assert.equal(r.err, 'error: UNAUTHORIZED: bad or missing token\n')
  })
})

describe('cli: connection options', () => {
  it('no --data-dir / --api is a usage error (exit 2)', async () => {
    const r = await cli(['status'])
    assert.equal(r.code, 2)
    assert.match(r.err, /^error: no agent to talk to: pass --data-dir DIR or --api/)
  })

  it('--api without a token is a usage error', async () => {
    const r = await cli(['vm', 'ls', '--api', fakeApi.api])
    assert.equal(r.code, 2)
    assert.match(r.err, /no API token/)
  })

  it('takes SKYMESH_API and SKYMESH_TOKEN from the environment', async () => {
    const r = await cli(['status', '--json'], { SKYMESH_API: `http://${fakeApi.api}/`, SKYMESH_TOKEN: TOKEN })
    assert.equal(r.code, 0, r.err)
    assert.equal(JSON.parse(r.out).peerId, PEER)
  })

  it('--token-file reads the token', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'skymesh-cli-'))
    try {
      await writeFile(join(dir, 'tok'), `${TOKEN}\n`)
      const r = await cli(['status', '--json', '--api', fakeApi.api, '--token-file', join(dir, 'tok')])
      assert.equal(r.code, 0, r.err)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('--data-dir reads agent.json and api-token; SKYMESH_DATA_DIR too', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'skymesh-cli-'))
    try {
      await writeFile(join(dir, 'api-token'), TOKEN, { mode: 0o600 })
      const missing = await cli(['status', '--data-dir', dir])
      assert.equal(missing.code, 1)
      assert.match(missing.err, /no agent running with data dir .*skymesh agent --data-dir/)
      const file = { pid: process.pid, peerId: PEER, api: `http://${fakeApi.api}`, addrs: node.addrs }
      await writeFile(join(dir, 'agent.json'), JSON.stringify(file))
      const r = await cli(['vm', 'ls', '--json', '--data-dir', dir])
      assert.equal(r.code, 0, r.err)
      assert.equal(JSON.parse(r.out).vms.length, 2)
      const e = await cli(['vm', 'ls', '--json'], { SKYMESH_DATA_DIR: dir })
      assert.equal(e.code, 0, e.err)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('a data dir that does not exist is a usage error', async () => {
    const r = await cli(['status', '--data-dir', join(tmpdir(), 'skymesh-no-such-dir-xyz')])
    assert.equal(r.code, 2)
    assert.match(r.err, /does not exist/)
  })

  it('says when no agent listens at the address', async () => {
    const s = createServer()
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
    const port = (s.address() as AddressInfo).port
    await new Promise((resolve) => s.close(resolve))
    const r = await cli(['status', '--api', `127.0.0.1:${port}`, '--token', TOKEN])
    assert.equal(r.code, 1)
    assert.equal(
      r.err,
      `error: no agent listening at http://127.0.0.1:${port} (is \`skymesh agent\` running?)\n`,
    )
  })
})

describe('cli: vm commands', () => {
  it('vm ls prints an aligned table', async () => {
    const r = await cli(['vm', 'ls', ...conn()])
    assert.equal(r.code, 0, r.err)
    const lines = r.out.trimEnd().split('\n')
    assert.equal(lines.length, 3)
    assert.match(lines[0]!, /^ID +NAME +STATE +HOST +VCPUS +MEMORY +DISK +DIRTY +AGE$/)
    assert.match(lines[1]!, /^a1b2c3d4-0001 +web +running +12D3…cdefgh +1 +64 MiB +64 MiB +4 MiB\/s +\ds$/)
    assert.match(lines[2]!, /^e5f6a7b8-0002 +db +running +12D3…zyxwvu +1 +256 MiB +64 MiB +4 MiB\/s +\ds$/)
    // columns line up: NAME starts at the same offset on every line
    const col = lines[0]!.indexOf('NAME')
    assert.ok(lines.slice(1).every((l) => l.slice(col).startsWith('web') || l.slice(col).startsWith('db ')))
    const j = await cli(['vm', 'ls', ...conn(), '--json'])
    assert.deepEqual(JSON.parse(j.out), { vms })
  })

  it('vm create sends the right body', async () => {
    const r = await cli([
      'vm',
      'create',
      'cache',
      '--memory',
      '512',
      '--disk',
      '1G',
      '--vcpus',
      '2',
      '--dirty',
      '8',
      '--hot-set',
      '32',
      '--cpu',
      '0.5',
      '--disk-write',
      '1.5',
      ...conn(),
    ])
    assert.equal(r.code, 0, r.err)
    const post = seen.find((s) => s.method === 'POST')
    assert.deepEqual(post?.body, {
      name: 'cache',
      vcpus: 2,
      memoryMiB: 512,
      diskMiB: 1024,
      workload: { dirtyMiBps: 8, hotSetMiB: 32, cpu: 0.5, diskWriteMiBps: 1.5 },
    })
    assert.match(
      r.out,
      /^created VM cache \(vm-3\) on 12D3…cdefgh: 2 vcpu, 512 MiB memory, 1 GiB disk, running$/m,
    )
  })

  it('vm create without workload flags sends no workload; --json prints the record', async () => {
    const r = await cli(['vm', 'create', 'small', '--memory', '32', '--disk', '64', ...conn(), '--json'])
    assert.equal(r.code, 0, r.err)
    assert.deepEqual(seen.find((s) => s.method === 'POST')?.body, {
      name: 'small',
      vcpus: 1,
      memoryMiB: 32,
      diskMiB: 64,
    })
    assert.equal(JSON.parse(r.out).name, 'small')
  })

  it('bad or missing option values are usage errors', async () => {
    const bad = await cli(['vm', 'create', 'x', '--memory', 'lots', '--disk', '64', ...conn()])
    assert.equal(bad.code, 2)
    assert.match(bad.err, /--memory/)
    const missing = await cli(['vm', 'create', 'x', '--disk', '64', ...conn()])
    assert.equal(missing.code, 2)
    assert.match(missing.err, /required option '--memory <MiB>'/)
    assert.equal(seen.length, 0)
  })

  it('an API 409 prints the code and message and exits 1', async () => {
    const r = await cli(['vm', 'create', 'huge', '--memory', '8G', '--disk', '64', ...conn()])
    assert.equal(r.code, 1)
    assert.equal(r.err, 'error: INSUFFICIENT_CAPACITY: no room for 8192 MiB (256 MiB of 4096 MiB used)\n')
    assert.equal(r.out, '')
  })

  it('resolves a name to its id', async () => {
    const r = await cli(['vm', 'pause', 'db', ...conn()])
    assert.equal(r.code, 0, r.err)
    assert.ok(seen.some((s) => s.method === 'POST' && s.url === '/v1/vms/e5f6a7b8-0002/pause'))
    assert.match(r.out, /^paused VM db \(e5f6a7b8-0002\): paused$/m)
    const byId = await cli(['vm', 'resume', 'a1b2c3d4-0001', ...conn(), '--json'])
    assert.equal(byId.code, 0, byId.err)
    assert.equal(JSON.parse(byId.out).state, 'running')
  })

  it('vm show by name, with --digest', async () => {
    const r = await cli(['vm', 'show', 'web', '--digest', ...conn()])
    assert.equal(r.code, 0, r.err)
    assert.match(r.out, /^id +a1b2c3d4-0001$/m)
    assert.match(r.out, /^memory +64 MiB$/m)
    assert.match(r.out, new RegExp(`^digest +${'cc'.repeat(32)}$`, 'm'))
    const j = await cli(['vm', 'show', 'web', '--digest', '--json', ...conn()])
    const doc = JSON.parse(j.out)
    assert.equal(doc.id, 'a1b2c3d4-0001')
    assert.equal(doc.digest.combined, 'cc'.repeat(32))
  })

  it('an unknown VM is VM_NOT_FOUND', async () => {
    const r = await cli(['vm', 'show', 'nope', ...conn()])
    assert.equal(r.code, 1)
    assert.equal(r.err, 'error: VM_NOT_FOUND: no VM with id or name "nope"\n')
  })

  it('vm rm removes several, goes on after a failure, exits 1', async () => {
    const r = await cli(['vm', 'rm', 'web', 'nope', 'e5f6a7b8-0002', ...conn()])
    assert.equal(r.code, 1)
    assert.deepEqual(
      seen.filter((s) => s.method === 'DELETE').map((s) => s.url),
      ['/v1/vms/a1b2c3d4-0001', '/v1/vms/e5f6a7b8-0002'],
    )
    assert.match(r.err, /VM_NOT_FOUND/)
    assert.equal(vms.length, 0)
  })
})

describe('cli: help, version, agent, mesh-key', () => {
  it('--help lists the commands', async () => {
    const r = await cli(['--help'])
    assert.equal(r.code, 0)
    for (const c of ['agent', 'status', 'peers', 'vm', 'mesh-key', 'demo']) {
      assert.match(r.out, new RegExp(`^  ${c}\\b`, 'm'), c)
    }
    const vm = await cli(['vm', '--help'])
    assert.equal(vm.code, 0)
    for (const c of ['create', 'ls', 'show', 'rm', 'pause', 'resume'])
      assert.match(vm.out, new RegExp(`^  ${c}\\b`, 'm'))
    const create = await cli(['vm', 'create', '--help'])
    assert.match(create.out, /--data-dir <dir>/)
    assert.match(create.out, /--json/)
  })

  it('--version prints the package version; unknown commands are usage errors', async () => {
    const v = await cli(['--version'])
    assert.equal(v.code, 0)
    assert.match(v.out, /^\d+\.\d+\.\d+/)
    const u = await cli(['frobnicate'])
    assert.equal(u.code, 2)
    assert.match(u.err, /unknown command/)
    const g = await cli(['vm'])
    assert.equal(g.code, 2)
  })

  it('agent passes exactly the flags given, repeatable ones as arrays', async () => {
    const got: AgentFlags[] = []
    const runAgent = async (f: AgentFlags) => {
      got.push(f)
      return got.length === 1 ? 0 : 3
    }
    const argv = [
      'agent',
      '--data-dir',
      '/d',
      '--listen',
      '/ip4/0.0.0.0/tcp/1',
      '--listen',
      '/ip4/0.0.0.0/tcp/2',
    ]
    const r = await cli([...argv, '--site', 'eu', '--log-level', 'debug'], {}, { runAgent })
    assert.equal(r.code, 0, r.err)
    assert.deepEqual(got[0], {
      dataDir: '/d',
      listen: ['/ip4/0.0.0.0/tcp/1', '/ip4/0.0.0.0/tcp/2'],
      bootstrap: undefined,
      api: undefined,
      site: 'eu',
      driver: undefined,
      meshKey: undefined,
      apiTokenFile: undefined,
      config: undefined,
      logLevel: 'debug',
    })
    const second = await cli(
      ['agent', '--bootstrap', '/ip4/1.2.3.4/tcp/5', '--mesh-key', 'k'],
      {},
      { runAgent },
    )
    assert.equal(second.code, 3)
    assert.deepEqual(got[1]?.bootstrap, ['/ip4/1.2.3.4/tcp/5'])
    assert.equal(got[1]?.meshKey, 'k')
  })

  it('mesh-key FILE writes a 0600 swarm key and refuses to overwrite it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'skymesh-cli-'))
    try {
      const file = join(dir, 'swarm.key')
      const r = await cli(['mesh-key', file])
      assert.equal(r.code, 0, r.err)
      const key = await readFile(file)
      assert.equal(key.length, SWARM_KEY_LENGTH)
      assert.match(key.toString('utf8'), /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}$/)
      assert.equal((await stat(file)).mode & 0o777, 0o600)
      const again = await cli(['mesh-key', file])
      assert.equal(again.code, 1)
      assert.match(again.err, /exists; pass --force/)
      assert.deepEqual(await readFile(file), key)
      const forced = await cli(['mesh-key', file, '--force'])
      assert.equal(forced.code, 0, forced.err)
      assert.notDeepEqual(await readFile(file), key)
      const out = await cli(['mesh-key'])
      assert.match(out.out, /^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}\n$/)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('cli: formatting', () => {
  it('table pads columns and right-aligns numbers', () => {
    const t = table(
      ['NAME', 'MEM'],
      [
        ['a', '32 MiB'],
        ['longer', '1 GiB'],
      ],
      ['left', 'right'],
    )
    assert.equal(t, 'NAME       MEM\na       32 MiB\nlonger   1 GiB\n')
  })

  it('sizes, durations and short ids', () => {
    assert.equal(formatMiB(256), '256 MiB')
    assert.equal(formatMiB(1536), '1.5 GiB')
    assert.equal(formatMiB(4096), '4 GiB')
    assert.equal(formatMiB(0.5), '512 KiB')
    assert.equal(formatDuration(45_000), '45s')
    assert.equal(formatDuration(192_000), '3m12s')
    assert.equal(formatDuration(2 * 3600_000 + 5 * 60_000), '2h05m')
    assert.equal(formatDuration(3 * 86400_000 + 4 * 3600_000), '3d04h')
    assert.equal(shortId(PEER), '12D3…cdefgh')
  })

  it('demo view: merges VM lists by highest epoch and prints one line per tick', () => {
    const moved = { ...vm('x', 'demo-1', 32, OTHER), epoch: 2 }
    const agents = [
      { index: 0, site: 'site-a', dataDir: '/d0', node, peers: 1, vms: [vm('x', 'demo-1', 32)] },
      { index: 1, site: 'site-b', dataDir: '/d1', error: 'unreachable', vms: [moved] },
    ]
    const merged = mergeVms(agents)
    assert.equal(merged.length, 1)
    assert.equal(merged[0]?.host, OTHER)
    assert.equal(
      renderLine(agents, 3000),
      '[3s] agents 1/2 up, peers 1/-, vms 1 (1 running), memory 256 MiB / 4 GiB\n',
    )
  })
})
