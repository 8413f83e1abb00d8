// Content digests: sha256 over every non-zero page (memory) or block (disk), each hashed as
// (index u32 BE || bytes). Zero pages/blocks add nothing, so a sparse VM hashes fast; the index makes
// a misplaced page change the digest as surely as a wrong byte.

import { createHash } from 'node:crypto'
import { BLOCK_SIZE, PAGE_SIZE } from '../types.js'
import type { SyntheticDisk } from './disk.js'
import type { SyntheticMemory } from './memory.js'

export interface VmDigest {
  memory: string
  disk: string
  combined: string
}

/** Blocks read from the disk in one call when they are consecutive. */
const RUN_BLOCKS = 16
/** Runs being read while an earlier one is hashed. */
const READ_AHEAD = 4

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE)

/** Pages hashed per update call: (index || page) records are batched, as per-call overhead dominates. */
const BATCH_PAGES = 64
const RECORD = 4 + PAGE_SIZE

/** Digest of memory; synchronous, so it is a consistent snapshot even of a running VM. */
export function memoryDigest(memory: SyntheticMemory): string {
  const buf = memory.raw()
  const h = createHash('sha256')
  const batch = Buffer.allocUnsafe(BATCH_PAGES * RECORD)
  let used = 0
  for (const i of memory.nonZeroPages().indices()) {
    const off = i * PAGE_SIZE
    batch.writeUInt32BE(i, used)
    buf.copy(batch, used + 4, off, off + PAGE_SIZE)
    used += RECORD
    if (used === batch.length) {
      h.update(batch)
      used = 0
    }
  }
  if (used > 0) h.update(batch.subarray(0, used))
  return h.digest('hex')
}

/** Digest of the disk; reads only allocated blocks, in runs. Pause the VM first for a stable value. */
export async function diskDigest(disk: SyntheticDisk): Promise<string> {
  const h = createHash('sha256')
  const idx = Buffer.alloc(4)
  const hashRun = (first: number, count: number, data: Buffer) => {
    for (let k = 0; k < count; k++) {
      const block = data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE)
      if (block.equals(ZERO_BLOCK)) continue
      idx.writeUInt32BE(first + k)
      h.update(idx)
      h.update(block)
    }
  }
  // Reads run ahead of the hashing (in order), a few at a time
  const ahead: { first: number; count: number; data: Promise<Buffer> }[] = []
  try {
    for (const [first, count] of runs(disk.allocatedBlocks().indices(), RUN_BLOCKS)) {
      const data = disk.readBlocks(first, count)
      void data.catch(() => undefined) // awaited below; this only keeps an early failure from being "unhandled"
      ahead.push({ first, count, data })
      if (ahead.length >= READ_AHEAD) {
        const r = ahead.shift()!
        hashRun(r.first, r.count, await r.data)
      }
    }
    for (const r of ahead.splice(0)) hashRun(r.first, r.count, await r.data)
  } finally {
    await Promise.allSettled(ahead.map((r) => r.data))
  }
  return h.digest('hex')
}

/** sha256 over the two digests' bytes (memory first). */
export function combineDigests(memory: string, disk: string): VmDigest {
  const combined = createHash('sha256')
    .update(Buffer.from(memory, 'hex'))
    .update(Buffer.from(disk, 'hex'))
    .digest('hex')
  return { memory, disk, combined }
}

/** Groups ascending indices into [first, count] runs of consecutive ones, at most `max` long. */
export function* runs(indices: Iterable<number>, max: number): Generator<[number, number]> {
  let first = -1
  let count = 0
  for (const i of indices) {
    if (count > 0 && i === first + count && count < max) {
      count++
      continue
    }
    if (count > 0) yield [first, count]
    first = i
    count = 1
  }
  if (count > 0) yield [first, count]
}
