// The transfer-throughput section of bench:throughput and bench:migrate: raw TCP (= 1.0), node TLS,
// the direct channel's TLS-PSK with bare bytes, the migration engine's direct channel (1 and 3 connections) and libp2p (tcp + noise + yamux)
// with 1..4 streams on one connection and 1 stream on each of 2..4 connections. The receiver runs in a
// child process (as a second host would) or, for reference, in the same process.
//
// Every transport moves the same bytes from the same 1 MiB buffer, in 1 MiB writes (the direct
// channel: the engine's frames of 1 MiB payload). The repetitions are interleaved, in an order that
// rotates (a load change on this shared machine touches every transport alike); each row reports the
// median, its spread, the paired ratios (per repetition, against that repetition's raw TCP and TLS
// samples) and the CPU each end spent per MiB (utime + stime from /proc, when the receiver has its own process):
// CPU per byte is steadier than MB/s when other work shares the cores.
import { fork } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { nativeGcm } from '../../src/transfer/native-gcm.js'
import { describeSealedEngine } from '../../src/transfer/record-cipher.js'
import { f, MiB, median, ratio, sleep, table } from './format.js'
import {
  directTransfer,
  type Libp2pSender,
  libp2pTransfer,
  openConnections,
  type ReceiverInfo,
  type Receivers,
  sealedTransfer,
  startLibp2pSender,
  startReceivers,
  tcpTransfer,
  tlsPskTransfer,
  tlsTransfer,
} from './throughput.js'

export interface TpRow {
  name: string
  connections: number
  streams: number
  mbps: number
  samplesMBps: number[]
  /** Lowest and highest sample, MB/s. */
  minMBps?: number
  maxMBps?: number
  /** Median CPU milliseconds per MiB moved, of the sending and the receiving process (child-process only). */
  senderCpuMsPerMiB?: number
  receiverCpuMsPerMiB?: number
  /**
   * Median over the repetitions of this row's sample / raw TCP's (TLS's) sample of the same repetition:
   * paired, so a load change on the shared machine between repetitions cancels out.
   */
  pairedVsTcp?: number
  pairedVsTls?: number
  note?: string
}

export interface TpSection {
  topology: 'child-process' | 'same-process'
  payloadBytes: number
  reps: number
  tls?: { protocol: string; cipher: string }
  tlsSkipped?: string
  rows: TpRow[]
  load1: number[]
  /** Which code seals the sealed rows' records (record-cipher.ts), and why when not the addon. */
  sealedEngine?: string
}

export interface TpOptions {
  topology: TpSection['topology']
  payloadMiB: number
  reps: number
  log: (msg: string) => void
  /** Row names to measure (substring match), all when absent; raw TCP and TLS are always measured. */
  only?: string[]
}

/** MB/s in decimal megabytes (10^6), as the DESIGN facts are written. */
const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000)

/** CPU milliseconds (user + system) process `pid` has used, or NaN where /proc is not there. */
function cpuMs(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the command), in clock ticks (100/s)
    return (Number(fields[11]) + Number(fields[12])) * 10
  } catch {
    return Number.NaN
  }
}

async function startChildReceivers(): Promise<Receivers & { pid: number }> {
  const file = fileURLToPath(new URL('./throughput-peer.js', import.meta.url))
  const child = fork(file, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const kill = () => {
    if (child.exitCode === null && child.pid) child.kill('SIGTERM')
  }
  process.once('exit', kill)
  const info = await new Promise<ReceiverInfo>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the throughput peer did not start in 30 s')), 30_000)
    child.once('message', (m: { info: ReceiverInfo }) => {
      clearTimeout(timer)
      resolve(m.info)
    })
    child.once('exit', (code) => reject(new Error(`the throughput peer exited (${code})`)))
  })
  return {
    info,
    pid: child.pid!,
    async close() {
      const exited = new Promise((r) => child.once('exit', r))
      child.disconnect()
      await Promise.race([exited, sleep(5000)])
      kill()
      process.off('exit', kill)
    },
  }
}

interface Kind {
  name: string
  connections: number
  streams: number
  run: (total: number) => Promise<number>
}

