// bench:overlay — VM-to-VM frames across two agents' overlays vs a direct TCP socket between the
// same two processes, and the time from a migration's handover to the first frame at the moved VM.
//
// Part 1 (two processes, this one = host A, a child = host B): each runs the agent's libp2p host
// (tcp + noise + yamux), a virtual switch, the overlay transport and a synthetic NIC. A's VM sends
// frames to B's VM through the overlay; the baseline sends the same frames, length-prefixed and
// batched the same way, over a plain TCP socket between the same processes (no encryption, no
// switch). Throughput: N frames one way, clocked until B has them all. Latency: ICMP echo
// round trips (overlay: NIC to NIC through both switches; direct: the same frame echoed over TCP).
//
// Part 2 (three real agents): a VM pings a VM every 5 ms while it migrates between two other hosts;
// the destination reports the time from the handover (its arrival) to the first frame the moved VM
// receives, next to the migration's own downtime (the pause the VM sees anyway).
//
// Usage: npm run bench:overlay [-- --frames N --pings N --migrations N]
// Prints a table and writes bench/results/overlay.json.
import '../src/node/polyfill.js'
import { type ChildProcess, fork } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import pino from 'pino'
import { createHost } from '../src/node/p2p.js'
import {
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  ETHERTYPE_IPV4,
  ICMP_ECHO_REQUEST,
  IP_PROTO_ICMP,
  OverlayTransport,
  parseEthernet,
  SyntheticNic,
  VirtualSwitch,
} from '../src/overlay/index.js'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../test/helpers/agent-process.js'
import { checkBenchArgs } from './lib/args.js'
import { f, median, ratio, sleep, table } from './lib/format.js'

const NET = 'bench'
const A = { vmId: 'vm-a', mac: '02:00:00:00:00:0a', ip: '10.99.0.10' }
const B = { vmId: 'vm-b', mac: '02:00:00:00:00:0b', ip: '10.99.0.11' }
const SIZES = [1514, 128]

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : dflt
}

interface Node {
  peerId: string
  addrs: string[]
  sw: VirtualSwitch
  transport: OverlayTransport
  nic: SyntheticNic
  stop(): Promise<void>
}

/** One side: the agent's host, a switch, the transport and one synthetic NIC. */
async function overlayNode(
  self: typeof A,
  other: typeof A,
): Promise<Node & { setPeer(peerId: string): void; dial(addr: string): Promise<unknown> }> {
  const host = await createHost({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
  })
  const transport: OverlayTransport = new OverlayTransport({
    host,
    logger: pino({ level: 'silent' }),
    maxQueue: 65536,
    onBatch: (peer, _a, frames) => {
      for (const fr of frames) sw.fromPeer(peer, fr.network, fr.data, fr.relayed)
    },
  })
  const sw: VirtualSwitch = new VirtualSwitch({
    send: (h, network, data, relayed) => transport.send(h, { network, data, relayed }),
  })
  sw.addNetwork(NET)
  const nic = new SyntheticNic({ ...self, transmit: (fr) => sw.fromPort(self.vmId, NET, fr) })
  sw.attach({ ...self, network: NET, deliver: (fr) => nic.receive(fr) })
  await transport.start()
  return {
    peerId: host.peerId.toString(),
    addrs: host.getMultiaddrs().map(String),
    sw,
    transport,
    nic,
    setPeer: (peerId) => sw.setRemote([{ ...other, network: NET, host: peerId }]),
    dial: (addr) => host.dial(multiaddr(addr)),
    async stop() {
      await transport.stop()
      await host.stop()
    },
  }
}

/** Frames as [u32 length][frame] over a socket, parsed back into frames. */
function frameReader(onFrame: (fr: Uint8Array) => void): (chunk: Buffer) => void {
  let buf: Buffer = Buffer.alloc(0)
  return (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk
    let off = 0
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off)
      if (buf.length - off - 4 < len) break
      onFrame(buf.subarray(off + 4, off + 4 + len))
      off += 4 + len
    }
    buf = buf.subarray(off)
  }
}

function lp(frames: Uint8Array[]): Buffer {
  const total = frames.reduce((s, fr) => s + 4 + fr.length, 0)
  const out = Buffer.allocUnsafe(total)
  let off = 0
  for (const fr of frames) {
    out.writeUInt32BE(fr.length, off)
    out.set(fr, off + 4)
    off += 4 + fr.length
  }
  return out
}

