// bench:migrate — the live-migration engine on this machine, every figure next to a baseline measured
// in the same run:
// 1. loopback throughput (bench/lib/throughput-section.ts, also `npm run bench:throughput`): raw TCP
//    (= 1.0), node TLS, TLS-PSK, the direct sealed channel, libp2p (tcp + noise + yamux) with 1..4 streams on
//    one connection and 1 stream on each of 2..4 connections; receiver in a child process (as a second
//    host would be) and, for reference, in the same process (as section 2 runs);
// 2. migrations with the real MigrationService from a libp2p host in this process to one in a child
//    process (as two hosts have two processes; `--dest same`: both in this process), synthetic VMs
//    (idle/mostly zero, and a 64 MiB hot set written at 10 and 100 MiB/s), each mode, lz4 off/auto;
//    baselines: a plain sequential copy of the same (paused) VM over one libp2p stream, and raw TCP for
//    the same bytes;
// 3. the same over bandwidth-limited links, made with the engine's `bandwidthMiBps` (not tc).
// Prints tables (and the goals of issue 5, met or not) and writes bench/results/migrate.json.

import { randomBytes } from 'node:crypto'
import { mkdir, writeFile } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import v8 from 'node:v8'
import vm from 'node:vm'
import type { CompressionChoice, MigrationView, Mode } from '../src/transfer/index.js'
import type { WorkloadSpec } from '../src/vm/index.js'
import { runAsAgent } from './lib/agent-runtime.js'
import { type DestProcess, startDestProcess } from './lib/dest-process.js'
import { f, MiB, median, ratio, sleep, table } from './lib/format.js'
import {
  type BenchNode,
  Bucket,
  type CopyTarget,
  createBenchNode,
  createVm,
  dropVm,
  type Fill,
  type LogRecord,
  plainCopy,
  serveCopy,
  type VmPlan,
} from './lib/mesh.js'
import { startReceivers, tcpTransfer } from './lib/throughput.js'
import {
  measureThroughput,
  printThroughput as printSection,
  type TpRow,
  type TpSection,
} from './lib/throughput-section.js'

runAsAgent()

// ------------------------------------------------------------------ options

type WorkloadName = 'idle' | 'hot10' | 'hot100'

const WORKLOADS: Record<WorkloadName, { fill: Fill; workload: WorkloadSpec; label: string }> = {
  idle: {
    fill: 'sparse',
    workload: { dirtyMiBps: 0, hotSetMiB: 4, cpu: 0, diskWriteMiBps: 0 },
    label: 'idle',
  },
  hot10: {
    fill: 'full',
    workload: { dirtyMiBps: 10, hotSetMiB: 64, cpu: 0, diskWriteMiBps: 0 },
    label: '64M@10',
  },
  hot100: {
    fill: 'full',
    workload: { dirtyMiBps: 100, hotSetMiB: 64, cpu: 0, diskWriteMiBps: 0 },
    label: '64M@100',
  },
}

interface Args {
  quick: boolean
  payloadMiB: number
  reps: number
  sizes: number[]
  workloads: WorkloadName[]
  modes: Mode[]
  compression: CompressionChoice[]
  limitedSize: number
  linksMbit: number[]
  limitedWorkloads: WorkloadName[]
  /** VM sizes for the A -> B -> A runs (dedup against the copy the VM left behind); [] = none. */
  roundTripSizes: number[]
  budgetMin: number
  warmupMs: number
  skipThroughput: boolean
  sameProcessThroughput: boolean
  /** false: migration hosts whose libp2p connection monitor does not abort on a missed ping. */
  pingAbort: boolean
  /** JSON output, relative to the working directory. */
  out: string
  /** What carries the migrations' data: 'auto' (the direct TLS channel here) or 'libp2p'. */
  channel: 'auto' | 'libp2p'
  /** Where the loopback and limited migrations' destination runs: a child process, or this one. */
  dest: 'child' | 'same'
}

