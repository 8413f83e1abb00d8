// bench:qemu — the same tiny guest (scripts/build-guest.sh) migrated by QEMU directly over unix
// sockets (the baseline) vs through the mesh: two libp2p hosts (tcp + noise + yamux, as the
// agents') with the agents' migration service (the destination in a worker thread): QEMU's
// migration stream QEMU to QEMU with QEMU's own TLS-PSK (the default), or, with QEMU TLS off (the
// "agent relay" rows), tunnelled over the agents' direct TLS-PSK connections (libp2p streams with
// SKYMESH_BENCH_CHANNEL=libp2p); the disk mirror through a tunnel; one stream and multifd (4), its
// packets plain (the agents' default) or zstd-compressed (SKYMESH_BENCH_PATHS below).
// Also QEMU to QEMU without agents over TCP: with QEMU's TLS-PSK, and plain (a reference only:
// nothing authenticates plain TCP, the mesh never uses it).
//
// Baseline, in this process: a destination QEMU (`-incoming defer`) exports its new disk layer
// over NBD on a unix socket, the source mirrors its layer into it (blockdev-mirror), migrates with
// pause-before-switchover over another unix socket, completes the mirror, continues; the
// destination resumes. Exactly the QEMU work the mesh path does, without agents and libp2p.
// Mesh: MigrationService.migrate; the figures are the migration's own view (GET /v1/migrations/:id).
// Both: total = start to the guest running at the destination (the destination QEMU's start
// included), downtime = guest paused at the source to running at the destination.
// Idle guest and with its memory writer (2 MiB/s), 128 MiB RAM, TCG or KVM as the host allows.
//
// Each (workload, path) runs SKYMESH_BENCH_REPEATS times (default 3), alternated; medians shown,
// every run (with its milestones: ms from the start to each step) in the JSON.
//
// Usage: npm run bench:qemu   (prints a table, writes bench/results/qemu.json)
import '../src/node/polyfill.js'
import { randomBytes } from 'node:crypto'
import { mkdir, writeFile } from 'node:fs/promises'
import { type AddressInfo, createServer } from 'node:net'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { DEFAULT_MULTIFD_COMPRESSION } from '../src/transfer/qemu/index.js'
import {
  addPskCreds,
  completeMirror,
  exportDisk,
  mirrorProgress,
  QemuDriver,
  type QemuPskCreds,
  startMirror,
  unexportDisk,
  waitMirrorReady,
} from '../src/vm/qemu/index.js'
import { guestSpec, memLines, qemuSkipReason, shortTmpDir, waitSerial } from '../test/helpers/qemu.js'
import { checkBenchArgs } from './lib/args.js'
import { f, ratio, table } from './lib/format.js'
import { meshSide } from './qemu-side.js'

// Options come from the environment (SKYMESH_BENCH_*, see above); --help prints this header.
checkBenchArgs(import.meta.url, {})

interface Run {
  workload: string
  path: string
  /** ms from the start to each step */
  milestones?: Record<string, number>
  totalMs: number
  downtimeMs: number
  bytes: number
  memOk: boolean
  /** Mesh runs: what carried the tunnels (direct-tls or libp2p). */
  channel?: string
  /** Mesh runs: CPU time of the bench process (both agents) during the migration. */
  nodeCpuMs?: number
}

const WORKLOADS = [
  { name: 'idle', rateMiBps: 0 },
  { name: 'writer 2 MiB/s', rateMiBps: 2 },
]
const DOWNTIME_MS = 300
/** Runs of each (workload, path); the table shows medians. */
const REPEATS = Number(process.env.SKYMESH_BENCH_REPEATS ?? 3)
/** multifd compression of a path: QEMU's method and level. */
interface Compression {
  method: 'none' | 'zlib' | 'zstd'
  level?: number
}
/** A path to run: `direct`, or KIND CHANNELS [z LEVEL (zstd) | zl LEVEL (zlib) | n (none)]. */
interface PathSpec {
  kind: 'direct' | 'tls' | 'tcp' | 'mesh' | 'relay'
  channels: number
  compression?: Compression
}
/**
 * Paths to run (comma-separated): direct (unix socket), tlsN and tcpN (QEMU to QEMU, own TLS-PSK /
 * plain TCP, N channels: 1 = one stream, more = multifd), meshN (the agents; QEMU TLS when direct),
 * relayN (the agents with QEMU TLS off: their direct TLS tunnels). A multifd path may end in zL
 * (multifd-compression zstd, level L), zlL (zlib, level L) or n (none); a mesh path without one
 * takes the agents' default (SKYMESH_QEMU_MULTIFD_COMPRESSION).
 */
