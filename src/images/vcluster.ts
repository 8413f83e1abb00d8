// Virtual clusters (pure parts): where the VMs of a cluster go, checked in full before anything starts,
// and the context each VM gets — a context broker in the spirit of Nimbus's: its own name, role and
// address, the names and addresses of its peers and the cluster's user data, so software in the guest
// configures itself.
//
// Placement is a thin adapter over the placement core (src/placement): its resource vectors and its
// `fits` / `utilization`, so a cluster is placed by the same arithmetic the planner later judges hosts
// by. The core plans migrations of existing VMs; placing new ones is this adapter's job.
import { fits, type Resources, utilization } from '../placement/index.js'
import { ImagesError } from './errors.js'

export interface PlacementHost {
  peerId: string
  site: string
  /** cpu in vCPUs, mem and disk in MiB (the placement core's units). */
  capacity: Resources
  used: Resources
  /** VMs of this cluster already on the host (scaling up counts them). */
  clusterVms?: number
}

export interface VmShape {
  vcpus: number
  memoryMiB: number
  diskMiB: number
}

/** spread: as many hosts as possible (fault isolation); pack: as few as possible (consolidation). */
export type PlacementMode = 'spread' | 'pack'

export interface PlaceOptions {
  mode: PlacementMode
  /** Only hosts of this site. */
  site?: string
}

export function demandOf(vm: VmShape): Resources {
  return { cpu: vm.vcpus, mem: vm.memoryMiB, disk: vm.diskMiB }
}

/**
 * Hosts for `count` more VMs of shape `vm`, in order. spread: each goes where the cluster has the
 * fewest VMs so far (then the least loaded host after it); pack: where the cluster already is and the
 * host is fullest (best fit), so the cluster takes the fewest hosts. Throws INSUFFICIENT_CAPACITY
 * (naming how many fit) if they do not all fit, BAD_REQUEST if the site has no live host: nothing is
 * placed unless everything is.
 */
export function placeVms(
  hosts: readonly PlacementHost[],
  count: number,
  vm: VmShape,
  opts: PlaceOptions,
): string[] {
  const d = demandOf(vm)
  const pool = hosts
    .filter((h) => opts.site === undefined || h.site === opts.site)
    .map((h) => ({ ...h, used: { ...h.used }, placed: h.clusterVms ?? 0 }))
  if (opts.site !== undefined && pool.length === 0)
    throw new ImagesError('BAD_REQUEST', `site: no live host in site '${opts.site}'`, { field: 'site' })
  const after = (h: (typeof pool)[number]) =>
    utilization({ cpu: h.used.cpu + d.cpu, mem: h.used.mem + d.mem, disk: h.used.disk + d.disk }, h.capacity)
  const out: string[] = []
  for (let i = 0; i < count; i++) {
    const ok = pool.filter((h) => fits(h.used, d, h.capacity))
    if (ok.length === 0) {
      const where = opts.site === undefined ? '' : ` of site '${opts.site}'`
      throw new ImagesError(
        'INSUFFICIENT_CAPACITY',
        `count: only ${i} of ${count} VMs of ${vm.vcpus} vCPU, ${vm.memoryMiB} MiB memory and ${vm.diskMiB} MiB disk fit on the ${pool.length} live hosts${where}; nothing was started`,
        { field: 'count', fits: i },
      )
    }
    ok.sort((a, b) =>
      opts.mode === 'spread'
        ? a.placed - b.placed || after(a) - after(b) || a.peerId.localeCompare(b.peerId)
        : Number(b.placed > 0) - Number(a.placed > 0) ||
          after(b) - after(a) ||
          a.peerId.localeCompare(b.peerId),
    )
    const h = ok[0]!
    h.placed++
    h.used.cpu += d.cpu
    h.used.mem += d.mem
    h.used.disk += d.disk
    out.push(h.peerId)
  }
  return out
}

export interface ClusterVmEntry {
  index: number
  name: string
  id: string
  host: string
  role: 'head' | 'worker'
  ip?: string
}

export interface VmContext {
  cluster: string
  image: string
  vm: ClusterVmEntry
  peers: ClusterVmEntry[]
  /** The cluster's user data, as given at creation (opaque to skymesh). */
  userData?: string
  /**
   * Which handing of contexts this is (the creating host counts them per cluster): a host keeps the
   * newest it got, so one that arrives late (a VM's copy fetched before a scale) never wins.
   */
  revision?: number
}

/** The context of every VM of a cluster: the VM of index 0 is the head, the others workers. */
export function contexts(
  cluster: string,
  image: string,
  vms: readonly ClusterVmEntry[],
  userData?: string,
  revision?: number,
): VmContext[] {
  return vms.map((vm) => ({
    cluster,
    image,
    vm,
    peers: vms.filter((p) => p.id !== vm.id),
    ...(userData !== undefined ? { userData } : {}),
    ...(revision !== undefined ? { revision } : {}),
  }))
}
