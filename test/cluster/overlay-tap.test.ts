// The overlay with a real TCP stack: VMs whose NIC is a TAP device (`nicAttach: 'tap'`), each moved
// into a network namespace this test creates, are real Linux hosts on the virtual LAN. Between two
// agents: ping and TCP to a synthetic VM and to another netns VM, the metadata service read with curl
// and busybox wget, and a TCP connection that stays up while one netns VM migrates to the other
// host (its kernel state stays in the namespace; the NIC moves: the new host makes a new TAP device,
// which the test moves into the same namespace, as a hypervisor would re-plug a guest's NIC).
import assert from 'node:assert/strict'
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { tapSupport } from '../../src/overlay/tap-port.js'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../helpers/agent-process.js'
import { FAST_GOSSIP, meshFormed, writeConfig } from '../helpers/mesh-setup.js'
import { createVm, migrateAndWait, type Vm, type Nic as VmNic } from '../helpers/vm-api.js'

const run = promisify(execFile)
const support = tapSupport()
const nsA = `smvA${process.pid}`
const nsB = `smvB${process.pid}`

interface Nic extends VmNic {
  tap?: { ifname: string; up: boolean; pid?: number; exits: number }
}

const ECHO_SERVER = `
const net = require('node:net')
net.createServer((s) => s.pipe(s)).listen(7000, process.argv[1], () => console.log('listening'))
`
/** Sends 256 KiB, reads it back, compares digests. */
const BULK_CLIENT = `
const net = require('node:net'), crypto = require('node:crypto')
const data = crypto.randomBytes(262144), got = []
let n = 0
const s = net.connect(7000, process.argv[1], () => s.write(data))
s.on('data', (d) => { got.push(d); n += d.length; if (n >= data.length) { s.end(); const same = Buffer.concat(got).equals(data); console.log(same ? 'same ' + n : 'differs'); process.exit(same ? 0 : 1) } })
s.on('error', (e) => { console.log('ERR ' + e.message); process.exit(1) })
`
/** A line every 50 ms, each echoed back in order; on stdin input: wait for the last echo, report. */
const STEADY_CLIENT = `
const net = require('node:net')
let sent = 0, echoed = 0, buf = '', last = Date.now(), maxGap = 0, timer
const s = net.connect(7000, process.argv[1], () => { console.log('connected'); timer = setInterval(() => s.write(++sent + '\\n'), 50) })
s.setNoDelay(true)
s.on('data', (d) => {
  buf += d
  for (let i; (i = buf.indexOf('\\n')) >= 0; ) {
    const k = Number(buf.slice(0, i)); buf = buf.slice(i + 1)
    if (k !== echoed + 1) { console.log('ERR out of order ' + k); process.exit(2) }
    echoed = k; const now = Date.now(); maxGap = Math.max(maxGap, now - last); last = now
    console.log('echoed ' + echoed)
  }
})
s.on('error', (e) => { console.log('ERR ' + e.message); process.exit(1) })
s.on('close', () => { console.log('ERR closed'); process.exit(1) })
process.stdin.once('data', () => {
  clearInterval(timer)
  const end = Date.now() + 20000
  const t = setInterval(() => { if (echoed >= sent || Date.now() > end) { clearInterval(t); console.log(JSON.stringify({ sent, echoed, maxGap })); process.exit(0) } }, 20)
})
`

/** GET with curl where it is installed, else busybox wget (CI installs busybox-static). */
async function httpGet(ns: string, url: string): Promise<string> {
  const curl = await run('sh', ['-c', 'command -v curl']).then(
    () => true,
    () => false,
  )
  const cmd = curl
    ? ['curl', '-sS', '--fail', '--max-time', '10', url]
    : ['busybox', 'wget', '-q', '-T', '10', '-O', '-', url]
  return (await run('ip', ['netns', 'exec', ns, ...cmd])).stdout
}

function inNs(ns: string, script: string, arg: string): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script, arg], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
}

/** Lines a child prints, as they come. */
function lines(p: ChildProcess): string[] {
  const out: string[] = []
  let rest = ''
  p.stdout?.on('data', (d: Buffer) => {
    rest += d.toString()
    const parts = rest.split('\n')
    rest = parts.pop() ?? ''
    out.push(...parts)
  })
  return out
}

