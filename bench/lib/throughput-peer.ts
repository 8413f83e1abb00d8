// The receiving end of the throughput benchmark in its own process (as a second host would be):
// started by `fork` from bench/migrate.ts, it reports its addresses over IPC and exits when the parent
// disconnects (or dies).
import { startReceivers } from './throughput.js'

if (!process.send) {
  console.error('throughput-peer: run me with child_process.fork')
  process.exit(2)
}
const r = await startReceivers()
process.send({ ready: true, info: r.info })
const quit = () => {
  // Bounded: a stuck libp2p stop must not keep this process alive
  setTimeout(() => process.exit(0), 3000).unref()
  void r.close().finally(() => process.exit(0))
}
process.on('disconnect', quit)
process.on('SIGTERM', quit)
