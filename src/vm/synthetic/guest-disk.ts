// What a synthetic VM needs of its disk beyond VmDisk: the plain sparse disk (disk.ts) and the
// copy-on-write overlay over a shared base image (overlay-disk.ts) both provide it.
import type { VmDisk } from '../types.js'

export interface GuestDisk extends VmDisk {
  readonly bytes: number
  readonly open: boolean
  /** Records a guest write to block `i` (when tracking); call after the write completed. */
  markDirty(i: number): void
  flush(): Promise<void>
  /** Optional: brings the cached part of the digest up to date (cheap, synchronous). */
  warmDigest?(): void
  close(opts?: { sync?: boolean }): Promise<void>
}

/** A read-only base image in 64 KiB blocks (content-addressed chunks, src/images). */
export interface BaseImage {
  /** Image id (hex sha256 of its manifest). */
  readonly id: string
  /** Bytes; blocks past the end read as zeroes. */
  readonly size: number
  /** Block `i` (BLOCK_SIZE bytes, zero-padded past the end of the image). */
  readBlock(i: number): Promise<Buffer>
}
