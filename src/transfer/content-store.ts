// The host's content-hash index of memory it still holds after a VM left: when a VM migrates away, its
// source keeps the (paused, final) memory image for a while, so a migration that brings back the same
// VM, or a VM with the same content, can send references instead of pages (A -> B -> A sends only what
// changed at B). Bounded by bytes of non-zero pages; the oldest image goes first. The destination of a
// migration tells the source how many hashes it holds (accept), the source asks which of its pages'
// hashes it holds (content query), and the pages named in the answer are pinned for that migration.
import type { RetainedMemory } from '../vm/index.js'
import { HASH_BYTES } from './constants.js'
import { hashKey } from './dedup.js'

export interface StoredPage {
  image: RetainedMemory
  page: number
}

interface Image {
  vmId: string
  memory: RetainedMemory
  bytes: number
  keys: string[]
}

export class ContentStore {
  readonly #limit: number
  readonly #images: Image[] = []
  readonly #index = new Map<string, StoredPage>()
  #bytes = 0

  /** `limitBytes`: most bytes of non-zero pages kept (0: the store is off). */
  constructor(limitBytes: number) {
    this.#limit = limitBytes
  }

  get entries(): number {
    return this.#index.size
  }

  get bytes(): number {
    return this.#bytes
  }

  /** Keeps `memory` (already detached from its VM) as a source of pages, replacing any image of `vmId`. */
  retain(vmId: string, memory: RetainedMemory): void {
    this.drop(vmId)
    const pages = memory.nonZeroPages()
    const bytes = pages.length * memory.pageSize
    if (bytes === 0 || bytes > this.#limit) return
    while (this.#bytes + bytes > this.#limit && this.#images.length > 0) this.#evict(this.#images[0]!)
    const image: Image = { vmId, memory, bytes, keys: [] }
    for (const p of pages) {
      const h = memory.pageHash(p)
      if (!h) continue
      const key = hashKey(h.subarray(0, HASH_BYTES))
      if (this.#index.has(key)) continue
      this.#index.set(key, { image: memory, page: p })
      image.keys.push(key)
    }
    this.#images.push(image)
    this.#bytes += bytes
  }

  /** True if an image of `vmId` is kept. */
  has(vmId: string): boolean {
    return this.#images.some((i) => i.vmId === vmId)
  }

  /** Forgets the image of `vmId` (e.g. the VM is back and runs here). */
  drop(vmId: string): void {
    const image = this.#images.find((i) => i.vmId === vmId)
    if (image) this.#evict(image)
  }

  lookup(key: string): StoredPage | undefined {
    return this.#index.get(key)
  }

  #evict(image: Image): void {
    this.#images.splice(this.#images.indexOf(image), 1)
    this.#bytes -= image.bytes
    for (const k of image.keys) if (this.#index.get(k)?.image === image.memory) this.#index.delete(k)
  }
}
