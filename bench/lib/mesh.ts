// Two libp2p hosts in one process, each with a synthetic VM driver and the real MigrationService (hooks
// as the agent's: register on commit, destroy on release), the engine's logs captured (its "migration
// finished" record carries the downtime milestones); VMs filled with recognisable content; and the
// baseline: a plain sequential copy of a paused VM's memory and disk over one libp2p stream.
import '../../src/node/polyfill.js'
import { randomFillSync } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Stream } from '@libp2p/interface'
import { pino } from 'pino'
import type { Host } from '../../src/node/p2p.js'
import { type LocalVm, MigrationService } from '../../src/transfer/index.js'
import {
  createDriver,
  type VmDriver,
  type VmInstance,
  type VmSpec,
  type WorkloadSpec,
} from '../../src/vm/index.js'
import { MiB } from './format.js'
import { createBenchHost } from './host.js'

export interface LogRecord {
  level: number
  msg: string
  migration?: string
  [k: string]: unknown
}

export interface BenchNode {
  name: string
  host: Host
  driver: VmDriver
  vms: Map<string, LocalVm>
  service: MigrationService
  dir: string
  logs: LogRecord[]
  stop(): Promise<void>
}

/**
 * A node; `pingAbort: false` uses the bench-only host variant (see host.ts); `retainMiB`: memory of VMs
 * that left kept as a dedup source (the service's ContentStore; 0 = off, as for first-time moves).
 */
