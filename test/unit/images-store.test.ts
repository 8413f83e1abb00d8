// The image store: chunking, manifests and ids, verification on write, resume, removal.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  BadChunkError,
  decodeManifest,
  encodeManifest,
  ImageStore,
  ImagesError,
  imageIdOf,
  sha256,
} from '../../src/images/index.js'

let dir: string
const CHUNK = 64 * 1024

before(async () => {
  dir = await mkdtemp(join(os.tmpdir(), 'skymesh-images-'))
})
after(async () => {
  await rm(dir, { recursive: true, force: true })
})

async function file(name: string, bytes: Buffer): Promise<string> {
  const p = join(dir, name)
  await writeFile(p, bytes)
  return p
}

describe('image manifest', () => {
  it('round-trips and its id is the sha256 of its encoding', () => {
    const m = {
      name: 'base.img',
      size: 100_000,
      chunkSize: CHUNK,
      chunks: [sha256(Buffer.from('a')), sha256(Buffer.from('b'))],
    }
    const enc = encodeManifest(m)
    const id = imageIdOf(enc)
    const back = decodeManifest(enc, id)
    assert.equal(back.name, 'base.img')
    assert.equal(back.size, 100_000)
    assert.deepEqual(
      back.chunks.map((c) => Buffer.from(c).toString('hex')),
      m.chunks.map((c) => c.toString('hex')),
    )
  })

  it('refuses a manifest that does not hash to the id asked for, or whose chunk count does not fit its size', () => {
    const m = {
      name: 'x',
      size: 100_000,
      chunkSize: CHUNK,
      chunks: [sha256(Buffer.from('a')), sha256(Buffer.from('b'))],
    }
    assert.throws(() => decodeManifest(encodeManifest(m), '00'.repeat(32)), ImagesError)
    assert.throws(() => decodeManifest(encodeManifest({ ...m, chunks: [m.chunks[0]!] })), /needs 2/)
    assert.throws(() => decodeManifest(encodeManifest({ ...m, name: '../etc' })), /name/)
    assert.throws(() => decodeManifest(Buffer.from([0xff, 0xff, 0xff])), ImagesError)
  })
})

describe('ImageStore', () => {
  it('splits a file into fixed-size chunks addressed by sha256; the same bytes give the same id', async () => {
    const data = randomBytes(3 * CHUNK + 1000)
    const store = await ImageStore.open(join(dir, 's1'))
    const a = await store.addFile(await file('a.img', data), { chunkSize: CHUNK })
    assert.equal(a.chunks, 4)
    assert.equal(a.size, data.length)
    assert.equal(a.complete, true)
    const m = store.manifest(a.id)
    for (let i = 0; i < 4; i++) {
      const part = data.subarray(i * CHUNK, Math.min(data.length, (i + 1) * CHUNK))
      assert.ok(sha256(part).equals(Buffer.from(m.chunks[i]!)))
      assert.ok((await store.readChunk(a.id, i)).equals(part))
    }
    const again = await store.addFile(await file('a2.img', data), { name: 'a.img', chunkSize: CHUNK })
    assert.equal(again.id, a.id)
    assert.deepEqual(await store.verify(a.id), [])
  })

  it('refuses a chunk whose hash does not match and stores nothing; resumes from the chunks it has', async () => {
    const data = randomBytes(4 * CHUNK)
    const src = await ImageStore.open(join(dir, 'src'))
    const img = await src.addFile(await file('b.img', data), { chunkSize: CHUNK })
    const dstDir = join(dir, 'dst')
    let dst = await ImageStore.open(dstDir)
    await dst.register(img.id, src.encodedManifest(img.id))
    assert.deepEqual(dst.missing(img.id), [0, 1, 2, 3])
    const bad = Buffer.from(await src.readChunk(img.id, 1))
    bad.writeUInt8(bad.readUInt8(10) ^ 1, 10)
    await assert.rejects(
      dst.writeChunk(img.id, 1, bad, 'peer-x'),
      (err: unknown) => err instanceof BadChunkError && err.source === 'peer-x',
    )
    assert.equal(dst.hasChunk(img.id, 1), false)
    await dst.writeChunk(img.id, 0, await src.readChunk(img.id, 0))
    await dst.writeChunk(img.id, 2, await src.readChunk(img.id, 2))
    // An interrupted pull: a new store on the same directory knows what is already there.
    dst = await ImageStore.open(dstDir)
    assert.deepEqual(dst.missing(img.id), [1, 3])
    assert.equal(dst.isComplete(img.id), false)
    await dst.writeChunk(img.id, 1, await src.readChunk(img.id, 1))
    await dst.writeChunk(img.id, 3, await src.readChunk(img.id, 3))
    assert.equal(dst.isComplete(img.id), true)
    assert.deepEqual(dst.completeIds(), [img.id])
  })

  it('wakes a waiter when the chunk it waits for lands (pipeline serving) and times out otherwise', async () => {
    const data = randomBytes(2 * CHUNK)
    const src = await ImageStore.open(join(dir, 'w-src'))
    const img = await src.addFile(await file('w.img', data), { chunkSize: CHUNK })
    const dst = await ImageStore.open(join(dir, 'w-dst'))
    await dst.register(img.id, src.encodedManifest(img.id))
    const waiting = dst.waitChunk(img.id, 1, 5000)
    await dst.writeChunk(img.id, 1, await src.readChunk(img.id, 1))
    assert.equal(await waiting, true)
    assert.equal(await dst.waitChunk(img.id, 0, 20), false)
  })

  it('finds a corrupted chunk file on verify; removing an image keeps chunks another image uses', async () => {
    const shared = randomBytes(CHUNK)
    const store = await ImageStore.open(join(dir, 'rm'))
    const a = await store.addFile(await file('ra.img', Buffer.concat([shared, randomBytes(CHUNK)])), {
      chunkSize: CHUNK,
    })
    const b = await store.addFile(await file('rb.img', Buffer.concat([shared, randomBytes(CHUNK)])), {
      chunkSize: CHUNK,
    })
    assert.equal((await readdir(join(dir, 'rm', 'chunks'))).length, 3)
    await writeFile(store.chunkFile(a.id, 1), randomBytes(CHUNK))
    assert.deepEqual(await store.verify(a.id), [1])
    await store.remove(a.id)
    assert.equal(store.has(a.id), false)
    assert.equal((await readdir(join(dir, 'rm', 'chunks'))).length, 2)
    assert.deepEqual(await store.verify(b.id), [])
    assert.equal(store.resolve(b.id.slice(0, 10)), b.id)
    assert.equal(store.resolve('rb.img'), b.id)
    assert.throws(() => store.resolve('nope'), /no image/)
  })

  it('refuses a missing, empty or non-regular file and an invalid name with a clear error', async () => {
    const store = await ImageStore.open(join(dir, 'bad'))
    await assert.rejects(store.addFile(join(dir, 'does-not-exist')), /cannot open/)
    await assert.rejects(store.addFile(await file('empty.img', Buffer.alloc(0))), /empty/)
    await assert.rejects(store.addFile(dir), /not a regular file/)
    await assert.rejects(store.addFile(await file('n.img', randomBytes(10)), { name: '../x' }), /name/)
    assert.deepEqual(store.list(), [])
  })
})
