// The VM module's public surface: the driver contract, the bitmap, and the driver factory.

import { SyntheticDriver, type SyntheticDriverInit } from './synthetic/synthetic-driver.js'
import type { VmDriver } from './types.js'

export { Bitmap } from './bitmap.js'
export { SyntheticDriver, type SyntheticDriverInit } from './synthetic/synthetic-driver.js'
export * from './types.js'

/** The drivers `createDriver` knows. */
export const DRIVER_NAMES = ['synthetic'] as const
export type DriverName = (typeof DRIVER_NAMES)[number]

/** A VM driver by name; an unknown name throws an Error that lists the known ones. */
export function createDriver(name: 'synthetic', init?: SyntheticDriverInit): VmDriver
export function createDriver(name: string, init?: SyntheticDriverInit): VmDriver
export function createDriver(name: string, init?: SyntheticDriverInit): VmDriver {
  switch (name) {
    case 'synthetic':
      return new SyntheticDriver(init)
    default:
      throw new Error(`unknown VM driver '${name}' (known: ${DRIVER_NAMES.join(', ')})`)
  }
}