export async function measureThroughput(o: TpOptions): Promise<TpSection> {
  const total = o.payloadMiB * MiB
  const child = o.topology === 'child-process' ? await startChildReceivers() : undefined
  const receivers = child ?? (await startReceivers())
  const sender: Libp2pSender = await startLibp2pSender()
  const chunk = randomBytes(MiB)
  const { info } = receivers
  const section: TpSection = {
    topology: o.topology,
    payloadBytes: total,
    reps: o.reps,
    rows: [],
    load1: [],
    sealedEngine: describeSealedEngine(),
  }
  section.load1.push(loadavg()[0]!)
  try {
    const conns = await openConnections(sender, info.multiaddrs[0]!, 4)
    const all: Kind[] = [
      {
        name: 'raw TCP (node:net)',
        connections: 1,
        streams: 1,
        run: (n) => tcpTransfer(info.tcpPort, n, chunk),
      },
      {
        name: 'TLS (node:tls)',
        connections: 1,
        streams: 1,
        run: async (n) => {
          const r = await tlsTransfer(info.tlsPort, info.ca, n, chunk)
          section.tls = { protocol: r.protocol, cipher: r.cipher }
          return r.ms
        },
      },
      {
        name: "TLS-PSK 1.2 (the qemu tunnel's suite), bare bytes",
        connections: 1,
        streams: 1,
        run: (n) => tlsPskTransfer(info.psk, n, chunk),
      },
      {
        name: 'sealed (AES-128-GCM), bare 1 MiB messages',
        connections: 1,
        streams: 1,
        run: (n) => sealedTransfer(info.sealed, n, chunk),
      },
      ...[1, 3].map((c) => ({
        name: `direct sealed (AES-128-GCM), engine frames, ${c} conn${c > 1 ? 's' : ''}`,
        connections: c,
        streams: 1,
        run: (n: number) => directTransfer(info.direct, n, c, chunk),
      })),
      // The same with node:crypto sealing at the sending end (the bottleneck): what the addon gains
      ...(nativeGcm()
        ? [
            {
              name: 'direct sealed, engine frames, 1 conn, sender on node:crypto',
              connections: 1,
              streams: 1,
              run: (n: number) => directTransfer(info.direct, n, 1, chunk, 'node:crypto'),
            },
          ]
        : []),
      ...[1, 2, 4].map((s) => ({
        name: `libp2p ${s} stream${s > 1 ? 's' : ''}, 1 conn`,
        connections: 1,
        streams: s,
        run: async (n: number) => (await libp2pTransfer(conns.slice(0, 1), n, chunk, s)).ms,
      })),
      ...[2, 4].map((c) => ({
        name: `libp2p 1 stream × ${c} conns`,
        connections: c,
        streams: 1,
        run: async (n: number) => {
          const r = await libp2pTransfer(conns.slice(0, c), n, chunk, 1)
          if (r.connections !== c) throw new Error(`got ${r.connections} distinct connections, not ${c}`)
          return r.ms
        },
      })),
    ]
    const kinds = all.filter(
      (k, i) => i < 2 || !o.only || o.only.some((w) => k.name.toLowerCase().includes(w.toLowerCase())),
    )
    const samples = new Map<string, number[]>()
    /** Per repetition: each row's MB/s (for the paired ratios). */
    const byRep: Map<string, number>[] = []
    const cpu = new Map<string, { sender: number[]; receiver: number[] }>()
    const failed = new Map<string, string>()
    // Warm-up (JIT, connection code paths), then the repetitions interleaved
    for (const k of kinds) {
      try {
        await k.run(Math.min(32 * MiB, total))
      } catch (err) {
        failed.set(k.name, err instanceof Error ? err.message : String(err))
      }
    }
    for (let r = 0; r < o.reps; r++) {
      byRep.push(new Map())
      // The order rotates every repetition: no transport always runs first or last (load drifts)
      const order = kinds.map((_, i) => kinds[(i + r) % kinds.length]!)
      for (const k of order) {
        if (failed.has(k.name)) continue
        try {
          const s0 = cpuMs(process.pid)
          const r0 = child ? cpuMs(child.pid) : Number.NaN
          const ms = await k.run(total)
          samples.set(k.name, [...(samples.get(k.name) ?? []), mbps(total, ms)])
          byRep[r]!.set(k.name, mbps(total, ms))
          const c = cpu.get(k.name) ?? { sender: [], receiver: [] }
          c.sender.push((cpuMs(process.pid) - s0) / o.payloadMiB)
          if (child) c.receiver.push((cpuMs(child.pid) - r0) / o.payloadMiB)
          cpu.set(k.name, c)
        } catch (err) {
          failed.set(k.name, err instanceof Error ? err.message : String(err))
        }
      }
      o.log(`throughput (${o.topology}): repetition ${r + 1}/${o.reps} done`)
    }
    const paired = (name: string, base: string) =>
      median(byRep.filter((m) => m.has(name) && m.has(base)).map((m) => m.get(name)! / m.get(base)!))
    for (const k of kinds) {
      const s = samples.get(k.name) ?? []
      const c = cpu.get(k.name)
      const row: TpRow = {
        name: k.name,
        connections: k.connections,
        streams: k.streams,
        mbps: median(s),
        samplesMBps: s,
        ...(s.length ? { minMBps: Math.min(...s), maxMBps: Math.max(...s) } : {}),
        pairedVsTcp: paired(k.name, kinds[0]!.name),
        pairedVsTls: paired(k.name, kinds[1]!.name),
        ...(failed.has(k.name) ? { note: `skipped: ${failed.get(k.name)}` } : {}),
      }
      // Only in a child-process run: there the sender's process does nothing else
      if (child && c) {
        row.senderCpuMsPerMiB = median(c.sender)
        row.receiverCpuMsPerMiB = median(c.receiver)
      }
      section.rows.push(row)
    }
    if (failed.has('TLS (node:tls)')) section.tlsSkipped = failed.get('TLS (node:tls)')
    section.load1.push(loadavg()[0]!)
  } finally {
    await sender.stop().catch(() => undefined)
    await receivers.close().catch(() => undefined)
  }
  return section
}

