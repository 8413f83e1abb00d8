// Copy-on-write disks of synthetic VMs: reads fall through to the shared base, writes (zeroes too) stay
// in the VM's own layer, the base is never written, the digest equals a plain copy's, and a reopened
// overlay reads the same.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { ImageStore, imageBase } from '../../src/images/index.js'
import { BLOCK_SIZE } from '../../src/vm/index.js'
import { SyntheticDisk } from '../../src/vm/synthetic/disk.js'
import { OverlayDisk } from '../../src/vm/synthetic/overlay-disk.js'

let dir: string
let store: ImageStore
let imageId: string
const content = randomBytes(20 * BLOCK_SIZE + 1000) // a base whose end is not block-aligned
const DISK = 64 * BLOCK_SIZE

before(async () => {
  dir = await mkdtemp(join(os.tmpdir(), 'skymesh-overlay-'))
  store = await ImageStore.open(join(dir, 'images'))
  const file = join(dir, 'base.img')
  await writeFile(file, content)
  // chunks of 3 blocks: a block never spans more than two chunks, some blocks do span two
  imageId = (await store.addFile(file, { chunkSize: 3 * BLOCK_SIZE - 4096 })).id
})
after(async () => {
  await rm(dir, { recursive: true, force: true })
})

function baseBlock(i: number): Buffer {
  const out = Buffer.alloc(BLOCK_SIZE)
  content.copy(out, 0, i * BLOCK_SIZE, Math.min(content.length, (i + 1) * BLOCK_SIZE))
  return out
}

describe('OverlayDisk', () => {
  it('reads the base where the VM never wrote, its own blocks where it did, zeroes past the image', async () => {
    const vmDir = join(dir, 'vm1')
    await import('node:fs/promises').then((fs) => fs.mkdir(vmDir))
    const disk = await OverlayDisk.create(vmDir, DISK, imageBase(store, imageId))
    for (const i of [0, 2, 19, 20])
      assert.ok(Buffer.from(await disk.readBlock(i)).equals(baseBlock(i)), `block ${i}`)
    assert.ok(Buffer.from(await disk.readBlock(40)).equals(Buffer.alloc(BLOCK_SIZE)))
    const mine = randomBytes(BLOCK_SIZE)
    await disk.writeBlock(2, mine)
    await disk.writeBlock(5, Buffer.alloc(BLOCK_SIZE)) // zeroes over a non-zero base block
    await disk.writeBlock(50, mine) // beyond the image
    assert.ok(Buffer.from(await disk.readBlock(2)).equals(mine))
    assert.ok(Buffer.from(await disk.readBlock(5)).equals(Buffer.alloc(BLOCK_SIZE)))
    assert.ok(Buffer.from(await disk.readBlock(50)).equals(mine))
    assert.equal(await disk.blockHash(5), null)
    assert.equal(disk.ownBlocks().count(), 3)
    // the shared base is untouched
    assert.deepEqual(await store.verify(imageId), [])
    const { data, hash } = await disk.readBlockHashed(3)
    assert.ok(Buffer.from(data).equals(baseBlock(3)))
    assert.ok(hash && Buffer.from(hash).equals(Buffer.from((await disk.blockHash(3)) as Uint8Array)))

    // The digest is the plain disk's digest of the same content (a migration to a plain disk verifies).
    const plainDir = join(dir, 'plain')
    await import('node:fs/promises').then((fs) => fs.mkdir(plainDir))
    const plain = await SyntheticDisk.create(plainDir, DISK)
    for (const i of disk.allocatedBlocks().indices()) await plain.writeBlock(i, await disk.readBlock(i))
    assert.equal(await disk.digest(), await plain.digest())
    await plain.close({ sync: false })

    // Reopened (suspend/resume): the same content, the layer map kept.
    await disk.close()
    assert.equal(await OverlayDisk.baseOf(vmDir), imageId)
    const again = await OverlayDisk.open(vmDir, DISK, imageBase(store, imageId))
    assert.ok(Buffer.from(await again.readBlock(2)).equals(mine))
    assert.ok(Buffer.from(await again.readBlock(5)).equals(Buffer.alloc(BLOCK_SIZE)))
    assert.ok(Buffer.from(await again.readBlock(7)).equals(baseBlock(7)))
    await again.close()
  })

  it('tracks dirty blocks of its own layer and refuses a disk smaller than the image', async () => {
    const vmDir = join(dir, 'vm2')
    await import('node:fs/promises').then((fs) => fs.mkdir(vmDir))
    const disk = await OverlayDisk.create(vmDir, DISK, imageBase(store, imageId))
    disk.startDirtyTracking()
    await disk.writeBlock(1, randomBytes(BLOCK_SIZE))
    disk.markDirty(1)
    assert.deepEqual([...disk.takeDirtyBlocks().indices()], [1])
    await disk.close({ sync: false })
    await assert.rejects(
      OverlayDisk.create(join(dir, 'vm3'), 4 * BLOCK_SIZE, imageBase(store, imageId)),
      /larger than the disk/,
    )
  })
})
