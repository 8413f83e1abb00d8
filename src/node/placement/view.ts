// From what the agent and gossip know to what the planner reads: hosts (capacity: vCPUs, memory and
// disk in MiB) and VMs (demand: measured CPU in cores, memory and disk in MiB). A VM that cannot move
// now (suspended, or already migrating) still holds its resources: it is pinned to its host.
import type { HostState, HostView, MemberSnapshot, VmConstraints, VmView } from '../../placement/index.js'
import type { PlacementRule } from './settings.js'

const MiB = 1024 * 1024

export interface LocalVm {
  id: string
  /** What placement rules match (the id when absent). */
  name?: string
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
  rules: readonly PlacementRule[] = [],
): VmView | undefined {
  if (!HOLDING.has(vm.state)) return undefined
  const fixed = vm.migrating === true || !MOVABLE.has(vm.state)
  const c: VmConstraints = { ...constraintsOf(vm.name ?? vm.id, rules), ...(fixed ? { pin: host } : {}) }
  return {
    id: vm.id,
    host,
    demand: { cpu: Math.max(0, vm.cpu), mem: vm.memoryMiB, disk: vm.diskMiB },
    memoryBytes: vm.memoryMiB * MiB,
    ...(Object.keys(c).length > 0 ? { constraints: c } : {}),
    ...(lastMovedAt !== undefined ? { lastMovedAt } : {}),
  }
}

/**
 * The constraints of a VM by its name, from the `placement.rules` of the config (every matching rule
 * adds to them: bans add up, a later pin, group or site list replaces an earlier one). Agents of one
 * mesh share their config, so a VM keeps its constraints wherever it moves.
 */
export function constraintsOf(name: string, rules: readonly PlacementRule[]): VmConstraints {
  const c: { pin?: string; ban?: string[]; antiAffinity?: string; sites?: VmConstraints['sites'] } = {}
  for (const r of rules) {
    if (!globMatch(r.vms, name)) continue
    if (r.pin !== undefined) c.pin = r.pin
    if (r.ban?.length) c.ban = [...(c.ban ?? []), ...r.ban]
    if (r.antiAffinity !== undefined) c.antiAffinity = r.antiAffinity
    if (r.sites?.length) c.sites = r.sites
  }
  return c
}

/** `*` matches any run of characters, everything else itself. */
function globMatch(glob: string, name: string): boolean {
  const re = new RegExp(
    `^${glob
      .split('*')
      .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
      .join('.*')}$`,
  )
  return re.test(name)
}

export function localSnapshot(
  self: string,
  site: string,
  cap: CapacityLike,
  draining: boolean,
  vms: readonly LocalVm[],
  lastMovedAt: (id: string) => number | undefined,
  rules: readonly PlacementRule[] = [],
): MemberSnapshot {
  return {
    host: hostView(self, site, cap, draining ? 'draining' : 'up'),
    vms: vms.flatMap((v) => vmView(self, v, lastMovedAt(v.id), rules) ?? []),
  }
}
