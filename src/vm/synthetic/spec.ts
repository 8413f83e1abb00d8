// Checks a VmSpec once, at the driver's door, and derives the byte sizes the driver works with.

import { BLOCK_SIZE, PAGE_SIZE, VmError, type VmSpec } from '../types.js'

const MiB = 1024 * 1024

export interface SpecSizes {
  memoryBytes: number
  diskBytes: number
}

export function checkSpec(spec: VmSpec): SpecSizes {
  const memoryBytes = spec.memoryMiB * MiB
  const diskBytes = spec.diskMiB * MiB
  if (typeof spec.id !== 'string' || spec.id === '') bad('spec.id must be a non-empty string')
  if (!Number.isInteger(memoryBytes) || memoryBytes <= 0 || memoryBytes % PAGE_SIZE !== 0) {
    bad(`memoryMiB ${spec.memoryMiB} is not a positive multiple of ${PAGE_SIZE} bytes`)
  }
  if (!Number.isInteger(diskBytes) || diskBytes < 0 || diskBytes % BLOCK_SIZE !== 0) {
    bad(`diskMiB ${spec.diskMiB} is not a multiple of ${BLOCK_SIZE} bytes`)
  }
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1) bad(`vcpus ${spec.vcpus} must be an integer >= 1`)
  const w = spec.workload
  for (const key of ['dirtyMiBps', 'hotSetMiB', 'cpu', 'diskWriteMiBps'] as const) {
    const v = w?.[key]
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) bad(`workload.${key} must be a number >= 0`)
  }
  return { memoryBytes, diskBytes }
}

function bad(message: string): never {
  throw new VmError('VM_OUT_OF_RANGE', `invalid VM spec: ${message}`)
}
