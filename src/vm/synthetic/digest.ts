// Content digests of memory and disk: a two-level hash tree over the sha256 of every non-zero page or
// block with its index (format in hash-cache.ts). Zero units add nothing, so a sparse VM hashes fast;
// the index makes a misplaced page change the digest as surely as a wrong byte. Unit hashes are cached
// and refreshed as units are written, so a digest costs only what changed since the last one.

import { createHash } from 'node:crypto'
import type { GuestDisk } from './guest-disk.js'
import type { SyntheticMemory } from './memory.js'

export interface VmDigest {
  memory: string
  disk: string
  combined: string
}

/** Digest of memory (format in hash-cache.ts); synchronous, so a consistent snapshot even of a running VM. */
export function memoryDigest(memory: SyntheticMemory): string {
  return memory.digest()
}

/** Digest of the disk (format in hash-cache.ts). Pause the VM first for a stable value. */
export function diskDigest(disk: GuestDisk): Promise<string> {
  return disk.digest()
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
