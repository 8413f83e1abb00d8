// Prometheus metrics of the overlay, read from the switch's and transport's counters at scrape time.
import { Counter, Gauge, type Registry } from 'prom-client'
import type { MetadataStats } from './metadata.js'
import { DROP_REASONS, FORWARD_KINDS, type SwitchStats } from './switch.js'
import type { TransportStats } from './transport.js'

export interface OverlayMetricsSource {
  readonly switch: { stats: SwitchStats }
  readonly transport: { stats: TransportStats }
  malformedBatches: number
  readonly portDropped: { 'nic-down': number; 'nic-full': number; 'nic-foreign': number }
  readonly metadata: { stats: MetadataStats }
  portCount(): number
  networkCount(): number
}

/** Counters whose value is copied from a running total when scraped. */
function mirrored(
  registry: Registry,
  name: string,
  help: string,
  labelNames: string[],
  read: () => Array<[Record<string, string>, number]>,
): void {
  new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset()
      for (const [labels, v] of read()) if (v > 0) this.inc(labels, v)
    },
  })
}

export function registerOverlayMetrics(registry: Registry, src: OverlayMetricsSource): void {
  mirrored(registry, 'skymesh_overlay_frames_total', 'Frames forwarded by the virtual switch', ['path'], () =>
    FORWARD_KINDS.map((k) => [{ path: k }, src.switch.stats.forwarded[k].frames]),
  )
  mirrored(
    registry,
    'skymesh_overlay_bytes_total',
    'Bytes of frames forwarded by the virtual switch',
    ['path'],
    () => FORWARD_KINDS.map((k) => [{ path: k }, src.switch.stats.forwarded[k].bytes]),
  )
  mirrored(
    registry,
    'skymesh_overlay_dropped_total',
    'Frames dropped by the virtual switch, by reason',
    ['reason'],
    () => [
      ...DROP_REASONS.map((r): [Record<string, string>, number] => [
        { reason: r },
        src.switch.stats.dropped[r],
      ]),
      [{ reason: 'malformed-batch' }, src.malformedBatches],
      [{ reason: 'link-lost' }, src.transport.stats.framesLost],
      [{ reason: 'nic-down' }, src.portDropped['nic-down']],
      [{ reason: 'nic-full' }, src.portDropped['nic-full']],
      [{ reason: 'nic-foreign' }, src.portDropped['nic-foreign']],
      [{ reason: 'metadata-malformed' }, src.metadata.stats.dropped.malformed],
      [{ reason: 'metadata-not-served' }, src.metadata.stats.dropped['not-served']],
      [{ reason: 'metadata-too-many' }, src.metadata.stats.dropped['too-many']],
    ],
  )
  mirrored(
    registry,
    'skymesh_overlay_arp_proxied_total',
    'ARP requests answered locally (ARP proxy)',
    [],
    () => [[{}, src.switch.stats.arpProxied]],
  )
  mirrored(
    registry,
    'skymesh_overlay_announced_total',
    'Gratuitous ARP announcements sent (after migrations)',
    [],
    () => [[{}, src.switch.stats.announced]],
  )
  mirrored(
    registry,
    'skymesh_overlay_wire_bytes_total',
    'Bytes of overlay batches on the wire',
    ['direction'],
    () => [
      [{ direction: 'out' }, src.transport.stats.bytesOut],
      [{ direction: 'in' }, src.transport.stats.bytesIn],
    ],
  )
  mirrored(
    registry,
    'skymesh_overlay_metadata_responses_total',
    'Answers of the metadata service (169.254.169.254), by HTTP status',
    ['status'],
    () => Object.entries(src.metadata.stats.responses).map(([status, n]) => [{ status }, n]),
  )
  mirrored(
    registry,
    'skymesh_overlay_metadata_tcp_total',
    'TCP events of the metadata service',
    ['event'],
    () => {
      const s = src.metadata.stats
      return [
        [{ event: 'connection' }, s.connections],
        [{ event: 'retransmit' }, s.retransmits],
        [{ event: 'reset-sent' }, s.resetsSent],
        [{ event: 'reset-received' }, s.resetsReceived],
        [{ event: 'timeout' }, s.timeouts],
      ]
    },
  )
  new Gauge({
    name: 'skymesh_overlay_ports',
    help: 'VM NICs plugged into this host’s virtual switch',
    registers: [registry],
    collect() {
      this.set(src.portCount())
    },
  })
  new Gauge({
    name: 'skymesh_overlay_networks',
    help: 'Virtual networks known in the mesh',
    registers: [registry],
    collect() {
      this.set(src.networkCount())
    },
  })
}
