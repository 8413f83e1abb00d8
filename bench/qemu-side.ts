// One side of bench:qemu's mesh pair: a libp2p host (tcp + noise + yamux, as an agent's) with the
// agents' migration service and a QEMU driver. The source side runs in the bench's main thread, the
// destination in a worker thread (qemu-worker.ts): two agents are two processes, each with its own
// event loop, so the two ends of a tunnel do not share one.
import '../src/node/polyfill.js'
import { generateKeyPair } from '@libp2p/crypto/keys'
import pino from 'pino'
import { createHost } from '../src/node/p2p.js'
import { type LocalVm, MigrationService } from '../src/transfer/index.js'
import { QemuDriver } from '../src/vm/qemu/index.js'

export async function meshSide(dir: string, onLog: (line: string) => void) {
  const logger = pino({ level: 'info' }, { write: onLog })
  const vms = new Map<string, LocalVm>()
  const host = await createHost({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
  })
  const driver = new QemuDriver()
  const service = new MigrationService({
    host,
    logger,
    driver,
    vmDir: (id) => `${dir}/${id}`,
    lookupVm: (id) => vms.get(id),
    hooks: {
      onCommit: async (_m, instance, epoch) => {
        vms.set(instance.spec.id, { instance, spec: instance.spec, epoch })
      },
      onReleased: async (m, instance) => {
        vms.delete(m.vmId)
        await instance.destroy()
      },
    },
  })
  await service.start()
  return {
    host,
    driver,
    service,
    vms,
    async close() {
      await service.stop()
      await driver.close()
      await host.stop()
    },
  }
}