export async function createBenchNode(name: string, pingAbort = true, retainMiB = 0): Promise<BenchNode> {
  const host = await createBenchHost(pingAbort)
  const dir = await mkdtemp(join(tmpdir(), `skymesh-bench-${name}-`))
  // The agent's default driver settings (workload tick 50 ms)
  const driver = createDriver('synthetic')
  const vms = new Map<string, LocalVm>()
  const logs: LogRecord[] = []
  const logger = pino(
    { level: 'info' },
    {
      write(s: string) {
        try {
          logs.push(JSON.parse(s) as LogRecord)
        } catch {
          // not JSON: ignore
        }
      },
    },
  )
  const service = new MigrationService(
    {
      host,
      logger,
      driver,
      vmDir: (vmId) => join(dir, vmId),
      lookupVm: (vmId) => vms.get(vmId),
      hooks: {
        reserve: async () => ({ ok: true, release: () => undefined }),
        onCommit: async (m, instance, epoch) => {
          vms.set(m.vmId, { instance, spec: instance.spec, epoch })
        },
        onReleased: async (m, instance) => {
          vms.delete(m.vmId)
          await instance.destroy()
        },
      },
    },
    { retainMiB },
  )
  await service.start()
  return {
    name,
    host,
    driver,
    vms,
    service,
    dir,
    logs,
    async stop() {
      await service.stop().catch(() => undefined)
      for (const vm of vms.values()) await vm.instance.destroy().catch(() => undefined)
      vms.clear()
      await Promise.resolve(host.stop()).catch(() => undefined)
      await Promise.resolve(driver.close()).catch(() => undefined)
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/** Destroys the VM `id` on `node` if it is there. */
export async function dropVm(node: BenchNode, id: string): Promise<void> {
  const vm = node.vms.get(id)
  node.vms.delete(id)
  await vm?.instance.destroy().catch(() => undefined)
}

// ------------------------------------------------------------------ VM content

export type Fill = 'sparse' | 'full'

export interface VmPlan {
  memoryMiB: number
  diskMiB: number
  /** Disk blocks written before the migration, MiB. */
  diskUsedMiB: number
  fill: Fill
  workload: WorkloadSpec
}

/** Shared page contents (for dedup: the same library page in many places). */
const SHARED = 64

/**
 * Memory content: 'full' writes every page, 'sparse' one 2 MiB chunk in 32 (1/32 of memory, spread).
 * Written pages are 60 % random (incompressible), 30 % text-like (lz4 shrinks them a lot), 10 %
 * copies of 64 shared pages (dedup finds them). Disk: `diskUsedMiB` of blocks spread over the disk,
 * half random, half text-like.
 */
export async function fillVm(
  vm: VmInstance,
  plan: VmPlan,
  seed: number,
): Promise<{ pages: number; blocks: number }> {
  const mem = vm.memory
  const ps = mem.pageSize
  const batch = 256
  const rnd = Buffer.allocUnsafe(batch * ps)
  const text = Buffer.alloc(ps)
  const shared = Array.from({ length: SHARED }, (_, k) => {
    const b = Buffer.alloc(ps)
    b.fill(`shared library page ${k} `)
    return b
  })
  let pages = 0
  for (let base = 0; base < mem.pageCount; base += batch) {
    if (plan.fill === 'sparse' && (base >> 9) % 32 !== 0) continue
    randomFillSync(rnd)
    for (let i = base; i < Math.min(base + batch, mem.pageCount); i++) {
      const kind = (Math.imul(i ^ seed, 2654435761) >>> 0) % 10
      if (kind < 6) mem.writePage(i, rnd.subarray((i - base) * ps, (i - base + 1) * ps))
      else if (kind < 9) {
        text.fill(`seed ${seed} page ${i}: the quick brown fox jumps over the lazy dog. `)
        mem.writePage(i, text)
      } else mem.writePage(i, shared[i % SHARED]!)
      pages++
    }
  }
  const disk = vm.disk
  const nBlocks = Math.min(disk.blockCount, Math.round((plan.diskUsedMiB * MiB) / disk.blockSize))
  const stride = Math.max(1, Math.floor(disk.blockCount / Math.max(nBlocks, 1)))
  const writes: Promise<void>[] = []
  for (let k = 0; k < nBlocks; k++) {
    const b = Buffer.allocUnsafe(disk.blockSize)
    if (k % 2 === 0) randomFillSync(b)
    else b.fill(`seed ${seed} block ${k}: lorem ipsum dolor sit amet `)
    writes.push(disk.writeBlock(k * stride, b))
    if (writes.length >= 32) await Promise.all(writes.splice(0))
  }
  await Promise.all(writes)
  return { pages, blocks: nBlocks }
}

/** Creates and fills a running VM on `node` (registered with epoch 1). */
export async function createVm(node: BenchNode, id: string, plan: VmPlan, seed: number): Promise<VmInstance> {
  const spec: VmSpec = {
    id,
    name: id,
    vcpus: 1,
    memoryMiB: plan.memoryMiB,
    diskMiB: plan.diskMiB,
    workload: plan.workload,
  }
  const instance = await node.driver.create(spec, { dir: join(node.dir, id), seed })
  try {
    await fillVm(instance, plan, seed)
  } catch (err) {
    await instance.destroy().catch(() => undefined)
    throw err
  }
  node.vms.set(id, { instance, spec, epoch: 1 })
  return instance
}

// ------------------------------------------------------------------ baseline: plain sequential copy

export const COPY_PROTOCOL = '/skymesh/bench/copy/1.0.0'
/** The receiver acknowledges every this many bytes applied; the sender keeps at most WINDOW unacked. */
const ACK_EVERY = MiB
const WINDOW = 8 * MiB
const ACK_PROGRESS = 1
const ACK_DONE = 2
const END = 0xffffffff

/** A token bucket (bytes/s) for the rate-limited baseline, as the engine's `bandwidthMiBps` works. */
export class Bucket {
  #tokens: number
  #last = performance.now()
  constructor(
    readonly rateBps: number,
    readonly burst = Math.max(rateBps / 20, 256 * 1024),
  ) {
    this.#tokens = burst
  }
  async take(bytes: number): Promise<void> {
    const now = performance.now()
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#last) * this.rateBps) / 1000)
    this.#last = now
    this.#tokens -= bytes
    if (this.#tokens < 0) await new Promise((r) => setTimeout(r, (-this.#tokens / this.rateBps) * 1000))
  }
}

export type CopyTarget = { instance: VmInstance; done: (err?: Error) => void }

/**
 * Serves COPY_PROTOCOL on `node`: every page of memory in order (raw), then `u32 index || block` for
 * each allocated block, then `u32 0xffffffff`; written into `target()`'s VM as it arrives.
 */
export async function serveCopy(node: BenchNode, target: () => CopyTarget | undefined): Promise<void> {
  await node.host.handle(
    COPY_PROTOCOL,
    async (stream: Stream) => {
      const t = target()
      if (!t) {
        stream.abort(new Error('no copy expected'))
        return
      }
      const { memory, disk } = t.instance
      // What arrived and is not applied yet (less than one page or block between chunks)
      let buf: Buffer = Buffer.alloc(0)
      let page = 0
      let applied = 0
      let acked = 0
      let ended = false
      try {
        for await (const chunk of stream) {
          const bytes = chunk.subarray()
          buf =
            buf.length === 0
              ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
              : Buffer.concat([buf, bytes])
          let off = 0
          while (page < memory.pageCount && buf.length - off >= memory.pageSize) {
            memory.writePage(page++, buf.subarray(off, off + memory.pageSize))
            off += memory.pageSize
            applied += memory.pageSize
          }
          while (page === memory.pageCount && buf.length - off >= 4) {
            const index = buf.readUInt32BE(off)
            if (index === END) {
              ended = true
              off += 4
              break
            }
            if (buf.length - off < 4 + disk.blockSize) break
            await disk.writeBlock(index, buf.subarray(off + 4, off + 4 + disk.blockSize))
            off += 4 + disk.blockSize
            applied += 4 + disk.blockSize
          }
          // Keep the rest (copied: the chunk's memory belongs to the stream)
          buf = off === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(off))
          while (applied - acked >= ACK_EVERY) {
            acked += ACK_EVERY
            stream.send(new Uint8Array([ACK_PROGRESS]))
          }
          if (ended) {
            stream.send(new Uint8Array([ACK_DONE]))
            await stream.close()
            t.done()
            return
          }
        }
        throw new Error('the copy stream ended early')
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err))
        stream.abort(e)
        t.done(e)
      }
    },
    { maxInboundStreams: 4 },
  )
}

/**
 * Copies `vm` (paused) to `to` over one new stream: reads each page and each allocated block and sends
 * them in 1 MiB messages with `send()`/`onDrain()` backpressure and an 8 MiB window of unacknowledged
 * bytes (as the engine keeps per stream). Resolves with the bytes sent once the receiver applied all.
 */
export async function plainCopy(
  from: BenchNode,
  to: BenchNode,
  vm: VmInstance,
  bucket?: Bucket,
): Promise<number> {
  const stream = await from.host.dialProtocol(to.host.peerId, COPY_PROTOCOL, {
    signal: AbortSignal.timeout(10_000),
  })
  let sent = 0
  let acked = 0
  let wake: (() => void) | undefined
  let failure: Error | undefined
  const done = (async () => {
    for await (const chunk of stream) {
      const bytes = chunk.subarray()
      for (const b of bytes) {
        if (b === ACK_PROGRESS) acked += ACK_EVERY
        else if (b === ACK_DONE) return
      }
      wake?.()
    }
    throw new Error('the copy stream ended before the end was acknowledged')
  })().catch((err: unknown) => {
    failure = err instanceof Error ? err : new Error(String(err))
    wake?.()
    throw failure
  })
  done.catch(() => undefined)
  const push = async (msg: Uint8Array) => {
    while (sent - acked > WINDOW && !failure) await new Promise<void>((r) => (wake = r))
    if (failure) throw failure
    await bucket?.take(msg.length)
    sent += msg.length
    if (!stream.send(msg)) await Promise.race([stream.onDrain(), done])
  }
  const { memory, disk } = vm
  const per = MiB / memory.pageSize
  for (let p = 0; p < memory.pageCount; p += per) {
    const n = Math.min(per, memory.pageCount - p)
    const msg = Buffer.allocUnsafe(n * memory.pageSize)
    for (let k = 0; k < n; k++) msg.set(memory.readPage(p + k), k * memory.pageSize)
    await push(msg)
  }
  const perMsg = Math.max(1, Math.floor(MiB / (4 + disk.blockSize)))
  let parts: Uint8Array[] = []
  for (const i of disk.allocatedBlocks().indices()) {
    const head = Buffer.alloc(4)
    head.writeUInt32BE(i)
    parts.push(head, await disk.readBlock(i))
    if (parts.length >= 2 * perMsg) {
      await push(Buffer.concat(parts))
      parts = []
    }
  }
  const end = Buffer.alloc(4)
  end.writeUInt32BE(END)
  parts.push(end)
  await push(Buffer.concat(parts))
  await done
  await stream.close().catch(() => undefined)
  return sent
}
