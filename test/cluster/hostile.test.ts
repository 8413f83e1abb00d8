// Hostile input against real agent processes in a private mesh: a fuzzed API (random, malformed,
// mistyped and huge bodies, bad tokens) and a peer that holds the mesh key but speaks garbage on
// every wire protocol (random bytes, lying length prefixes, truncated and oversized frames, junk on
// the gossip topic). No agent crashes, nothing changes, and what gets in is only what is valid.
//
// SKYMESH_FUZZ_SEED=N repeats a run; SKYMESH_FUZZ_ROUNDS=N runs more API cases (default 150).
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { readMeshKey } from '../../src/node/index.js'
import { createHost, type Host } from '../../src/node/p2p.js'
import { seededRng } from '../../src/placement/core/index.js'
import {
  type RunningAgent,
  removeDir,
  runCli,
  startAgent,
  tempDir,
  waitFor,
} from '../helpers/agent-process.js'

const SEED = Number(process.env.SKYMESH_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
const ROUNDS = Number(process.env.SKYMESH_FUZZ_ROUNDS ?? 150)
console.log(`# hostile: seed ${SEED} (SKYMESH_FUZZ_SEED=${SEED} repeats this run), ${ROUNDS} API cases`)

// the placement core's seeded generator, so a failing run can be repeated exactly
const rand = seededRng(SEED)
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!
const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256))

/** A random JSON value of bounded depth: the raw material of malformed bodies. */
function randomJson(depth = 0): unknown {
  const kinds =
    depth > 2 ? ['num', 'str', 'bool', 'null'] : ['num', 'str', 'bool', 'null', 'arr', 'obj', 'obj']
  switch (pick(kinds)) {
    case 'num':
      return pick([0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 1, Number.MAX_SAFE_INTEGER, 42])
    case 'str':
      return pick(['', 'a', 'x'.repeat(5000), '../../etc/passwd', '\u0000', '💥', 'vm-1', '12D3KooW'])
    case 'bool':
      return rand() < 0.5
    case 'null':
      return null
    case 'arr':
      return Array.from({ length: Math.floor(rand() * 4) }, () => randomJson(depth + 1))
    default: {
      const keys = [
        'name',
        'vcpus',
        'memoryMiB',
        'diskMiB',
        'to',
        'mode',
        'streams',
        'workload',
        'subnet',
        '__proto__',
        'constructor',
        'x',
      ]
      const o: Record<string, unknown> = {}
      for (let i = Math.floor(rand() * 5); i > 0; i--) o[pick(keys)] = randomJson(depth + 1)
      return o
    }
  }
}

// Every route that takes a body or a parameter; `:id` is filled with the real VM or junk.
const ROUTES: [string, string][] = [
  ['POST', '/v1/vms'],
  ['POST', '/v1/vms/:id/pause'],
  ['POST', '/v1/vms/:id/resume'],
  ['POST', '/v1/vms/:id/migrate'],
  ['GET', '/v1/vms/:id'],
  ['GET', '/v1/vms/:id/digest'],
  ['DELETE', '/v1/migrations/:id'],
  ['GET', '/v1/migrations/:id'],
  ['GET', '/v1/cluster/vms/:id'],
  ['POST', '/v1/networks'],
  ['GET', '/v1/networks/:id'],
]

let dir: string
let target: RunningAgent
let witness: RunningAgent
let rogue: Host | undefined
let vmId: string

interface Snapshot {
  vms: string
  clusterVms: string
  hosts: string
  digest: string
}

/** What must not change: the VMs (ids, hosts, epochs), the hosts of the mesh, the VM's bytes. */
async function snapshot(): Promise<Snapshot> {
  const vms = (await target.request('GET', '/v1/vms')).body.vms as { id: string; name: string }[]
  const clusterVms = (await witness.request('GET', '/v1/cluster/vms')).body.vms as {
    id: string
    host: string
    epoch: number
  }[]
  const hosts = (await witness.request('GET', '/v1/cluster')).body.hosts as { peerId: string; site: string }[]
  // the VM is paused, so its digest is stable
  const digest = (await target.request('GET', `/v1/vms/${vmId}/digest`)).body
  return {
    vms: JSON.stringify(vms.map((v) => [v.id, v.name]).sort()),
    clusterVms: JSON.stringify(clusterVms.map((v) => [v.id, v.host, v.epoch]).sort()),
    hosts: JSON.stringify(hosts.map((h) => [h.peerId, h.site]).sort()),
    digest: JSON.stringify(digest),
  }
}

function assertAlive(): void {
  for (const a of [target, witness]) {
    assert.equal(a.proc.exitCode, null, `agent ${a.peerId} exited:\n${a.output().slice(-3000)}`)
    assert.equal(a.proc.signalCode, null, `agent ${a.peerId} was killed`)
  }
}