const PATHS: PathSpec[] = (
  process.env.SKYMESH_BENCH_PATHS ?? 'direct,tls1,tls4,tls4z1,tcp1,mesh1,mesh4,mesh4z1,relay1'
)
  .split(',')
  .map((p) => {
    const m = /^(?:(direct)|(tls|tcp|mesh|relay)(\d+)(?:(n)|(zl?)(\d+))?)$/.exec(p.trim())
    if (!m) throw new Error(`SKYMESH_BENCH_PATHS: unknown path ${p}`)
    if (m[1]) return { kind: 'direct', channels: 1 }
    const channels = Number(m[3])
    const compression: Compression | undefined = m[4]
      ? { method: 'none' }
      : m[5]
        ? { method: m[5] === 'z' ? 'zstd' : 'zlib', level: Number(m[6]) }
        : undefined
    if (compression && channels < 2) throw new Error(`SKYMESH_BENCH_PATHS: ${p}: compression needs multifd`)
    return { kind: m[2] as PathSpec['kind'], channels, ...(compression ? { compression } : {}) }
  })

/** The agents' multifd compression when the path names none. */
const defaultCompression: Compression = {
  method: DEFAULT_MULTIFD_COMPRESSION.method,
  ...(DEFAULT_MULTIFD_COMPRESSION.level ? { level: DEFAULT_MULTIFD_COMPRESSION.level } : {}),
}

/** "1 stream", "multifd 4", "multifd 4 zstd-1". */
function streamsLabel(channels: number, compression?: Compression): string {
  if (channels <= 1) return '1 stream'
  if (!compression) return `multifd ${channels}`
  return `multifd ${channels} ${compression.method}${compression.level ? `-${compression.level}` : ''}`
}

/** Mesh tunnels over `auto` (direct TLS when possible) or `libp2p` streams. */
const CHANNEL = (process.env.SKYMESH_BENCH_CHANNEL ?? 'auto') as 'auto' | 'libp2p'

/** A free TCP port on 127.0.0.1 (bench only: the NBD server of the QEMU-to-QEMU TCP paths). */
async function freePort(): Promise<number> {
  const srv = createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as AddressInfo).port
  await new Promise((r) => srv.close(r))
  return port
}

/**
 * QEMU to QEMU, no agent in the path: over unix sockets (the baseline), over TCP with QEMU's own
 * TLS-PSK (migration stream, multifd channels and the NBD mirror), or over plain TCP (a reference
 * only: nothing authenticates it; the mesh never offers it).
 */
