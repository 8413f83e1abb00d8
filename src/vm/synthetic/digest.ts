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

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE)
const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE)

/** Digest of memory; synchronous, so it is a consistent snapshot even of a running VM. */
export function memoryDigest(memory: SyntheticMemory): string {
  const buf = memory.raw()
  const h = createHash('sha256')
  const idx = Buffer.alloc(4)
  for (let i = 0, off = 0; i < memory.pageCount; i++, off += PAGE_SIZE) {
    if (buf.compare(ZERO_PAGE, 0, PAGE_SIZE, off, off + PAGE_SIZE) === 0) continue
    idx.writeUInt32BE(i)
    h.update(idx)
    h.update(buf.subarray(off, off + PAGE_SIZE))
  }
  return h.digest('hex')
}

/** Digest of the disk; reads only allocated blocks, in runs. Pause the VM first for a stable value. */
export async function diskDigest(disk: SyntheticDisk): Promise<string> {
  const h = createHash('sha256')
  const idx = Buffer.alloc(4)
  for (const [first, count] of runs(disk.allocatedBlocks().indices(), RUN_BLOCKS)) {
    const data = await disk.readBlocks(first, count)
    for (let k = 0; k < count; k++) {
      const block = data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE)
      if (block.equals(ZERO_BLOCK)) continue
      idx.writeUInt32BE(first + k)
      h.update(idx)
      h.update(block)
    }
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
