// A complete image of the store read as a disk base in 64 KiB blocks (for copy-on-write VMs): a block is
// cut from the chunk files it overlaps; past the end of the image it reads as zeroes.
import { open } from 'node:fs/promises'
import { ImagesError } from './errors.js'
import type { ImageStore } from './store.js'

const BLOCK = 65536

export interface ImageBase {
  readonly id: string
  readonly size: number
  readBlock(i: number): Promise<Buffer>
}

export function imageBase(store: ImageStore, id: string): ImageBase {
  if (!store.isComplete(id))
    throw new ImagesError('INVALID_STATE', `image ${id.slice(0, 12)} is not complete on this host`)
  const m = store.manifest(id)
  return {
    id,
    size: m.size,
    async readBlock(i: number): Promise<Buffer> {
      const out = Buffer.alloc(BLOCK)
      let pos = i * BLOCK
      const end = Math.min(pos + BLOCK, m.size)
      while (pos < end) {
        const c = Math.floor(pos / m.chunkSize)
        const within = pos - c * m.chunkSize
        const n = Math.min(end - pos, m.chunkSize - within)
        const fh = await open(store.chunkFile(id, c), 'r')
        try {
          await fh.read(out, pos - i * BLOCK, n, within)
        } finally {
          await fh.close()
        }
        pos += n
      }
      return out
    },
  }
}