// ---------------------------------------------------------------- host B (child process)

async function peerMain(): Promise<void> {
  const node = await overlayNode(B, A)
  let expect = 0
  let got = 0
  let mode: 'overlay' | 'tcp' = 'overlay'
  const count = (fr: Uint8Array) => {
    if (!parseEthernet(fr)) return
    if (++got === expect) process.send?.({ cmd: 'done', got })
  }
  node.nic.onFrame((fr) => mode === 'overlay' && count(fr))
  const server = net.createServer((sock) => {
    sock.setNoDelay(true)
    sock.on(
      'data',
      frameReader((fr) => {
        if (mode === 'tcp') count(fr)
        else sock.write(lp([fr])) // echo mode for latency
      }),
    )
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as net.AddressInfo).port
  process.on(
    'message',
    async (m: { cmd: string; n?: number; mode?: 'overlay' | 'tcp' | 'echo'; peer?: string }) => {
      if (m.cmd === 'peer' && m.peer) node.setPeer(m.peer)
      if (m.cmd === 'expect') {
        mode = m.mode === 'tcp' ? 'tcp' : 'overlay'
        expect = m.n ?? 0
        got = 0
        process.send?.({ cmd: 'ready' })
      }
      if (m.cmd === 'echo') {
        mode = 'overlay' // tcp frames are echoed, overlay pings answered by the NIC
        process.send?.({ cmd: 'ready' })
      }
      if (m.cmd === 'stop') {
        server.close()
        await node.stop()
        process.exit(0)
      }
    },
  )
  process.send?.({ cmd: 'hello', peerId: node.peerId, addrs: node.addrs, tcpPort: port })
}

// ---------------------------------------------------------------- host A (this process)

function nextMessage(child: ChildProcess, cmd: string): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    const on = (m: Record<string, unknown>) => {
      if (m.cmd !== cmd) return
      child.off('message', on)
      resolve(m)
    }
    child.on('message', on)
  })
}

function testFrame(size: number, seq: number): Uint8Array {
  const payload = new Uint8Array(size - 14)
  new DataView(payload.buffer).setUint32(0, seq)
  return buildEthernet(B.mac, A.mac, 0x88b5, payload) // local experimental ethertype
}

async function overlayThroughput(node: Node, child: ChildProcess, peer: string, n: number, size: number) {
  const ready = nextMessage(child, 'ready')
  child.send({ cmd: 'expect', n, mode: 'overlay' })
  await ready
  const done = nextMessage(child, 'done')
  const start = performance.now()
  let sent = 0
  while (sent < n) {
    // Pace on the transport's queue, as a NIC ring would.
    if (node.transport.queued(peer) > 4096) {
      await new Promise((r) => setImmediate(r))
      continue
    }
    const burst = Math.min(512, n - sent)
    for (let i = 0; i < burst; i++) {
      if (node.sw.fromPort(A.vmId, NET, testFrame(size, sent)) !== 'sent') throw new Error('frame not sent')
      sent++
    }
    await new Promise((r) => setImmediate(r))
  }
  await done
  return performance.now() - start
}

async function tcpThroughput(sock: net.Socket, child: ChildProcess, n: number, size: number) {
  const ready = nextMessage(child, 'ready')
  child.send({ cmd: 'expect', n, mode: 'tcp' })
  await ready
  const done = nextMessage(child, 'done')
  const start = performance.now()
  let sent = 0
  while (sent < n) {
    const burst = Math.min(512, n - sent)
    const frames: Uint8Array[] = []
    for (let i = 0; i < burst; i++) frames.push(testFrame(size, sent++))
    if (!sock.write(lp(frames))) await new Promise((r) => sock.once('drain', r))
    else await new Promise((r) => setImmediate(r))
  }
  await done
  return performance.now() - start
}

