// Small file helpers: durable atomic replace, exact positional reads.

import type { FileHandle } from 'node:fs/promises'
import { open, rename, rm } from 'node:fs/promises'
import { dirname } from 'node:path'
import { VmError } from '../types.js'

/** Writes `data` to `path` so that a reader sees either the old file or all of the new one. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${path}.tmp`
  const fh = await open(tmp, 'w')
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, path)
  await syncDir(dirname(path))
}

/** fsync a directory so a rename in it is durable; best effort (not every platform allows it). */
export async function syncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined
  try {
    fh = await open(dir, 'r')
    await fh.sync()
  } catch {
    // not supported here: the rename is still atomic, only its durability is weaker
  } finally {
    await fh?.close()
  }
}

/** Reads exactly `length` bytes at `position` into `buf` at `offset`; a short file is a VM_IO error. */
export async function readExactly(
  fh: FileHandle,
  buf: Uint8Array,
  offset: number,
  length: number,
  position: number,
  what: string,
): Promise<void> {
  let done = 0
  while (done < length) {
    const { bytesRead } = await fh.read(buf, offset + done, length - done, position + done)
    if (bytesRead === 0) throw new VmError('VM_IO', `${what} is truncated at byte ${position + done}`)
    done += bytesRead
  }
}

/** Writes all of `length` bytes from `buf` at `offset` to `position`. */
export async function writeExactly(
  fh: FileHandle,
  buf: Uint8Array,
  offset: number,
  length: number,
  position: number,
): Promise<void> {
  let done = 0
  while (done < length) {
    const { bytesWritten } = await fh.write(buf, offset + done, length - done, position + done)
    done += bytesWritten
  }
}

/**
 * Runs `fn` on each item with at most `limit` calls in flight (parallel positional I/O is much faster
 * than one request at a time on virtual disks). On an error the rest is skipped; it rejects with the
 * first error once every started call has settled, so no I/O outlives it.
 */
export async function forEachLimit<T>(
  items: Iterable<T>,
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  const it = items[Symbol.iterator]()
  let failed = false
  let first: unknown
  const worker = async () => {
    for (let r = it.next(); !failed && !r.done; r = it.next()) {
      try {
        await fn(r.value)
      } catch (err) {
        if (!failed) first = err
        failed = true
      }
    }
  }
  await Promise.all(Array.from({ length: limit }, worker))
  if (failed) throw first
}

/** Removes files, ignoring those that do not exist. */
export async function removeFiles(paths: string[]): Promise<void> {
  await Promise.all(paths.map((p) => rm(p, { force: true })))
}