function parseArgs(argv: string[]): Args {
  const quick = argv.includes('--quick')
  const args: Args = {
    quick,
    payloadMiB: quick ? 64 : 512,
    reps: quick ? 1 : 3,
    sizes: quick ? [64] : [256, 1024],
    workloads: ['idle', 'hot10', 'hot100'],
    modes: ['precopy', 'postcopy', 'auto'],
    compression: ['off', 'auto'],
    limitedSize: quick ? 32 : 256,
    linksMbit: [1000, 100],
    limitedWorkloads: quick ? ['idle', 'hot10'] : ['idle', 'hot10', 'hot100'],
    roundTripSizes: quick ? [64] : [256, 1024],
    budgetMin: quick ? 3 : 15,
    warmupMs: quick ? 300 : 1000,
    skipThroughput: false,
    sameProcessThroughput: true,
    pingAbort: true,
    out: 'bench/results/migrate.json',
    channel: 'auto',
    dest: 'child',
  }
  const list = (v: string) => v.split(',').filter(Boolean)
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const v = argv[i + 1]
    if (a === '--quick' || a === '--skip-throughput' || a === '--no-same-process') {
      if (a === '--skip-throughput') args.skipThroughput = true
      if (a === '--no-same-process') args.sameProcessThroughput = false
      continue
    }
    if (a === '--help') {
      console.log(
        [
          'usage: npm run bench:migrate -- [options]',
          '  --quick                small sizes (64 MiB VMs, 32 MiB limited, 64 MiB payload, 1 rep), ~2-3 min',
          '  --payload-mib N        throughput payload (default 512)',
          '  --reps N               throughput repetitions, median reported (default 3)',
          '  --sizes 256,1024       VM memory sizes in MiB (loopback migrations)',
          '  --workloads idle,hot10,hot100',
          '  --modes precopy,postcopy,auto',
          '  --compression off,auto',
          '  --limited-size 256     VM size for the bandwidth-limited runs (0: none)',
          '  --links 1000,100       link rates in Mbit/s for them',
          '  --limited-workloads idle,hot10,hot100',
          '  --round-trip 256,1024  VM sizes moved A -> B -> A (the way back dedups against the copy left at A)',
          '  --budget-min 15        skip (and say so) what would end past this many minutes',
          '  --warmup-ms 1000       the workload runs this long before each migration',
          '  --skip-throughput      no section 1',
          '  --no-same-process      section 1 only with the receiver in a child process',
          '  --ping-abort on|off    off: migration hosts whose libp2p connection monitor does not abort a',
          "                         connection on a missed heartbeat ping (default on: the agent's host)",
          '  --out FILE             JSON results (default bench/results/migrate.json)',
          '  --channel auto|libp2p  what carries the migrations: the direct sealed channel (auto) or libp2p',
          '  --dest child|same      where sections 2-3 migrate to: a host in a child process (default, as two',
          '                         hosts run two processes) or one in this process (both ends share a thread)',
        ].join('\n'),
      )
      process.exit(0)
    }
    if (v === undefined) throw new Error(`${a} needs a value`)
    if (a === '--payload-mib') args.payloadMiB = Number(v)
    else if (a === '--reps') args.reps = Number(v)
    else if (a === '--sizes') args.sizes = list(v).map(Number)
    else if (a === '--workloads') args.workloads = list(v) as WorkloadName[]
    else if (a === '--modes') args.modes = list(v) as Mode[]
    else if (a === '--compression') args.compression = list(v) as CompressionChoice[]
    else if (a === '--limited-size') args.limitedSize = Number(v)
    else if (a === '--links') args.linksMbit = list(v).map(Number)
    else if (a === '--limited-workloads') args.limitedWorkloads = list(v) as WorkloadName[]
    else if (a === '--round-trip') args.roundTripSizes = list(v).map(Number)
    else if (a === '--budget-min') args.budgetMin = Number(v)
    else if (a === '--warmup-ms') args.warmupMs = Number(v)
    else if (a === '--ping-abort') args.pingAbort = v !== 'off'
    else if (a === '--out') args.out = v
    else if (a === '--channel') args.channel = v === 'libp2p' ? 'libp2p' : 'auto'
    else if (a === '--dest') {
      if (v !== 'child' && v !== 'same') throw new Error(`--dest child|same, not ${v}`)
      args.dest = v
    } else throw new Error(`unknown option ${a} (try --help)`)
    i++
  }
  for (const w of [...args.workloads, ...args.limitedWorkloads]) {
    if (!(w in WORKLOADS)) throw new Error(`unknown workload ${w} (idle, hot10, hot100)`)
  }
  return args
}

const args = parseArgs(process.argv.slice(2))
const t0 = performance.now()
const deadline = t0 + args.budgetMin * 60_000
const elapsedS = () => (performance.now() - t0) / 1000
const log = (msg: string) => console.error(`[${elapsedS().toFixed(0).padStart(4)} s] ${msg}`)

v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc') as () => void

/** MB/s in decimal megabytes (10^6), as the DESIGN facts are written. */
const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000)

// ------------------------------------------------------------------ 1. throughput (bench/lib/throughput-section.ts)

const throughput = (topology: TpSection['topology']) =>
  measureThroughput({ topology, payloadMiB: args.payloadMiB, reps: args.reps, log })
const printThroughput = (s: TpSection) => printSection(s, '### 1. Transfer throughput')

// ------------------------------------------------------------------ 2./3. migrations

interface Baseline {
  sizeMiB: number
  fill: Fill
  /** Rate limit of the copy, bytes/s (undefined: loopback). */
  rateBps?: number
  bytes: number
  rawTcpMs?: number
  plainCopyMs: number
  /** The copy's digest equals the source's (checked after the clock stopped). */
  copyVerified: boolean
  fillMs: number
  load1: number
}

interface RunResult {
  link: string
  linkBps?: number
  sizeMiB: number
  workload: WorkloadName
  mode: Mode
  compression: CompressionChoice
  status: 'done' | 'failed' | 'skipped'
  reason?: string
  vmBytes?: number
  measuredDirtyMiBps?: number
  view?: MigrationView
  switchedToPostcopy?: boolean
  digestVerified?: boolean
  downtimeMarks?: Record<string, number>
  /** The destination's pause milestones (ms since the switchover reached it). */
  destMarks?: Record<string, number>
  destinationPhase?: string
  warnings?: string[]
  /** Times a's connection to b closed during the migration. */
  connectionClosed?: number
  wallMs?: number
  vsPlainCopy?: number
  vsRawTcp?: number
  vsIdeal?: number
  /** 1-minute load average of the machine when the migration started (it is shared). */
  load1?: number
}

let vmSeq = 0

const PRIORITY: WorkloadName[] = ['hot100', 'idle', 'hot10']
const byPriority = (ws: WorkloadName[]) => [...ws].sort((x, y) => PRIORITY.indexOf(x) - PRIORITY.indexOf(y))
const ORDER: WorkloadName[] = ['idle', 'hot10', 'hot100']

/** Results in table order: size, workload (idle, 10, 100), mode, compression as given. */
const tableOrder = (rs: RunResult[]) =>
  [...rs].sort(
    (x, y) =>
      (y.linkBps ?? Number.POSITIVE_INFINITY) - (x.linkBps ?? Number.POSITIVE_INFINITY) ||
      x.sizeMiB - y.sizeMiB ||
      ORDER.indexOf(x.workload) - ORDER.indexOf(y.workload) ||
      args.modes.indexOf(x.mode) - args.modes.indexOf(y.mode) ||
      args.compression.indexOf(x.compression) - args.compression.indexOf(y.compression),
  )

