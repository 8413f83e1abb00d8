// Bulk data between two hosts behind two different NATs (network namespaces, netns.ts): their libp2p
// connection is relayed (DCUtR cannot punch, see nat-punch.test.ts), so migrations and image pulls
// ask skymesh's own hole punch (src/transfer/punch.ts): both learn their public address from the relay
// ("what is my address"), swap it and one fixed port per parallel connection over the relayed,
// mesh-key-protected stream, connect by TCP simultaneous open and run the sealed channel over it.
//   - a VM migrates east -> west and back over 3 punched connections, and says so;
//   - an image pushed from east to west comes over punched connections, and the pull says so;
//   - a VM bigger than the relay's limit tries the punch first (it would fail halfway on the relay);
//   - once the NATs pick random ports (no punch gets through), such a VM fails at once with
//     "cannot reach X directly" and the reason, and keeps running where it was;
//   - and so does an image bigger than the relay's limit: its push fails before any chunk moves, and
//     the image stays whole where it was.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { waitFor } from '../helpers/agent-process.js'
import {
  migrateAndWait,
  movePausedVm,
  type NatTopology,
  peerOf,
  randomizeNatPorts,
  startNatTopology,
  TEST_GOSSIP,
  waitConnected,
} from '../helpers/nat-topology.js'
import { netnsUnavailable } from '../helpers/netns.js'

const why = await netnsUnavailable()
if (why) console.log(`# nat-punch-migrate: running no namespace tests here: ${why}`)

const RELAY_LIMIT_MIB = 128
const MiB = 1048576
const RELAY_CONFIG = `${TEST_GOSSIP}bootstrapIntervalSec: 1\nnat:\n  reachability: public\nrelay:\n  dataLimitMiB: ${RELAY_LIMIT_MIB}\n  durationLimitSec: 600\ncapacity:\n  memoryMiB: 4096\n`
const NATED_CONFIG = `${TEST_GOSSIP}bootstrapIntervalSec: 1\nnat:\n  reachability: private\n  directTimeoutMs: 1000\ncapacity:\n  memoryMiB: 4096\n`

/** Adds an image of `mib` MiB of random bytes on east and pushes it to west; its id and the push once ended. */
async function pushImage(n: NatTopology, name: string, mib: number) {
  const { east, west } = n
  const file = join(n.dir, `${name}.img`)
  const fh = await open(file, 'w')
  try {
    for (let left = mib; left > 0; left -= 8) await fh.write(randomBytes(Math.min(8, left) * MiB))
  } finally {
    await fh.close()
  }
  const img = await east.request('POST', '/v1/images', { path: file, name })
  assert.equal(img.status, 201, JSON.stringify(img.body))
  const id = img.body.id as string
  const started = await east.request('POST', `/v1/images/${id}/distribute`, { to: [west.peerId] })
  assert.equal(started.status, 202, JSON.stringify(started.body))
  const view = await waitFor(
    'the push to end',
    async () => {
      const v = (await east.request('GET', `/v1/images/${id}/distribute`)).body
      return v.state !== 'running' ? v : undefined
    },
    120_000,
  )
  return { id, view }
}

