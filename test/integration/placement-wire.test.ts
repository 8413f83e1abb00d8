// The placement wire protocol (/skymesh/placement/1) against bad input, between two real libp2p hosts:
// a message from a peer that is not a mesh member, malformed bytes, a message over a field limit and a
// frame over 256 KiB are each dropped and counted by reason (skymesh_placement_messages_dropped_total)
// and change nothing: the host stays unreserved and opens no event. A valid join from a member then
// reserves it (the path the bad input took is the live one).
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import pino from 'pino'
import { Registry } from 'prom-client'
import type { MemberView } from '../../src/gossip/types.js'
import { createHost, type Host } from '../../src/node/p2p.js'
import {
  DEFAULT_PLACEMENT_SETTINGS,
  PLACEMENT_PROTOCOL,
  PlacementService,
} from '../../src/node/placement/index.js'
import { encodePlacementMessage, MAX_MESSAGE_BYTES, MAX_VMS_PER_MEMBER } from '../../src/placement/index.js'

let target: Host
let sender: Host
let svc: PlacementService
const registry = new Registry()
const members = new Set<string>()

before(async () => {
  const make = async () =>
    createHost({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'] })
  target = await make()
  sender = await make()
  svc = new PlacementService({
    self: target.peerId.toString(),
    site: 'eu',
    capacity: { vcpus: 4, memoryMiB: 256, diskMiB: 4096 },
    settings: { ...DEFAULT_PLACEMENT_SETTINGS, tickMs: 50 },
    logger: pino({ level: 'silent' }),
    metrics: registry,
    gossip: {
      members: () =>
        [...members].map(
          (peerId): MemberView => ({
            peerId,
            addrs: [],
            status: 'alive',
            incarnation: 0,
            site: 'eu',
            statusSince: 0,
            self: false,
          }),
        ),
      hosts: () => [],
    },
    localVms: () => [],
    migrate: () => {
      throw new Error('no migrations in this test')
    },
    migrationPhase: () => undefined,
    host: target,
  })
  await svc.start()
  await sender.dial(target.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(5000) })
})

after(async () => {
  await svc.stop()
  await sender.stop()
  await target.stop()
})

async function dropped(reason: string): Promise<number> {
  const m = await registry.getSingleMetric('skymesh_placement_messages_dropped_total')!.get()
  return m.values.find((v) => v.labels.reason === reason)?.value ?? 0
}

async function until(what: string, fn: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** Opens a placement stream from the sender and writes raw bytes (a frame is prefix + body). */
async function sendRaw(chunks: Uint8Array[]): Promise<void> {
  const stream = await sender.dialProtocol(target.peerId, PLACEMENT_PROTOCOL, {
    signal: AbortSignal.timeout(5000),
  })
  try {
    for (const c of chunks) if (!stream.send(c)) await stream.onDrain({ signal: AbortSignal.timeout(5000) })
    await stream.close({ signal: AbortSignal.timeout(2000) })
  } catch {
    // the target may reset the stream: that is how it refuses
  }
}

async function sendFrames(payloads: Uint8Array[]): Promise<void> {
  const stream = await sender.dialProtocol(target.peerId, PLACEMENT_PROTOCOL, {
    signal: AbortSignal.timeout(5000),
  })
  const lp = lpStream(stream, { maxDataLength: 4 * MAX_MESSAGE_BYTES })
  for (const p of payloads) await lp.write(p)
}

const join = () =>
  encodePlacementMessage({
    type: 'join',
    event: { id: `${sender.peerId}#1`, leader: sender.peerId.toString(), kind: 'overload', openedAt: 1 },
    leaseMs: 60_000,
  })

function unchanged(): void {
  const s = svc.status()
  assert.equal(s.reservedBy, undefined, 'not reserved')
  assert.deepEqual(s.open, [])
  assert.deepEqual(s.recent, [])
  assert.equal(s.draining, false)
}

describe('placement wire: bad input is dropped, counted, and changes nothing', () => {
  it('a valid join from a peer outside the mesh', async () => {
    await sendFrames([join()]).catch(() => undefined)
    await until('a foreign drop', async () => (await dropped('foreign')) >= 1)
    unchanged()
  })

  it('malformed messages from a member: garbage, an unknown type, a drain without its id', async () => {
    members.add(sender.peerId.toString())
    const before = await dropped('malformed')
    await sendFrames([
      Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
      Uint8Array.from([0x08, 0x63]), // type 99
      Uint8Array.from([0x08, 0x08]), // drain, no event id
    ])
    await until('three malformed drops', async () => (await dropped('malformed')) >= before + 3)
    unchanged()
  })

  it('a message over a field limit (too many VMs in a member state)', async () => {
    const before = await dropped('malformed')
    const vms = Array.from({ length: MAX_VMS_PER_MEMBER + 1 }, (_, k) => ({
      id: `v${k}`,
      host: sender.peerId.toString(),
      demand: { cpu: 0, mem: 1, disk: 0 },
      memoryBytes: 1,
    }))
    const host = {
      id: sender.peerId.toString(),
      site: 'eu',
      capacity: { cpu: 1, mem: 1, disk: 1 },
      state: 'up' as const,
    }
    const msg = encodePlacementMessage({ type: 'joined', eventId: 'x#1', member: { host, vms } })
    assert.ok(msg.length < MAX_MESSAGE_BYTES, 'under the size limit: the field limit refuses it')
    await sendFrames([msg])
    await until('a malformed drop', async () => (await dropped('malformed')) >= before + 1)
    unchanged()
  })

  it('a frame over 256 KiB', async () => {
    const before = await dropped('oversized')
    const n = MAX_MESSAGE_BYTES + 1024
    // varint length prefix of n, then the body
    const prefix: number[] = []
    for (let v = n; ; v >>>= 7) {
      if (v < 0x80) {
        prefix.push(v)
        break
      }
      prefix.push((v & 0x7f) | 0x80)
    }
    await sendRaw([Uint8Array.from(prefix), new Uint8Array(n)])
    await until('an oversized drop', async () => (await dropped('oversized')) >= before + 1)
    unchanged()
  })

  it('and a valid join from a member reserves the host (the same path, live)', async () => {
    await sendFrames([join()])
    await until('the join to reserve the host', async () => svc.status().reservedBy !== undefined)
    assert.equal(svc.status().reservedBy?.leader, sender.peerId.toString())
  })
})