describe('overlay with TAP NICs in network namespaces (a real TCP stack)', {
  skip: support.ok ? false : support.reason,
}, () => {
  let dir: string
  let a: RunningAgent
  let b: RunningAgent
  const children: ChildProcess[] = []
  let ta: Vm
  let tb: Vm
  let sb: Vm

  before(async () => {
    dir = await tempDir()
    const config = await writeConfig(dir, 'agent.yaml', [
      ...FAST_GOSSIP,
      'networks:',
      '  - { name: red, subnet: 10.21.0.0/24 }',
    ])
    const args = ['--config', config, '--log-level', 'info']
    a = await startAgent({ dataDir: join(dir, 'a'), args })
    b = await startAgent({ dataDir: join(dir, 'b'), args, bootstrap: [a.addrs[0]!] })
    await meshFormed(a, 2)
    for (const ns of [nsA, nsB]) {
      await run('ip', ['netns', 'add', ns])
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
    }
  })

  after(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
    await Promise.all([a, b].filter(Boolean).map((x) => x.stop()))
    for (const ns of [nsA, nsB]) await run('ip', ['netns', 'del', ns]).catch(() => {})
    await removeDir(dir)
  })

  /** A VM on red whose NIC is a TAP device (`tap`) or the synthetic one. */
  async function redVm(agent: RunningAgent, name: string, tap: boolean): Promise<Vm> {
    return createVm(agent, name, { networks: ['red'], ...(tap ? { nicAttach: 'tap' } : {}) })
  }

  /** The VM's NIC on `agent` once its TAP device is up. */
  async function tapOf(agent: RunningAgent, vm: Vm): Promise<Nic & { tap: NonNullable<Nic['tap']> }> {
    return waitFor(`the TAP of ${vm.name}`, async () => {
      const r = await agent.request('GET', `/v1/vms/${vm.id}/nics`)
      const nic = r.status === 200 ? (r.body.nics[0] as Nic) : undefined
      return nic?.tap?.up ? (nic as Nic & { tap: NonNullable<Nic['tap']> }) : undefined
    })
  }

  /** Moves the VM's TAP into `ns` and gives it the VM's address: a Linux host with the VM's MAC and IP. */
  async function plug(ns: string, nic: Nic & { tap: { ifname: string } }): Promise<void> {
    const dev = nic.tap.ifname
    await run('ip', ['link', 'set', 'dev', dev, 'netns', ns])
    await run('ip', ['-n', ns, 'addr', 'add', `${nic.ip}/24`, 'dev', dev])
    await run('ip', ['-n', ns, 'link', 'set', 'dev', dev, 'up'])
    await run('ip', ['-n', ns, 'route', 'add', '169.254.169.254/32', 'dev', dev])
  }

  it('a netns VM pings a synthetic VM and a netns VM on another host, and carries TCP', async () => {
    ta = await redVm(a, 'ta', true)
    tb = await redVm(b, 'tb', true)
    sb = await redVm(b, 'sb', false)
    const nicA = await tapOf(a, ta)
    const nicB = await tapOf(b, tb)
    assert.equal(nicA.mac, ta.nics?.[0]?.mac)
    await waitFor(
      '3 members of red on a',
      async () => (await a.request('GET', '/v1/networks/red')).body.vms?.length === 3,
    )
    await waitFor(
      '3 members of red on b',
      async () => (await b.request('GET', '/v1/networks/red')).body.vms?.length === 3,
    )
    await plug(nsA, nicA)
    await plug(nsB, nicB)
    const shown = await run('ip', ['-n', nsA, 'link', 'show', 'dev', nicA.tap.ifname])
    assert.match(shown.stdout, new RegExp(`link/ether ${nicA.mac}`), 'the device has the VM’s MAC')

    const toSynthetic = await run('ip', [
      'netns',
      'exec',
      nsA,
      'busybox',
      'ping',
      '-c',
      '3',
      '-W',
      '3',
      sb.nics?.[0]?.ip ?? '',
    ])
    assert.match(toSynthetic.stdout, /3 packets received/)
    const toNetns = await run('ip', ['netns', 'exec', nsA, 'busybox', 'ping', '-c', '3', '-W', '3', nicB.ip])
    assert.match(toNetns.stdout, /3 packets received/)

    const server = inNs(nsB, ECHO_SERVER, nicB.ip)
    children.push(server)
    const serverOut = lines(server)
    await waitFor('the echo server', async () => serverOut.includes('listening'))
    const bulk = inNs(nsA, BULK_CLIENT, nicB.ip)
    children.push(bulk)
    const bulkOut = lines(bulk)
    const code = await new Promise((r) => bulk.on('exit', r))
    assert.equal(code, 0, bulkOut.join('\n'))
    assert.deepEqual(bulkOut, ['same 262144'])

    const nics = (await b.request('GET', `/v1/vms/${sb.id}/nics`)).body.nics
    assert.ok(nics[0].stats.echoAnswered >= 3, 'the synthetic VM answered the kernel’s pings')
  })

  it('the metadata service answers curl and busybox wget from the netns VM with its own context', async () => {
    assert.equal(await httpGet(nsA, 'http://169.254.169.254/latest/meta-data/hostname'), 'ta\n')
    const wget = await run('ip', [
      'netns',
      'exec',
      nsB,
      'busybox',
      'wget',
      '-q',
      '-O',
      '-',
      'http://169.254.169.254/latest/context.json',
    ])
    const doc = JSON.parse(wget.stdout)
    assert.equal(doc.name, 'tb')
    assert.equal(doc.vmId, tb.id)
    assert.equal(doc.ip, tb.nics?.[0]?.ip)
    assert.equal(doc.mac, tb.nics?.[0]?.mac)
    // a virtual cluster context in the VM's directory (as the context broker writes it) is what it reads
    await mkdir(join(b.dataDir, 'vms', tb.id), { recursive: true })
    await writeFile(
      join(b.dataDir, 'vms', tb.id, 'context.json'),
      JSON.stringify({
        cluster: 'c',
        vm: { role: 'worker' },
        peers: [{ name: 'ta', ip: ta.nics?.[0]?.ip, role: 'head' }],
      }),
    )
    assert.equal(
      await httpGet(nsB, 'http://169.254.169.254/latest/meta-data/peers'),
      `ta ${ta.nics?.[0]?.ip} head\n`,
    )
    assert.equal(await httpGet(nsB, 'http://169.254.169.254/latest/meta-data/role'), 'worker\n')
    // a status other than 200: node's own HTTP client in the namespace (busybox wget hides it)
    const status = await run('ip', [
      'netns',
      'exec',
      nsA,
      process.execPath,
      '-e',
      "require('node:http').get(process.argv[1], (r) => { console.log(r.statusCode); r.resume() })",
      'http://169.254.169.254/latest/user-data',
    ])
    assert.equal(status.stdout, '404\n')
    const metrics = (await a.request('GET', '/metrics')).body as string
    assert.match(metrics, /skymesh_overlay_metadata_responses_total\{status="200"\} [1-9]/)
  })

  it('a TCP connection stays up while the netns VM migrates to the other host', async (t) => {
    const before = await tapOf(a, ta)
    const client = inNs(nsA, STEADY_CLIENT, tb.nics?.[0]?.ip ?? '')
    children.push(client)
    const out = lines(client)
    const echoed = () =>
      Number(
        out
          .filter((l) => l.startsWith('echoed '))
          .at(-1)
          ?.split(' ')[1] ?? 0,
      )
    await waitFor('echoes before the migration', async () => echoed() >= 10)

    const m = await migrateAndWait(a, ta.id, b, 60_000)
    // the old device left with its helper; the new host made a new one with the same MAC
    const moved = await tapOf(b, ta)
    assert.notEqual(moved.tap.ifname, before.tap.ifname)
    assert.equal(moved.mac, before.mac)
    assert.equal(moved.ip, before.ip)
    await waitFor('the old device to go', async () =>
      run('ip', ['-n', nsA, 'link', 'show', 'dev', before.tap.ifname]).then(
        () => false,
        () => true,
      ),
    )
    const atPlug = echoed()
    await plug(nsA, moved)
    await waitFor('echoes after the migration', async () => echoed() >= atPlug + 20, 30_000)
    client.stdin?.write('q\n')
    const code = await new Promise((r) => client.on('exit', r))
    const report = JSON.parse(out.at(-1) ?? '{}')
    t.diagnostic(`steady TCP across the migration: ${JSON.stringify(report)}; downtime ${m.downtimeMs} ms`)
    assert.equal(code, 0, out.filter((l) => !l.startsWith('echoed')).join('\n'))
    assert.ok(!out.some((l) => l.startsWith('ERR')), out.filter((l) => l.startsWith('ERR')).join('\n'))
    assert.equal(report.echoed, report.sent, 'every line came back, in order, on the same connection')
  })

  it('the TAP helper is supervised: killed, it comes back with the device', async () => {
    const nic = await tapOf(b, tb)
    process.kill(nic.tap.pid ?? 0, 'SIGKILL')
    const back = await waitFor('the helper to restart', async () => {
      const r = await b.request('GET', `/v1/vms/${tb.id}/nics`)
      const n = r.body.nics[0] as Nic
      return n.tap?.up && n.tap.exits === 1 && n.tap.pid !== nic.tap.pid ? n : undefined
    })
    // a fresh device in the host namespace, with the VM's MAC
    const shown = await run('ip', ['link', 'show', 'dev', back.tap?.ifname ?? ''])
    assert.match(shown.stdout, new RegExp(`link/ether ${nic.mac}`))
  })

  it('refuses nicAttach values it does not know', async () => {
    const r = await a.request('POST', '/v1/vms', {
      name: 'x',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 16,
      networks: ['red'],
      nicAttach: 'vde',
    })
    assert.equal(r.status, 400)
    assert.match(JSON.stringify(r.body), /nicAttach/)
  })
})
