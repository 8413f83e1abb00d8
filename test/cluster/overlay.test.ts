// The overlay between real agent processes: VMs on different hosts share a virtual LAN (ARP
// answered locally, ICMP echo across hosts), networks are isolated, bad requests change nothing,
// and after a live migration frames reach the VM at its new host with its MAC and IP unchanged.
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  type RunningAgent,
  removeDir,
  runCli,
  startAgent,
  tempDir,
  waitFor,
} from '../helpers/agent-process.js'
import { FAST_GOSSIP, meshFormed, writeConfig } from '../helpers/mesh-setup.js'
import { createVm, migrateAndWait, type Vm } from '../helpers/vm-api.js'

let dir: string
let a: RunningAgent
let b: RunningAgent
let c: RunningAgent

before(async () => {
  dir = await tempDir()
  const config = await writeConfig(dir, 'agent.yaml', [
    ...FAST_GOSSIP,
    'networks:',
    '  - { name: red, subnet: 10.20.0.0/24 }',
  ])
  const args = ['--config', config, '--log-level', 'info']
  a = await startAgent({ dataDir: join(dir, 'a'), site: 'site-a', args })
  b = await startAgent({ dataDir: join(dir, 'b'), site: 'site-a', args, bootstrap: [a.addrs[0]!] })
  c = await startAgent({ dataDir: join(dir, 'c'), site: 'site-b', args, bootstrap: [a.addrs[0]!] })
  await meshFormed(a, 3)
})

after(async () => {
  await Promise.all([a, b, c].filter(Boolean).map((x) => x.stop()))
  await removeDir(dir)
})

async function members(agent: RunningAgent, network: string, n: number) {
  return waitFor(
    `${n} members of ${network}`,
    async () => {
      const r = await agent.request('GET', `/v1/networks/${network}`)
      return r.status === 200 && r.body.vms.length === n ? r.body : undefined
    },
    20_000,
  )
}

async function ping(agent: RunningAgent, vm: Vm, ip: string, extra: object = {}) {
  const r = await agent.request('POST', `/v1/vms/${vm.id}/ping`, { ip, timeoutMs: 1000, ...extra })
  assert.equal(r.status, 200, JSON.stringify(r.body))
  return r.body as { sent: number; received: number; lost: number; lostSeqs: number[] }
}

function metric(text: string, name: string, labels = ''): number {
  const line = text
    .split('\n')
    .find((l) => l.startsWith(`${name}${labels} `) || l.startsWith(`${name}${labels}{`))
  return line ? Number(line.split(' ').pop()) : 0
}

