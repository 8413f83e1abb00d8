// The content-addressed image store of one host: chunk files named by their sha256 under
// DIR/images/chunks, one manifest per image under DIR/images/manifests (named by image id). An image
// whose chunks are not all here yet is partial: a pull fetches only what is missing, so an
// interrupted transfer resumes from the chunks already stored. Every chunk written is verified.
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { DEFAULT_CHUNK_SIZE } from './constants.js'
import { BadChunkError, ImagesError } from './errors.js'
import {
  checkManifest,
  chunkLength,
  decodeManifest,
  encodeManifest,
  imageIdOf,
  type Manifest,
  sha256,
} from './manifest.js'

export interface ImageSummary {
  id: string
  name: string
  size: number
  chunkSize: number
  chunks: number
  /** Chunks held here. */
  have: number
  complete: boolean
}

interface Entry {
  id: string
  manifest: Manifest
  encoded: Uint8Array
  have: Uint8Array
  haveCount: number
}

export class ImageStore {
  readonly #dir: string
  readonly #images = new Map<string, Entry>()
  /** Waiters for a chunk still to arrive (pipeline serving): key `${id}:${index}`. */
  readonly #waiters = new Map<string, Set<() => void>>()
  /**
   * Chunks verified but not yet on disk, key `${id}:${index}`: a pipeline forwards a chunk to the next
   * host as soon as its hash checks out, while the write to disk goes on (only then does it count as
   * held: gossip, completeness and resume see the disk).
   */
  readonly #landing = new Map<string, Uint8Array>()
  readonly #listeners = new Set<() => void>()

  private constructor(dir: string) {
    this.#dir = dir
  }

