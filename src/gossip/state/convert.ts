// Between the wire (pb.HostState) and the JSON-safe views the agent shows.
import { multiaddr } from '@multiformats/multiaddr'
import { type HostStateMessage, pb, type ResourcesMessage, type VmSummaryMessage } from '../../proto/index.js'
import type { HostStateView, LocalHostState, ResourcesView, VmSummaryView } from '../types.js'
import { MAX_ADDRS, MAX_IMAGES, MAX_VMS } from './constants.js'
import type { HostState } from './pb-types.js'
import { u64 } from './u64.js'

export interface BuildStateInit {
  peerId: Uint8Array
  version: number
  timestampMs: number
}

/** Our own state as a wire message. Addresses that do not parse are left out. */
export function toHostStateMessage(local: LocalHostState, init: BuildStateInit): HostState {
  const addrs: Uint8Array[] = []
  for (const a of local.addrs) {
    if (addrs.length >= MAX_ADDRS) break
    try {
      addrs.push(multiaddr(a).bytes)
    } catch {
      // not a multiaddr: nothing a peer could dial
    }
  }
  return pb.HostState.create({
    peerId: init.peerId,
    version: init.version,
    site: local.site,
    capacity: toResources(local.capacity),
    used: toResources(local.used),
    cpuLoad: local.cpuLoad,
    vms: local.vms.slice(0, MAX_VMS).map(toVmSummary),
    timestampMs: init.timestampMs,
    agentVersion: local.agentVersion,
    addrs,
    overlay: local.overlay,
    sites: local.sites,
    images: (local.images ?? []).slice(0, MAX_IMAGES).map((id) => Buffer.from(id, 'hex')),
  })
}

function toResources(r: ResourcesView): ResourcesMessage {
  return { vcpus: r.vcpus, memoryMib: r.memoryMiB, diskMib: r.diskMiB }
}

function toVmSummary(v: VmSummaryView): VmSummaryMessage {
  return {
    id: v.id,
    name: v.name,
    vcpus: v.vcpus,
    memoryMib: v.memoryMiB,
    diskMib: v.diskMiB,
    cpu: v.cpu,
    dirtyMibps: v.dirtyMiBps,
    state: v.state,
    epoch: v.epoch,
  }
}

/** A verified state as the agent shows it. */
export function toHostStateView(peerId: string, m: HostStateMessage, receivedAtMs: number): HostStateView {
  return {
    peerId,
    version: u64(m.version),
    site: m.site ?? '',
    capacity: fromResources(m.capacity),
    used: fromResources(m.used),
    cpuLoad: finite(m.cpuLoad),
    vms: (m.vms ?? []).map(fromVmSummary),
    timestampMs: u64(m.timestampMs),
    receivedAtMs,
    agentVersion: m.agentVersion ?? '',
    addrs: (m.addrs ?? []).flatMap((b) => {
      try {
        return [multiaddr(b).toString()]
      } catch {
        return []
      }
    }),
    overlay: m.overlay?.length ? m.overlay : undefined,
    sites: m.sites?.length ? m.sites : undefined,
    images: m.images?.length
      ? m.images.filter((b) => b.length === 32).map((b) => Buffer.from(b).toString('hex'))
      : undefined,
  }
}

function fromResources(r: ResourcesMessage | null | undefined): ResourcesView {
  return { vcpus: r?.vcpus ?? 0, memoryMiB: u64(r?.memoryMib), diskMiB: u64(r?.diskMib) }
}

export function fromVmSummary(v: VmSummaryMessage): VmSummaryView {
  return {
    id: v.id ?? '',
    name: v.name ?? '',
    vcpus: v.vcpus ?? 0,
    memoryMiB: u64(v.memoryMib),
    diskMiB: u64(v.diskMib),
    cpu: finite(v.cpu),
    dirtyMiBps: finite(v.dirtyMibps),
    state: v.state ?? '',
    epoch: u64(v.epoch),
  }
}

// NaN and Infinity survive protobuf but not JSON.
function finite(x: number | null | undefined): number {
  return typeof x === 'number' && Number.isFinite(x) ? x : 0
}
