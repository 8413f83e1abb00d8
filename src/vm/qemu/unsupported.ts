// QEMU guests have no page- or block-level access from the agent: their memory lives inside the
// QEMU process and moves with QEMU's own migration stream (tunnelled through the mesh), their disk
// moves with blockdev-mirror. These stand-ins fill the VmInstance slots and fail clearly if used.

import {
  BLOCK_SIZE,
  type DirtyBitmap,
  PAGE_SIZE,
  type VmCapabilities,
  type VmDisk,
  VmError,
  type VmMemory,
} from '../types.js'

export type { VmCapabilities }

export const QEMU_CAPABILITIES: VmCapabilities = Object.freeze({
  pageAccess: false,
  migration: 'qemu-stream',
})

export function noPageAccess(what: string): VmError {
  return new VmError(
    'VM_INVALID_STATE',
    `qemu driver: ${what} is not supported — a QEMU guest's memory and disk are not page-addressable ` +
      "from the agent; it migrates with QEMU's own migration stream (capabilities.pageAccess = false)",
  )
}

export class NoPageMemory implements VmMemory {
  readonly pageSize = PAGE_SIZE
  readonly pageCount: number
  constructor(memoryMiB: number) {
    this.pageCount = (memoryMiB * 1024 * 1024) / PAGE_SIZE
  }
  readPage(): Uint8Array {
    throw noPageAccess('readPage')
  }
  readPageInto(): void {
    throw noPageAccess('readPageInto')
  }
  pageHash(): Uint8Array | null {
    throw noPageAccess('pageHash')
  }
  writePage(): void {
    throw noPageAccess('writePage')
  }
  isZeroPage(): boolean {
    throw noPageAccess('isZeroPage')
  }
  startDirtyTracking(): void {
    throw noPageAccess('memory dirty tracking')
  }
  takeDirtyPages(): DirtyBitmap {
    throw noPageAccess('memory dirty tracking')
  }
  stopDirtyTracking(): void {
    throw noPageAccess('memory dirty tracking')
  }
}

export class NoBlockDisk implements VmDisk {
  readonly blockSize = BLOCK_SIZE
  readonly blockCount: number
  constructor(diskMiB: number) {
    this.blockCount = Math.ceil((diskMiB * 1024 * 1024) / BLOCK_SIZE)
  }
  readBlock(): Promise<Uint8Array> {
    return Promise.reject(noPageAccess('readBlock'))
  }
  blockHash(): Promise<Uint8Array | null> {
    return Promise.reject(noPageAccess('blockHash'))
  }
  readBlockHashed(): Promise<{ data: Uint8Array; hash: Uint8Array | null }> {
    return Promise.reject(noPageAccess('readBlockHashed'))
  }
  digest(): Promise<string> {
    return Promise.reject(noPageAccess('disk digest'))
  }
  writeBlock(): Promise<void> {
    return Promise.reject(noPageAccess('writeBlock'))
  }
  allocatedBlocks(): DirtyBitmap {
    throw noPageAccess('allocatedBlocks')
  }
  startDirtyTracking(): void {
    throw noPageAccess('disk dirty tracking')
  }
  takeDirtyBlocks(): DirtyBitmap {
    throw noPageAccess('disk dirty tracking')
  }
  stopDirtyTracking(): void {
    throw noPageAccess('disk dirty tracking')
  }
}
