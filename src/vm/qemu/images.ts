// Disks: every VM's disk is a qcow2 copy-on-write layer (in the VM's directory) on a read-only
// base image. Base images live in a store named by content: a blank base by its size, an imported
// one by the sha256 of its bytes, a mesh image (src/images) by its image id, so two hosts that
// hold the same base agree on its name — and a host that lacks a mesh image fetches it by id.

import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { access, copyFile, link, mkdir, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  )
}

async function qemuImg(img: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(img, args, { maxBuffer: 1 << 20 })
    return stdout
  } catch (err) {
    const e = err as { stderr?: string; message: string }
    throw new Error(`qemu-img ${args[0]}: ${(e.stderr ?? e.message).trim()}`)
  }
}

/** The blank (all-zero) base of `sizeMiB` in the store, created once. */
export async function blankBase(img: string, store: string, sizeMiB: number): Promise<string> {
  if (!Number.isInteger(sizeMiB) || sizeMiB <= 0)
    throw new Error(`disk size must be a positive integer MiB, got ${sizeMiB}`)
  await mkdir(store, { recursive: true })
  const path = join(store, `blank-${sizeMiB}M.qcow2`)
  if (await exists(path)) return path
  const tmp = `${path}.${process.pid}.tmp`
  await qemuImg(img, ['create', '-q', '-f', 'qcow2', tmp, `${sizeMiB}M`])
  await rename(tmp, path)
  return path
}

/** Copies `file` into the store under its sha256 (kept if already there); returns the stored path. */
export async function importBase(store: string, file: string): Promise<{ path: string; sha256: string }> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  const sha256 = hash.digest('hex')
  await mkdir(store, { recursive: true })
  const path = join(store, `${sha256}.img`)
  if (!(await exists(path))) {
    const tmp = `${path}.${process.pid}.tmp`
    await copyFile(file, tmp)
    await rename(tmp, path)
  }
  return { path, sha256 }
}

/** Creates the VM's writable qcow2 layer at `path` on `base`, sized `sizeMiB` (never smaller than the base). */
export async function createOverlay(img: string, base: string, path: string, sizeMiB: number): Promise<void> {
  const info = JSON.parse(await qemuImg(img, ['info', '--output=json', base])) as {
    format: string
    'virtual-size': number
  }
  const size = Math.max(info['virtual-size'], sizeMiB * 1024 * 1024)
  await qemuImg(img, ['create', '-q', '-f', 'qcow2', '-F', info.format, '-b', base, path, String(size)])
}

/** A base image by content: the blank base of a size, an imported base by its sha256, a mesh image by id. */
export type BaseRef = { blankMiB: number } | { sha256: string } | { imageId: string }

const HEX64 = /^[0-9a-f]{64}$/

/** Where the mesh image `id` lives as one file in the store (see materializeImage). */
export function imagePath(store: string, id: string): string {
  if (!HEX64.test(id)) throw new Error(`bad image id ${id}`)
  return join(store, `image-${id}.img`)
}

/**
 * Puts the mesh image `id` into the store under its content name (what `baseOf` reads back from a
 * layer), as a hard link to `file`, the image store's assembled copy (a copy across file systems);
 * kept if already there.
 */
export async function materializeImage(store: string, id: string, file: string): Promise<string> {
  const path = imagePath(store, id)
  if (await exists(path)) return path
  await mkdir(store, { recursive: true })
  const tmp = `${path}.${process.pid}.${Date.now()}.tmp`
  try {
    await link(file, tmp).catch(() => copyFile(file, tmp))
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
  return path
}

/** The content name of the base under the qcow2 layer `disk` (read while QEMU may hold it: `-U`). */
export async function baseOf(img: string, disk: string): Promise<BaseRef> {
  const info = JSON.parse(await qemuImg(img, ['info', '-U', '--output=json', disk])) as {
    'full-backing-filename'?: string
    'backing-filename'?: string
  }
  const backing = info['full-backing-filename'] ?? info['backing-filename']
  if (!backing) throw new Error(`${disk} has no base image`)
  const name = backing.split('/').pop() ?? ''
  const blank = /^blank-(\d+)M\.qcow2$/.exec(name)
  if (blank) return { blankMiB: Number(blank[1]) }
  const imported = /^([0-9a-f]{64})\.img$/.exec(name)
  if (imported) return { sha256: imported[1] as string }
  const image = /^image-([0-9a-f]{64})\.img$/.exec(name)
  if (image) return { imageId: image[1] as string }
  throw new Error(`base image ${backing} is not in the content-addressed store`)
}

/** The local path of `ref` in the store (a blank base is made on demand), or undefined if it is missing. */
export async function findBase(img: string, store: string, ref: BaseRef): Promise<string | undefined> {
  if ('blankMiB' in ref) return blankBase(img, store, ref.blankMiB)
  if ('imageId' in ref) {
    const path = imagePath(store, ref.imageId)
    return (await exists(path)) ? path : undefined
  }
  if (!HEX64.test(ref.sha256)) throw new Error(`bad base image hash ${ref.sha256}`)
  const path = join(store, `${ref.sha256}.img`)
  return (await exists(path)) ? path : undefined
}
