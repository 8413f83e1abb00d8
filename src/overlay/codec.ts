// The overlay's part of a host's gossiped state (OverlayHostState) to and from bytes. Entries that
// do not make sense (bad MAC, bad address, unknown subnet) are skipped, never trusted.
import { pb } from '../proto/index.js'
import { ipToNumber } from './frame.js'
import { parseSubnet } from './ipam.js'
import { isGroupMac, macFromBytes, macToBytes } from './mac.js'
import type { NetworkDef, NicRecord } from './types.js'

export const MAX_NETWORKS = 1024
export const MAX_NICS = 16384

export interface HostOverlay {
  networks: NetworkDef[]
  nics: NicRecord[]
}

export function encodeHostOverlay(o: HostOverlay): Uint8Array {
  return pb.OverlayHostState.encode({
    networks: o.networks.slice(0, MAX_NETWORKS).map((n) => ({
      name: n.name,
      subnet: n.subnet,
      mtu: n.mtu,
      createdMs: n.createdMs,
      creator: n.creator,
    })),
    nics: o.nics.slice(0, MAX_NICS).map((n) => ({
      vmId: n.vmId,
      network: n.network,
      mac: macToBytes(n.mac),
      ip: n.ip,
      attach: n.attach ?? '',
    })),
  }).finish()
}

export function decodeHostOverlay(buf: Uint8Array): HostOverlay {
  let m: InstanceType<typeof pb.OverlayHostState>
  try {
    m = pb.OverlayHostState.decode(buf)
  } catch {
    return { networks: [], nics: [] }
  }
  const networks: NetworkDef[] = []
  for (const n of m.networks.slice(0, MAX_NETWORKS)) {
    try {
      const subnet = parseSubnet(n.subnet ?? '').cidr
      if (!n.name) continue
      networks.push({
        name: n.name,
        subnet,
        mtu: n.mtu || 1500,
        createdMs: Number(n.createdMs ?? 0),
        creator: n.creator ?? '',
      })
    } catch {
      // a subnet that does not parse: skip the network
    }
  }
  const nics: NicRecord[] = []
  for (const n of m.nics.slice(0, MAX_NICS)) {
    if (!n.vmId || !n.network || n.mac?.length !== 6 || ipToNumber(n.ip ?? '') === undefined) continue
    const mac = macFromBytes(n.mac)
    if (isGroupMac(mac)) continue
    nics.push({
      vmId: n.vmId,
      network: n.network,
      mac,
      ip: n.ip ?? '',
      ...(n.attach === 'tap' ? { attach: 'tap' as const } : {}),
    })
  }
  return { networks, nics }
}
