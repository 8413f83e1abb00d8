// Prometheus metrics of the gossip layer: members by state, messages and bytes in/out, drops by
// reason, convergence lag. Counters kept by the services are read at scrape time.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import type { Gossip } from './gossip.js'
import type { MemberStatus } from './types.js'

const STATUSES: MemberStatus[] = ['alive', 'suspect', 'dead', 'left']

export function createGossipMetrics(register: Registry, gossip: () => Gossip) {
  new Gauge({
    name: 'skymesh_gossip_members',
    help: 'Members of the mesh by state, as this agent sees them (itself included)',
    labelNames: ['state'],
    registers: [register],
    collect() {
      const counts = gossip().swim.stats().members
      for (const s of STATUSES) this.set({ state: s }, counts[s] ?? 0)
    },
  })
  new Gauge({
    name: 'skymesh_gossip_hosts_known',
    help: 'Hosts whose signed state this agent holds',
    registers: [register],
    collect() {
      this.set(gossip().state.stats().hosts)
    },
  })
  new Gauge({
    name: 'skymesh_gossip_vms_known',
    help: 'VMs of the mesh in the location table',
    registers: [register],
    collect() {
      this.set(gossip().state.stats().vms)
    },
  })
  new Gauge({
    name: 'skymesh_gossip_location_conflicts',
    help: 'VMs claimed by two hosts at one epoch (a fault)',
    registers: [register],
    collect() {
      this.set(gossip().state.stats().conflicts)
    },
  })
  new Gauge({
    name: 'skymesh_gossip_local_health',
    help: 'Lifeguard local health multiplier (0 is healthy)',
    registers: [register],
    collect() {
      this.set(gossip().swim.stats().localHealth)
    },
  })
  // Host-state traffic is counted inside its service; expose it as gauges of running totals.
  new Gauge({
    name: 'skymesh_gossip_hoststate_messages',
    help: 'Host-state messages on gossipsub and anti-entropy states, running totals',
    labelNames: ['direction', 'channel'],
    registers: [register],
    collect() {
      const s = gossip().state.stats()
      this.set({ direction: 'in', channel: 'gossipsub' }, s.gossip.messagesIn)
      this.set({ direction: 'out', channel: 'gossipsub' }, s.gossip.messagesOut)
      this.set({ direction: 'in', channel: 'sync' }, s.sync.statesIn)
      this.set({ direction: 'out', channel: 'sync' }, s.sync.statesOut)
    },
  })
  new Gauge({
    name: 'skymesh_gossip_hoststate_bytes',
    help: 'Host-state payload bytes on gossipsub and anti-entropy, running totals',
    labelNames: ['direction', 'channel'],
    registers: [register],
    collect() {
      const s = gossip().state.stats()
      this.set({ direction: 'in', channel: 'gossipsub' }, s.gossip.bytesIn)
      this.set({ direction: 'out', channel: 'gossipsub' }, s.gossip.bytesOut)
      this.set({ direction: 'in', channel: 'sync' }, s.sync.bytesIn)
      this.set({ direction: 'out', channel: 'sync' }, s.sync.bytesOut)
    },
  })
  return {
    messages: new Counter({
      name: 'skymesh_gossip_messages_total',
      help: 'Membership messages by direction and kind',
      labelNames: ['direction', 'kind'],
      registers: [register],
    }),
    bytes: new Counter({
      name: 'skymesh_gossip_bytes_total',
      help: 'Membership message bytes by direction',
      labelNames: ['direction', 'channel'],
      registers: [register],
    }),
    dropped: new Counter({
      name: 'skymesh_gossip_dropped_total',
      help: 'Gossip messages dropped, by reason and where they came from',
      labelNames: ['reason', 'source'],
      registers: [register],
    }),
    convergenceLag: new Histogram({
      name: 'skymesh_gossip_convergence_lag_seconds',
      help: 'Time from a host publishing its state to this agent accepting it',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [register],
    }),
  }
}

export type GossipMetrics = ReturnType<typeof createGossipMetrics>
