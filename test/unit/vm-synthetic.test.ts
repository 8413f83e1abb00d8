import assert from 'node:assert/strict'
import { mkdtemp, open, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  BLOCK_SIZE,
  createDriver,
  PAGE_SIZE,
  type VmDriver,
  VmError,
  type VmInstance,
  type VmSpec,
  type VmState,
  type WorkloadSpec,
} from '../../src/vm/index.js'

const MiB = 1024 * 1024
const BUSY: WorkloadSpec = { dirtyMiBps: 64, hotSetMiB: 2, cpu: 0.05, diskWriteMiBps: 16 }
const IDLE: WorkloadSpec = { dirtyMiBps: 0, hotSetMiB: 0, cpu: 0, diskWriteMiBps: 0 }

let seq = 0
function spec(workload: WorkloadSpec = BUSY, over: Partial<VmSpec> = {}): VmSpec {
  seq++
  return { id: `vm-${seq}`, name: `vm${seq}`, vcpus: 1, memoryMiB: 16, diskMiB: 64, workload, ...over }
}

const dirs: string[] = []
async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'skymesh-vm-'))
  dirs.push(d)
  return d
}

const drivers: VmDriver[] = []
function driver(): VmDriver {
  const d = createDriver('synthetic', { tickMs: 10 })
  drivers.push(d)
  return d
}

