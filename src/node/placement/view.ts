// From what the agent and gossip know to what the planner reads: hosts (capacity: vCPUs, memory and
// disk in MiB) and VMs (demand: measured CPU in cores, memory and disk in MiB). A VM that cannot move
// now (suspended, or already migrating) still holds its resources: it is pinned to its host.
import type { HostState, HostView, MemberSnapshot, VmView } from '../../placement/index.js'

const MiB = 1024 * 1024

export interface LocalVm {
  id: string
  vcpus: number
  memoryMiB: number
  diskMiB: number
  /** Measured CPU use in cores. */
  cpu: number
  state: string
  epoch: number
  /** A migration of it is under way (started by the API or by placement). */
  migrating: boolean
}

export interface CapacityLike {
  vcpus: number
  memoryMiB: number
  diskMiB: number
}

const MOVABLE = new Set(['running', 'paused'])
const HOLDING = new Set(['running', 'paused', 'suspended'])

export function hostView(id: string, site: string, cap: CapacityLike, state: HostState): HostView {
  return { id, site, capacity: { cpu: cap.vcpus, mem: cap.memoryMiB, disk: cap.diskMiB }, state }
}

export function vmView(
  host: string,
  vm: Omit<LocalVm, 'migrating'> & { migrating?: boolean },
  lastMovedAt?: number,
): VmView | undefined {
  if (!HOLDING.has(vm.state)) return undefined
  const fixed = vm.migrating === true || !MOVABLE.has(vm.state)
  return {
    id: vm.id,
    host,
    demand: { cpu: Math.max(0, vm.cpu), mem: vm.memoryMiB, disk: vm.diskMiB },
    memoryBytes: vm.memoryMiB * MiB,
    ...(fixed ? { constraints: { pin: host } } : {}),
    ...(lastMovedAt !== undefined ? { lastMovedAt } : {}),
  }
}

export function localSnapshot(
  self: string,
  site: string,
  cap: CapacityLike,
  draining: boolean,
  vms: readonly LocalVm[],
  lastMovedAt: (id: string) => number | undefined,
): MemberSnapshot {
  return {
    host: hostView(self, site, cap, draining ? 'draining' : 'up'),
    vms: vms.flatMap((v) => vmView(self, v, lastMovedAt(v.id)) ?? []),
  }
}
