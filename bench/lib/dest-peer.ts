// A migration destination in its own process (as a second host would be): started by `fork` from
// bench/lib/dest-process.ts, it runs a bench node (libp2p host, synthetic driver, MigrationService),
// reports its peer id and addresses over IPC, forwards the engine's log records of each migration
// (the "incoming migration finished" record carries the destination's pause milestones) and warnings,
// drops VMs on request, and stops when the parent disconnects (or dies).
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
node.logs.push = (...recs) => {
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
const quit = () => {
  // Bounded: a stuck libp2p stop must not keep this process alive
  setTimeout(() => process.exit(0), 5000).unref()
  void node.stop().finally(() => process.exit(0))
}
process.on('disconnect', quit)
process.on('SIGTERM', quit)
send({
  ready: true,
  peerId: node.host.peerId.toString(),
  addrs: node.host.getMultiaddrs().map((a) => a.toString()),
})
