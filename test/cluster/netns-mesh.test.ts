// Agents on separate "hosts" (network namespaces) in two sites: they form one mesh across the
// routed backbone, a partition between the sites is detected on both sides, and after heal() the
// views converge again. Shaping the wide-area link really limits its bandwidth.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, tempDir, waitFor } from '../helpers/agent-process.js'
import { NetnsMesh, netnsUnavailable } from '../helpers/netns.js'

const why = await netnsUnavailable()
if (why) console.log(`# netns-mesh: running no namespace tests here: ${why}`)

// Short SWIM timings so a partition is seen within seconds.
const GOSSIP_CONFIG = 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n  suspicionMult: 3\n'

type Host = { site: string; status: string }
const aliveCount = (hosts: Host[] | undefined) => hosts?.filter((h) => h.status === 'alive').length ?? 0

describe('agents in network namespaces across two sites', { skip: why }, () => {
  let mesh: NetnsMesh
  let configDir: string
  const agents: RunningAgent[] = []

  before(async () => {
    configDir = await tempDir()
    const config = join(configDir, 'agent.yaml')
    await writeFile(config, GOSSIP_CONFIG)
    const args = ['--config', config, '--log-level', 'info']
    mesh = await NetnsMesh.create([
      { name: 'east', hosts: 2 },
      { name: 'west', hosts: 2 },
    ])
    const first = await mesh.startAgent(mesh.hosts[0]!, { args })
    agents.push(first)
    for (const host of mesh.hosts.slice(1)) {
      agents.push(await mesh.startAgent(host, { args, bootstrap: first.addrs.slice(0, 1) }))
    }
  })

  after(async () => {
    await Promise.all(agents.map((a) => a.stop().catch(() => undefined)))
    await Promise.all([...agents.map((a) => removeDir(a.dataDir)), configDir && removeDir(configDir)])
    await mesh?.destroy()
  })

  it('every agent listens on its own namespace address', () => {
    for (const [i, a] of agents.entries()) {
      const host = mesh.hosts[i]!
      assert.ok(
        a.addrs.some((addr) => addr.includes(`/ip4/${host.ip}/`)),
        `${a.addrs.join(', ')} on ${host.ip}`,
      )
    }
  })

  it('forms one mesh across the sites', async () => {
    for (const a of agents) {
      await waitFor(
        `${a.peerId} sees 4 alive hosts`,
        async () => {
          const r = await a.request('GET', '/v1/cluster')
          return aliveCount(r.body.hosts) === 4
        },
        30_000,
      )
    }
    const r = await agents[0]!.request('GET', '/v1/cluster')
    const sites = new Set((r.body.hosts as Host[]).map((h) => h.site))
    assert.deepEqual([...sites].sort(), ['east', 'west'])
  })

  it('a partition between the sites is seen on both sides, and heals', async () => {
    await mesh.partition('east', 'west')
    const east = agents[0]!
    const west = agents[2]!
    const otherSiteDown = (a: RunningAgent, other: string) => async () => {
      const r = await a.request('GET', '/v1/cluster')
      const hosts = r.body.hosts as Host[]
      return hosts.filter((h) => h.site === other).every((h) => h.status !== 'alive')
    }
    await waitFor('east sees west down', otherSiteDown(east, 'west'), 40_000)
    await waitFor('west sees east down', otherSiteDown(west, 'east'), 40_000)
    // inside a site, nothing changed
    const r = await east.request('GET', '/v1/cluster')
    const eastHosts = (r.body.hosts as Host[]).filter((h) => h.site === 'east')
    assert.equal(aliveCount(eastHosts), 2)

    await mesh.heal()
    for (const a of agents) {
      await waitFor(
        `${a.peerId} sees all 4 alive again`,
        async () => {
          const c = await a.request('GET', '/v1/cluster')
          return aliveCount(c.body.hosts) === 4
        },
        60_000,
      )
    }
  })

  it('a shaped wide-area link is limited to its rate', async () => {
    await mesh.shapeSite('west', { rateMbit: 20 })
    try {
      const westHost = mesh.hostsOf('west')[0]!
      // A byte sink in a west host (a one-line node server), filled from the test process, whose
      // path crosses the west site's wide-area link.
      const mbit = await measureThroughput(westHost.ns, westHost.ip, 3 * 1024 * 1024)
      assert.ok(mbit < 20 * 1.5, `shaped link carried ${mbit.toFixed(1)} Mbit/s`)
      assert.ok(mbit > 1, `shaped link carried only ${mbit.toFixed(1)} Mbit/s`)
    } finally {
      await mesh.shapeSite('west', {})
    }
  })

  it('a delayed wide-area link adds its delay to the round trip between sites', async () => {
    const east = mesh.hostsOf('east')[0]!
    const west = mesh.hostsOf('west')[0]!
    const before = await measureRtt(east.ns, west.ns, west.ip)
    await mesh.shapeSite('west', { delayMs: 40 })
    try {
      const delayed = await measureRtt(east.ns, west.ns, west.ip)
      assert.ok(
        delayed >= 40,
        `RTT ${delayed.toFixed(1)} ms with a 40 ms delay (was ${before.toFixed(1)} ms)`,
      )
      assert.ok(delayed < 40 + before + 200, `RTT ${delayed.toFixed(1)} ms with a 40 ms delay`)
    } finally {
      await mesh.shapeSite('west', {})
    }
    const after = await measureRtt(east.ns, west.ns, west.ip)
    assert.ok(after < 40, `RTT back to ${after.toFixed(1)} ms once the delay is removed`)
  })
})

