// Digests the engine computes itself (the pre-copy check uses VmInstance.digest()):
// - the disk digest in the format VmInstance documents: sha256 over (index u32 BE || block) of every
//   non-zero block, so post-copy can check the disk without hashing memory during the downtime;
// - the post-copy page digest: sha256 over (index u32 BE || contentHash(page)) of every non-zero page of
//   the source image at the pause, which the destination rebuilds from the pages as they arrive (its
//   guest already runs, so its memory no longer is that image).
import { createHash } from 'node:crypto'
import type { VmDisk, VmMemory } from '../vm/index.js'
import { contentHash } from './dedup.js'

/** Disk digest of `disk` (hex), as VmInstance.digest().disk. Pause the VM first. */
export async function diskDigestOf(disk: VmDisk, signal?: AbortSignal): Promise<string> {
  const h = createHash('sha256')
  const idx = Buffer.alloc(4)
  const zero = Buffer.alloc(disk.blockSize)
  for (const i of disk.allocatedBlocks().indices()) {
    signal?.throwIfAborted()
    const b = await disk.readBlock(i)
    if (zero.equals(b)) continue
    idx.writeUInt32BE(i)
    h.update(idx)
    h.update(b)
  }
  return h.digest('hex')
}

/** Builds the post-copy page digest from (index, hash) pairs in ascending index order. */
export class PageListDigest {
  readonly #h = createHash('sha256')
  readonly #idx = Buffer.alloc(4)
  #last = -1

  add(index: number, pageHash: Uint8Array): void {
    if (index <= this.#last) throw new RangeError('pages must be added in ascending order')
    this.#last = index
    this.#idx.writeUInt32BE(index)
    this.#h.update(this.#idx)
    this.#h.update(pageHash)
  }

  hex(): string {
    return this.#h.digest('hex')
  }
}

/** Page digest of a paused VM's memory; yields to the event loop every `chunk` pages. */
export async function pageDigestOf(memory: VmMemory, signal?: AbortSignal, chunk = 4096): Promise<string> {
  const d = new PageListDigest()
  for (let i = 0; i < memory.pageCount; i++) {
    if (i % chunk === chunk - 1) {
      await new Promise<void>((r) => setImmediate(r))
      signal?.throwIfAborted()
    }
    if (memory.isZeroPage(i)) continue
    d.add(i, contentHash(memory.readPage(i)))
  }
  return d.hex()
}
