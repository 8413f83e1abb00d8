// A real guest reads its virtual cluster context from the metadata service. Agent A runs QEMU guests
// (`--driver qemu`), agent B synthetic VMs; a virtual cluster of two VMs spread over both puts a QEMU
// guest on A. The guest's init has an on-link route to 169.254.169.254 on its overlay NIC (the agent's
// switch answers ARP for it), asks the service with busybox wget and prints what it learns on its
// serial console: its name, its cluster and role, and its peer (the synthetic VM on B) with its address.
// Skips, saying why, where QEMU or the guest packages are not installed.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../helpers/agent-process.js'
import { qemuSkipReason, serialLines } from '../helpers/qemu.js'

const skip = qemuSkipReason()
if (skip) console.log(`# metadata from a QEMU guest skipped: ${skip}`)

interface Vm {
  index: number
  name: string
  id: string
  host: string
  role: string
  ip?: string
}

describe('a QEMU guest reads its context from the metadata service', { skip, timeout: 240_000 }, () => {
  let dir: string
  let a: RunningAgent
  let b: RunningAgent

  before(async () => {
    dir = await tempDir('skymesh-mdq-')
    const config = join(dir, 'agent.yaml')
    await writeFile(config, 'networks:\n  - { name: lan, subnet: 10.32.0.0/24 }\n')
    const args = ['--config', config, '--log-level', 'info']
    a = await startAgent({ dataDir: join(dir, 'a'), args: [...args, '--driver', 'qemu'], timeoutMs: 90_000 })
    b = await startAgent({ dataDir: join(dir, 'b'), args, bootstrap: [a.addrs[0]!], timeoutMs: 60_000 })
    await waitFor(
      'the two agents to see each other',
      async () => (await a.request('GET', '/v1/cluster')).body.counts.alive === 2,
      30_000,
    )
  })

  after(async () => {
    if (process.env.SKYMESH_TEST_DEBUG) {
      await writeFile(`${process.env.SKYMESH_TEST_DEBUG}-a.log`, a?.output() ?? '')
      await writeFile(`${process.env.SKYMESH_TEST_DEBUG}-b.log`, b?.output() ?? '')
    }
    await Promise.all([a, b].filter(Boolean).map((x) => x.stop()))
    await removeDir(dir)
  })

  it('the guest prints its name, cluster, role and peer as the metadata service tells them', async () => {
    const file = join(dir, 'disk.img')
    await writeFile(file, Buffer.alloc(1024 * 1024, 0x5a))
    const added = await a.request('POST', '/v1/images', { path: file, name: 'disk' })
    assert.equal(added.status, 201, JSON.stringify(added.body))
    const r = await a.request('POST', '/v1/vclusters', {
      name: 'q',
      image: added.body.id,
      count: 2,
      memoryMiB: 128,
      diskMiB: 64,
      network: 'lan',
      placement: 'spread',
    })
    assert.equal(r.status, 202, JSON.stringify(r.body))
    const c = await waitFor(
      'the cluster to run',
      async () => {
        const v = (await a.request('GET', '/v1/vclusters/q')).body
        return v.state === 'creating' ? undefined : v
      },
      90_000,
    )
    assert.equal(c.state, 'running', JSON.stringify(c))
    const guest = (c.vms as Vm[]).find((v) => v.host === a.peerId)
    const peer = (c.vms as Vm[]).find((v) => v.host === b.peerId)
    assert.ok(guest && peer, `one VM on each host: ${JSON.stringify(c.vms)}`)
    const serial = join(a.dataDir, 'vms', guest.id, 'serial.log')
    // The guest polls the service every 2 s until its context (cluster, peers) is there.
    const lines = await waitFor(
      'the guest to print its context',
      async () => {
        const l = serialLines(serial).filter((x) => x.startsWith('SKYMESH META'))
        return l.some((x) => x.startsWith('SKYMESH META DONE') || x === 'SKYMESH META NONE') ? l : undefined
      },
      120_000,
    )
    assert.ok(lines.includes(`SKYMESH META NAME ${guest.name}`), lines.join('\n'))
    assert.ok(lines.includes(`SKYMESH META CLUSTER q role=${guest.role}`), lines.join('\n'))
    assert.ok(lines.includes(`SKYMESH META PEER ${peer.name} ${peer.ip} ${peer.role}`), lines.join('\n'))
    assert.ok(lines.includes('SKYMESH META DONE peers=1'), lines.join('\n'))
    // what the guest read is what its agent serves it
    const md = (await a.request('GET', `/v1/vms/${guest.id}/metadata`)).body
    assert.equal(md.name, guest.name)
    assert.deepEqual(md.peers, [{ name: peer.name, ip: peer.ip, role: peer.role }])
    assert.equal((await a.request('DELETE', '/v1/vclusters/q')).status, 204)
  })
})