function planFor(sizeMiB: number, w: WorkloadName): VmPlan {
  return {
    memoryMiB: sizeMiB,
    diskMiB: sizeMiB,
    diskUsedMiB: Math.max(1, sizeMiB / 16),
    fill: WORKLOADS[w].fill,
    workload: WORKLOADS[w].workload,
  }
}

async function measureBaseline(
  a: BenchNode,
  b: BenchNode,
  setTarget: (t: CopyTarget | undefined) => void,
  sizeMiB: number,
  fill: Fill,
  rateBps?: number,
  tcpPort?: number,
): Promise<Baseline> {
  const id = `base-${++vmSeq}`
  const plan = planFor(sizeMiB, fill === 'sparse' ? 'idle' : 'hot10')
  const tf = performance.now()
  const src = await createVm(a, id, plan, vmSeq)
  const fillMs = performance.now() - tf
  try {
    await src.pause()
    const dst = await b.driver.prepareIncoming(src.spec, { dir: join(b.dir, id) })
    try {
      const finished = new Promise<void>((resolve, reject) =>
        setTarget({ instance: dst, done: (err?: Error) => (err ? reject(err) : resolve()) }),
      )
      finished.catch(() => undefined)
      const t = performance.now()
      const bytes = await plainCopy(a, b, src, rateBps ? new Bucket(rateBps) : undefined)
      await finished
      const plainCopyMs = performance.now() - t
      setTarget(undefined)
      const [d1, d2] = [await src.digest(), await dst.digest()]
      let rawTcpMs: number | undefined
      if (tcpPort !== undefined) {
        const chunk = randomBytes(MiB)
        await tcpTransfer(tcpPort, Math.min(bytes, 32 * MiB), chunk)
        rawTcpMs = await tcpTransfer(tcpPort, bytes, chunk)
      }
      return {
        sizeMiB,
        fill,
        ...(rateBps ? { rateBps } : {}),
        bytes,
        ...(rawTcpMs !== undefined ? { rawTcpMs } : {}),
        plainCopyMs,
        copyVerified: d1.combined === d2.combined,
        fillMs,
        load1: loadavg()[0]!,
      }
    } finally {
      setTarget(undefined)
      await dst.destroy().catch(() => undefined)
    }
  } finally {
    await dropVm(a, id)
    gc()
  }
}

interface MigrationSpec {
  link: string
  linkBps?: number
  sizeMiB: number
  workload: WorkloadName
  mode: Mode
  compression: CompressionChoice
}

async function migrateOnce(
  a: BenchNode,
  b: BenchNode,
  s: MigrationSpec,
  timeoutMs: number,
): Promise<RunResult> {
  const id = `vm-${++vmSeq}`
  const plan = planFor(s.sizeMiB, s.workload)
  const base: RunResult = { ...s, status: 'failed', load1: loadavg()[0]! }
  try {
    const instance = await createVm(a, id, plan, vmSeq)
    const vmBytes =
      instance.memory.pageCount * instance.memory.pageSize +
      instance.disk.allocatedBlocks().count() * instance.disk.blockSize
    await sleep(args.warmupMs)
    const measuredDirtyMiBps = instance.stats().dirtyMiBps
    const t = performance.now()
    const closesBefore = connectionCloses.length
    const started = a.service.migrate(id, dest ? dest.peerId : b.host.peerId, {
      mode: s.mode,
      compression: s.compression,
      channel: args.channel,
      ...(s.linkBps ? { bandwidthMiBps: s.linkBps / MiB } : {}),
    })
    const timer = setTimeout(() => {
      try {
        a.service.cancel(started.id)
      } catch {
        // past the handover: the engine's own timeouts end it
      }
    }, timeoutMs)
    const view = await a.service.done(started.id)
    clearTimeout(timer)
    const wallMs = performance.now() - t
    const closed = connectionCloses.length - closesBefore
    const inbound = dest
      ? await dest.finished(started.id)
      : await Promise.race([b.service.done(started.id).catch(() => undefined), sleep(5000)])
    const finished = a.logs.find((r) => r.msg === 'migration finished' && r.migration === started.id)
    const destEnd = (dest ? dest.logs : b.logs).find(
      (r) => r.msg === 'incoming migration finished' && r.migration === started.id,
    )
    const warnings = [...a.logs, ...(dest ? dest.logs : b.logs)]
      .filter((r: LogRecord) => r.level >= 40 && r.migration === started.id)
      .map((r) => String(r.msg))
    return {
      ...base,
      status: view.phase === 'done' ? 'done' : 'failed',
      ...(view.error
        ? {
            reason:
              `${view.error.code}: ${view.error.message}` +
              (closed > 0 ? ' [the libp2p connection to the destination closed during the migration]' : ''),
          }
        : {}),
      connectionClosed: closed,
      vmBytes,
      measuredDirtyMiBps,
      view,
      switchedToPostcopy: view.postcopy,
      // The engine verifies before the handover (pre-copy: the VM digest; post-copy: the disk digest,
      // then the page digest once every page arrived); 'done' means every check passed
      digestVerified: view.phase === 'done',
      downtimeMarks: (finished?.downtime as Record<string, number> | undefined) ?? {},
      destMarks: (destEnd?.switchover as Record<string, number> | undefined) ?? {},
      ...(inbound ? { destinationPhase: String((inbound as { phase?: unknown }).phase) } : {}),
      warnings,
      wallMs,
    }
  } catch (err) {
    return { ...base, reason: err instanceof Error ? err.message : String(err) }
  } finally {
    await (dest ? dest.drop(id) : dropVm(b, id))
    await dropVm(a, id)
    a.logs.length = 0
    b.logs.length = 0
    if (dest) dest.logs.length = 0
    gc()
  }
}

