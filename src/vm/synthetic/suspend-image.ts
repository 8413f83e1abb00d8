// The suspend image in a VM's directory:
//   memory.img    memory as a sparse file: only non-zero pages are written, at their own offsets
//   memory.map    bitmap of those pages (Bitmap.toBytes), so a restore reads nothing else
//   suspend.json  the manifest, written LAST (temp + rename): without `complete: true` there is no image
// The disk itself (disk.img + disk.alloc) stays where it is and is flushed by the caller.

import { randomUUID } from 'node:crypto'
import { open, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { Bitmap } from '../bitmap.js'
import { PAGE_SIZE, VmError, type VmSpec } from '../types.js'
import type { VmDigest } from './digest.js'
import { runs } from './digest.js'
import { forEachLimit, readExactly, removeFiles, writeExactly, writeFileAtomic } from './files.js'
import type { SyntheticMemory } from './memory.js'

export const SUSPEND_JSON = 'suspend.json'
export const MEMORY_IMG = 'memory.img'
export const MEMORY_MAP = 'memory.map'

/** Pages written or read in one call when they are consecutive (1 MiB). */
const RUN_PAGES = 256
/** Runs read or written at once. */
const IO_PARALLEL = 4

export interface SuspendManifest {
  version: 1
  spec: VmSpec
  pageSize: number
  memoryBytes: number
  diskBytes: number
  digest: VmDigest
  savedAt: string
  complete: true
}

const TRASH = '.trash-'
const deleting = new Set<Promise<void>>()

/**
 * Removes the image and any leftover of an earlier one; the manifest first, so a half-removed image
 * is never taken as complete.
 */
export async function removeSuspendImage(dir: string): Promise<void> {
  await removeFiles([join(dir, SUSPEND_JSON)])
  const names = await readdir(dir).catch(() => [] as string[])
  const trash = names.filter((n) => n.startsWith(`${MEMORY_IMG}${TRASH}`)).map((n) => join(dir, n))
  await removeFiles([
    join(dir, MEMORY_IMG),
    join(dir, MEMORY_MAP),
    join(dir, `${SUSPEND_JSON}.tmp`),
    ...trash,
  ])
}

/**
 * Like `removeSuspendImage`, but memory.img is renamed away and deleted in the background: unlinking
 * a large file can take seconds (e.g. ext4 mounted with `discard`) and a restore should not wait.
 */
export async function discardSuspendImage(dir: string): Promise<void> {
  await removeFiles([join(dir, SUSPEND_JSON)])
  const trash = join(dir, `${MEMORY_IMG}${TRASH}${randomUUID()}`)
  try {
    await rename(join(dir, MEMORY_IMG), trash)
  } catch {
    // no memory.img: nothing to delete later
  }
  await removeFiles([join(dir, MEMORY_MAP), join(dir, `${SUSPEND_JSON}.tmp`)])
  const p = rm(trash, { force: true }).catch(() => undefined)
  deleting.add(p)
  void p.then(() => deleting.delete(p))
}

/** Waits for background deletions started by `discardSuspendImage`. */
export async function settleDeletions(): Promise<void> {
  await Promise.all([...deleting])
}

/** Writes memory.img and memory.map; the memory must not change meanwhile (VM paused). */
export async function writeMemoryImage(dir: string, memory: SyntheticMemory): Promise<void> {
  const nonZero = memory.nonZeroPages()
  const buf = memory.raw()
  const fh = await open(join(dir, MEMORY_IMG), 'w')
  try {
    await fh.truncate(memory.bytes)
    await forEachLimit(runs(nonZero.indices(), RUN_PAGES), IO_PARALLEL, async ([first, count]) => {
      const off = first * PAGE_SIZE
      await writeExactly(fh, buf, off, count * PAGE_SIZE, off)
    })
    await fh.sync()
  } finally {
    await fh.close()
  }
  await writeFileAtomic(join(dir, MEMORY_MAP), nonZero.toBytes())
}

/** Commits the image: after this resolves, `readManifest` returns it. */
export async function commitManifest(dir: string, manifest: SuspendManifest): Promise<void> {
  await writeFileAtomic(join(dir, SUSPEND_JSON), `${JSON.stringify(manifest, null, 2)}\n`)
}

/** The manifest if `dir` holds a complete image, else null. */
export async function readManifest(dir: string): Promise<SuspendManifest | null> {
  let text: string
  try {
    text = await readFile(join(dir, SUSPEND_JSON), 'utf8')
  } catch {
    return null
  }
  let m: unknown
  try {
    m = JSON.parse(text)
  } catch {
    return null
  }
  return isManifest(m) ? m : null
}

/** Reads memory.img back into a new buffer; a missing or short file is a VM_IO error. */
export async function readMemoryImage(
  dir: string,
  manifest: SuspendManifest,
): Promise<{ buf: Buffer; nonZero: Bitmap }> {
  const bytes = manifest.memoryBytes
  const pages = bytes / PAGE_SIZE
  const imgPath = join(dir, MEMORY_IMG)
  let nonZero: Bitmap
  try {
    nonZero = Bitmap.fromBytes(await readFile(join(dir, MEMORY_MAP)), pages)
    const st = await stat(imgPath)
    if (st.size !== bytes) throw new VmError('VM_IO', `${imgPath} is ${st.size} bytes, expected ${bytes}`)
  } catch (err) {
    throw ioError(err, `the suspend image in ${dir} is unreadable`)
  }
  const buf = Buffer.alloc(bytes)
  const fh = await open(imgPath, 'r')
  try {
    await forEachLimit(runs(nonZero.indices(), RUN_PAGES), IO_PARALLEL, async ([first, count]) => {
      const off = first * PAGE_SIZE
      await readExactly(fh, buf, off, count * PAGE_SIZE, off, imgPath)
    })
  } finally {
    await fh.close()
  }
  return { buf, nonZero }
}

function isManifest(m: unknown): m is SuspendManifest {
  if (typeof m !== 'object' || m === null) return false
  const o = m as Record<string, unknown>
  const d = o.digest as Record<string, unknown> | undefined
  const spec = o.spec as Record<string, unknown> | undefined
  return (
    o.complete === true &&
    o.version === 1 &&
    o.pageSize === PAGE_SIZE &&
    Number.isInteger(o.memoryBytes) &&
    (o.memoryBytes as number) > 0 &&
    (o.memoryBytes as number) % PAGE_SIZE === 0 &&
    Number.isInteger(o.diskBytes) &&
    typeof spec === 'object' &&
    spec !== null &&
    typeof spec.id === 'string' &&
    typeof d === 'object' &&
    d !== null &&
    typeof d.memory === 'string' &&
    typeof d.disk === 'string' &&
    typeof d.combined === 'string'
  )
}

function ioError(err: unknown, what: string): VmError {
  if (err instanceof VmError) return err
  return new VmError('VM_IO', `${what}: ${err instanceof Error ? err.message : String(err)}`)
}
