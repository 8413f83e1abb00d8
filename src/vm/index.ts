// The VM module's public surface: the driver contract, the bitmap, and the driver factory.

import { QemuDriver, type QemuDriverInit } from './qemu/index.js'
import { SyntheticDriver, type SyntheticDriverInit } from './synthetic/synthetic-driver.js'
import type { VmDriver } from './types.js'

export { Bitmap } from './bitmap.js'
export { QemuDriver, type QemuDriverInit } from './qemu/index.js'
export { SyntheticDriver, type SyntheticDriverInit } from './synthetic/synthetic-driver.js'
export * from './types.js'

/** The drivers `createDriver` knows. */
export const DRIVER_NAMES = ['synthetic', 'qemu'] as const
export type DriverName = (typeof DRIVER_NAMES)[number]

/**
 * A VM driver by name; an unknown name throws an Error that lists the known ones, 'qemu' throws
 * one that says what to install when QEMU is missing.
 */
export function createDriver(name: 'synthetic', init?: SyntheticDriverInit): VmDriver
export function createDriver(name: 'qemu', init?: QemuDriverInit): VmDriver
export function createDriver(name: string, init?: SyntheticDriverInit | QemuDriverInit): VmDriver
export function createDriver(name: string, init?: SyntheticDriverInit | QemuDriverInit): VmDriver {
  switch (name) {
    case 'synthetic':
      return new SyntheticDriver(init as SyntheticDriverInit | undefined)
    case 'qemu':
      return new QemuDriver(init as QemuDriverInit | undefined)
    default:
      throw new Error(`unknown VM driver '${name}' (known: ${DRIVER_NAMES.join(', ')})`)
  }
}