interface RoundTrip {
  sizeMiB: number
  workload: WorkloadName
  vmBytes: number
  out?: MigrationView
  back?: MigrationView
  error?: string
}

/** Moves a VM a -> b, lets it run there for the warm-up, and moves it back b -> a (lz4 off: bytes as sent). */
async function roundTrip(sizeMiB: number, workload: WorkloadName): Promise<RoundTrip> {
  const id = `rt-${++vmSeq}`
  const r: RoundTrip = { sizeMiB, workload, vmBytes: 0 }
  try {
    const instance = await createVm(a, id, planFor(sizeMiB, workload), vmSeq)
    r.vmBytes =
      instance.memory.pageCount * instance.memory.pageSize +
      instance.disk.allocatedBlocks().count() * instance.disk.blockSize
    await sleep(args.warmupMs)
    r.out = await a.service.done(a.service.migrate(id, b.host.peerId, { compression: 'off' }).id)
    if (r.out.phase !== 'done') throw new Error(`a -> b ${r.out.error?.code}: ${r.out.error?.message}`)
    await sleep(args.warmupMs)
    r.back = await b.service.done(b.service.migrate(id, a.host.peerId, { compression: 'off' }).id)
    if (r.back.phase !== 'done') throw new Error(`b -> a ${r.back.error?.code}: ${r.back.error?.message}`)
  } catch (err) {
    r.error = err instanceof Error ? err.message : String(err)
  } finally {
    await dropVm(b, id)
    await dropVm(a, id)
    a.logs.length = 0
    b.logs.length = 0
    gc()
  }
  log(
    `round trip ${sizeMiB} MiB ${workload}: out ${f((r.out?.bytesSent ?? 0) / MiB)} MiB, back ${f((r.back?.bytesSent ?? 0) / MiB)} MiB${r.error ? ` (${r.error})` : ''}`,
  )
  return r
}

function printRoundTrips(rts: RoundTrip[]): void {
  if (!rts.length) return
  console.log(
    "\n### 4. A -> B -> A: dedup against the copy the VM left at A (A's content store, hash references)\n",
  )
  console.log(
    table(
      [
        'VM MiB',
        'load',
        'a→b total s',
        'a→b sent MiB',
        'a→b wire MiB',
        'b→a total s',
        'b→a sent MiB',
        'b→a wire MiB',
        'pages by reference',
        'wire b→a / a→b',
        'digest',
      ],
      rts.map((r) => [
        String(r.sizeMiB),
        WORKLOADS[r.workload].label,
        f((r.out?.totalMs ?? Number.NaN) / 1000, 2),
        f((r.out?.bytesSent ?? Number.NaN) / MiB, 1),
        f((r.out?.wireBytes ?? Number.NaN) / MiB, 1),
        f((r.back?.totalMs ?? Number.NaN) / 1000, 2),
        f((r.back?.bytesSent ?? Number.NaN) / MiB, 1),
        f((r.back?.wireBytes ?? Number.NaN) / MiB, 1),
        String(r.back?.storePages ?? '-'),
        r.out && r.back ? ratio(r.back.wireBytes / r.out.wireBytes) : '-',
        r.error ? `FAILED: ${r.error}` : 'ok',
      ]),
    ),
  )
  console.log(
    'The VM runs at b for the warm-up between the moves (its hot set changes); lz4 off both ways. a kept the memory\n' +
      "of the VM when it left (MigrationService retainMiB); on the way back a's accept says it holds content, b asks\n" +
      'which of its pages a holds (content query, 16-byte hashes) and sends those as references.',
  )
}

// ------------------------------------------------------------------ printing

const modeLabel = (r: RunResult) => (r.mode === 'auto' && r.switchedToPostcopy ? 'auto→post' : r.mode)

function runRow(r: RunResult, ratios: 'loopback' | 'limited', failures: RunResult[]): string[] {
  const v = r.view
  const head = [
    ...(ratios === 'limited' ? [r.link] : []),
    `${r.sizeMiB}`,
    WORKLOADS[r.workload].label,
    modeLabel(r),
    r.compression,
    v?.channel ?? '',
  ]
  if (r.status === 'skipped' || !v) {
    return [...head, f(r.measuredDirtyMiBps), `${r.status}: ${r.reason ?? ''}`, ...Array(10).fill('')]
  }
  const vmBytes = r.vmBytes ?? Number.NaN
  const pages = `${v.zeroPages}/${v.dedupPages}`
  return [
    ...head,
    f(r.measuredDirtyMiBps),
    r.status === 'done' ? f((v.totalMs ?? Number.NaN) / 1000, 2) : `FAILED [${failures.push(r)}]`,
    f(v.downtimeMs, 1),
    f(v.wireBytes / vmBytes, 3),
    f(v.bytesSent / vmBytes, 3),
    v.throttle ? `${v.round} thr ${Math.round(v.throttle * 100)}%` : String(v.round),
    pages,
    `${v.compressedFrames}/${v.frames}`,
    String(v.faultPages),
    r.digestVerified ? 'ok' : v.error?.code === 'VERIFY_FAILED' ? 'FAIL' : 'n/a',
    ratio(r.vsPlainCopy),
    ratio(ratios === 'loopback' ? r.vsRawTcp : r.vsIdeal),
  ]
}