async function direct(
  workload: { name: string; rateMiBps: number },
  rep: number,
  transport: 'unix' | 'tls' | 'tcp' = 'unix',
  channels = 1,
  compression?: Compression,
): Promise<Run> {
  const driver = new QemuDriver()
  const tmp = shortTmpDir('skq-bench-')
  try {
    const spec = guestSpec(`bench-direct-${workload.rateMiBps}-${rep}`, { rateMiBps: workload.rateMiBps })
    const src = await driver.create(spec, { dir: `${tmp.path}/src` })
    await waitSerial(
      src.serialLog,
      () => memLines(src.serialLog).filter((l) => l.ok).length >= 3,
      180_000,
      'boot',
    )
    const t0 = Date.now()
    const milestones: Record<string, number> = {}
    const mark = (what: string) => {
      milestones[what] = Date.now() - t0
    }
    const dst = await driver.prepareIncoming(spec, { dir: `${tmp.path}/dst` })
    const key = randomBytes(32)
    const identity = randomBytes(16).toString('hex')
    const creds: QemuPskCreds[] = []
    if (transport === 'tls') creds.push(await addPskCreds(dst, 'mig-tls', 'server', identity, key))
    const tlsCreds = transport === 'tls' ? 'mig-tls' : undefined
    const nbdAddr =
      transport === 'unix' ? `${tmp.path}/nbd.sock` : { host: '127.0.0.1', port: await freePort(), tlsCreds }
    await exportDisk(dst, nbdAddr)
    const multifd = {
      multifdChannels: channels,
      ...(compression ? { multifdCompression: compression.method, multifdLevel: compression.level } : {}),
    }
    await dst.migrateIncoming(transport === 'unix' ? `unix:${tmp.path}/mig.sock` : 'tcp:127.0.0.1:0', {
      tlsCreds,
      ...multifd,
    })
    const migUri =
      transport === 'unix' ? `unix:${tmp.path}/mig.sock` : `tcp:127.0.0.1:${await dst.incomingPort()}`
    if (transport === 'tls') creds.push(await addPskCreds(src, 'mig-tls', 'client', identity, key))
    mark('accepted')
    // The same waits as the mesh path: QEMU's events, no polling in the way
    const incoming = dst.waitMigration(120_000).then(async (i) => {
      if (i.status === 'completed') await unexportDisk(dst)
      return i
    })
    await startMirror(src, nbdAddr)
    let diskBytes = 0
    await waitMirrorReady(src, AbortSignal.timeout(120_000), (p) => {
      diskBytes = p.offset
    })
    mark('mirrorReady')
    let pausedAt = 0
    src.onStateChange((s) => {
      if (s === 'paused' && !pausedAt) pausedAt = Date.now()
    })
    await src.migrate(migUri, {
      downtimeLimitMs: DOWNTIME_MS,
      autoConverge: true,
      pauseBeforeSwitchover: true,
      ...multifd,
      tlsCreds,
    })
    mark('migrateStarted')
    const pre = await src.waitMigrationStatus(['pre-switchover'], { timeoutMs: 120_000 })
    if (pre.status !== 'pre-switchover') throw new Error(`direct migration ${pre.status}`)
    pausedAt ||= Date.now()
    mark('preSwitchover')
    diskBytes = (await mirrorProgress(src))?.offset ?? diskBytes
    await completeMirror(src, 60_000)
    mark('mirrorCompleted')
    await src.qmp.execute('migrate-continue', { state: 'pre-switchover' })
    const info = await src.waitMigration(120_000)
    if (info.status !== 'completed') throw new Error(`direct migration ${info.status}`)
    mark('completed')
    const dstInfo = await incoming
    if (dstInfo.status !== 'completed')
      throw new Error(`direct migration at the destination ${dstInfo.status}`)
    await dst.resume()
    mark('running')
    const end = Date.now()
    for (const c of creds) await c.remove()
    await src.stop()
    const before = memLines(dst.serialLog).length
    await waitSerial(
      dst.serialLog,
      () => memLines(dst.serialLog).length >= before + 2,
      60_000,
      'writer at dst',
    )
    return {
      workload: workload.name,
      path:
        transport === 'unix'
          ? 'direct (unix socket)'
          : `qemu-${transport} ${transport === 'tls' ? 'TLS-PSK' : '(no auth)'}, ${streamsLabel(channels, compression)}`,
      milestones,
      totalMs: end - t0,
      downtimeMs: end - pausedAt,
      bytes: (info.transferredBytes ?? 0) + diskBytes,
      memOk: memLines(dst.serialLog).every((l) => l.ok),
    }
  } finally {
    await driver.close()
    await tmp.remove()
  }
}

/**
 * Two libp2p hosts (tcp + noise + yamux, as the agents'), each with a migration service and a QEMU
 * driver: the source here, the destination in a worker thread (its own event loop, as another agent).
 */
async function meshPair(dir: string) {
  // The source's milestones come in its 'running at the destination' log line
  const milestones = new Map<string, Record<string, number>>()
  const src = await meshSide(`${dir}/0`, (line) => {
    const rec = JSON.parse(line) as { level: number; migration?: string; milestones?: Record<string, number> }
    if (rec.milestones && rec.migration) milestones.set(rec.migration, rec.milestones)
    else if (rec.level >= 40) process.stderr.write(line)
  })
  const worker = new Worker(new URL('./qemu-worker.js', import.meta.url), { workerData: { dir: `${dir}/1` } })
  const next = () =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      worker.once('message', resolve)
      worker.once('error', reject)
    })
  const hello = (await next()) as { addr: string; peerId: string }
  const dstPeer = peerIdFromString(hello.peerId)
  await src.host.dial(multiaddr(hello.addr))
  return {
    /** `relay`: QEMU's own TLS off (SKYMESH_QEMU_TLS=0, read by the source): the agents' tunnels carry it. */
    async migrate(
      workload: { name: string; rateMiBps: number },
      streams: number,
      rep: number,
      relay = false,
      compression?: Compression,
    ): Promise<Run> {
      const spec = guestSpec(`bench-mesh-${workload.rateMiBps}-${streams}-${rep}`, {
        rateMiBps: workload.rateMiBps,
      })
      const vm = await src.driver.create(spec, { dir: `${dir}/0/${spec.id}` })
      src.vms.set(spec.id, { instance: vm, spec, epoch: 1 })
      await waitSerial(
        vm.serialLog,
        () => memLines(vm.serialLog).filter((l) => l.ok).length >= 3,
        180_000,
        'boot',
      )
      const cpu0 = process.cpuUsage()
      if (relay) process.env.SKYMESH_QEMU_TLS = '0'
      // Read by the source as it offers (SKYMESH_QEMU_MULTIFD_COMPRESSION); unset = the default
      if (compression)
        process.env.SKYMESH_QEMU_MULTIFD_COMPRESSION = `${compression.method}${compression.level ? `:${compression.level}` : ''}`
      const m = src.service.migrate(spec.id, dstPeer, { streams, downtimeMs: DOWNTIME_MS, channel: CHANNEL })
      const v = await src.service.done(m.id).finally(() => {
        delete process.env.SKYMESH_QEMU_TLS
        delete process.env.SKYMESH_QEMU_MULTIFD_COMPRESSION
      })
      const cpu = process.cpuUsage(cpu0)
      if (v.phase !== 'done') throw new Error(`mesh migration ${v.phase}: ${JSON.stringify(v.error)}`)
      worker.postMessage({ cmd: 'check', vmId: spec.id })
      const r = (await next()) as { memOk?: boolean; error?: string }
      if (r.error) throw new Error(r.error)
      return {
        workload: workload.name,
        path: `mesh${relay ? ', agent relay' : ''}, ${streamsLabel(streams, streams > 1 ? (compression ?? defaultCompression) : undefined)}`,
        milestones: milestones.get(m.id),
        totalMs: v.totalMs ?? Number.NaN,
        downtimeMs: v.downtimeMs ?? Number.NaN,
        bytes: v.bytesSent,
        memOk: r.memOk === true,
        ...(v.channel ? { channel: v.channel } : {}),
        nodeCpuMs: Math.round((cpu.user + cpu.system) / 1000),
      }
    },
    async close() {
      worker.postMessage({ cmd: 'close' })
      await next().catch(() => undefined)
      await worker.terminate()
      await src.close()
    },
  }
}

