// Prometheus metrics of the placement service (one registry per agent).
import { Counter, Gauge, type Registry } from 'prom-client'

export function createPlacementMetrics(register: Registry, sources: { reserved: () => boolean }) {
  new Gauge({
    name: 'skymesh_placement_reserved',
    help: '1 while a placement event (a partition) holds this host',
    registers: [register],
    collect() {
      this.set(sources.reserved() ? 1 : 0)
    },
  })
  return {
    opened: new Counter({
      name: 'skymesh_placement_events_opened_total',
      help: 'Placement events this host opened as leader, by problem',
      labelNames: ['kind'],
      registers: [register],
    }),
    closed: new Counter({
      name: 'skymesh_placement_events_closed_total',
      help: 'Placement events this host led to their end, by problem and outcome (done = resolved)',
      labelNames: ['kind', 'outcome'],
      registers: [register],
    }),
    planned: new Counter({
      name: 'skymesh_placement_migrations_planned_total',
      help: 'Migrations in plans this host carried out, by reason',
      labelNames: ['reason'],
      registers: [register],
    }),
    migrations: new Counter({
      name: 'skymesh_placement_migrations_total',
      help: 'Migrations placement started, by outcome',
      labelNames: ['outcome'],
      registers: [register],
    }),
    dropped: new Counter({
      name: 'skymesh_placement_messages_dropped_total',
      help: 'Placement messages dropped: malformed, oversized, or from a peer outside the mesh (foreign)',
      labelNames: ['reason'],
      registers: [register],
    }),
  }
}

export type PlacementMetrics = ReturnType<typeof createPlacementMetrics>
