// bench:migrate-one — one migration (or a few) between two in-process nodes, with its downtime
// milestones, for profiling the engine (`node --cpu-prof dist/bench/migrate-one.js ...`).
// usage: node dist/bench/migrate-one.js [--size 1024] [--workload idle|hot10|hot100]
//        [--mode precopy|postcopy|auto] [--compression off|auto|on] [--runs 1] [--warmup-ms 1000]
//        [--channel auto|libp2p] [--streams 3] [--dest child|same]
// --dest child (default): the destination runs in a child process, as on two hosts; `same`: both ends
// in this process (one event loop, one thread for both sides' TLS, hashing and I/O).
// Prints one JSON line per run: times, CPU of each end (`cpuMs` this process, `destCpuMs` the child's, from
// /proc; `threads`: split into main thread and the others), bytes, the data channel, the pause's milestones at the
// source (`marks`, ms since the pause) and at the destination (`destMarks`, ms since the switchover),
// and `pause`, the pre-copy pause split (ms): the last round written (`lastRound`, source), the
// destination applying the frames still on their way (`apply`), its digest check (`verify`), its commit
// journal and resume (`handover`), and the rest (`transit`: switchover and RUNNING messages on the
// control stream, and waits for an event loop).
// Also `faults` (minor page faults of each process during the run: fresh memory, ~10 µs a 4 KiB page
// on this host's VM) and `startHrUs` (the run's start on the monotonic clock --cpu-prof and
// `perf record -k CLOCK_MONOTONIC` use, to cut a profile to one run).
import { readdirSync, readFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import type { ChannelChoice, CompressionChoice, Mode } from '../src/transfer/index.js'
import type { WorkloadSpec } from '../src/vm/index.js'
import { runAsAgent } from './lib/agent-runtime.js'
import { checkBenchArgs } from './lib/args.js'
import { startDestProcess } from './lib/dest-process.js'
import { sleep } from './lib/format.js'
import { type BenchNode, createBenchNode, createVm, dropVm, type Fill, type LogRecord } from './lib/mesh.js'

runAsAgent()
checkBenchArgs(import.meta.url, {
  valued: ['size', 'workload', 'mode', 'compression', 'runs', 'warmup-ms', 'channel', 'streams', 'dest'],
})

const WORKLOADS: Record<string, { fill: Fill; workload: WorkloadSpec }> = {
  idle: { fill: 'sparse', workload: { dirtyMiBps: 0, hotSetMiB: 4, cpu: 0, diskWriteMiBps: 0 } },
  hot10: { fill: 'full', workload: { dirtyMiBps: 10, hotSetMiB: 64, cpu: 0, diskWriteMiBps: 0 } },
  hot100: { fill: 'full', workload: { dirtyMiBps: 100, hotSetMiB: 64, cpu: 0, diskWriteMiBps: 0 } },
}

const argv = process.argv.slice(2)
const opt = (name: string, dflt: string) => {
  const i = argv.indexOf(`--${name}`)
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : dflt
}
const sizeMiB = Number(opt('size', '1024'))
const wname = opt('workload', 'idle')
const w = WORKLOADS[wname]
if (!w) throw new Error(`unknown workload ${wname}`)
const mode = opt('mode', 'precopy') as Mode
const compression = opt('compression', 'off') as CompressionChoice
const runs = Number(opt('runs', '1'))
const channel = opt('channel', 'auto') as ChannelChoice
const streams = Number(opt('streams', '3'))
const warmupMs = Number(opt('warmup-ms', '1000'))
const destWhere = opt('dest', 'child')
if (destWhere !== 'child' && destWhere !== 'same') throw new Error(`--dest child|same, not ${destWhere}`)

/** The destination, in this process or in a child: what the runs need of it. */
interface Dest {
  peerId: BenchNode['host']['peerId']
  dial(): Promise<void>
  finished(migrationId: string): Promise<LogRecord | undefined>
  /** The destination's milestones of its answer to the offer (ms since the offer arrived). */
  answered(migrationId: string): Record<string, number> | undefined
  drop(id: string): Promise<void>
  stop(): Promise<void>
  /** CPU time (user + system, ms) the destination process used so far; undefined in this process. */
  cpuMs(): number | undefined
  /** The destination's process id (this process's when it runs here). */
  pid: number
}

/** utime + stime of process `pid` in ms, from /proc (Linux); undefined elsewhere. */
function procCpuMs(pid: number): number | undefined {
  try {
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100
  } catch {
    return undefined
  }
}

/** Minor page faults of process `pid` so far (fresh memory costs ~10 µs a 4 KiB page on some VMs). */
function minorFaults(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7])
  } catch {
    return 0
  }
}

/**
 * CPU ms (user `.u`, system `.s`) of process `pid`: its main thread and all others (V8's GC and compiler
 * threads, libuv's file I/O pool); each thread apart with BENCH_TID=1. From /proc (Linux; {} elsewhere).
 */
function threadCpuMs(pid: number): Record<string, number> {
  const out: Record<string, number> = {}
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const kind = Number(tid) === pid ? 'main' : process.env.BENCH_TID ? `t${tid}` : 'others'
      out[`${kind}.u`] = (out[`${kind}.u`] ?? 0) + (Number(f[11]) * 1000) / 100
      out[`${kind}.s`] = (out[`${kind}.s`] ?? 0) + (Number(f[12]) * 1000) / 100
    }
  } catch {
    // not Linux, or the process is gone
  }
  return out
}

function diffMs(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [k, v] of Object.entries(b)) if (v - (a[k] ?? 0) > 0) out[k] = v - (a[k] ?? 0)
  return out
}