describe('overlay network between agents', () => {
  let va: Vm
  let vb: Vm
  let vx: Vm

  it('networks: from config on every host, created by API known mesh-wide; bad input is refused', async () => {
    const list = (await a.request('GET', '/v1/networks')).body.networks
    assert.deepEqual(
      list.map((n: { name: string; subnet: string; mtu: number }) => [n.name, n.subnet, n.mtu]),
      [['red', '10.20.0.0/24', 1500]],
    )
    const created = await a.request('POST', '/v1/networks', {
      name: 'blue',
      subnet: '10.30.0.0/24',
      mtu: 1400,
    })
    assert.equal(created.status, 201, JSON.stringify(created.body))
    await waitFor('blue to reach c', async () => (await c.request('GET', '/v1/networks/blue')).status === 200)
    const bad = await a.request('POST', '/v1/networks', { name: 'green', subnet: '10.40.0.1/24' })
    assert.equal(bad.status, 400)
    assert.match(bad.body.error.message, /subnet: .*host bits set/)
    const dup = await c.request('POST', '/v1/networks', { name: 'blue', subnet: '10.50.0.0/24' })
    assert.equal(dup.status, 409)
    const unknown = await a.request('POST', '/v1/vms', {
      name: 'lost',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 16,
      networks: ['nope'],
    })
    assert.equal(unknown.status, 400)
    assert.match(unknown.body.error.message, /networks\[0\]: no network 'nope'/)
    assert.equal((await a.request('GET', '/v1/vms')).body.vms.length, 0, 'nothing was created')
    assert.equal((await a.request('GET', '/v1/networks/nope')).status, 404)
  })

  it('VMs on different hosts get a MAC and an IP and reach each other; ARP is answered locally', async () => {
    va = await createVm(a, 'va', { networks: ['red'] })
    vb = await createVm(b, 'vb', { networks: ['red'] })
    vx = await createVm(c, 'vx', { networks: ['blue'] })
    const nicA = va.nics?.[0]
    assert.equal(nicA?.network, 'red')
    assert.match(nicA?.ip ?? '', /^10\.20\.0\.\d+$/)
    assert.match(nicA?.mac ?? '', /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/)
    const red = await members(a, 'red', 2)
    const where = Object.fromEntries(red.vms.map((v: { vmId: string; host: string }) => [v.vmId, v.host]))
    assert.equal(where[va.id], a.peerId)
    assert.equal(where[vb.id], b.peerId)
    await members(b, 'red', 2)

    const r = await ping(a, va, vb.nics?.[0]?.ip ?? '', { count: 5, intervalMs: 20 })
    assert.equal(r.received, 5, JSON.stringify(r))
    const back = await ping(b, vb, nicA?.ip ?? '', { count: 3, intervalMs: 20 })
    assert.equal(back.received, 3, JSON.stringify(back))

    const metricsA = (await a.request('GET', '/metrics')).body as string
    assert.ok(metric(metricsA, 'skymesh_overlay_arp_proxied_total') >= 1, 'ARP answered on a')
    assert.ok(metric(metricsA, 'skymesh_overlay_frames_total', '{path="to-peer"}') >= 5)
    const nicsB = (await b.request('GET', `/v1/vms/${vb.id}/nics`)).body.nics
    assert.equal(nicsB[0].stats.arpAnswered, 0, 'the ARP request never crossed to b')
    assert.ok(nicsB[0].stats.echoAnswered >= 5)
  })

  it('networks are isolated: a VM on blue cannot reach a VM on red', async () => {
    const r = await ping(c, vx, vb.nics?.[0]?.ip ?? '', { count: 2, intervalMs: 10, timeoutMs: 300 })
    assert.equal(r.received, 0)
    const nicsB = (await b.request('GET', `/v1/vms/${vb.id}/nics`)).body.nics
    assert.equal(nicsB[0].stats.misdelivered, 0)
  })

  it('after a live migration, frames reach the VM at its new host; MAC and IP stay', async (t) => {
    const ipB = vb.nics?.[0]?.ip ?? ''
    // Echoes every 20 ms for the whole migration, from a VM on a third host.
    const probe = ping(a, va, ipB, { count: 150, intervalMs: 20, timeoutMs: 1000 })
    await new Promise((r) => setTimeout(r, 300))
    const m = await migrateAndWait(b, vb.id, c, 60_000)
    const during = await probe
    t.diagnostic(`echoes during the migration: ${JSON.stringify(during)}; downtime ${m.downtimeMs} ms`)
    const moved = (await c.request('GET', `/v1/vms/${vb.id}`)).body as Vm
    assert.deepEqual(moved.nics, vb.nics, 'same MAC and IP on the new host')
    // The echoes sent after the migration was over were all answered: the last ones are not lost.
    assert.ok(during.received > 0, JSON.stringify(during))
    assert.ok(!during.lostSeqs.includes(150), JSON.stringify(during))
    const after = await ping(a, va, ipB, { count: 5, intervalMs: 20 })
    assert.equal(after.received, 5)
    const nicsC = (await c.request('GET', `/v1/vms/${vb.id}/nics`)).body.nics
    assert.ok(nicsC[0].stats.echoAnswered >= 5, 'answered at its new host')
    const red = await members(a, 'red', 2)
    assert.equal(red.vms.find((v: { vmId: string }) => v.vmId === vb.id).host, c.peerId)
    const metricsC = (await c.request('GET', '/metrics')).body as string
    assert.ok(metric(metricsC, 'skymesh_overlay_announced_total') >= 1, 'the destination announced the VM')
    const metricsB = (await b.request('GET', '/metrics')).body as string
    t.diagnostic(
      `relayed by the source: ${metric(metricsB, 'skymesh_overlay_frames_total', '{path="relayed"}')}`,
    )
  })

  it('skymesh net ls|create|show and vm create --network', async () => {
    const ls = await runCli(['net', 'ls', '--data-dir', a.dataDir])
    assert.equal(ls.code, 0, ls.stderr)
    assert.match(ls.stdout, /^NAME\s+SUBNET\s+MTU\s+VMS\s+HOSTS/m)
    assert.match(ls.stdout, /^red\s+10\.20\.0\.0\/24\s+1500\s+2\s+2/m)
    const mk = await runCli([
      'net',
      'create',
      'cli-net',
      '--subnet',
      '10.60.0.0/24',
      '--mtu',
      '1400',
      '--data-dir',
      b.dataDir,
    ])
    assert.equal(mk.code, 0, mk.stderr)
    assert.match(mk.stdout, /created network cli-net: 10\.60\.0\.0\/24, MTU 1400/)
    const bad = await runCli(['net', 'create', 'x', '--subnet', '10.60.0.0/33', '--data-dir', b.dataDir])
    assert.notEqual(bad.code, 0)
    assert.match(bad.stderr, /subnet/)
    const vm = await runCli([
      'vm',
      'create',
      'cli-vm',
      '--memory',
      '16',
      '--disk',
      '16',
      '--network',
      'cli-net',
      '--json',
      '--data-dir',
      b.dataDir,
    ])
    assert.equal(vm.code, 0, vm.stderr)
    const rec = JSON.parse(vm.stdout)
    assert.match(rec.nics[0].ip, /^10\.60\.0\.\d+$/)
    const show = await runCli(['net', 'show', 'cli-net', '--data-dir', b.dataDir])
    assert.equal(show.code, 0, show.stderr)
    assert.match(
      show.stdout,
      new RegExp(`${rec.nics[0].ip.replace(/\./g, '\\.')}\\s+${rec.nics[0].mac}\\s+cli-vm`),
    )
  })

  it('deleting a VM frees its NIC mesh-wide', async () => {
    assert.equal((await a.request('DELETE', `/v1/vms/${va.id}`)).status, 204)
    await members(c, 'red', 1)
  })
})
