// The qemu driver's public surface.
export { ensureGuest, type GuestImage } from './guest.js'
export { type Accel, detectAccel, findQemu, probeKvm, type QemuBinaries, qemuAvailable } from './host.js'
export {
  type BaseRef,
  baseOf,
  blankBase,
  createOverlay,
  findBase,
  imagePath,
  importBase,
  materializeImage,
} from './images.js'
export {
  abandonMirror,
  completeMirror,
  DISK_NODE,
  exportDisk,
  type MirrorProgress,
  mirrorProgress,
  type NbdAddress,
  startMirror,
  unexportDisk,
  waitMirrorReady,
} from './migrate-disk.js'
export {
  guestArgsProblem,
  macForVm,
  QemuDriver,
  type QemuDriverInit,
  type QemuImageSource,
  type QemuNic,
  type QemuVmOptions,
} from './qemu-driver.js'
export {
  type MultifdCompression,
  type QemuMigrateOptions,
  type QemuMigrationInfo,
  QemuVm,
  type QemuVmPaths,
} from './qemu-vm.js'
export { QmpClient, type QmpConnectOptions, QmpError, type QmpEvent } from './qmp.js'
export { addPskCreds, type QemuPskCreds } from './tls.js'
export { QEMU_CAPABILITIES, type VmCapabilities } from './unsupported.js'
