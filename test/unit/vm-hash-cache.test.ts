// The incremental digest (cached unit hashes) must always equal the digest computed from the bytes
// alone, whatever was written since the last look, so a copy of the same bytes digests the same.
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { BLOCK_SIZE, PAGE_SIZE } from '../../src/vm/index.js'
import { SyntheticDisk } from '../../src/vm/synthetic/disk.js'
import { SyntheticMemory } from '../../src/vm/synthetic/memory.js'

/** The digest format of hash-cache.ts, computed from the bytes alone. */
function referenceDigest(bytes: Buffer, unit: number): string {
  const sha = (b: Uint8Array) => createHash('sha256').update(b).digest()
  const groups = new Map<number, Buffer[]>()
  for (let i = 0; i < bytes.length / unit; i++) {
    const u = bytes.subarray(i * unit, (i + 1) * unit)
    if (u.every((x) => x === 0)) continue
    const idx = Buffer.alloc(4)
    idx.writeUInt32BE(i)
    const g = i >>> 10
    if (!groups.has(g)) groups.set(g, [])
    groups.get(g)!.push(idx, sha(u))
  }
  const top: Buffer[] = []
  for (const g of [...groups.keys()].sort((a, b) => a - b)) {
    const idx = Buffer.alloc(4)
    idx.writeUInt32BE(g)
    top.push(idx, sha(Buffer.concat(groups.get(g)!)))
  }
  return sha(Buffer.concat(top)).toString('hex')
}

const dirs: string[] = []
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

describe('incremental digests', () => {
  it('memory: equals the digest of the bytes after guest writes, copies and zeroing', () => {
    const pages = 3000 // three groups, the last one partial
    const m = new SyntheticMemory(pages * PAGE_SIZE)
    assert.equal(m.digest(), referenceDigest(m.raw(), PAGE_SIZE), 'empty memory')
    let seed = 7
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) >>> 0
      return seed
    }
    for (let step = 0; step < 6; step++) {
      for (let k = 0; k < 200; k++) {
        const p = rnd() % pages
        const w = m.pageWords(p)
        w[rnd() % w.length] = rnd() | 1 // a guest write (the page is then stale)
      }
      for (let k = 0; k < 50; k++) {
        const p = rnd() % pages
        const data = Buffer.alloc(PAGE_SIZE, k % 5 === 0 ? 0 : (rnd() % 255) + 1)
        m.writePage(p, data) // a migration write: hashed at once (zero pages too)
      }
      // reading a hash refreshes the cache; it must match the bytes
      const p = rnd() % pages
      const h = m.pageHash(p)
      const page = m.readPage(p)
      assert.deepEqual(
        h && Buffer.from(h),
        page.every((x) => x === 0) ? null : createHash('sha256').update(page).digest(),
      )
      assert.equal(m.digest(), referenceDigest(m.raw(), PAGE_SIZE), `step ${step}`)
    }
    // A copy made page by page digests the same
    const copy = new SyntheticMemory(pages * PAGE_SIZE)
    for (let p = 0; p < pages; p++) if (!m.isZeroPage(p)) copy.writePage(p, m.readPage(p))
    assert.equal(copy.digest(), m.digest())
    // and a restored image (every page unknown) too
    const restored = new SyntheticMemory(pages * PAGE_SIZE, Buffer.from(m.raw()))
    assert.equal(restored.digest(), m.digest())
  })

  it('memory: a digest tree warmed between writes still equals the digest of the bytes', () => {
    const pages = 3000
    const m = new SyntheticMemory(pages * PAGE_SIZE)
    let seed = 11
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) >>> 0
      return seed
    }
    for (let step = 0; step < 8; step++) {
      for (let k = 0; k < 100; k++) {
        const data = Buffer.alloc(PAGE_SIZE, k % 7 === 0 ? 0 : (rnd() % 255) + 1)
        m.writePage(rnd() % pages, data)
        if (k % 10 === 0) m.warmDigest()
      }
      // guest writes after a warm leave their groups stale: warm skips them, digest rehashes them
      for (let k = 0; k < 20; k++) {
        const w = m.pageWords(rnd() % pages)
        w[rnd() % w.length] = rnd() | 1
      }
      m.warmDigest()
      assert.equal(m.digest(), referenceDigest(m.raw(), PAGE_SIZE), `step ${step}`)
    }
  })

  it('disk: follows writes (also concurrent ones to one block) and reopening', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'skymesh-hash-'))
    dirs.push(dir)
    const blocks = 40
    const disk = await SyntheticDisk.create(dir, blocks * BLOCK_SIZE)
    const block = (v: number) => Buffer.alloc(BLOCK_SIZE, v)
    await Promise.all([
      disk.writeBlock(3, block(1)),
      disk.writeBlock(3, block(2)),
      disk.writeBlock(9, block(0)),
    ])
    await disk.writeBlock(20, block(5))
    await disk.writeBlock(21, block(0)) // a hole stays a hole
    await disk.writeBlock(20, block(0)) // an allocated block zeroed: contributes nothing
    await disk.writeBlock(39, block(7))
    const all = await disk.readBlocks(0, blocks)
    assert.equal(await disk.digest(), referenceDigest(all, BLOCK_SIZE))
    assert.deepEqual(Buffer.from((await disk.blockHash(39))!), createHash('sha256').update(block(7)).digest())
    assert.equal(await disk.blockHash(20), null)
    const before = await disk.digest()
    await disk.close()
    const again = await SyntheticDisk.open(dir, blocks * BLOCK_SIZE)
    assert.equal(await again.digest(), before)
    await again.close()
  })

  it('disk: a block read with its hash pairs the bytes with their own hash while writes race it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'skymesh-hash-'))
    dirs.push(dir)
    const disk = await SyntheticDisk.create(dir, 8 * BLOCK_SIZE)
    const sha = (b: Uint8Array) => createHash('sha256').update(b).digest()
    await disk.writeBlock(5, Buffer.alloc(BLOCK_SIZE, 1))
    let raced = 0
    for (let k = 2; k < 200; k++) {
      // The write starts before, with or after the read, so every interleaving of their I/O occurs
      const write = new Promise<void>((resolve, reject) => {
        const go = () => void disk.writeBlock(5, Buffer.alloc(BLOCK_SIZE, k & 0xff)).then(resolve, reject)
        if (k % 3 === 0) go()
        else if (k % 3 === 1) queueMicrotask(go)
        else setImmediate(go)
      })
      const { data, hash } = await disk.readBlockHashed(5)
      await write
      assert.ok(hash, 'a non-zero block has a hash')
      assert.deepEqual(Buffer.from(hash), sha(data), `round ${k}: the hash is of the bytes returned`)
      if (data[0] !== (k & 0xff)) raced++
    }
    assert.ok(raced > 0, 'some reads saw the bytes from before the write')
    await disk.close()
  })
})
