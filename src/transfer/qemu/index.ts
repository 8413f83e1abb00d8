// QEMU migration through the mesh: QEMU's migration stream and block mirror tunnelled over libp2p.
export {
  checkMultifdCompression,
  DEFAULT_MULTIFD_COMPRESSION,
  ON_MULTIFD_COMPRESSION,
  parseMultifdCompression,
  type QemuMultifdCompression,
  sourceMultifdCompression,
} from './compression.js'
export { QemuIncomingMigration } from './destination.js'
export { migratesWithQemu, QemuMigrations, type QemuServiceBridge } from './service.js'
export { QemuOutgoingMigration } from './source.js'
export { pipeSocketStream, type TunnelCounters, TunnelListener } from './tunnel.js'
export { QEMU_CONTROL_PROTOCOL, QEMU_TUNNEL_PROTOCOL } from './wire.js'
