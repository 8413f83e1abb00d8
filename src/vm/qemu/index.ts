// The qemu driver's public surface.
export { ensureGuest, type GuestImage } from './guest.js'
export { type Accel, detectAccel, findQemu, probeKvm, type QemuBinaries, qemuAvailable } from './host.js'
export { blankBase, createOverlay, importBase } from './images.js'
export { macForVm, QemuDriver, type QemuDriverInit, type QemuNic, type QemuVmOptions } from './qemu-driver.js'
export { type QemuMigrateOptions, type QemuMigrationInfo, QemuVm, type QemuVmPaths } from './qemu-vm.js'
export { QmpClient, type QmpConnectOptions, QmpError, type QmpEvent } from './qmp.js'
export { QEMU_CAPABILITIES, type VmCapabilities } from './unsupported.js'