function printRuns(title: string, runs: RunResult[], ratios: 'loopback' | 'limited'): void {
  console.log(`\n${title}\n`)
  const failures: RunResult[] = []
  console.log(
    table(
      [
        ...(ratios === 'limited' ? ['link'] : []),
        'VM MiB',
        'load',
        'mode',
        'lz4',
        'channel',
        'dirty MiB/s',
        'total s',
        'downtime ms',
        'wire/VM',
        'sent/VM',
        'rounds',
        'zero/dedup pages',
        'lz4 frames',
        'faults',
        'digest',
        '× copy',
        ratios === 'loopback' ? '× raw TCP' : '× ideal',
      ],
      runs.filter((r) => r.status !== 'skipped').map((r) => runRow(r, ratios, failures)),
    ),
  )
  if (failures.length) {
    console.log('\nFailed (the VM kept running at the source unless the error says POSTCOPY_LOST):')
    failures.forEach((r, k) => {
      console.log(
        `[${k + 1}] ${r.reason ?? 'no reason'} (after ${f((r.view?.totalMs ?? Number.NaN) / 1000, 1)} s)`,
      )
    })
  }
}

function printDowntime(runs: RunResult[]): void {
  const rows = runs
    .filter((r) => r.status === 'done' && r.downtimeMarks && r.downtimeMarks.running !== undefined)
    .map((r) => {
      const m = r.downtimeMarks!
      const d = r.destMarks ?? {}
      // Pre-copy's split; post-copy's switchover has other milestones (its columns stay '-')
      const split = d.lastFrames !== undefined && d.verified !== undefined && d.resumed !== undefined
      return [
        `${r.link} ${r.sizeMiB} ${WORKLOADS[r.workload].label} ${modeLabel(r)} ${r.compression}`,
        f(m.lastRound, 1),
        split ? f(d.lastFrames, 1) : '-',
        split ? f(d.verified! - d.lastFrames!, 1) : '-',
        split ? f(d.resumed! - d.verified!, 1) : '-',
        split && m.lastRound !== undefined ? f(m.running! - m.lastRound - d.resumed!, 1) : '-',
        f(m.running, 1),
      ]
    })
  console.log(
    '\n### Where the downtime goes (ms): last round written at the source (with its digest), then at the destination\n' +
      'applying the frames still on their way, verifying the digest, journaling the commit and resuming; transit: the\n' +
      'switchover and RUNNING messages on the control stream (and waits for an event loop)\n',
  )
  console.log(
    table(
      [
        'run (link, MiB, load, mode, lz4)',
        'last round',
        'apply',
        'verify',
        'commit+resume',
        'transit',
        'downtime',
      ],
      rows,
    ),
  )
}

// ------------------------------------------------------------------ main

const startedAt = new Date().toISOString()
const sections: TpSection[] = []
if (!args.skipThroughput) {
  log('throughput: receiver in a child process')
  sections.push(await throughput('child-process'))
  printThroughput(sections[sections.length - 1]!)
  if (args.sameProcessThroughput) {
    log('throughput: both ends in this process')
    sections.push(await throughput('same-process'))
    printThroughput(sections[sections.length - 1]!)
  }
}

// Both keep the memory of VMs that left (enough for the largest VM), for the A -> B -> A section; in the
// other sections b never sends a VM away, so its store is empty and a's moves are first-time moves
const retainMiB = Math.max(0, ...args.roundTripSizes) + 64
const a = await createBenchNode('a', args.pingAbort, retainMiB)
const b = await createBenchNode('b', args.pingAbort, retainMiB)
// Sections 2-3 migrate to a host in a child process (b still takes the baselines' plain copies and the
// A -> B -> A round trips, which need a node whose VMs this process reaches)
const dest: DestProcess | undefined =
  args.dest === 'child' ? await startDestProcess(args.pingAbort) : undefined
if (dest) await a.host.dial(dest.addrs[0]!, { signal: AbortSignal.timeout(10_000) })
/** Closes of a's connections to the destination (libp2p's connection monitor aborts one whose heartbeat ping times out). */
const connectionCloses: number[] = []
a.host.addEventListener('connection:close', (evt) => {
  if (evt.detail.remotePeer.equals(dest ? dest.peerId : b.host.peerId))
    connectionCloses.push(performance.now())
})
const tcpReceivers = await startReceivers()
let copyTarget: CopyTarget | undefined
await serveCopy(b, () => copyTarget)
await a.host.dial(b.host.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(10_000) })
const setTarget = (t: typeof copyTarget) => {
  copyTarget = t
}

const baselines: Baseline[] = []
const baselineFailures: string[] = []
/** A baseline that fails is reported, and the migrations run without that ratio. */
async function baseline(measure: () => Promise<Baseline>): Promise<void> {
  try {
    baselines.push(await measure())
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err)
    baselineFailures.push(msg)
    log(`baseline failed: ${msg}`)
  }
}
const runs: RunResult[] = []
const limitedRuns: RunResult[] = []
const roundTrips: RoundTrip[] = []
/** Longest wall time seen per (link, size, workload), setup included: the budget's estimate. */
const seen = new Map<string, number>()

function estimateMs(s: MigrationSpec, base: Baseline | undefined): number {
  const key = `${s.link}|${s.sizeMiB}|${s.workload}`
  const known = seen.get(key)
  if (known !== undefined) return known
  const setup = (base?.fillMs ?? 2000) + args.warmupMs
  if (s.linkBps) {
    const fillShare = WORKLOADS[s.workload].fill === 'full' ? 1 : 1 / 16
    return setup + ((s.sizeMiB * MiB * fillShare) / s.linkBps) * 1000 * 1.5
  }
  return setup + (base?.plainCopyMs ?? 5000) * 2.5
}

