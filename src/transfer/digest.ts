// Digests the engine computes itself (the pre-copy check uses VmInstance.digest()):
// - the disk digest in the format VmInstance documents (VmDisk.digest()), so post-copy can check the
//   disk without the memory;
// - the post-copy page digest: sha256 over (index u32 BE || contentHash(page)) of every non-zero page of
//   the source image at the pause, which the destination rebuilds from the pages as they arrive (its
//   guest already runs, so its memory no longer is that image).
import { createHash } from 'node:crypto'
import type { VmDisk, VmMemory } from '../vm/index.js'
import { HASH_BYTES } from './constants.js'

/** Disk digest of `disk` (hex), as VmInstance.digest().disk. Pause the VM first. */
export function diskDigestOf(disk: VmDisk): Promise<string> {
  return disk.digest()
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
    // Cached by the VM since the page was last written (or sent): no pass over the bytes
    const h = memory.pageHash(i)
    if (h) d.add(i, h.subarray(0, HASH_BYTES))
  }
  return d.hex()
}
