// QEMU guests migrated live THROUGH THE MESH between two real agents started with `--driver qemu`:
// QEMU's migration stream and its disk mirror (NBD) tunnelled over libp2p. A second guest on a third
// host holds one TCP connection to the moving guest's echo server over the overlay, a numbered line
// every 100 ms: the same connection carries on after the move, every echo in order. The guest keeps
// running (its memory writer carries on at the destination, its self-check never fails), exactly
// one QEMU runs it afterwards, the disk content written before the move is on the destination's
// disk, and the mesh sees it at epoch 2. Killing the destination agent mid-migration leaves it
// running at the source. TCG is slow: small guests (128 MiB), generous bounds, no timing assertions.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  type RunningAgent,
  removeDir,
  sleep,
  startAgent,
  tempDir,
  waitFor,
} from '../helpers/agent-process.js'
import {
  memLines,
  qemuPids,
  qemuSkipReason,
  readGuestDisk,
  serialLines,
  tcpLog,
  waitSerial,
} from '../helpers/qemu.js'

const skip = qemuSkipReason()
if (skip) console.log(`# qemu mesh migration tests skipped: ${skip}`)

const GUEST = {
  vcpus: 1,
  memoryMiB: 128,
  diskMiB: 64,
  workload: { dirtyMiBps: 1, hotSetMiB: 16, cpu: 0, diskWriteMiBps: 0 },
}