async function tcpLatency(sock: net.Socket, pings: number): Promise<number[]> {
  const echo = buildEthernet(
    B.mac,
    A.mac,
    ETHERTYPE_IPV4,
    buildIpv4(
      A.ip,
      B.ip,
      IP_PROTO_ICMP,
      buildIcmpEcho({ type: ICMP_ECHO_REQUEST, id: 1, seq: 1, data: new Uint8Array(56) }),
    ),
  )
  let waiting: (() => void) | undefined
  sock.on(
    'data',
    frameReader(() => waiting?.()),
  )
  const rtts: number[] = []
  for (let i = 0; i < pings; i++) {
    const t0 = performance.now()
    await new Promise<void>((r) => {
      waiting = r
      sock.write(lp([echo]))
    })
    rtts.push(performance.now() - t0)
  }
  sock.removeAllListeners('data')
  return rtts
}

const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))]

async function partOne(frames: number, pings: number) {
  const child = fork(fileURLToPath(import.meta.url), ['--peer'], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  const hello = (await nextMessage(child, 'hello')) as { peerId: string; addrs: string[]; tcpPort: number }
  const node = await overlayNode(A, B)
  node.setPeer(hello.peerId)
  child.send({ cmd: 'peer', peer: node.peerId })
  await node.dial(hello.addrs[0]!)
  await sleep(200)
  await node.nic.ping(B.ip, { timeoutMs: 5000 })
  const sock = net.connect(hello.tcpPort, '127.0.0.1')
  sock.setNoDelay(true)
  await new Promise((r) => sock.once('connect', r))

  const throughput = []
  for (const size of SIZES) {
    // warm-up of both paths, then measured runs
    await overlayThroughput(node, child, hello.peerId, Math.min(5000, frames), size)
    await tcpThroughput(sock, child, Math.min(5000, frames), size)
    const overlayMs = await overlayThroughput(node, child, hello.peerId, frames, size)
    const directMs = await tcpThroughput(sock, child, frames, size)
    const fps = (ms: number) => frames / (ms / 1000)
    throughput.push({
      frameBytes: size,
      frames,
      overlay: { ms: overlayMs, framesPerSec: fps(overlayMs), MBps: (fps(overlayMs) * size) / 1e6 },
      direct: { ms: directMs, framesPerSec: fps(directMs), MBps: (fps(directMs) * size) / 1e6 },
      ratio: directMs / overlayMs,
    })
  }

  const ready = nextMessage(child, 'ready')
  child.send({ cmd: 'echo' })
  await ready
  const overlayRtts: number[] = []
  for (let i = 0; i < pings; i++) overlayRtts.push((await node.nic.ping(B.ip, { timeoutMs: 5000 })).rttMs)
  const directRtts = await tcpLatency(sock, pings)
  const latency = {
    pings,
    overlay: { medianMs: median(overlayRtts), p99Ms: pct(overlayRtts, 0.99) },
    direct: { medianMs: median(directRtts), p99Ms: pct(directRtts, 0.99) },
    ratio: median(overlayRtts) / median(directRtts),
  }
  sock.destroy()
  child.send({ cmd: 'stop' })
  await new Promise((r) => child.once('exit', r))
  await node.stop()
  return { throughput, latency }
}

async function partTwo(migrations: number) {
  const dir = await tempDir('skymesh-bench-overlay-')
  const config = join(dir, 'agent.yaml')
  await writeFile(config, 'networks:\n  - { name: bench, subnet: 10.99.0.0/24 }\n')
  const args = ['--config', config, '--log-level', 'warn']
  const agents: RunningAgent[] = []
  const runs = []
  try {
    const a = await startAgent({ dataDir: join(dir, 'a'), args })
    agents.push(a)
    for (const name of ['b', 'c'])
      agents.push(await startAgent({ dataDir: join(dir, name), args, bootstrap: [a.addrs[0]!] }))
    const [, b, c] = agents as [RunningAgent, RunningAgent, RunningAgent]
    await waitFor(
      'the mesh',
      async () => (await a.request('GET', '/v1/cluster')).body.counts.alive === 3,
      30_000,
    )
    const body = (name: string) => ({
      name,
      vcpus: 1,
      memoryMiB: 64,
      diskMiB: 16,
      networks: ['bench'],
      workload: { dirtyMiBps: 8, hotSetMiB: 16 },
    })
    const pinger = (await a.request('POST', '/v1/vms', body('pinger'))).body
    const moved = (await b.request('POST', '/v1/vms', body('moved'))).body
    const ip = moved.nics[0].ip as string
    await waitFor(
      'the network view',
      async () => (await a.request('GET', '/v1/networks/bench')).body.vms?.length === 2,
      20_000,
    )
    let from = b
    let to = c
    for (let i = 0; i < migrations; i++) {
      const probe = a.request('POST', `/v1/vms/${pinger.id}/ping`, {
        ip,
        count: 400,
        intervalMs: 5,
        timeoutMs: 1000,
      })
      await sleep(200)
      const started = await from.request('POST', `/v1/vms/${moved.id}/migrate`, {
        to: to.peerId,
        mode: 'precopy',
      })
      const m = await waitFor(
        'the migration',
        async () => {
          const r = await from.request('GET', `/v1/migrations/${started.body.id}`)
          return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
        },
        60_000,
      )
      const echoes = (await probe).body
      const nics = (await to.request('GET', `/v1/vms/${moved.id}/nics`)).body.nics
      const relayed = (await from.request('GET', '/metrics')).body as string
      runs.push({
        phase: m.phase,
        downtimeMs: m.downtimeMs,
        handoverToFirstFrameMs: nics[0]?.firstFrameAfterArrivalMs,
        echoesSent: echoes.sent,
        echoesLost: echoes.lost,
        lostSpanMs: echoes.lost * 5,
        relayedBySource: Number(
          /skymesh_overlay_frames_total\{path="relayed"\} (\d+)/.exec(relayed)?.[1] ?? 0,
        ),
      })
      ;[from, to] = [to, from]
      await sleep(500)
    }
  } finally {
    await Promise.all(agents.map((x) => x.stop()))
    await removeDir(dir)
  }
  return runs
}

async function main(): Promise<void> {
  const args = { frames: arg('frames', 50_000), pings: arg('pings', 1000), migrations: arg('migrations', 3) }
  const one = await partOne(args.frames, args.pings)
  const two = args.migrations > 0 ? await partTwo(args.migrations) : []

  process.stdout.write(
    '\nVM-to-VM frames across two agents (overlay) vs a direct TCP socket between the same processes\n\n',
  )
  process.stdout.write(
    `${table(
      ['frame', 'overlay frames/s', 'overlay MB/s', 'direct frames/s', 'direct MB/s', 'overlay/direct'],
      one.throughput.map((t) => [
        `${t.frameBytes} B`,
        f(t.overlay.framesPerSec),
        f(t.overlay.MBps, 1),
        f(t.direct.framesPerSec),
        f(t.direct.MBps, 1),
        ratio(t.ratio),
      ]),
    )}\n\n`,
  )
  const l = one.latency
  process.stdout.write(
    `${table(
      ['echo round trip', 'median ms', 'p99 ms'],
      [
        [
          'overlay (NIC -> switch -> libp2p -> switch -> NIC)',
          f(l.overlay.medianMs, 3),
          f(l.overlay.p99Ms, 3),
        ],
        ['direct TCP socket', f(l.direct.medianMs, 3), f(l.direct.p99Ms, 3)],
        ['overlay/direct', ratio(l.ratio), '-'],
      ],
    )}\n\n`,
  )
  process.stdout.write(
    'Migration: handover to first frame at the moved VM (echo every 5 ms from a third host)\n\n',
  )
  process.stdout.write(
    `${table(
      ['run', 'downtime ms', 'handover->first frame ms', 'echoes lost', 'lost span ms', 'relayed by source'],
      two.map((r, i) => [
        String(i + 1),
        f(r.downtimeMs, 1),
        f(r.handoverToFirstFrameMs, 1),
        `${r.echoesLost}/${r.echoesSent}`,
        String(r.lostSpanMs),
        String(r.relayedBySource),
      ]),
    )}\n`,
  )
  const outDir = join(process.cwd(), 'bench/results')
  await mkdir(outDir, { recursive: true })
  const file = join(outDir, 'overlay.json')
  await writeFile(
    file,
    `${JSON.stringify({ date: new Date().toISOString(), args, ...one, migrations: two }, null, 2)}\n`,
  )
  process.stdout.write(`\nwrote ${file}\n`)
}

if (process.argv.includes('--peer')) {
  void peerMain()
} else {
  checkBenchArgs(import.meta.url, { valued: ['frames', 'pings', 'migrations'] })
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