describe('bulk data between two NATed hosts over hole-punched sealed channels', { skip: why }, () => {
  let n: NatTopology

  before(async () => {
    n = await startNatTopology({
      prefix: 'skymesh-punchmig-',
      relayConfig: RELAY_CONFIG,
      natedConfig: NATED_CONFIG,
    })
  })

  after(async () => {
    await n?.stop()
  })

  it('east -> west and back: link hole-punched, 3 punched connections, same VM', async (t) => {
    const { east, west } = n
    await waitConnected(east, west, ['relayed'])
    const r = await east.request('POST', '/v1/vms', {
      name: 'punchy',
      vcpus: 1,
      memoryMiB: 32,
      diskMiB: 64,
      workload: { dirtyMiBps: 2, hotSetMiB: 8 },
    })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    for (const [from, to] of [
      [east, west],
      [west, east],
    ] as const) {
      const m = await movePausedVm(from, to, r.body.id)
      t.diagnostic(`link ${m.link} (${m.linkNote}); channel ${m.channel} (${m.channelNote}); ${m.totalMs} ms`)
      assert.equal(m.link, 'hole-punched', JSON.stringify(m))
      assert.equal(m.channel, 'direct-sealed', JSON.stringify(m))
      // One punched connection per data stream (3 by default)
      assert.match(String(m.channelNote), /^hole-punched to \S+ \(3 connections\)$/)
    }
    // Each shows the other as hole-punched (for bulk data; libp2p control stays on the relay)
    assert.equal((await peerOf(east, west.peerId))?.connection, 'hole-punched')
    assert.equal((await peerOf(west, east.peerId))?.connection, 'hole-punched')
  })

  it('an image pushed from east to west comes over the punched path, and the pull says so', async () => {
    const { west } = n
    const { id, view } = await pushImage(n, 'punched', 12)
    assert.equal(view.state, 'done', JSON.stringify(view))
    const there = (await west.request('GET', `/v1/images/${id}`)).body
    assert.equal(there.complete, true, JSON.stringify(there))
    assert.equal(there.pull?.link, 'hole-punched', JSON.stringify(there.pull))
    assert.equal((await west.request('POST', `/v1/images/${id}/verify`, {})).body.ok, true)
  })

  it("a VM bigger than the relay's limit tries the punch first, and migrates over it", async () => {
    const { east, west } = n
    const r = await east.request('POST', '/v1/vms', {
      name: 'bigpunch',
      vcpus: 1,
      memoryMiB: RELAY_LIMIT_MIB + 64,
      diskMiB: 64,
    })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    const m = await movePausedVm(east, west, r.body.id)
    assert.equal(m.link, 'hole-punched', JSON.stringify(m))
  })

  it('without a punch (NATs with random ports) such a VM fails at once, says why, and stays', async () => {
    const { east, west, mesh } = n
    await randomizeNatPorts(mesh, 'east')
    await randomizeNatPorts(mesh, 'west')
    const r = await east.request('POST', '/v1/vms', {
      name: 'stuck',
      vcpus: 1,
      memoryMiB: RELAY_LIMIT_MIB + 64,
      diskMiB: 64,
    })
    assert.equal(r.status, 201, JSON.stringify(r.body))
    await waitFor(
      'west knows the VM',
      async () => (await west.request('GET', `/v1/cluster/vms/${r.body.id}`)).body.host === east.peerId,
      30_000,
    )
    const m = await migrateAndWait(east, west, r.body.id, {})
    assert.equal(m.phase, 'failed', JSON.stringify(m))
    assert.equal(m.error.code, 'LINK', JSON.stringify(m))
    assert.match(
      m.error.message,
      new RegExp(
        `cannot reach ${west.peerId} directly: hole punch failed: .*the relay lets that connection carry \\d+ MiB more`,
      ),
    )
    // Nothing went over the relay: it failed before any data
    assert.equal(m.bytesSent ?? 0, 0, JSON.stringify(m))
    assert.equal((await east.request('GET', `/v1/vms/${r.body.id}`)).body.state, 'running')
    assert.equal((await west.request('GET', `/v1/vms/${r.body.id}`)).status, 404)
  })

  it("without a punch an image bigger than the relay's limit fails at once, says why, and stays whole", async () => {
    const { east, west, mesh } = n
    // As the test before left them (again here, so the test stands alone: the rule is only added twice)
    await randomizeNatPorts(mesh, 'east')
    await randomizeNatPorts(mesh, 'west')
    const { id, view } = await pushImage(n, 'unpunched', RELAY_LIMIT_MIB + 8)
    assert.equal(view.state, 'failed', JSON.stringify(view))
    const there = view.hosts.find((h: { peerId: string }) => h.peerId === west.peerId)
    assert.equal(there?.state, 'failed', JSON.stringify(view))
    assert.match(
      String(there.error),
      new RegExp(
        `cannot reach ${east.peerId} directly: hole punch failed: .*the relay lets that connection carry \\d+ MiB more, the image needs \\d+ MiB more`,
      ),
    )
    // Nothing went over the relay: the pull failed before any chunk
    assert.equal(there.have, 0, JSON.stringify(view))
    const atWest = (await west.request('GET', `/v1/images/${id}`)).body
    assert.equal(atWest.have, 0, JSON.stringify(atWest))
    assert.equal(atWest.complete, false, JSON.stringify(atWest))
    // The image is whole where it was
    const atEast = (await east.request('GET', `/v1/images/${id}`)).body
    assert.equal(atEast.complete, true, JSON.stringify(atEast))
    assert.equal((await east.request('POST', `/v1/images/${id}/verify`, {})).body.ok, true)
  })
})
