// DataSender (src/transfer/data-sender.ts): frames go out within the credit window and are released by
// acknowledgements; a write the channel never takes (a silent link: nothing acknowledged, nothing reset)
// fails the sender with a LinkError after stallTimeoutMs, while a sender whose writes complete is not
// failed by its watchdog however long it lives, nor keeps memory per frame it sent.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { pb } from '../../src/proto/index.js'
import { DataSender } from '../../src/transfer/data-sender.js'
import { LinkError } from '../../src/transfer/errors.js'
import type { FrameChannel } from '../../src/transfer/wire.js'

/** A channel whose writes resolve (or hang, when `hang`) and whose reads return queued acks. */
function channel(o: { hang?: boolean } = {}) {
  const acks: Uint8Array[] = []
  let wake: (() => void) | undefined
  let closed = false
  const written: number[] = []
  const ch: FrameChannel & { ack(seq: number, bytes: number): void; written: number; sizes: number[] } = {
    get written() {
      return written.reduce((a, b) => a + b, 0)
    },
    sizes: written,
    async write(bytes) {
      const n = bytes instanceof Uint8Array ? bytes.length : bytes.reduce((a, b) => a + b.length, 0)
      written.push(n)
      if (o.hang) await new Promise(() => undefined)
    },
    async read() {
      while (acks.length === 0 && !closed) await new Promise<void>((r) => (wake = r))
      return acks.shift() ?? null
    },
    async close() {
      closed = true
      wake?.()
    },
    abort() {
      closed = true
      wake?.()
    },
    ack(seq, bytes) {
      acks.push(pb.DataAck.encode({ seq, bytes }).finish())
      wake?.()
    },
  }
  return ch
}

describe('DataSender', () => {
  it('fails a write the channel never takes with a LinkError after stallTimeoutMs', async () => {
    // The sender's watchdog is unref'd (it must not keep an agent alive): this test keeps the loop up
    const keepAlive = setInterval(() => undefined, 1000)
    const ch = channel({ hang: true })
    const s = new DataSender(ch, {
      window: 1 << 20,
      stallTimeoutMs: 200,
      onAck: () => undefined,
      signal: new AbortController().signal,
    })
    const t = performance.now()
    await assert.rejects(s.send(new Uint8Array(1000)), (err: unknown) => {
      assert.ok(err instanceof LinkError)
      assert.match((err as Error).message, /accepted nothing for 200 ms/)
      return true
    })
    const waited = performance.now() - t
    assert.ok(waited >= 190, `failed after ${waited} ms, before the stall timeout`)
    clearInterval(keepAlive)
    s.finishing()
    await s.close()
  })

  it('is not failed by its watchdog while writes complete, however long it lives', async () => {
    const ch = channel()
    const acked: number[] = []
    const s = new DataSender(ch, {
      window: 4096,
      stallTimeoutMs: 100,
      onAck: (b) => acked.push(b),
      signal: new AbortController().signal,
    })
    // Longer than the stall timeout in total, each write immediate, each frame acknowledged a bit later
    for (let i = 0; i < 6; i++) {
      const seq = s.nextSeq
      await s.send(new Uint8Array(3000))
      setTimeout(() => ch.ack(seq, 3000), 40)
      await new Promise((r) => setTimeout(r, 50))
    }
    await s.flush()
    assert.deepEqual(acked, [3000, 3000, 3000, 3000, 3000, 3000])
    s.finishing()
    await s.close()
  })

  it('waits for credit: a frame that does not fit the window is sent only after an acknowledgement', async () => {
    const ch = channel()
    const s = new DataSender(ch, {
      window: 4096,
      stallTimeoutMs: 5000,
      onAck: () => undefined,
      signal: new AbortController().signal,
    })
    await s.send(new Uint8Array(3000))
    let second = false
    const p = s.send(new Uint8Array(3000)).then(() => {
      second = true
    })
    await new Promise((r) => setTimeout(r, 50))
    assert.equal(second, false, 'sent past the window')
    assert.equal(ch.sizes.length, 1)
    ch.ack(0, 3000)
    await p
    assert.equal(ch.sizes.length, 2)
    ch.ack(1, 3000)
    await s.flush()
    s.finishing()
    await s.close()
  })

  it('keeps no memory per frame: 200k frames later its heap has not grown', async () => {
    // The stall watchdog once raced every write against one long-lived promise, which kept a reaction
    // per frame (~300 bytes: 59 MiB per 200k frames). A collector we can call makes the heap comparable.
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    let wake: (() => void) | undefined
    const acks: Uint8Array[] = []
    let seq = 0
    const ch: FrameChannel = {
      written: 0,
      async write(bytes) {
        const n = bytes instanceof Uint8Array ? bytes.length : bytes.reduce((a, b) => a + b.length, 0)
        acks.push(pb.DataAck.encode({ seq: seq++, bytes: n }).finish())
        wake?.()
      },
      async read() {
        while (acks.length === 0) await new Promise<void>((r) => (wake = r))
        return acks.shift()!
      },
      async close() {},
      abort() {},
    }
    const s = new DataSender(ch, {
      window: 1 << 20,
      stallTimeoutMs: 30_000,
      onAck: () => undefined,
      signal: new AbortController().signal,
    })
    const frame = new Uint8Array(100)
    for (let i = 0; i < 10_000; i++) await s.send(frame)
    gc()
    const before = process.memoryUsage().heapUsed
    for (let i = 0; i < 200_000; i++) await s.send(frame)
    await s.flush()
    gc()
    const grown = process.memoryUsage().heapUsed - before
    assert.ok(grown < 8 * 1024 * 1024, `heap grew ${(grown / 1048576).toFixed(1)} MiB over 200k frames`)
    s.finishing()
  })
})