/** Median TCP round trip (ms) from a client in `fromNs` to an echo server in `toNs` at `ip`. */
async function measureRtt(fromNs: string, toNs: string, ip: string): Promise<number> {
  const port = 20_000 + Math.floor(Math.random() * 10_000)
  const echo = `require('net').createServer(s=>s.pipe(s)).listen(${port},'${ip}',()=>console.log('up'));setTimeout(()=>process.exit(0),20000)`
  const server = spawn('ip', ['netns', 'exec', toNs, process.execPath, '-e', echo], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  try {
    await new Promise<void>((resolve, reject) => {
      server.stdout.once('data', () => resolve())
      server.once('exit', (c) => reject(new Error(`echo server exited ${c}`)))
    })
    const client = `const s=require('net').connect(${port},'${ip}',()=>{s.setNoDelay(true);const r=[];let t=performance.now();s.on('data',()=>{r.push(performance.now()-t);if(r.length<7){t=performance.now();s.write('x')}else{r.sort((a,b)=>a-b);console.log(r[3]);process.exit(0)}});s.write('x')});setTimeout(()=>process.exit(1),15000)`
    const out = await new Promise<string>((resolve, reject) => {
      const c = spawn('ip', ['netns', 'exec', fromNs, process.execPath, '-e', client], {
        stdio: ['ignore', 'pipe', 'inherit'],
      })
      let text = ''
      c.stdout.on('data', (d) => {
        text += d
      })
      c.once('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`rtt client exited ${code}`))))
    })
    return Number(out.trim())
  } finally {
    server.kill('SIGKILL')
  }
}

/** Sends `bytes` to a sink started in `ns` and returns the achieved Mbit/s. */
async function measureThroughput(ns: string, ip: string, bytes: number): Promise<number> {
  const port = 20_000 + Math.floor(Math.random() * 10_000)
  const sink = `require('net').createServer(s=>{let n=0;s.on('data',d=>{n+=d.length;if(n>=${bytes}){s.end('ok');}})}).listen(${port},'${ip}',()=>console.log('up'));setTimeout(()=>process.exit(0),30000)`
  const proc = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', sink], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  try {
    await new Promise<void>((resolve, reject) => {
      proc.stdout.once('data', () => resolve())
      proc.once('exit', (c) => reject(new Error(`sink exited ${c}`)))
    })
    const started = performance.now()
    await new Promise<void>((resolve, reject) => {
      const sock = connect(port, ip, () => {
        const chunk = Buffer.alloc(64 * 1024)
        let sent = 0
        const pump = () => {
          while (sent < bytes) {
            sent += chunk.length
            if (!sock.write(chunk)) return sock.once('drain', pump)
          }
        }
        pump()
      })
      sock.on('data', () => {
        sock.destroy()
        resolve()
      })
      sock.on('error', reject)
    })
    const seconds = (performance.now() - started) / 1000
    return (bytes * 8) / 1e6 / seconds
  } finally {
    proc.kill('SIGKILL')
  }
}
