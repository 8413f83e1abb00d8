// The overlay transport between two real libp2p hosts (tcp + noise + yamux) in one process: frames
// arrive in order with their network and relay mark, bursts share batches, announcements come
// before the frames of their batch, garbage is counted, an unreachable peer is refused quickly.
import '../../src/node/polyfill.js'
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { lpStream } from '@libp2p/utils'
import { pino } from 'pino'
import { createHost, type Host } from '../../src/node/p2p.js'
import { OVERLAY_PROTOCOL, OverlayTransport } from '../../src/overlay/transport.js'

const logger = pino({ level: 'silent' })

interface Got {
  peer: string
  announces: Array<{ vmId: string; epoch: number }>
  frames: Array<{ network: string; data: Uint8Array; relayed: boolean }>
}

let hostA: Host
let hostB: Host
let a: OverlayTransport
let b: OverlayTransport
const atB: Got[] = []
let malformedAtB = 0

before(async () => {
  const mk = async () =>
    createHost({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'] })
  hostA = await mk()
  hostB = await mk()
  await hostA.dial(hostB.getMultiaddrs()[0]!)
  a = new OverlayTransport({ host: hostA, logger, onBatch: () => {}, dialTimeoutMs: 2000, retryAfterMs: 200 })
  b = new OverlayTransport({
    host: hostB,
    logger,
    onBatch: (peer, announces, frames) => atB.push({ peer, announces, frames }),
    onMalformed: () => {
      malformedAtB++
    },
  })
  await a.start()
  await b.start()
})

after(async () => {
  await a.stop()
  await b.stop()
  await hostA.stop()
  await hostB.stop()
})

async function until(what: string, fn: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

const frames = () => atB.flatMap((g) => g.frames)

describe('overlay transport', () => {
  it('carries frames in order, with network and relay mark, batching a burst', async () => {
    const peerB = hostB.peerId.toString()
    for (let i = 0; i < 300; i++) {
      assert.ok(
        a.send(peerB, {
          network: i % 2 ? 'red' : 'blue',
          data: Uint8Array.of(i & 0xff, i >> 8),
          relayed: i === 7,
        }),
      )
    }
    await until('300 frames', () => frames().length === 300)
    const got = frames()
    for (let i = 0; i < 300; i++) {
      assert.deepEqual([...got[i]!.data], [i & 0xff, i >> 8])
      assert.equal(got[i]!.network, i % 2 ? 'red' : 'blue')
      assert.equal(got[i]!.relayed, i === 7)
    }
    assert.ok(atB.length < 300, `batched: ${atB.length} batches`)
    assert.ok(
      atB.every((g) => g.peer === hostA.peerId.toString()),
      'the sender is the authenticated peer',
    )
    assert.equal(a.queued(peerB), 0)
  })

  it('delivers an announcement ahead of the frames sent with it', async () => {
    atB.length = 0
    const peerB = hostB.peerId.toString()
    a.send(peerB, { network: 'red', data: Uint8Array.of(1), relayed: false })
    a.announce(peerB, { vmId: 'vm-1', epoch: 3 })
    await until('the batch', () => atB.length > 0 && frames().length === 1)
    assert.deepEqual(atB[0]?.announces, [{ vmId: 'vm-1', epoch: 3 }])
  })

  it('counts a batch that does not decode and keeps the stream usable', async () => {
    const stream = await hostA.dialProtocol(hostB.peerId, OVERLAY_PROTOCOL)
    const lp = lpStream(stream)
    await lp.write(Uint8Array.of(0xff, 0xff, 0xff, 0xff))
    await until('the malformed batch', () => malformedAtB === 1)
    atB.length = 0
    const { pb } = await import('../../src/proto/index.js')
    await lp.write(pb.OverlayBatch.encode({ frames: [{ network: 'red', data: Uint8Array.of(9) }] }).finish())
    await until('the next batch', () => frames().length === 1)
    await stream.close()
  })

  it('refuses frames for a peer it cannot reach, for a while, instead of queueing them forever', async () => {
    const stranger = await createHost({
      privateKey: await generateKeyPair('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    const id = stranger.peerId.toString()
    await stranger.stop() // a peer id nobody answers for
    assert.ok(a.send(id, { network: 'red', data: Uint8Array.of(1), relayed: false }), 'first frame queued')
    await until('the dial to fail', () => a.stats.dialFailures > 0 && a.stats.framesLost > 0, 10_000)
    assert.equal(a.send(id, { network: 'red', data: Uint8Array.of(2), relayed: false }), false)
  })
})