describe('QEMU live migration through the mesh', { skip, timeout: 600_000 }, () => {
  let dir: string
  let a: RunningAgent
  let b: RunningAgent
  let args: string[]
  const extra: RunningAgent[] = []

  before(async () => {
    dir = await tempDir('skq-mesh-')
    const config = join(dir, 'agent.yaml')
    await writeFile(
      config,
      'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n  suspicionMult: 3\n' +
        'networks:\n  - { name: lan, subnet: 10.33.0.0/24 }\n',
    )
    args = ['--config', config, '--log-level', 'info', '--driver', 'qemu']
    a = await startAgent({ dataDir: join(dir, 'a'), args })
    b = await startAgent({ dataDir: join(dir, 'b'), args, bootstrap: [a.addrs[0]!] })
    extra.push(await startAgent({ dataDir: join(dir, 'c'), args, bootstrap: [a.addrs[0]!] }))
    await waitFor(
      'the mesh to form',
      async () => (await a.request('GET', '/v1/cluster')).body.counts.alive === 3,
    )
  })

  after(async () => {
    await Promise.all([a, b, ...extra].filter(Boolean).map((x) => x.stop()))
    // A killed agent leaves its QEMUs behind (as a host crash would take them along): end them
    for (const pid of qemuPids(dir)) process.kill(pid, 'SIGKILL')
    await removeDir(dir)
  })

  const tail = (agent: RunningAgent) =>
    agent
      .output()
      .split('\n')
      .filter((l) => /qemu|tunnel|migrat/i.test(l))
      .slice(-15)
      .join('\n')
  const serialOf = (agent: RunningAgent, id: string) => join(agent.dataDir, 'vms', id, 'serial.log')

  async function createGuest(
    agent: RunningAgent,
    name: string,
    extraBody: Record<string, unknown> = {},
  ): Promise<string> {
    const r = await agent.request('POST', '/v1/vms', { name, ...GUEST, ...extraBody })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    const id = r.body.id as string
    await waitSerial(
      serialOf(agent, id),
      (lines) =>
        lines.some((l) => l.startsWith('SKYMESH DISK MARK') || l.startsWith('SKYMESH DISK FOUND')) &&
        memLines(serialOf(agent, id)).filter((l) => l.ok).length >= 3,
      180_000,
      'the guest to boot and its writer to run',
    )
    return id
  }

  async function finished(agent: RunningAgent, id: string, timeoutMs: number) {
    return waitFor(
      `migration ${id} to end`,
      async () => {
        const r = await agent.request('GET', `/v1/migrations/${id}`)
        return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
      },
      timeoutMs,
    )
  }

  it('moves a running guest with its disk while a TCP connection to it carries data; one QEMU runs it', async () => {
    const id = await createGuest(a, 'mover', { networks: ['lan'] })
    const ip = ((await a.request('GET', `/v1/vms/${id}`)).body.nics[0] as { ip: string }).ip
    // The client guest on c: one TCP connection to the mover's echo server, across the overlay
    const c = extra[0]!
    const client = await c.request('POST', '/v1/vms', {
      name: 'client',
      ...GUEST,
      workload: { dirtyMiBps: 0, hotSetMiB: 4, cpu: 0, diskWriteMiBps: 0 },
      networks: ['lan'],
      guestArgs: { connect: `${ip}:7` },
    })
    assert.equal(client.status, 201, JSON.stringify(client.body))
    const clientSerial = serialOf(c, client.body.id)
    await waitSerial(clientSerial, () => tcpLog(clientSerial).echoed >= 30, 180_000, 'the TCP client to echo')
    const { connects, closes } = tcpLog(clientSerial)
    const echoedBefore = tcpLog(clientSerial).echoed
    const mark = serialLines(serialOf(a, id))
      .find((l) => l.startsWith('SKYMESH DISK MARK'))!
      .split(' ')[3]!
    const genBefore = memLines(serialOf(a, id)).at(-1)!.gen
    const started = await a.request('POST', `/v1/vms/${id}/migrate`, {
      to: b.peerId,
      streams: 1,
      downtimeMs: 300,
    })
    assert.equal(started.status, 202, JSON.stringify(started.body))
    const m = await finished(a, started.body.id, 300_000)
    assert.equal(m.phase, 'done', `${JSON.stringify(m.error)}\n${tail(a)}\n${tail(b)}`)
    assert.equal(m.epoch, 2)
    assert.ok(m.bytesSent > 0 && m.wireBytes > 0, JSON.stringify(m))
    assert.ok(typeof m.downtimeMs === 'number' && typeof m.totalMs === 'number')

    // Handover: the VM is b's at epoch 2; a dropped it, and every agent sees it on b
    assert.equal((await a.request('GET', `/v1/vms/${id}`)).status, 404)
    const there = await b.request('GET', `/v1/vms/${id}`)
    assert.equal(there.status, 200)
    assert.equal(there.body.epoch, 2)
    assert.equal(there.body.state, 'running')
    await waitFor('a to see the VM on b at epoch 2', async () => {
      const r = await a.request('GET', `/v1/cluster/vms/${id}`)
      return r.status === 200 && r.body.host === b.peerId && r.body.epoch === 2
    })

    // Exactly one QEMU runs the guest: b's
    const pids = qemuPids(id)
    assert.equal(pids.length, 1, `QEMUs for ${id}: ${pids}`)
    assert.deepEqual(qemuPids(join(dir, 'b')), pids)

    // The guest carries on at b: later generations of its writer, never a FAIL
    const serialB = serialOf(b, id)
    await waitSerial(
      serialB,
      () => memLines(serialB).filter((l) => l.ok).length >= 3,
      120_000,
      'the writer at b',
    )
    const atB = memLines(serialB)
    assert.deepEqual(
      atB.filter((l) => !l.ok).map((l) => l.line),
      [],
      'memory check never failed',
    )
    assert.ok(atB[0]!.gen > genBefore, `the writer continues (gen ${atB[0]!.gen} > ${genBefore})`)

    // The disk moved: the marker written at boot (at a) is on b's disk, and the writer's generation
    // on the disk keeps advancing there
    const disk = join(b.dataDir, 'vms', id, 'disk.qcow2')
    assert.equal((await readGuestDisk(disk, 1 << 20, mark.length)).toString('latin1'), mark)
    const genOnDisk = async () =>
      Number((await readGuestDisk(disk, 2 << 20, 20)).toString('latin1').slice(12, 20))
    const g1 = await genOnDisk()
    assert.ok(g1 > genBefore, `disk generation ${g1} > ${genBefore}`)
    await waitFor("the writer to advance on b's disk", async () => (await genOnDisk()) > g1, 60_000)

    // The TCP connection: the same one (no reconnect, never closed), every echo in order, and it
    // keeps carrying data from the guest's new host
    const echoedAtDone = tcpLog(clientSerial).echoed
    await waitSerial(
      clientSerial,
      () => tcpLog(clientSerial).echoed >= echoedAtDone + 50,
      120_000,
      'the TCP connection to carry on after the move',
    )
    const tcp = tcpLog(clientSerial)
    console.log(
      `# TCP echoes: ${echoedBefore} before the migration, ${echoedAtDone} when it was done, ${tcp.echoed} after`,
    )
    assert.deepEqual(tcp.fails, [], 'every echo came back in order')
    assert.deepEqual(tcp.closes, closes, 'the connection never closed')
    assert.equal(tcp.connects, connects, 'no reconnect: the same connection')
    assert.ok(tcp.echoed > echoedBefore)
    const del = await c.request('DELETE', `/v1/vms/${client.body.id}`)
    assert.ok(del.status === 204 || del.status === 200, JSON.stringify(del.body))
  })

  it('an agent restart re-attaches to its running guests, reports the one that died, and still migrates', async () => {
    // The survivor's disk is a layer on a mesh image (content-addressed, src/images) that b lacks:
    // b fetches it by id before it accepts the migration. The image carries a disk marker at 1 MiB
    const baseMark = 'SKYMESH-DISK-base0f1e2d3c4b5a69'
    const imageFile = join(dir, 'base.img')
    const bytes = Buffer.alloc(4 << 20)
    bytes.write(baseMark, 1 << 20, 'latin1')
    await writeFile(imageFile, bytes)
    const added = await a.request('POST', '/v1/images', { path: imageFile, name: 'qemu-base' })
    assert.ok(added.status === 201 || added.status === 200, JSON.stringify(added.body))
    const imageId = added.body.id as string
    assert.equal((await b.request('GET', `/v1/images/${imageId}`)).status, 404)
    const [id, gone] = await Promise.all([
      createGuest(a, 'survivor', { image: imageId }),
      createGuest(a, 'goner'),
    ])
    assert.ok(
      serialLines(serialOf(a, id)).includes(`SKYMESH DISK FOUND ${baseMark}`),
      'the guest sees the image as its disk',
    )
    const [pid] = qemuPids(id)
    assert.ok(pid, 'the survivor runs')
    await a.kill9()
    // The guests outlive the agent; one of them dies while the agent is down
    for (const p of qemuPids(gone)) process.kill(p, 'SIGKILL')
    const serialA = serialOf(a, id)
    const genDown = memLines(serialA).at(-1)!.gen
    await waitSerial(
      serialA,
      () => (memLines(serialA).at(-1)?.gen ?? 0) >= genDown + 2,
      60_000,
      'the writer while the agent is down',
    )
    const restartedAt = Date.now()
    a = await startAgent({ dataDir: a.dataDir, args, bootstrap: [b.addrs[0]!] })
    const back = await a.request('GET', `/v1/vms/${id}`)
    assert.equal(back.status, 200)
    assert.equal(back.body.state, 'running')
    assert.equal(back.body.epoch, 1)
    assert.deepEqual(qemuPids(id), [pid], 'the same QEMU, not a new one')
    const dead = await a.request('GET', `/v1/vms/${gone}`)
    assert.equal(dead.body.state, 'crashed')
    assert.deepEqual(qemuPids(gone), [])
    type Host = { peerId: string; status: string; stateTimestampMs?: number }
    await waitFor('the restarted agent to see b', async () => {
      const r = await a.request('GET', '/v1/cluster')
      return r.body.hosts.some((h: Host) => h.peerId === b.peerId && h.status === 'alive')
    })
    // b learns from gossip that a holds the image (it fetches it from a holder)
    await waitFor('b to hear from the restarted agent', async () => {
      const r = await b.request('GET', '/v1/cluster')
      return r.body.hosts.some(
        (h: Host) => h.peerId === a.peerId && h.status === 'alive' && (h.stateTimestampMs ?? 0) > restartedAt,
      )
    })
    // It still migrates (QMP reconnected, its launch options known), and the guest carries on at b
    const started = await a.request('POST', `/v1/vms/${id}/migrate`, { to: b.peerId, streams: 1 })
    assert.equal(started.status, 202, JSON.stringify(started.body))
    const m = await finished(a, started.body.id, 300_000)
    assert.equal(m.phase, 'done', `${JSON.stringify(m.error)}\n${tail(a)}\n${tail(b)}`)
    const now = qemuPids(id)
    assert.equal(now.length, 1, `QEMUs for ${id}: ${now}`)
    assert.ok(qemuPids(join(dir, 'b')).includes(now[0]!), "the one QEMU is b's")
    // b fetched the base by its id and the guest's disk there is a layer on it
    const atB = await b.request('GET', `/v1/images/${imageId}`)
    assert.equal(atB.status, 200, 'b holds the image now')
    const diskB = join(b.dataDir, 'vms', id, 'disk.qcow2')
    assert.equal((await readGuestDisk(diskB, 1 << 20, baseMark.length)).toString('latin1'), baseMark)
    const serialB = serialOf(b, id)
    await waitSerial(
      serialB,
      () => memLines(serialB).filter((l) => l.ok).length >= 2,
      120_000,
      'the writer at b',
    )
    assert.deepEqual(
      [...memLines(serialA), ...memLines(serialB)].filter((l) => !l.ok).map((l) => l.line),
      [],
      'memory check never failed',
    )
    assert.equal((await b.request('DELETE', `/v1/vms/${id}`)).status, 204)
    assert.equal((await a.request('DELETE', `/v1/vms/${gone}`)).status, 204)
  })

  it('keeps the guest running at the source when the destination agent dies mid-migration', async () => {
    const c = extra[0]!
    const id = await createGuest(a, 'stayer')
    // A bandwidth cap keeps the migration going long enough to kill the destination in the middle
    const started = await a.request('POST', `/v1/vms/${id}/migrate`, {
      to: c.peerId,
      streams: 1,
      bandwidthMiBps: 2,
    })
    assert.equal(started.status, 202, JSON.stringify(started.body))
    await waitFor(
      'memory to flow',
      async () => {
        const r = await a.request('GET', `/v1/migrations/${started.body.id}`)
        return r.body.phase === 'precopy' && r.body.pagesSent > 256 ? r.body : undefined
      },
      120_000,
    )
    await c.kill9()
    // The host "died": its QEMUs go with it
    for (const pid of qemuPids(join(dir, 'c'))) process.kill(pid, 'SIGKILL')
    const m = await finished(a, started.body.id, 120_000)
    assert.equal(m.phase, 'failed')
    const here = await a.request('GET', `/v1/vms/${id}`)
    assert.equal(here.status, 200)
    assert.equal(here.body.state, 'running')
    assert.equal(here.body.epoch, 1)
    assert.equal(qemuPids(id).length, 1)
    const serialA = serialOf(a, id)
    const last = memLines(serialA).at(-1)!.gen
    await waitSerial(
      serialA,
      () => (memLines(serialA).at(-1)?.gen ?? 0) >= last + 3,
      60_000,
      'the writer at a',
    )
    assert.deepEqual(
      memLines(serialA)
        .filter((l) => !l.ok)
        .map((l) => l.line),
      [],
    )
    await sleep(0)
  })
})
