// vmId -> (host, epoch), derived from the hosts' newest states. The epoch only grows (a committed
// migration bumps it at handover), so a late or replayed state never moves a VM back.
import type { VmLocation, VmSummaryView } from '../types.js'

export type HostMark = 'ok' | 'lost' | 'left'

interface Location {
  host: string
  epoch: number
  vm: VmSummaryView
}

/** A VM whose location changed (appeared, moved, or went away). */
export interface LocationChange {
  vmId: string
  previous?: { host: string; epoch: number }
  current?: { host: string; epoch: number }
}

/** Two hosts claim one VM at one epoch: a fault (a migration bumps the epoch at handover). */
export interface LocationConflict {
  vmId: string
  epoch: number
  /** Where the VM stays (first seen). */
  host: string
  /** The other claimant. */
  claimant: string
}

export interface LocationTableInit {
  onConflict?: (c: LocationConflict) => void
  /** How long a removed VM's last (host, epoch) is remembered to refuse older claims; default 1 h. */
  tombstoneTtlMs?: number
}

export class LocationTable {
  private readonly locations = new Map<string, Location>()
  /** Last location of VMs that went away: claims at a lower epoch (or by another host at that epoch) are late. */
  private readonly tombstones = new Map<string, { host: string; epoch: number; at: number }>()
  private readonly marks = new Map<string, 'lost' | 'left'>()
  /** vmId -> hosts seen claiming it at its current epoch besides its location. */
  private readonly conflicting = new Map<string, Set<string>>()
  private conflictCount = 0

  constructor(private readonly init: LocationTableInit = {}) {}

  /**
   * A host's state replaced `previous` with `next` (its VM lists). Returns what moved.
   */
  applyHost(host: string, previous: readonly VmSummaryView[], next: readonly VmSummaryView[], now: number) {
    const changes: LocationChange[] = []
    const listed = new Set<string>()
    for (const vm of next) {
      listed.add(vm.id)
      const change = this.claim(host, vm)
      if (change) changes.push(change)
    }
    for (const vm of previous) {
      if (listed.has(vm.id)) continue
      const cur = this.locations.get(vm.id)
      // Only the host where the VM is may take it away; a VM that moved on is not affected.
      if (!cur || cur.host !== host) continue
      this.locations.delete(vm.id)
      this.conflicting.delete(vm.id)
      this.tombstones.set(vm.id, { host, epoch: cur.epoch, at: now })
      changes.push({ vmId: vm.id, previous: { host, epoch: cur.epoch } })
    }
    return changes
  }

  private claim(host: string, vm: VmSummaryView): LocationChange | undefined {
    const cur = this.locations.get(vm.id)
    if (!cur) {
      const tomb = this.tombstones.get(vm.id)
      if (tomb && (vm.epoch < tomb.epoch || (vm.epoch === tomb.epoch && tomb.host !== host))) return undefined
      this.tombstones.delete(vm.id)
      this.locations.set(vm.id, { host, epoch: vm.epoch, vm })
      return { vmId: vm.id, current: { host, epoch: vm.epoch } }
    }
    if (vm.epoch > cur.epoch) {
      this.locations.set(vm.id, { host, epoch: vm.epoch, vm })
      this.conflicting.delete(vm.id)
      return {
        vmId: vm.id,
        previous: { host: cur.host, epoch: cur.epoch },
        current: { host, epoch: vm.epoch },
      }
    }
    if (vm.epoch === cur.epoch) {
      if (cur.host === host) {
        cur.vm = vm // same place, fresher figures
        return undefined
      }
      let others = this.conflicting.get(vm.id)
      if (!others) {
        others = new Set()
        this.conflicting.set(vm.id, others)
      }
      if (!others.has(host)) {
        others.add(host)
        this.conflictCount++
        this.init.onConflict?.({ vmId: vm.id, epoch: vm.epoch, host: cur.host, claimant: host })
      }
    }
    // A lower epoch: the host has not caught up with a migration away from it yet.
    return undefined
  }

  /** What the membership layer says about a host; its VMs stay listed with that status. */
  markHost(host: string, mark: HostMark): void {
    if (mark === 'ok') this.marks.delete(host)
    else this.marks.set(host, mark)
  }

  hostMark(host: string): HostMark {
    return this.marks.get(host) ?? 'ok'
  }

  where(vmId: string): VmLocation | undefined {
    const loc = this.locations.get(vmId)
    return loc ? this.view(vmId, loc) : undefined
  }

  list(): VmLocation[] {
    return [...this.locations.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([id, loc]) => this.view(id, loc))
  }

  get size(): number {
    return this.locations.size
  }

  /** Distinct (VM, claimant) conflicts seen so far. */
  get conflicts(): number {
    return this.conflictCount
  }

  /** Forgets tombstones older than the TTL; call now and then. */
  prune(now: number): void {
    const ttl = this.init.tombstoneTtlMs ?? 60 * 60 * 1000
    for (const [id, t] of this.tombstones) if (now - t.at > ttl) this.tombstones.delete(id)
  }

  private view(vmId: string, loc: Location): VmLocation {
    const mark = this.marks.get(loc.host)
    return {
      vmId,
      name: loc.vm.name,
      host: loc.host,
      epoch: loc.epoch,
      status: mark === 'lost' ? 'host-lost' : mark === 'left' ? 'host-left' : 'ok',
      vm: loc.vm,
    }
  }
}