after(async () => {
  for (const d of drivers) await d.close()
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

const code = (c: VmError['code']) => (err: unknown) => {
  assert.ok(err instanceof VmError, `expected a VmError, got ${String(err)}`)
  assert.equal(err.code, c)
  return true
}

/** Copies every non-zero page and allocated block of a paused `src` into `dst`. */
async function copyAll(src: VmInstance, dst: VmInstance): Promise<void> {
  for (let i = 0; i < src.memory.pageCount; i++) {
    if (!src.memory.isZeroPage(i)) dst.memory.writePage(i, src.memory.readPage(i))
  }
  for (const b of src.disk.allocatedBlocks().indices())
    await dst.disk.writeBlock(b, await src.disk.readBlock(b))
}

describe('createDriver', () => {
  it('makes the synthetic driver and names the known drivers for an unknown one', () => {
    assert.equal(driver().name, 'synthetic')
    assert.throws(() => createDriver('kvm'), /unknown VM driver 'kvm'.*synthetic/)
  })
})

describe('synthetic VM', () => {
  it('really changes its bytes while running and not while paused', async () => {
    const vm = await driver().create(spec(), { dir: await tmp(), seed: 1 })
    assert.equal(vm.state, 'running')
    const d0 = await vm.digest()
    await sleep(80)
    const d1 = await vm.digest()
    assert.notEqual(d1.memory, d0.memory)
    assert.notEqual(d1.disk, d0.disk)
    assert.notEqual(d1.combined, d0.combined)
    await vm.pause()
    assert.equal(vm.state, 'paused')
    const p0 = await vm.digest()
    await sleep(60)
    assert.deepEqual(await vm.digest(), p0)
    const st = vm.stats()
    assert.equal(st.state, 'paused')
    assert.ok(st.pagesWritten > 0 && st.blocksWritten > 0)
    assert.equal(st.dirtyMiBps, 0)
    await vm.resume()
    await sleep(60)
    assert.notEqual((await vm.digest()).combined, p0.combined)
    const running = vm.stats()
    assert.ok(running.dirtyMiBps > 0, 'measures a dirty rate while running')
    assert.ok(running.pagesWritten > st.pagesWritten)
    await vm.destroy()
  })

  it('reports exactly the pages and blocks the workload changed, and clears on take', async () => {
    const vm = await driver().create(spec(), { dir: await tmp() })
    assert.throws(() => vm.memory.takeDirtyPages(), code('VM_INVALID_STATE'))
    await vm.pause()
    vm.memory.startDirtyTracking()
    vm.disk.startDirtyTracking()
    const pages = Array.from({ length: vm.memory.pageCount }, (_, i) => vm.memory.readPage(i))
    const hotBlocks = (BUSY.hotSetMiB * MiB) / BLOCK_SIZE
    const blocks = await Promise.all(Array.from({ length: hotBlocks }, (_, i) => vm.disk.readBlock(i)))
    await vm.resume()
    await sleep(80)
    await vm.pause()

    const dirty = vm.memory.takeDirtyPages()
    assert.ok(dirty.count() > 0)
    for (let i = 0; i < vm.memory.pageCount; i++) {
      const changed = !Buffer.from(vm.memory.readPage(i)).equals(pages[i]!)
      assert.equal(dirty.get(i), changed, `page ${i}: dirty ${dirty.get(i)}, changed ${changed}`)
      if (changed) assert.ok(i < (BUSY.hotSetMiB * MiB) / PAGE_SIZE, 'writes stay in the hot set')
    }
    const dirtyBlocks = vm.disk.takeDirtyBlocks()
    assert.ok(dirtyBlocks.count() > 0)
    for (const b of dirtyBlocks.indices()) assert.ok(b < hotBlocks)
    for (let b = 0; b < hotBlocks; b++) {
      const changed = !Buffer.from(await vm.disk.readBlock(b)).equals(blocks[b]!)
      assert.equal(dirtyBlocks.get(b), changed, `block ${b}`)
    }
    assert.equal(vm.memory.takeDirtyPages().count(), 0, 'take clears')
    assert.equal(vm.disk.takeDirtyBlocks().count(), 0)

    // Writes from a migration are not guest writes
    vm.memory.writePage(100, new Uint8Array(PAGE_SIZE).fill(7))
    await vm.disk.writeBlock(100, new Uint8Array(BLOCK_SIZE).fill(7))
    assert.equal(vm.memory.takeDirtyPages().count(), 0)
    assert.equal(vm.disk.takeDirtyBlocks().count(), 0)
    vm.memory.stopDirtyTracking()
    assert.throws(() => vm.memory.takeDirtyPages(), code('VM_INVALID_STATE'))
    await vm.destroy()
  })

  it('reports zero pages and hands out copies of pages', async () => {
    const vm = await driver().prepareIncoming(spec(), { dir: await tmp() })
    assert.equal(vm.state, 'paused')
    assert.equal(vm.memory.isZeroPage(5), true)
    const page = new Uint8Array(PAGE_SIZE)
    page[PAGE_SIZE - 1] = 1
    vm.memory.writePage(5, page)
    assert.equal(vm.memory.isZeroPage(5), false)
    assert.equal(vm.memory.isZeroPage(4), true)
    const copy = vm.memory.readPage(5)
    copy.fill(0)
    assert.equal(vm.memory.isZeroPage(5), false, 'readPage returns a copy')
    const block = await vm.disk.readBlock(3)
    assert.equal(block.length, BLOCK_SIZE)
    assert.ok(
      block.every((v) => v === 0),
      'an unwritten block reads as zeroes',
    )
    await vm.destroy()
  })

  it('reads a block with its hash into a buffer it is given, a hole as zeroes', async () => {
    const vm = await driver().prepareIncoming(spec(IDLE), { dir: await tmp() })
    const data = Buffer.alloc(BLOCK_SIZE, 7)
    await vm.disk.writeBlock(2, data)
    const into = Buffer.alloc(BLOCK_SIZE, 9)
    const got = await vm.disk.readBlockHashed(2, into)
    assert.equal(got.data.buffer, into.buffer, 'the bytes are read into the given buffer')
    assert.deepEqual(Buffer.from(got.data), data)
    assert.deepEqual(got.hash, await vm.disk.blockHash(2))
    // The same buffer again, now for a block never written: zeroes, no hash
    const hole = await vm.disk.readBlockHashed(3, into)
    assert.ok(
      hole.data.every((v) => v === 0),
      'a hole reads as zeroes into a used buffer',
    )
    assert.equal(hole.hash, null)
    await assert.rejects(vm.disk.readBlockHashed(2, Buffer.alloc(10)), { code: 'VM_OUT_OF_RANGE' })
    await vm.destroy()
  })

  it('a copy of every page and block has the same digest; one wrong or misplaced byte changes it', async () => {
    const drv = driver()
    const src = await drv.create(spec(), { dir: await tmp() })
    await sleep(60)
    await src.pause()
    const dst = await drv.prepareIncoming(src.spec, { dir: await tmp() })
    assert.notEqual((await dst.digest()).combined, (await src.digest()).combined)
    await copyAll(src, dst)
    const want = await src.digest()
    assert.deepEqual(await dst.digest(), want)

    const p = [...Array(src.memory.pageCount).keys()].find((i) => !src.memory.isZeroPage(i))!
    const page = dst.memory.readPage(p)
    page[17] = page[17]! ^ 1
    dst.memory.writePage(p, page)
    const flipped = await dst.digest()
    assert.notEqual(flipped.memory, want.memory)
    assert.equal(flipped.disk, want.disk)
    assert.notEqual(flipped.combined, want.combined)
    page[17] = page[17]! ^ 1
    dst.memory.writePage(p, page)
    assert.deepEqual(await dst.digest(), want)

    // The same bytes at another index are a different VM
    const far = src.memory.pageCount - 1
    dst.memory.writePage(far, page)
    dst.memory.writePage(p, new Uint8Array(PAGE_SIZE))
    assert.notEqual((await dst.digest()).memory, want.memory)
    dst.memory.writePage(far, new Uint8Array(PAGE_SIZE))
    dst.memory.writePage(p, page)

    const b = src.disk.allocatedBlocks().indices().next().value!
    const block = await dst.disk.readBlock(b)
    block[BLOCK_SIZE - 1] = block[BLOCK_SIZE - 1]! ^ 0x80
    await dst.disk.writeBlock(b, block)
    const d2 = await dst.digest()
    assert.equal(d2.memory, want.memory)
    assert.notEqual(d2.disk, want.disk)

    await dst.resume()
    assert.equal(dst.state, 'running')
    await src.destroy()
    await dst.destroy()
  })

  it('suspends and restores with a new driver to the same digest, then runs again', async () => {
    const dir = await tmp()
    const vm = await driver().create(spec(), { dir, seed: 7 })
    const states: VmState[] = []
    vm.onStateChange((s) => states.push(s))
    await sleep(60)
    await vm.pause()
    const before = await vm.digest()
    await vm.suspend()
    assert.equal(vm.state, 'suspended')
    assert.deepEqual(states, ['paused', 'suspended'])
    assert.throws(() => vm.memory.readPage(0), code('VM_INVALID_STATE'))
    await assert.rejects(vm.resume(), code('VM_INVALID_STATE'))

    // Only non-zero pages are written: the image is sparse
    const img = await stat(join(dir, 'memory.img'))
    assert.equal(img.size, 16 * MiB)
    assert.ok(img.blocks * 512 <= 4 * MiB, `memory.img uses ${img.blocks * 512} bytes`)

    const drv2 = driver()
    assert.equal(await drv2.hasSuspendImage(dir), true)
    const back = await drv2.restore(vm.spec, { dir, seed: 7 })
    assert.equal(back.state, 'running')
    await back.pause()
    assert.deepEqual(await back.digest(), before)
    assert.equal(await drv2.hasSuspendImage(dir), false, 'the image is used up')
    await assert.rejects(drv2.restore(vm.spec, { dir }), code('VM_NO_SUSPEND_IMAGE'))

    await back.resume()
    await sleep(60)
    assert.notEqual((await back.digest()).combined, before.combined)
    await back.stop()
    await drv2.close()
    const left = await readdir(dir)
    assert.deepEqual(
      left.filter((n) => n.startsWith('memory') || n.startsWith('suspend')),
      [],
    )
    assert.ok(left.includes('disk.img') && left.includes('disk.alloc'))
    await back.destroy()
  })

  it('suspends a running VM too', async () => {
    const dir = await tmp()
    const drv = driver()
    const vm = await drv.create(spec(), { dir })
    await sleep(30)
    await vm.suspend()
    const back = await drv.restore(vm.spec, { dir })
    assert.equal(back.state, 'running')
    await back.destroy()
  })

  it('refuses a missing, incomplete, truncated or corrupt suspend image', async () => {
    const drv = driver()
    const empty = await tmp()
    assert.equal(await drv.hasSuspendImage(empty), false)
    await assert.rejects(drv.restore(spec(), { dir: empty }), code('VM_NO_SUSPEND_IMAGE'))

    const suspended = async () => {
      const dir = await tmp()
      const vm = await drv.create(spec(), { dir })
      await sleep(40)
      await vm.suspend()
      return { dir, spec: vm.spec }
    }

    // no `complete: true`: as if the manifest was being written when the host died
    const a = await suspended()
    const manifest = JSON.parse(await readFile(join(a.dir, 'suspend.json'), 'utf8'))
    await writeFile(join(a.dir, 'suspend.json'), JSON.stringify({ ...manifest, complete: false }))
    assert.equal(await drv.hasSuspendImage(a.dir), false)
    await assert.rejects(drv.restore(a.spec, { dir: a.dir }), code('VM_NO_SUSPEND_IMAGE'))
    await writeFile(join(a.dir, 'suspend.json'), '{"version":1,"comp')
    await assert.rejects(drv.restore(a.spec, { dir: a.dir }), code('VM_NO_SUSPEND_IMAGE'))

    const b = await suspended()
    await truncate(join(b.dir, 'memory.img'), MiB)
    await assert.rejects(drv.restore(b.spec, { dir: b.dir }), (err: unknown) => {
      code('VM_IO')(err)
      assert.match((err as Error).message, /memory\.img/)
      return true
    })

    const c = await suspended()
    const at = (await readFile(join(c.dir, 'memory.img'))).findIndex((v) => v !== 0)
    assert.ok(at >= 0)
    const fh = await open(join(c.dir, 'memory.img'), 'r+')
    await fh.write(Uint8Array.of(0), 0, 1, at)
    await fh.close()
    await assert.rejects(drv.restore(c.spec, { dir: c.dir }), (err: unknown) => {
      code('VM_IO')(err)
      assert.match((err as Error).message, /corrupt: memory digest differs/)
      return true
    })
    assert.equal(await drv.hasSuspendImage(c.dir), true, 'a refused image is kept')

    // an image of another VM, or of another size
    const d = await suspended()
    await assert.rejects(drv.restore({ ...d.spec, id: 'other' }, { dir: d.dir }), code('VM_NO_SUSPEND_IMAGE'))
    await assert.rejects(
      drv.restore({ ...d.spec, memoryMiB: 32 }, { dir: d.dir }),
      code('VM_NO_SUSPEND_IMAGE'),
    )
    const back = await drv.restore(d.spec, { dir: d.dir })
    await back.destroy()
  })

  it('writes a run of blocks in one call as block writes would, holes kept for zero blocks', async () => {
    const drv = driver()
    const one = await drv.prepareIncoming(spec(IDLE), { dir: await tmp() })
    const run = await drv.prepareIncoming(spec(IDLE), { dir: await tmp() })
    // Blocks 4..8: data, zero (on a hole: stays a hole), data, data, zero
    const data = Buffer.alloc(5 * BLOCK_SIZE)
    for (const k of [0, 2, 3]) data.fill(k + 1, k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE)
    data[3 * BLOCK_SIZE + 5] = 99
    for (let k = 0; k < 5; k++)
      await one.disk.writeBlock(4 + k, data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE))
    assert.ok(run.disk.writeBlocks, 'the synthetic disk writes runs of blocks')
    await run.disk.writeBlocks(4, data)
    assert.deepEqual([...run.disk.allocatedBlocks().indices()], [4, 6, 7])
    for (let k = 0; k < 5; k++) {
      assert.deepEqual(
        Buffer.from(await run.disk.readBlock(4 + k)),
        data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE),
      )
      assert.deepEqual(await run.disk.blockHash(4 + k), await one.disk.blockHash(4 + k))
    }
    assert.equal((await run.digest()).disk, (await one.digest()).disk)
    // Over an allocated block a zero block is written (it must read as zero afterwards)
    await run.disk.writeBlocks(6, Buffer.alloc(BLOCK_SIZE))
    assert.ok((await run.disk.readBlock(6)).every((v) => v === 0))
    assert.equal(await run.disk.blockHash(6), null)
    await assert.rejects(run.disk.writeBlocks(4, Buffer.alloc(BLOCK_SIZE + 1)), code('VM_OUT_OF_RANGE'))
    await assert.rejects(run.disk.writeBlocks(run.disk.blockCount - 1, data), code('VM_OUT_OF_RANGE'))
    await one.destroy()
    await run.destroy()
  })

  it('keeps the disk file sparse', async () => {
    const dir = await tmp()
    const vm = await driver().create(spec(IDLE), { dir })
    const st = await stat(join(dir, 'disk.img'))
    assert.equal(st.size, 64 * MiB)
    assert.ok(st.blocks * 512 < MiB, `disk.img uses ${st.blocks * 512} bytes`)
    assert.equal(vm.disk.blockCount, (64 * MiB) / BLOCK_SIZE)
    assert.equal(vm.disk.allocatedBlocks().count(), 0)
    await vm.disk.writeBlock(3, new Uint8Array(BLOCK_SIZE))
    assert.equal(vm.disk.allocatedBlocks().count(), 0, 'a zero block on a hole is not written')
    await vm.disk.writeBlock(3, new Uint8Array(BLOCK_SIZE).fill(1))
    assert.deepEqual([...vm.disk.allocatedBlocks().indices()], [3])
    await vm.destroy()
  })

  it('throws VM_OUT_OF_RANGE for a bad page or block index or size', async () => {
    const vm = await driver().create(spec(IDLE), { dir: await tmp() })
    const n = vm.memory.pageCount
    assert.equal(n, (16 * MiB) / PAGE_SIZE)
    for (const i of [-1, n, 1.5, Number.NaN]) {
      assert.throws(() => vm.memory.readPage(i), code('VM_OUT_OF_RANGE'))
      assert.throws(() => vm.memory.isZeroPage(i), code('VM_OUT_OF_RANGE'))
    }
    assert.throws(() => vm.memory.writePage(n, new Uint8Array(PAGE_SIZE)), code('VM_OUT_OF_RANGE'))
    assert.throws(() => vm.memory.writePage(0, new Uint8Array(10)), code('VM_OUT_OF_RANGE'))
    await assert.rejects(vm.disk.readBlock(vm.disk.blockCount), code('VM_OUT_OF_RANGE'))
    await assert.rejects(vm.disk.writeBlock(-1, new Uint8Array(BLOCK_SIZE)), code('VM_OUT_OF_RANGE'))
    await assert.rejects(vm.disk.writeBlock(0, new Uint8Array(PAGE_SIZE)), code('VM_OUT_OF_RANGE'))
    await vm.destroy()
    await assert.rejects(
      driver().create(spec(IDLE, { memoryMiB: 0 }), { dir: await tmp() }),
      code('VM_OUT_OF_RANGE'),
    )
  })

  it('stops, refuses lifecycle calls after stop, and destroy removes its directory', async () => {
    const dir = await tmp()
    const vm = await driver().create(spec(), { dir })
    const states: VmState[] = []
    const off = vm.onStateChange((s) => states.push(s))
    await vm.pause()
    await vm.pause()
    await vm.resume()
    await vm.stop()
    off()
    assert.deepEqual(states, ['paused', 'running', 'stopped'])
    assert.equal(vm.state, 'stopped')
    await assert.rejects(vm.resume(), code('VM_INVALID_STATE'))
    await assert.rejects(vm.suspend(), code('VM_INVALID_STATE'))
    await assert.rejects(vm.digest(), code('VM_INVALID_STATE'))
    await stat(join(dir, 'disk.img'))
    await vm.destroy()
    await assert.rejects(stat(dir), { code: 'ENOENT' })
  })

  it('close stops the VMs of the driver', async () => {
    const drv = createDriver('synthetic', { tickMs: 10 })
    const a = await drv.create(spec(), { dir: await tmp() })
    const b = await drv.prepareIncoming(spec(), { dir: await tmp() })
    await drv.close()
    assert.equal(a.state, 'stopped')
    assert.equal(b.state, 'stopped')
    await assert.rejects(drv.create(spec(), { dir: await tmp() }), code('VM_INVALID_STATE'))
  })
})