async function main(): Promise<void> {
  const skip = qemuSkipReason()
  if (skip) {
    console.error(`bench:qemu needs QEMU and the guest packages: ${skip}`)
    process.exit(1)
  }
  const tmp = shortTmpDir('skq-bm-')
  const pair = await meshPair(tmp.path)
  const runs: Run[] = []
  try {
    // Alternated, so a slow spell of the shared machine hits every path alike; medians reported
    for (let rep = 0; rep < REPEATS; rep++) {
      for (const w of WORKLOADS) {
        const n = runs.length
        for (const p of PATHS) {
          if (p.kind === 'direct') runs.push(await direct(w, rep))
          else if (p.kind === 'tls' || p.kind === 'tcp')
            runs.push(await direct(w, rep, p.kind, p.channels, p.compression))
          else runs.push(await pair.migrate(w, p.channels, rep, p.kind === 'relay', p.compression))
        }
        for (const r of runs.slice(n)) process.stderr.write(`${JSON.stringify(r)}\n`)
      }
    }
  } finally {
    await pair.close()
    await tmp.remove()
  }
  const median = (xs: number[]) => {
    const v = [...xs].sort((a, b) => a - b)
    const mid = Math.floor(v.length / 2)
    return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2
  }
  const keys = [...new Map(runs.map((r) => [`${r.workload}|${r.path}`, r])).values()]
  const medians = keys.map((k) => {
    const same = runs.filter((r) => r.workload === k.workload && r.path === k.path)
    return {
      workload: k.workload,
      path: k.path,
      runs: same.length,
      totalMs: median(same.map((r) => r.totalMs)),
      downtimeMs: median(same.map((r) => r.downtimeMs)),
      bytes: median(same.map((r) => r.bytes)),
      memOk: same.every((r) => r.memOk),
    }
  })
  const rows = medians.map((r) => {
    const base = medians.find((x) => x.workload === r.workload && x.path.startsWith('direct'))
    return {
      ...r,
      totalRatio: base ? r.totalMs / base.totalMs : Number.NaN,
      downtimeRatio: base ? r.downtimeMs / base.downtimeMs : Number.NaN,
      bytesRatio: base ? r.bytes / base.bytes : Number.NaN,
    }
  })
  process.stdout.write(
    `${table(
      ['workload', 'path', 'total ms', 'downtime ms', 'MiB', 'total ×', 'downtime ×', 'bytes ×', 'mem check'],
      rows.map((r) => [
        r.workload,
        r.path,
        f(r.totalMs),
        f(r.downtimeMs),
        f(r.bytes / 1024 / 1024, 1),
        ratio(r.totalRatio),
        ratio(r.downtimeRatio),
        ratio(r.bytesRatio),
        r.memOk ? 'OK' : 'FAIL',
      ]),
    )}\n`,
  )
  const outDir = join(process.cwd(), 'bench/results')
  await mkdir(outDir, { recursive: true })
  const file = join(outDir, process.env.SKYMESH_BENCH_OUT ?? 'qemu.json')
  await writeFile(
    file,
    `${JSON.stringify({ date: new Date().toISOString(), guest: { memoryMiB: 128, downtimeLimitMs: DOWNTIME_MS }, repeats: REPEATS, medians: rows, runs }, null, 2)}\n`,
  )
  process.stdout.write(`\nwrote ${file}\n`)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