async function runPlanned(
  specs: MigrationSpec[],
  into: RunResult[],
  baseFor: (s: MigrationSpec) => Baseline | undefined,
): Promise<void> {
  for (const s of specs) {
    const base = baseFor(s)
    const est = estimateMs(s, base)
    if (performance.now() + est > deadline) {
      into.push({ ...s, status: 'skipped', reason: `budget (~${f(est / 1000)} s)` })
      log(`skip ${s.link} ${s.sizeMiB} MiB ${s.workload} ${s.mode} ${s.compression}: past the budget`)
      continue
    }
    const t = performance.now()
    const r = await migrateOnce(a, b, s, Math.max(120_000, est * 5))
    const key = `${s.link}|${s.sizeMiB}|${s.workload}`
    seen.set(key, Math.max(seen.get(key) ?? 0, performance.now() - t))
    if (r.status === 'done' && r.view?.totalMs !== undefined && base) {
      r.vsPlainCopy = r.view.totalMs / base.plainCopyMs
      if (base.rawTcpMs !== undefined) r.vsRawTcp = r.view.totalMs / base.rawTcpMs
    }
    if (r.status === 'done' && r.view?.totalMs !== undefined && s.linkBps && r.vmBytes) {
      r.vsIdeal = r.view.totalMs / ((r.vmBytes / s.linkBps) * 1000)
    }
    into.push(r)
    log(
      `${s.link} ${s.sizeMiB} MiB ${s.workload} ${s.mode} ${s.compression}: ${r.status} ` +
        `total ${f(r.view?.totalMs)} ms downtime ${f(r.view?.downtimeMs, 1)} ms${r.reason ? ` (${r.reason})` : ''}`,
    )
  }
}

try {
  // Loopback: baselines for each size and content, then the migrations
  for (const size of args.sizes) {
    for (const fill of new Set(args.workloads.map((w) => WORKLOADS[w].fill))) {
      log(`baseline: plain copy of a ${size} MiB VM (${fill} memory) over one libp2p stream, raw TCP`)
      await baseline(() => measureBaseline(a, b, setTarget, size, fill, undefined, tcpReceivers.info.tcpPort))
    }
    const specs: MigrationSpec[] = []
    // The goals' workloads first, so that the budget cuts what matters least
    for (const workload of byPriority(args.workloads))
      for (const mode of args.modes)
        for (const compression of args.compression)
          specs.push({ link: 'loopback', sizeMiB: size, workload, mode, compression })
    await runPlanned(specs, runs, (s) =>
      baselines.find((x) => !x.rateBps && x.sizeMiB === s.sizeMiB && x.fill === WORKLOADS[s.workload].fill),
    )
  }
  // Bandwidth-limited links (the engine's token bucket)
  if (args.limitedSize > 0) {
    for (const mbit of args.linksMbit) {
      const rate = (mbit * 1e6) / 8
      const link = mbit >= 1000 ? `${mbit / 1000} Gbit/s` : `${mbit} Mbit/s`
      const bytesEst = args.limitedSize * MiB * (1 + 1 / 16)
      if (performance.now() + (bytesEst / rate) * 1000 + 5000 > deadline) {
        log(`skip the ${link} baseline: past the budget`)
      } else {
        log(`baseline: plain copy of a ${args.limitedSize} MiB VM limited to ${link}`)
        await baseline(() => measureBaseline(a, b, setTarget, args.limitedSize, 'full', rate))
      }
      const specs: MigrationSpec[] = []
      for (const workload of byPriority(args.limitedWorkloads))
        for (const mode of args.modes)
          for (const compression of args.compression)
            specs.push({ link, linkBps: rate, sizeMiB: args.limitedSize, workload, mode, compression })
      await runPlanned(specs, limitedRuns, (s) => baselines.find((x) => x.rateBps === s.linkBps))
    }
  }
  // A -> B -> A: the way back sends references to the copy A kept when the VM left
  for (const size of args.roundTripSizes) {
    for (const workload of ['idle', 'hot10'] as WorkloadName[]) {
      const est =
        estimateMs(
          { link: 'loopback', sizeMiB: size, workload, mode: 'precopy', compression: 'off' },
          undefined,
        ) * 2
      if (performance.now() + est > deadline) {
        log(`skip round trip ${size} MiB ${workload}: past the budget`)
        continue
      }
      log(`round trip ${size} MiB ${workload}: a -> b -> a`)
      roundTrips.push(await roundTrip(size, workload))
    }
  }
} finally {
  await tcpReceivers.close().catch(() => undefined)
  await dest?.stop().catch(() => undefined)
  await a.stop()
  await b.stop()
}

// ------------------------------------------------------------------ report

console.log(
  '\n### 2. Baselines (same run): plain sequential copy of a paused VM over one libp2p stream, raw TCP\n',
)
console.log(
  table(
    [
      'VM MiB',
      'memory',
      'link',
      'bytes MiB',
      'raw TCP s',
      'plain copy s',
      'copy MB/s',
      'copy / TCP',
      'copy digest',
    ],
    baselines.map((x) => [
      String(x.sizeMiB),
      x.fill === 'sparse' ? 'mostly zero' : 'full',
      x.rateBps ? `${f((x.rateBps * 8) / 1e6)} Mbit/s` : 'loopback',
      f(x.bytes / MiB, 1),
      x.rawTcpMs !== undefined ? f(x.rawTcpMs / 1000, 3) : `${f(x.bytes / x.rateBps! / 1, 1)} (ideal)`,
      f(x.plainCopyMs / 1000, 3),
      f(mbps(x.bytes, x.plainCopyMs)),
      x.rawTcpMs !== undefined
        ? ratio(x.plainCopyMs / x.rawTcpMs)
        : ratio(x.plainCopyMs / ((x.bytes / x.rateBps!) * 1000)),
      x.copyVerified ? 'ok' : 'FAIL',
    ]),
  ),
)