async function sameProcessDest(): Promise<Dest> {
  const b = await createBenchNode('b')
  return {
    peerId: b.host.peerId,
    dial: async () => void (await a.host.dial(b.host.getMultiaddrs()[0]!)),
    answered: (id) => answeredIn(b.logs, id),
    async finished(id) {
      const find = () => b.logs.find((l) => l.msg === 'incoming migration finished' && l.migration === id)
      for (let k = 0; !find() && k < 100; k++) await sleep(50)
      const r = find()
      b.logs.length = 0
      return r
    },
    drop: (id) => dropVm(b, id),
    stop: () => b.stop(),
    cpuMs: () => undefined,
    pid: process.pid,
  }
}

async function childProcessDest(): Promise<Dest> {
  const c = await startDestProcess()
  return {
    peerId: c.peerId,
    dial: async () => void (await a.host.dial(c.addrs[0]!)),
    answered: (id) => answeredIn(c.logs, id),
    async finished(id) {
      const r = await c.finished(id)
      c.logs.length = 0
      return r
    },
    drop: (id) => c.drop(id),
    stop: () => c.stop(),
    cpuMs: () => procCpuMs(c.pid),
    pid: c.pid,
  }
}

function answeredIn(logs: LogRecord[], id: string): Record<string, number> | undefined {
  const r = logs.find((l) => l.msg === 'migration offer answered' && l.migration === id)
  return r?.steps as Record<string, number> | undefined
}

/** The pre-copy pause split (see the top); undefined without both sides' milestones. */
function pauseSplit(
  marks: Record<string, number> | undefined,
  dest: Record<string, number> | undefined,
  downtimeMs: number | undefined,
): Record<string, number> | undefined {
  if (!marks || !dest || downtimeMs === undefined || marks.lastRound === undefined) return undefined
  if (dest.lastFrames === undefined || dest.verified === undefined || dest.resumed === undefined)
    return undefined
  const r = (x: number) => Math.round(x * 10) / 10
  const lastRound = marks.lastRound
  const apply = dest.lastFrames
  const verify = dest.verified - dest.lastFrames
  const handover = dest.resumed - dest.verified
  return {
    lastRound: r(lastRound),
    apply: r(apply),
    verify: r(verify),
    handover: r(handover),
    transit: r(downtimeMs - lastRound - dest.resumed),
  }
}

const a = await createBenchNode('a')
const b = destWhere === 'child' ? await childProcessDest() : await sameProcessDest()
try {
  await b.dial()
  for (let r = 0; r < runs; r++) {
    const id = `one-${r}`
    await createVm(
      a,
      id,
      { memoryMiB: sizeMiB, diskMiB: sizeMiB, diskUsedMiB: Math.max(1, sizeMiB / 16), ...w },
      r + 1,
    )
    await sleep(warmupMs)
    const load1 = loadavg()[0]!
    const t = performance.now()
    const hr0 = process.hrtime.bigint()
    const cpu0 = process.cpuUsage()
    const destCpu0 = b.cpuMs()
    const threads0 = { src: threadCpuMs(process.pid), dest: threadCpuMs(b.pid) }
    const faults0 = { src: minorFaults(process.pid), dest: minorFaults(b.pid) }
    const m = a.service.migrate(id, b.peerId, { mode, compression, channel, streams })
    const v = await a.service.done(m.id)
    const ms = performance.now() - t
    const cpu = process.cpuUsage(cpu0)
    const fin = a.logs.find((l) => l.msg === 'migration finished' && l.migration === m.id)
    // The destination logs its side as it ends (maybe just after the source's `done`)
    const answered = b.answered(m.id)
    const dest = await b.finished(m.id)
    const destCpu1 = b.cpuMs()
    const threads1 = { src: threadCpuMs(process.pid), dest: threadCpuMs(b.pid) }
    const faults1 = { src: minorFaults(process.pid), dest: minorFaults(b.pid) }
    const marks = fin?.downtime as Record<string, number> | undefined
    const destMarks = dest?.switchover as Record<string, number> | undefined
    console.log(
      JSON.stringify({
        run: r,
        size: sizeMiB,
        workload: wname,
        mode,
        compression,
        phase: v.phase,
        error: v.error,
        startAtMs: Math.round(t),
        // the start on the monotonic clock (µs) that --cpu-prof timestamps use: cuts a profile to the run
        startHrUs: Number(hr0 / 1000n),
        wallMs: Math.round(ms),
        cpuMs: Math.round((cpu.user + cpu.system) / 1000),
        destCpuMs: destCpu0 !== undefined && destCpu1 !== undefined ? destCpu1 - destCpu0 : undefined,
        // CPU ms per thread: main (JS, TLS, hashing) and the others (GC, JIT, file I/O), each end
        threads: { src: diffMs(threads0.src, threads1.src), dest: diffMs(threads0.dest, threads1.dest) },
        // minor page faults of each process during the run (with `--dest same`, both are this one's)
        faults: { src: faults1.src - faults0.src, dest: faults1.dest - faults0.dest },
        totalMs: v.totalMs,
        downtimeMs: v.downtimeMs,
        rounds: v.round,
        sentPerVm: v.bytesSent / ((sizeMiB + Math.max(1, sizeMiB / 16)) * 1048576),
        wireMiB: Math.round(v.wireBytes / 1048576),
        channel: v.channel,
        dest: destWhere,
        marks,
        destMarks,
        timeline: fin?.timeline,
        answered,
        // ms from the accept until the destination had made the VM (it accepts while it makes it)
        destPreparedMs: dest?.preparedMs,
        pause: mode === 'precopy' ? pauseSplit(marks, destMarks, v.downtimeMs) : undefined,
        load1,
      }),
    )
    await b.drop(id)
    await dropVm(a, id)
    a.logs.length = 0
  }
} finally {
  await a.stop()
  await b.stop()
}
