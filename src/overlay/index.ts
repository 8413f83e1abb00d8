// Overlay: the virtual L2 network (per-VM IP/MAC, frames over libp2p, ARP proxy, announcements).
export * from './frame.js'
export { allocateIp, parseSubnet, type Subnet, subnetContains, usableRange } from './ipam.js'
export { allocateMac, BROADCAST_MAC, isGroupMac, isMac, type Mac, macFromBytes, macToBytes } from './mac.js'
export {
  METADATA_IP,
  METADATA_MAC,
  METADATA_PORT,
  type MetadataCaller,
  type MetadataProvider,
  MetadataServer,
  type MetadataStats,
  metadataFromContext,
  metadataPath,
  type VmMetadata,
} from './metadata.js'
export {
  type CheckedNic,
  MAX_NICS,
  type NetworkConfig,
  type OfferedNic,
  type OverlayGossip,
  OverlayService,
  type OverlayServiceInit,
  type ProbeReport,
  type TapView,
} from './service.js'
export { StreamPort, type StreamPortStats } from './stream-port.js'
export {
  DEFAULT_MTU,
  DROP_REASONS,
  type DropReason,
  FORWARD_KINDS,
  type ForwardKind,
  type Outcome,
  type PortInit,
  type RemoteNic,
  type SwitchStats,
  VirtualSwitch,
} from './switch.js'
export { type NicStats, type PingResult, SyntheticNic } from './synthetic-nic.js'
export {
  isIfname,
  type TapEvent,
  TapPort,
  type TapPortStats,
  type TapSupport,
  tapSupport,
} from './tap-port.js'
export { OVERLAY_PROTOCOL, OverlayTransport, type TransportStats } from './transport.js'
export * from './types.js'