if (baselineFailures.length) console.log(`\nBaselines that failed: ${baselineFailures.join('; ')}`)

printRuns(
  `### 2. Migrations on loopback (MigrationService, ${dest ? 'source and destination in two processes' : '2 libp2p hosts in one process'}, 3 streams)`,
  runs,
  'loopback',
)
if (limitedRuns.length) {
  printRuns(
    "### 3. Bandwidth-limited links (the engine's bandwidthMiBps token bucket on data frames, not tc)",
    [...args.linksMbit].flatMap((mbit) =>
      tableOrder(limitedRuns.filter((r) => r.linkBps === (mbit * 1e6) / 8)),
    ),
    'limited',
  )
}
printDowntime(tableOrder([...runs, ...limitedRuns]))
printRoundTrips(roundTrips)

console.log(
  [
    '',
    'VM = memory + allocated disk (disk = memory size, 1/16 of it written before the move; no disk writes during it).',
    'load: idle = 1/32 of memory written (2 MiB chunks, spread), no writes; 64M@N = every page written, then a 64 MiB',
    '  hot set rewritten at N MiB/s (random pages of it). Written pages: 60 % random, 30 % text-like, 10 % copies of 64.',
    'dirty MiB/s: what the workload achieved just before the migration. wire/VM: encoded frames + control / VM;',
    '  sent/VM: content carried (before lz4, after zero-skipping and dedup). zero/dedup pages: pages sent as ZERO',
    '  (or skipped in round 0; pages never written are not even looked at) / as a reference. lz4 frames: compressed / all. faults: post-copy pages the guest touched.',
    "total: the engine's totalMs, offer to the end, including the source releasing its copy (destroy: rm, no fsync).",
    'rounds: pre-copy rounds (+ the stop-copy); "thr N%": auto-converge held back N % of the guest at the end.',
    "downtime: the engine's downtimeMs, pause at the source until RUNNING from the destination.",
    'digest: the engine verified the destination (pre-copy: VM digest before the handover; post-copy: disk digest,',
    '  then the page digest at the end); "ok" = the migration ended done; "n/a" = it failed for another reason first.',
    '× copy: total / plain copy of the same VM (same content, paused, every page sent, one stream, same run);',
    "  × raw TCP: total / raw TCP for the plain copy's bytes; × ideal: total / (VM bytes / link rate).",
    args.dest === 'child'
      ? '  Migrations go to a host in a child process (2 processes, as 2 hosts); the plain copy and raw TCP baselines run in this one.'
      : '  Migrations, plain copy and raw TCP baselines: both ends in this process (--dest same).',
    "Bandwidth limits: the engine's token bucket on data frames (control messages and noise/yamux overhead are not",
    '  limited), over loopback (no added latency or loss).',
    `libp2p hosts: ${args.pingAbort ? "the agent's (createHost), whose connection monitor aborts a connection whose heartbeat ping times out" : 'bench-only copy of the agent host with connectionMonitor.abortConnectionOnPingFailure = false (--ping-abort off)'}.`,
  ].join('\n'),
)

// ------------------------------------------------------------------ goals

interface Goal {
  goal: string
  figure: string
  verdict: string
}
const goals: Goal[] = []
const verdict = (ok: boolean | undefined) => (ok === undefined ? 'not measured' : ok ? 'met' : 'NOT met')

const tp = sections.find((s) => s.topology === 'child-process')
if (tp) {
  const tcp = tp.rows.find((r) => r.name.startsWith('raw TCP'))!.mbps
  const tls = tp.rows.find((r) => r.name.startsWith('TLS'))!.mbps
  const lp = tp.rows.filter((r) => r.name.startsWith('libp2p') && Number.isFinite(r.mbps))
  const one = lp.find((r) => r.streams === 1 && r.connections === 1)
  const best = lp.reduce<TpRow | undefined>((x, r) => (!x || r.mbps > x.mbps ? r : x), undefined)
  const dr = tp.rows.filter((r) => r.name.startsWith('direct') && Number.isFinite(r.mbps))
  const dOne = dr.find((r) => r.connections === 1)
  const dBest = dr.reduce<TpRow | undefined>((x, r) => (!x || r.mbps > x.mbps ? r : x), undefined)
  for (const [label, r] of [
    ['libp2p, one stream', one],
    ['libp2p, best', best],
    ['direct channel, one connection', dOne],
    ['direct channel, best', dBest],
  ] as const) {
    if (!r) continue
    goals.push({
      goal: `throughput >= 0.5 × raw TCP (${label})`,
      figure: `${r.name}: ${f(r.mbps)} MB/s = ${ratio(r.mbps / tcp)}`,
      verdict: verdict(r.mbps / tcp >= 0.5),
    })
    goals.push({
      goal: `throughput >= 1.0 × TLS (${label})`,
      figure: `${r.name}: ${ratio(r.mbps / tls)} of ${f(tls)} MB/s`,
      verdict: Number.isFinite(tls) ? verdict(r.mbps / tls >= 1) : 'not measured (TLS skipped)',
    })
  }
}

