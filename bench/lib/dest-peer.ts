// A migration destination in its own process (as a second host would be): started by `fork` from
// bench/lib/dest-process.ts, it runs a bench node (libp2p host, synthetic driver, MigrationService),
// reports its peer id and addresses over IPC, forwards the engine's log records of each migration
// (the "incoming migration finished" record carries the destination's pause milestones) and warnings,
// drops VMs on request, and stops when the parent disconnects (or dies).
import { writeFileSync } from 'node:fs'
import { Session } from 'node:inspector'
import { createBenchNode, dropVm } from './mesh.js'

if (!process.send) {
  console.error('dest-peer: run me with child_process.fork')
  process.exit(2)
}
const send = (m: unknown) => {
  if (process.connected) process.send!(m)
}
const pingAbort = process.argv[2] !== 'no-ping-abort'
const retainMiB = Number(process.argv[3] ?? 0)
const node = await createBenchNode('dest', pingAbort, retainMiB)
// Forward what the parent reads: the end record of each migration and every warning
// (none kept here: the parent holds them)
// BENCH_DEST_MEMWATCH=1: samples external memory every 2 ms and prints, per migration, how much it grew
// (the sum of rises between samples: a lower bound of what was allocated outside the JS heap)
let rises = 0
let last = process.memoryUsage().external
if (process.env.BENCH_DEST_MEMWATCH) {
  setInterval(() => {
    const now = process.memoryUsage().external
    if (now > last) rises += now - last
    last = now
  }, 2).unref()
}
node.logs.push = (...recs) => {
  for (const r of recs) {
    if (process.env.BENCH_DEST_MEMWATCH && r.msg === 'incoming migration finished') {
      console.error(`dest external memory rises: ${Math.round(rises / 1048576)} MiB`)
      rises = 0
    }
  }
  for (const r of recs)
    if (r.level >= 40 || r.msg === 'incoming migration finished' || r.msg === 'migration offer answered')
      send({ log: r })
  return 0
}
process.on('message', (m: { drop?: string }) => {
  if (m.drop !== undefined) {
    const id = m.drop
    void dropVm(node, id).finally(() => send({ dropped: id }))
  }
})
// BENCH_DEST_HEAP_SAMPLE=FILE: samples JS heap allocations (collected ones too) from here on and writes
// the profile (a .heapprofile for Chrome DevTools) to FILE when the parent disconnects
const heapSampleFile = process.env.BENCH_DEST_HEAP_SAMPLE
const heapSession = heapSampleFile ? new Session() : undefined
if (heapSession) {
  heapSession.connect()
  heapSession.post('HeapProfiler.startSampling', {
    samplingInterval: 4096,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  })
}
const saveHeapSample = () =>
  new Promise<void>((resolve) => {
    if (!heapSession || !heapSampleFile) return resolve()
    heapSession.post('HeapProfiler.stopSampling', (err, r) => {
      if (!err) writeFileSync(heapSampleFile, JSON.stringify(r.profile))
      resolve()
    })
  })
const quit = () => {
  // Bounded: a stuck libp2p stop must not keep this process alive
  setTimeout(() => process.exit(0), 5000).unref()
  void saveHeapSample()
    .then(() => node.stop())
    .finally(() => process.exit(0))
}
process.on('disconnect', quit)
process.on('SIGTERM', quit)
send({
  ready: true,
  peerId: node.host.peerId.toString(),
  addrs: node.host.getMultiaddrs().map((a) => a.toString()),
})