  /** Opens (creating) the store in `dir` and finds which chunks of each image are present. */
  static async open(dir: string): Promise<ImageStore> {
    const store = new ImageStore(dir)
    await mkdir(store.#chunkDir, { recursive: true })
    await mkdir(store.#manifestDir, { recursive: true })
    for (const name of await readdir(store.#manifestDir)) {
      if (!/^[0-9a-f]{64}$/.test(name)) continue
      try {
        const encoded = await readFile(join(store.#manifestDir, name))
        const manifest = decodeManifest(encoded, name)
        const entry = store.#entry(name, manifest, encoded)
        manifest.chunks.forEach((h, i) => {
          if (existsSync(store.#chunkPath(h))) store.#mark(entry, i)
        })
        store.#images.set(name, entry)
      } catch {
        // a manifest that does not check out is ignored (and can be fetched again)
      }
    }
    return store
  }

  get #chunkDir(): string {
    return join(this.#dir, 'chunks')
  }

  get #manifestDir(): string {
    return join(this.#dir, 'manifests')
  }

  #chunkPath(hash: Uint8Array): string {
    return join(this.#chunkDir, Buffer.from(hash).toString('hex'))
  }

  #entry(id: string, manifest: Manifest, encoded: Uint8Array): Entry {
    return { id, manifest, encoded, have: new Uint8Array(manifest.chunks.length), haveCount: 0 }
  }

  #mark(e: Entry, i: number): void {
    if (e.have[i]) return
    e.have[i] = 1
    e.haveCount++
  }

  /** Called whenever the set of complete images changes (gossip republishes). */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn)
    return () => this.#listeners.delete(fn)
  }

  #changed(): void {
    for (const fn of this.#listeners) fn()
  }

  /** Splits a local file into chunks, stores them and its manifest; the same bytes give the same id. */
  async addFile(path: string, opts: { name?: string; chunkSize?: number } = {}): Promise<ImageSummary> {
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE
    const name = opts.name ?? basename(path)
    let fh: Awaited<ReturnType<typeof open>>
    try {
      fh = await open(path, 'r')
    } catch (err) {
      throw new ImagesError(
        'BAD_REQUEST',
        `path: cannot open ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`,
        {
          field: 'path',
        },
      )
    }
    const chunks: Uint8Array[] = []
    let size = 0
    try {
      const st = await fh.stat()
      if (!st.isFile())
        throw new ImagesError('BAD_REQUEST', `path: ${path} is not a regular file`, { field: 'path' })
      if (st.size === 0) throw new ImagesError('BAD_REQUEST', `path: ${path} is empty`, { field: 'path' })
      checkManifest({
        name,
        size: st.size,
        chunkSize,
        chunks: new Array(Math.ceil(st.size / chunkSize)).fill(Buffer.alloc(32)),
      })
      const buf = Buffer.allocUnsafe(chunkSize)
      for (;;) {
        let filled = 0
        while (filled < chunkSize) {
          const { bytesRead } = await fh.read(buf, filled, chunkSize - filled, size + filled)
          if (bytesRead === 0) break
          filled += bytesRead
        }
        if (filled === 0) break
        const data = buf.subarray(0, filled)
        const hash = sha256(data)
        await this.#writeChunkFile(hash, data)
        chunks.push(hash)
        size += filled
        if (filled < chunkSize) break
      }
    } catch (err) {
      if (err instanceof ImagesError)
        throw err.code === 'BAD_REQUEST' && !err.details
          ? new ImagesError('BAD_REQUEST', err.message, { field: 'name' })
          : err
      throw err
    } finally {
      await fh.close()
    }
    const manifest: Manifest = { name, size, chunkSize, chunks }
    const encoded = encodeManifest(manifest)
    const id = imageIdOf(encoded)
    const existing = this.#images.get(id)
    if (existing && existing.haveCount === chunks.length) return summary(existing)
    await this.#saveManifest(id, encoded)
    const entry = this.#entry(id, manifest, encoded)
    for (let i = 0; i < chunks.length; i++) this.#mark(entry, i)
    this.#images.set(id, entry)
    this.#changed()
    return summary(entry)
  }

  /** Registers an image about to be fetched (its manifest checked against `id`); chunks already here count. */
  async register(id: string, encoded: Uint8Array): Promise<ImageSummary> {
    const existing = this.#images.get(id)
    if (existing) return summary(existing)
    const manifest = decodeManifest(encoded, id)
    const entry = this.#entry(id, manifest, Uint8Array.from(encoded))
    // Chunks shared with other images (or left by an interrupted pull) are already here.
    manifest.chunks.forEach((h, i) => {
      if (existsSync(this.#chunkPath(h))) this.#mark(entry, i)
    })
    await this.#saveManifest(id, entry.encoded)
    this.#images.set(id, entry)
    if (entry.haveCount === manifest.chunks.length) this.#changed()
    return summary(entry)
  }

  has(id: string): boolean {
    return this.#images.has(id)
  }

  get(id: string): ImageSummary | undefined {
    const e = this.#images.get(id)
    return e && summary(e)
  }

  manifest(id: string): Manifest {
    return this.#require(id).manifest
  }

  encodedManifest(id: string): Uint8Array {
    return this.#require(id).encoded
  }

  isComplete(id: string): boolean {
    const e = this.#images.get(id)
    return e !== undefined && e.haveCount === e.have.length
  }

  hasChunk(id: string, i: number): boolean {
    return this.#images.get(id)?.have[i] === 1
  }

  /** Chunk `i` can be served now: stored, or verified and being written. */
  canServe(id: string, i: number): boolean {
    return this.hasChunk(id, i) || this.#landing.has(`${id}:${i}`)
  }

  /** Indices of the chunks not yet here, ascending. */
  missing(id: string): number[] {
    const e = this.#require(id)
    const out: number[] = []
    for (let i = 0; i < e.have.length; i++) if (!e.have[i]) out.push(i)
    return out
  }

  list(): ImageSummary[] {
    return [...this.#images.values()]
      .map(summary)
      .sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id))
  }

  completeIds(): string[] {
    return [...this.#images.values()].filter((e) => e.haveCount === e.have.length).map((e) => e.id)
  }

  /** An id or a unique prefix of one (at least 6 hex digits), or a unique name. */
  resolve(ref: string): string {
    if (this.#images.has(ref)) return ref
    const byPrefix = /^[0-9a-f]{6,64}$/.test(ref)
      ? [...this.#images.keys()].filter((id) => id.startsWith(ref))
      : []
    const byName = [...this.#images.values()].filter((e) => e.manifest.name === ref).map((e) => e.id)
    const found = [...new Set([...byPrefix, ...byName])]
    if (found.length === 1) return found[0]!
    if (found.length > 1)
      throw new ImagesError('BAD_REQUEST', `'${ref}' names ${found.length} images: use the full id`, {
        ids: found,
      })
    throw new ImagesError('NOT_FOUND', `no image '${ref}' on this host`)
  }

  async readChunk(id: string, i: number): Promise<Buffer> {
    const e = this.#require(id)
    const landing = this.#landing.get(`${id}:${i}`)
    if (landing) return Buffer.from(landing.buffer, landing.byteOffset, landing.byteLength)
    if (!e.have[i]) throw new ImagesError('NOT_FOUND', `chunk ${i} of image ${id} is not here`)
    return readFile(this.#chunkPath(e.manifest.chunks[i]!))
  }

  /** Stores chunk `i` after checking its hash against the manifest (BadChunkError if it differs). */
  async writeChunk(id: string, i: number, data: Uint8Array, source = 'local'): Promise<void> {
    const e = this.#require(id)
    const want = e.manifest.chunks[i]
    if (!want) throw new ImagesError('BAD_REQUEST', `chunk ${i} is out of range`)
    if (data.length !== chunkLength(e.manifest, i) || !sha256(data).equals(want))
      throw new BadChunkError(i, source)
    const key = `${id}:${i}`
    if (e.have[i] || this.#landing.has(key)) return
    // Servable from now on (a pipeline child waiting for it gets it at once), held once on disk.
    this.#landing.set(key, data)
    const waiters = this.#waiters.get(key)
    this.#waiters.delete(key)
    for (const w of waiters ?? []) w()
    try {
      await this.#writeChunkFile(want, data)
    } finally {
      this.#landing.delete(key)
    }
    // Removed meanwhile: the chunk file may stay (as after a crash); nothing refers to it.
    if (this.#images.get(id) !== e) return
    this.#mark(e, i)
    if (e.haveCount === e.have.length) this.#changed()
  }

  /** Resolves true once chunk `i` can be served here, false after `ms` or when `signal` aborts. */
  waitChunk(id: string, i: number, ms: number, signal?: AbortSignal): Promise<boolean> {
    if (this.canServe(id, i)) return Promise.resolve(true)
    if (!this.#images.has(id) || signal?.aborted) return Promise.resolve(false)
    return new Promise((resolve) => {
      const key = `${id}:${i}`
      const set = this.#waiters.get(key) ?? new Set<() => void>()
      this.#waiters.set(key, set)
      const done = (ok: boolean) => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        set.delete(wake)
        resolve(ok)
      }
      const wake = () => done(true)
      const onAbort = () => done(false)
      const timer = setTimeout(() => done(false), ms)
      set.add(wake)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** Removes an image and every chunk no other image uses. */
  async remove(id: string): Promise<void> {
    const e = this.#require(id)
    this.#images.delete(id)
    await rm(join(this.#manifestDir, id), { force: true })
    await rm(join(this.#dir, 'files', id), { force: true })
    const used = new Set<string>()
    for (const other of this.#images.values())
      for (const h of other.manifest.chunks) used.add(Buffer.from(h).toString('hex'))
    for (const h of e.manifest.chunks) {
      const hex = Buffer.from(h).toString('hex')
      if (!used.has(hex)) await rm(join(this.#chunkDir, hex), { force: true })
    }
    this.#changed()
  }

  /** Re-hashes every chunk file of an image; returns the indices that are missing or do not match. */
  async verify(id: string): Promise<number[]> {
    const e = this.#require(id)
    const bad: number[] = []
    for (let i = 0; i < e.manifest.chunks.length; i++) {
      try {
        const data = await readFile(this.#chunkPath(e.manifest.chunks[i]!))
        if (!sha256(data).equals(e.manifest.chunks[i]!)) bad.push(i)
      } catch {
        bad.push(i)
      }
    }
    return bad
  }

  /**
   * The image as one plain file (its chunks concatenated), for drivers that need a file (qemu's backing
   * file): made once under DIR/files/<id>, read-only, atomically; removed with the image.
   */
  async file(id: string): Promise<string> {
    if (!this.isComplete(id))
      throw new ImagesError('INVALID_STATE', `image ${id.slice(0, 12)} is not complete on this host`)
    const path = join(this.#dir, 'files', id)
    if (existsSync(path)) return path
    await mkdir(join(this.#dir, 'files'), { recursive: true })
    const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`
    const out = await open(tmp, 'w', 0o444)
    try {
      const m = this.manifest(id)
      for (let i = 0; i < m.chunks.length; i++) await out.write(await this.readChunk(id, i))
      await out.sync()
    } catch (err) {
      await out.close()
      await rm(tmp, { force: true })
      throw err
    }
    await out.close()
    await rename(tmp, path)
    return path
  }

  /** The file of chunk `i` (for the copy-on-write base reader). */
  chunkFile(id: string, i: number): string {
    return this.#chunkPath(this.#require(id).manifest.chunks[i]!)
  }

  #require(id: string): Entry {
    const e = this.#images.get(id)
    if (!e) throw new ImagesError('NOT_FOUND', `no image ${id} on this host`)
    return e
  }

  async #saveManifest(id: string, encoded: Uint8Array): Promise<void> {
    const file = join(this.#manifestDir, id)
    const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`
    await writeFile(tmp, encoded)
    await rename(tmp, file)
  }

  async #writeChunkFile(hash: Uint8Array, data: Uint8Array): Promise<void> {
    const file = this.#chunkPath(hash)
    if (existsSync(file)) return
    // A unique temporary name: two pulls may write the same chunk at once; the rename is atomic.
    const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`
    await writeFile(tmp, data)
    await rename(tmp, file)
  }
}

function summary(e: Entry): ImageSummary {
  return {
    id: e.id,
    name: e.manifest.name,
    size: e.manifest.size,
    chunkSize: e.manifest.chunkSize,
    chunks: e.have.length,
    have: e.haveCount,
    complete: e.haveCount === e.have.length,
  }
}
