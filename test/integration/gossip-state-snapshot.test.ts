import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { after, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { pino } from 'pino'
import {
  encodeSignedHostState,
  HostStateService,
  MAX_VMS,
  SYNC_PROTOCOL,
  signHostState,
} from '../../src/gossip/state/index.js'
import { encodeSyncResponse } from '../../src/gossip/state/sync-codec.js'
import { createHost, type Host } from '../../src/node/p2p.js'

// A snapshot bigger than one read buffer (several MiB) arrives whole and is checked state by state.
describe('anti-entropy snapshot of many large states', { timeout: 60_000 }, () => {
  const hosts: Host[] = []
  let service: HostStateService | undefined

  after(async () => {
    await service?.stop()
    await Promise.all(hosts.map((h) => h.stop()))
  })

  it('pulls 16 hosts x 4096 VMs (~6 MiB) in one exchange', { timeout: 45_000 }, async () => {
    const states: Uint8Array[] = []
    for (let h = 0; h < 16; h++) {
      const key = await generateKeyPair('Ed25519')
      const vms = Array.from({ length: MAX_VMS }, (_, i) => ({
        id: `vm-${h}-${i.toString().padStart(5, '0')}`,
        name: `guest-${h}-${i}`,
        vcpus: 2,
        memoryMib: 2048,
        diskMib: 20_480,
        cpu: 0.5,
        dirtyMibps: 1.5,
        state: 'running',
        epoch: 1,
      }))
      const signed = await signHostState(key, {
        peerId: peerIdFromPrivateKey(key).toMultihash().bytes,
        version: 1,
        vms,
      })
      states.push(encodeSignedHostState(signed))
    }
    const total = states.reduce((n, s) => n + s.length, 0)
    assert.ok(total > 4 * 1024 * 1024, `snapshot is ${total} bytes`)

    const server = await createHost({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    hosts.push(server)
    // A relay that serves exactly these states (as any agent relays what it holds).
    await server.handle(SYNC_PROTOCOL, async (stream) => {
      const lp = lpStream(stream, { maxDataLength: 1 << 20 })
      await lp.read({ signal: AbortSignal.timeout(5000) })
      await lp.write(encodeSyncResponse(states, [], 16 * 1024 * 1024).bytes, {
        signal: AbortSignal.timeout(10_000),
      })
      await stream.close()
    })

    const key = await generateKeyPair('Ed25519')
    const client = await createHost({ privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
    hosts.push(client)
    service = new HostStateService(
      {
        host: client,
        privateKey: key,
        logger: pino({ level: 'silent' }),
        localState: () => ({
          site: 's',
          capacity: { vcpus: 1, memoryMiB: 1, diskMiB: 1 },
          used: { vcpus: 0, memoryMiB: 0, diskMiB: 0 },
          cpuLoad: 0,
          vms: [],
          agentVersion: 'test',
          addrs: [],
        }),
      },
      { syncIntervalMs: 0, syncTimeoutMs: 30_000 },
    )
    await service.start()
    const addr = server.getMultiaddrs()[0]
    assert.ok(addr)
    await client.dial(addr, { signal: AbortSignal.timeout(5000) })
    const r = await service.syncWith(server.peerId, { signal: AbortSignal.timeout(30_000) })
    assert.deepEqual(r, { received: 16, accepted: 16, members: 0 })
    assert.equal(service.vms().length, 16 * MAX_VMS)
    assert.equal(service.where('vm-7-04095')?.name, 'guest-7-4095')
    assert.ok(service.stats().sync.bytesIn > 4 * 1024 * 1024)
  })
})