const loop = (size: number, w: WorkloadName) => runs.filter((r) => r.sizeMiB === size && r.workload === w)
const desc = (r: RunResult) => `${modeLabel(r)}/${r.compression}`
for (const r of loop(1024, 'hot100')) {
  goals.push({
    goal: 'downtime <= 50 ms, 1 GiB, 64 MiB hot set at 100 MiB/s, loopback',
    figure: r.view ? `${desc(r)}: ${f(r.view.downtimeMs, 1)} ms` : `${desc(r)}: ${r.status}`,
    verdict:
      r.status === 'done'
        ? verdict((r.view!.downtimeMs ?? Infinity) <= 50)
        : r.status === 'skipped'
          ? 'not measured'
          : 'NOT met (failed)',
  })
}
if (!loop(1024, 'hot100').length)
  goals.push({
    goal: 'downtime <= 50 ms, 1 GiB, 64 MiB hot at 100 MiB/s',
    figure: '-',
    verdict: 'not measured (no such run)',
  })
for (const r of loop(1024, 'idle')) {
  goals.push({
    goal: 'idle 1 GiB mostly-zero VM in < 1 s (total)',
    figure: r.view
      ? `${desc(r)}: ${f((r.view.totalMs ?? Number.NaN) / 1000, 2)} s`
      : `${desc(r)}: ${r.status}`,
    verdict:
      r.status === 'done'
        ? verdict((r.view!.totalMs ?? Infinity) < 1000)
        : r.status === 'skipped'
          ? 'not measured'
          : 'NOT met (failed)',
  })
}
if (!loop(1024, 'idle').length)
  goals.push({
    goal: 'idle 1 GiB mostly-zero VM in < 1 s',
    figure: '-',
    verdict: 'not measured (no such run)',
  })

const fullRuns = [...runs, ...limitedRuns].filter(
  (r) => r.status === 'done' && WORKLOADS[r.workload].fill === 'full',
)
const pre = fullRuns.filter((r) => !r.switchedToPostcopy && r.mode !== 'postcopy')
const post = fullRuns.filter((r) => r.mode === 'postcopy')
const span = (xs: RunResult[], k: 'wireBytes' | 'bytesSent') => {
  const v = xs.map((r) => r.view![k] / r.vmBytes!)
  return { min: Math.min(...v), max: Math.max(...v) }
}
if (pre.length) {
  const w = span(pre, 'wireBytes')
  const s = span(pre, 'bytesSent')
  const worst = pre.reduce((x, r) =>
    r.view!.wireBytes / r.vmBytes! > x.view!.wireBytes / x.vmBytes! ? r : x,
  )
  goals.push({
    goal: 'pre-copy bytes on the wire <= 1.3 × memory (full-memory VMs, all links)',
    figure: `wire/VM ${f(w.min, 2)}..${f(w.max, 2)} (worst ${worst.link} ${worst.sizeMiB} MiB ${WORKLOADS[worst.workload].label} ${desc(worst)}); content sent/VM ${f(s.min, 2)}..${f(s.max, 2)}; ${pre.length} runs`,
    verdict: verdict(w.max <= 1.3),
  })
}
if (post.length) {
  const w = span(post, 'wireBytes')
  goals.push({
    goal: 'post-copy bytes ~1.0 × memory (full-memory VMs; met if <= 1.1)',
    figure: `wire/VM ${f(w.min, 2)}..${f(w.max, 2)}; ${post.length} runs`,
    verdict: verdict(w.max <= 1.1),
  })
}
const failedRuns = [...runs, ...limitedRuns].filter((r) => r.status === 'failed')
goals.push({
  goal: 'every migration verified (digest) and done',
  figure: `${[...runs, ...limitedRuns].filter((r) => r.status === 'done').length} done, ${failedRuns.length} failed, ${[...runs, ...limitedRuns].filter((r) => r.status === 'skipped').length} skipped (budget)`,
  verdict: verdict(failedRuns.length === 0),
})

console.log('\n### Goals (issue 5), judged on the figures above\n')
console.log(
  table(
    ['goal', 'figure', 'verdict'],
    goals.map((g) => [g.goal, g.figure, g.verdict]),
  ),
)
const skipped = [...runs, ...limitedRuns].filter((r) => r.status === 'skipped')
if (skipped.length) {
  const groups = new Map<string, number>()
  for (const r of skipped) {
    const k = `${r.link} ${r.sizeMiB} MiB ${WORKLOADS[r.workload].label}`
    groups.set(k, (groups.get(k) ?? 0) + 1)
  }
  console.log(
    `\nSkipped to stay within --budget-min ${args.budgetMin} (${skipped.length} runs, not in the tables): ` +
      [...groups].map(([k, n]) => `${k} × ${n}`).join('; '),
  )
}
{
  const loads = [...runs, ...limitedRuns].flatMap((r) =>
    r.load1 !== undefined && r.status !== 'skipped' ? [r.load1] : [],
  )
  if (loads.length)
    console.log(
      `\nLoad average (1 min) of this shared 2-core machine when the migrations started: ${f(Math.min(...loads), 1)}..${f(Math.max(...loads), 1)} (median ${f(median(loads), 1)}).`,
    )
}
console.log(
  `\nmachine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, Node ${process.version}, load average at the end ${loadavg()
    .map((x) => x.toFixed(1))
    .join(' ')}; run took ${f(elapsedS())} s.`,
)

// npm runs scripts from the package root
const file = resolve(process.cwd(), args.out)
await mkdir(dirname(file), { recursive: true })
await writeFile(
  file,
  `${JSON.stringify(
    {
      date: startedAt,
      args,
      machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version, loadavgEnd: loadavg() },
      throughput: sections,
      baselines,
      migrations: runs,
      limited: limitedRuns,
      roundTrips,
      goals,
      durationS: elapsedS(),
    },
    null,
    2,
  )}\n`,
)
log(`wrote ${file}`)
