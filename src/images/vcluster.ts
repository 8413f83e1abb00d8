// Virtual clusters (pure parts): spread placement over the gossip view, checked in full before anything
// starts, and the context each VM gets — a context broker in the spirit of Nimbus's: its own name, role
// and address, and the names and addresses of its peers, so software in the guest configures itself.
import { ImagesError } from './errors.js'

export interface PlacementHost {
  peerId: string
  site: string
  freeMemoryMiB: number
  freeDiskMiB: number
  freeVcpus: number
}

export interface VmShape {
  vcpus: number
  memoryMiB: number
  diskMiB: number
}

/**
 * `count` VMs spread over the hosts: each goes to the host with the fewest VMs of this cluster so far
 * (then the most free memory) where it fits. Throws INSUFFICIENT_CAPACITY if they do not all fit.
 */
export function spread(hosts: readonly PlacementHost[], count: number, vm: VmShape): string[] {
  const free = hosts.map((h) => ({ ...h, placed: 0 }))
  const out: string[] = []
  for (let i = 0; i < count; i++) {
    const fits = free.filter((h) => h.freeMemoryMiB >= vm.memoryMiB && h.freeDiskMiB >= vm.diskMiB)
    if (fits.length === 0) {
      throw new ImagesError(
        'INSUFFICIENT_CAPACITY',
        `count: only ${i} of ${count} VMs of ${vm.memoryMiB} MiB memory and ${vm.diskMiB} MiB disk fit on the ${hosts.length} live hosts; nothing was started`,
        { field: 'count', fits: i },
      )
    }
    fits.sort(
      (a, b) => a.placed - b.placed || b.freeMemoryMiB - a.freeMemoryMiB || a.peerId.localeCompare(b.peerId),
    )
    const h = fits[0]!
    h.placed++
    h.freeMemoryMiB -= vm.memoryMiB
    h.freeDiskMiB -= vm.diskMiB
    h.freeVcpus -= vm.vcpus
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
}

/** The context of every VM of a cluster: VM 0 is the head, the others workers. */
export function contexts(cluster: string, image: string, vms: readonly ClusterVmEntry[]): VmContext[] {
  return vms.map((vm) => ({ cluster, image, vm, peers: vms.filter((p) => p.id !== vm.id) }))
}
