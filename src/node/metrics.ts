// The agent's Prometheus metrics, in a registry of its own (so in-process test agents don't collide).
import { Counter, collectDefaultMetrics, Gauge, type Registry } from 'prom-client'
import type { VmState } from '../vm/types.js'

export interface NodeMetricsSources {
  connections(): number
  peers(): number
  vmStates(): Iterable<VmState>
  usedMemoryMiB(): number
  capacityMemoryMiB(): number
}

export function createNodeMetrics(register: Registry, sources: NodeMetricsSources) {
  collectDefaultMetrics({ register, prefix: 'skymesh_' })
  new Gauge({
    name: 'skymesh_libp2p_connections',
    help: 'Open libp2p connections',
    registers: [register],
    collect() {
      this.set(sources.connections())
    },
  })
  new Gauge({
    name: 'skymesh_peers',
    help: 'Peers with at least one open connection',
    registers: [register],
    collect() {
      this.set(sources.peers())
    },
  })
  const states: VmState[] = ['running', 'paused', 'suspended', 'stopped', 'crashed']
  new Gauge({
    name: 'skymesh_vms',
    help: 'VMs on this host by state',
    labelNames: ['state'],
    registers: [register],
    collect() {
      const counts = new Map<VmState, number>(states.map((s) => [s, 0]))
      for (const s of sources.vmStates()) counts.set(s, (counts.get(s) ?? 0) + 1)
      for (const [state, n] of counts) this.set({ state }, n)
    },
  })
  new Gauge({
    name: 'skymesh_memory_used_mib',
    help: 'Memory reserved by VMs on this host, MiB',
    registers: [register],
    collect() {
      this.set(sources.usedMemoryMiB())
    },
  })
  new Gauge({
    name: 'skymesh_memory_capacity_mib',
    help: 'Memory this host offers to VMs, MiB',
    registers: [register],
    collect() {
      this.set(sources.capacityMemoryMiB())
    },
  })
  return {
    vmOperations: new Counter({
      name: 'skymesh_vm_operations_total',
      help: 'VM operations by kind and outcome',
      labelNames: ['op', 'outcome'],
      registers: [register],
    }),
  }
}

export type NodeMetrics = ReturnType<typeof createNodeMetrics>
