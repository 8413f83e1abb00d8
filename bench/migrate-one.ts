// bench:migrate-one — one migration (or a few) between two in-process nodes, with its downtime
// milestones, for profiling the engine (`node --cpu-prof dist/bench/migrate-one.js ...`).
// usage: node dist/bench/migrate-one.js [--size 1024] [--workload idle|hot10|hot100]
//        [--mode precopy|postcopy|auto] [--compression off|auto|on] [--runs 1] [--warmup-ms 1000]
//        [--channel auto|libp2p] [--streams 3]
// Prints one JSON line per run: times, bytes, the data channel, and the pause's milestones at the
// source (`marks`, ms since the pause) and at the destination (`destMarks`, ms since the switchover).
import { loadavg } from 'node:os'
import type { ChannelChoice, CompressionChoice, Mode } from '../src/transfer/index.js'
import type { WorkloadSpec } from '../src/vm/index.js'
import { sleep } from './lib/format.js'
import { createBenchNode, createVm, dropVm, type Fill } from './lib/mesh.js'

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

const a = await createBenchNode('a')
const b = await createBenchNode('b')
try {
  await a.host.dial(b.host.getMultiaddrs()[0]!)
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
    const cpu0 = process.cpuUsage()
    const m = a.service.migrate(id, b.host.peerId, { mode, compression, channel, streams })
    const v = await a.service.done(m.id)
    const ms = performance.now() - t
    const cpu = process.cpuUsage(cpu0)
    const fin = a.logs.find((l) => l.msg === 'migration finished' && l.migration === m.id)
    // The destination logs its side as it ends (maybe just after the source's `done`)
    let dest = b.logs.find((l) => l.msg === 'incoming migration finished' && l.migration === m.id)
    for (let k = 0; !dest && k < 20; k++) {
      await sleep(50)
      dest = b.logs.find((l) => l.msg === 'incoming migration finished' && l.migration === m.id)
    }
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
        wallMs: Math.round(ms),
        cpuMs: Math.round((cpu.user + cpu.system) / 1000),
        totalMs: v.totalMs,
        downtimeMs: v.downtimeMs,
        rounds: v.round,
        sentPerVm: v.bytesSent / ((sizeMiB + Math.max(1, sizeMiB / 16)) * 1048576),
        wireMiB: Math.round(v.wireBytes / 1048576),
        channel: v.channel,
        marks: fin?.downtime,
        destMarks: dest?.switchover,
        load1,
      }),
    )
    await dropVm(b, id)
    await dropVm(a, id)
    a.logs.length = 0
    b.logs.length = 0
  }
} finally {
  await a.stop()
  await b.stop()
}
