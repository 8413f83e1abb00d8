// bench:qemu's destination agent, in a worker thread (see qemu-side.ts). Messages from the main
// thread: {cmd: 'check', vmId} -> waits for two more memory-check lines of the arrived guest, then
// destroys it and answers {memOk}; {cmd: 'close'} -> stops and answers {closed: true}.
import '../src/node/polyfill.js'
import { parentPort, workerData } from 'node:worker_threads'
import type { QemuVm } from '../src/vm/qemu/index.js'
import { memLines, waitSerial } from '../test/helpers/qemu.js'
import { meshSide } from './qemu-side.js'

const port = parentPort!
const side = await meshSide((workerData as { dir: string }).dir, (line) => {
  if ((JSON.parse(line) as { level: number }).level >= 40) process.stderr.write(line)
})
port.on('message', (msg: { cmd: string; vmId?: string }) => {
  void (async () => {
    try {
      if (msg.cmd === 'check') {
        const dst = side.vms.get(msg.vmId!)!.instance as QemuVm
        const before = memLines(dst.serialLog).length
        await waitSerial(
          dst.serialLog,
          () => memLines(dst.serialLog).length >= before + 2,
          60_000,
          'writer at dst',
        )
        const memOk = memLines(dst.serialLog).every((l) => l.ok)
        side.vms.delete(msg.vmId!)
        await dst.destroy()
        port.postMessage({ memOk })
      } else if (msg.cmd === 'close') {
        await side.close()
        port.postMessage({ closed: true })
      }
    } catch (err) {
      port.postMessage({ error: (err as Error).message })
    }
  })()
})
port.postMessage({ addr: side.host.getMultiaddrs()[0]!.toString(), peerId: side.host.peerId.toString() })