/** Prints the section as a markdown table, under heading `title`. */
export function printThroughput(s: TpSection, title = '### Transfer throughput'): void {
  const tcp = s.rows.find((r) => r.name.startsWith('raw TCP'))?.mbps ?? Number.NaN
  const tls = s.rows.find((r) => r.name.startsWith('TLS'))?.mbps ?? Number.NaN
  const where =
    s.topology === 'child-process'
      ? 'receiver in a child process (2 processes, as 2 hosts)'
      : 'sender and receiver in one process (as the migrations of bench:migrate)'
  console.log(`\n${title}, loopback, ${f(s.payloadBytes / MiB)} MiB, ${where}, median of ${s.reps}\n`)
  const cpuCols = s.topology === 'child-process'
  console.log(
    table(
      [
        'transport',
        'MB/s',
        'min–max',
        '× raw TCP',
        '× TLS',
        'paired × TCP',
        '× TLS',
        ...(cpuCols ? ['CPU ms/MiB send', 'recv'] : []),
        'samples MB/s',
      ],
      s.rows.map((r) => [
        r.name,
        f(r.mbps),
        r.minMBps === undefined ? '-' : `${f(r.minMBps)}–${f(r.maxMBps)}`,
        ratio(r.mbps / tcp),
        ratio(r.mbps / tls),
        ratio(r.pairedVsTcp),
        ratio(r.pairedVsTls),
        ...(cpuCols ? [f(r.senderCpuMsPerMiB, 2), f(r.receiverCpuMsPerMiB, 2)] : []),
        r.note ?? r.samplesMBps.map((x) => f(x)).join(' '),
      ]),
    ),
  )
  console.log(
    '\n× raw TCP, × TLS: ratios of the medians; paired: the median of the ratios of samples taken in the same repetition.',
  )
  if (s.tls)
    console.log(`\nTLS: ${s.tls.protocol} ${s.tls.cipher}, self-signed P-256 certificate made in-process.`)
  if (s.tlsSkipped) console.log(`\nTLS skipped: ${s.tlsSkipped}`)
  if (s.sealedEngine) console.log(`Sealed records: ${s.sealedEngine}.`)
  console.log(
    `Load average (1 min) of this shared machine: ${s.load1.map((x) => f(x, 1)).join(' at the start, ')} at the end.`,
  )
}