before(async () => {
  dir = await tempDir()
  const keyFile = join(dir, 'mesh.key')
  const made = await runCli(['mesh-key', keyFile])
  assert.equal(made.code, 0, made.stderr)
  const config = join(dir, 'agent.yaml')
  await writeFile(config, 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n  suspicionMult: 3\n')
  const args = ['--mesh-key', keyFile, '--config', config, '--log-level', 'info']
  target = await startAgent({ dataDir: join(dir, 'target'), args, site: 'here' })
  witness = await startAgent({
    dataDir: join(dir, 'witness'),
    args,
    site: 'there',
    bootstrap: [target.addrs[0]!],
  })
  const vm = await target.request('POST', '/v1/vms', {
    name: 'precious',
    vcpus: 1,
    memoryMiB: 16,
    diskMiB: 64,
    workload: { dirtyMiBps: 1, hotSetMiB: 1, cpu: 0.05, diskWriteMiBps: 0 },
  })
  assert.equal(vm.status, 201, JSON.stringify(vm.body))
  vmId = vm.body.id
  assert.equal((await target.request('POST', `/v1/vms/${vmId}/pause`)).status, 200)
  await waitFor('the witness to see the VM', async () => {
    const r = await witness.request('GET', `/v1/cluster/vms/${vmId}`)
    return r.status === 200
  })
  rogue = await createHost({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
    psk: await readMeshKey(keyFile),
  })
  await rogue.dial(multiaddr(target.addrs[0]!), { signal: AbortSignal.timeout(5000) })
})

after(async () => {
  await rogue?.stop()
  await Promise.all([target?.stop(), witness?.stop()])
  await removeDir(dir)
})

describe('hostile input', () => {
  it('a fuzzed API never answers 5xx, refuses what is bad with a message, and changes nothing', async () => {
    const before = await snapshot()
    const statuses = new Map<number, number>()
    for (let i = 0; i < ROUNDS; i++) {
      const [method, route] = pick(ROUTES)
      const path = route.replace(
        ':id',
        pick([vmId, 'nope', '..%2F..', 'x'.repeat(300), '%00', vmId.toUpperCase()]),
      )
      const attack = pick([
        'json',
        'json',
        'json',
        'invalid-json',
        'wrong-type',
        'no-token',
        'bad-token',
        'huge',
      ])
      let body: unknown
      const headers: Record<string, string> = {}
      switch (attack) {
        case 'json':
          body = randomJson()
          if (body === undefined || body === null) body = {}
          break
        case 'invalid-json':
          body = pick(['{', '{"name":', '[1,2', 'nul', '{"a":1}}', '\u0000\u0001'])
          break
        case 'wrong-type':
          body = 'name=x&vcpus=1'
          headers['content-type'] = pick([
            'text/plain',
            'application/x-www-form-urlencoded',
            'application/xml',
          ])
          break
        case 'no-token':
          headers.authorization = ''
          body = { name: 'sneaky', vcpus: 1, memoryMiB: 16, diskMiB: 64 }
          break
        case 'bad-token':
          headers.authorization = `Bearer ${target.token.slice(0, -1)}x`
          body = { name: 'sneaky', vcpus: 1, memoryMiB: 16, diskMiB: 64 }
          break
        case 'huge':
          body = JSON.stringify({ name: 'big', pad: 'x'.repeat(2 * 1024 * 1024) })
          break
      }
      if (method === 'GET') body = undefined
      // Pause/resume of the real VM with a junk body is a valid request: keep the VM paused
      if (path === `/v1/vms/${vmId}/resume` && !['no-token', 'bad-token'].includes(attack)) continue
      let res: Awaited<ReturnType<RunningAgent['request']>>
      try {
        res = await target.request(method, path, body, headers)
      } catch (err) {
        // The server answers an oversized body with 413 and closes the connection without reading
        // the rest; the client may then fail its write (EPIPE/ECONNRESET) before it reads the 413.
        // That is a refusal too, as long as the agent still answers.
        const code = ((err as Error).cause as { code?: string } | undefined)?.code
        assert.ok(attack === 'huge' && ['EPIPE', 'ECONNRESET'].includes(code ?? ''), String(err))
        assert.equal((await target.request('GET', '/v1/node')).status, 200, 'the agent still answers')
        statuses.set(413, (statuses.get(413) ?? 0) + 1)
        continue
      }
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
      assert.ok(
        res.status < 500,
        `${method} ${path} (${attack}) -> ${res.status} ${JSON.stringify(res.body)}`,
      )
      if (res.status >= 400) {
        assert.equal(typeof res.body?.error?.message, 'string', `${method} ${path}: error without a message`)
      }
      // A random body may be a valid VM or network by chance: remove what got created, and check
      // it needed the token.
      if (res.status === 201 && method === 'POST' && route === '/v1/vms') {
        assert.ok(!['no-token', 'bad-token'].includes(attack))
        await target.request('DELETE', `/v1/vms/${res.body.id}`)
      }
      // without the right token: 401 (or 414 for a path too long to route, refused before auth)
      if (['no-token', 'bad-token'].includes(attack)) {
        assert.ok([401, 414].includes(res.status), `${method} ${path} (${attack}) -> ${res.status}`)
      }
    }
    assertAlive()
    assert.equal((await target.request('GET', '/healthz')).status, 200)
    const afterSnap = await snapshot()
    assert.equal(afterSnap.vms, before.vms)
    assert.equal(afterSnap.digest, before.digest)
    console.log(`# API statuses: ${JSON.stringify(Object.fromEntries([...statuses].sort()))}`)
  })

  it('garbage on every wire protocol from a peer with the mesh key crashes nothing and changes nothing', async () => {
    const before = await snapshot()
    const protocols = await targetProtocols()
    assert.ok(protocols.length >= 6, `the target speaks ${protocols.join(', ')}`)
    const attacks: [string, () => Uint8Array[]][] = [
      ['random bytes', () => [bytes(1 + Math.floor(rand() * 2048))]],
      ['a length prefix claiming 1 GiB', () => [Uint8Array.from([0x80, 0x80, 0x80, 0x80, 0x04]), bytes(100)]],
      ['a truncated frame', () => [Uint8Array.from([0xe8, 0x07]), bytes(10)]],
      ['an 8 MiB frame', () => [Uint8Array.from([0x80, 0x80, 0x80, 0x04]), new Uint8Array(8 * 1024 * 1024)]],
      ['an empty frame', () => [Uint8Array.from([0])]],
    ]
    const peer = peerIdFromString(target.peerId)
    let sent = 0
    const refusedAtOpen = new Set<string>()
    for (const protocol of protocols) {
      for (const [, make] of attacks) {
        // A protocol that serves gossip members only may close the stream as it opens (the rogue
        // holds the key but never joined the gossip): that is a refusal, and counts as one
        const stream = await rogue!
          .dialProtocol(peer, protocol, { signal: AbortSignal.timeout(5000) })
          .catch((err: Error) => {
            if (/closed|reset/i.test(err.message)) return undefined
            throw new Error(`${protocol}: cannot open a stream: ${err.message}`)
          })
        if (!stream) {
          refusedAtOpen.add(protocol)
          sent++
          continue
        }
        try {
          for (const chunk of make()) {
            if (!stream.send(chunk)) await stream.onDrain({ signal: AbortSignal.timeout(5000) })
          }
          await stream
            .close({ signal: AbortSignal.timeout(2000) })
            .catch(() => stream.abort(new Error('done')))
        } catch {
          // the target may reset the stream at once: that is the point
        }
        sent++
      }
    }
    // Junk on the gossip topic, signed by the rogue (valid gossipsub, invalid host state).
    for (let i = 0; i < 20; i++) {
      await rogue!.services.pubsub
        .publish('/skymesh/hoststate/1', bytes(Math.floor(rand() * 4096)))
        .catch(() => undefined)
    }
    assert.ok(sent >= protocols.length * attacks.length)
    if (refusedAtOpen.size) console.log(`# refused as they opened: ${[...refusedAtOpen].join(', ')}`)
    assert.ok(refusedAtOpen.size < protocols.length, 'most protocols took the garbage in and dropped it')
    // Give the agents a moment to process, then check: both alive, the mesh and the VM unchanged.
    await new Promise((r) => setTimeout(r, 1500))
    assertAlive()
    assert.equal((await target.request('GET', '/healthz')).status, 200)
    const afterSnap = await snapshot()
    assert.deepEqual(afterSnap, before)
    // The drops were seen and counted.
    const metrics = String((await target.request('GET', '/metrics')).body)
    const dropped = [...metrics.matchAll(/^skymesh_gossip_dropped_total\{[^}]*\} (\d+)/gm)].reduce(
      (n, m) => n + Number(m[1]),
      0,
    )
    assert.ok(dropped > 0, 'gossip drops are counted')
  })

  it('a retry after all that still works: the VM resumes and its state gossips', async () => {
    assert.equal((await target.request('POST', `/v1/vms/${vmId}/resume`)).status, 200)
    await waitFor('the witness to see the VM running', async () => {
      const r = await witness.request('GET', `/v1/cluster/vms/${vmId}`)
      return r.body?.state === 'running'
    })
  })
})

/** The target's skymesh protocols, as identify told the rogue. */
async function targetProtocols(): Promise<string[]> {
  const peer = peerIdFromString(target.peerId)
  const info = await waitFor('identify of the target', async () => {
    const p = await rogue!.peerStore.get(peer).catch(() => undefined)
    return p?.protocols.some((x) => x.startsWith('/skymesh/')) ? p : undefined
  })
  return info.protocols.filter((p) => p.startsWith('/skymesh/'))
}
