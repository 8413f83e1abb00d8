// The agent config's `placement:` section: the off switch, the service's intervals, the planner's
// thresholds and the protocol's timings. Defaults are for real hosts: an overload must last 30 s before
// anything moves, and an underload 40 min (as VMware DPM looks at 40 min of history before it powers a
// host down): consolidation saves power, it is never urgent, and idle test meshes stay still.
import { z } from 'zod'

const hour = z.number().int().min(0).max(24)

/** Constraints for the VMs whose name matches `vms` (a glob: `*` matches anything). */
const ruleSchema = z.strictObject({
  vms: z.string().min(1).max(128),
  /** The only host (peer id) they may run on. */
  pin: z.string().min(1).max(128).optional(),
  /** Hosts (peer ids) they must not run on. */
  ban: z.array(z.string().min(1).max(128)).max(16).optional(),
  /** At most one VM of this group per host. */
  antiAffinity: z.string().min(1).max(64).optional(),
  /** Follow-the-sun: the site they prefer by the hour (UTC), first matching rule wins. */
  sites: z
    .array(z.strictObject({ site: z.string().min(1).max(64), fromHour: hour, toHour: hour }))
    .max(8)
    .optional(),
})

export type PlacementRule = z.infer<typeof ruleSchema>

import { ConfigError } from '../errors.js'

export const placementSchema = z
  .strictObject({
    /** Off: no protocol handler, no detection; the API still answers dry runs. */
    enabled: z.boolean(),
    /** How often the service re-reads this host's load (ms). */
    tickMs: z.number().int().min(50).max(60_000),
    overload: z.number().gt(0).max(1),
    underload: z.number().min(0).max(1),
    headroom: z.number().min(0).max(0.9),
    overloadGraceMs: z.number().int().min(0).max(86_400_000),
    underloadGraceMs: z.number().int().min(0).max(86_400_000),
    backoffMs: z.number().int().min(0).max(86_400_000),
    minGain: z.number().min(0).max(1),
    maxIn: z.number().int().min(1).max(16),
    maxOut: z.number().int().min(1).max(16),
    drainSpread: z.number().int().min(1).max(64),
    leaseMs: z.number().int().min(200).max(600_000),
    joinTimeoutMs: z.number().int().min(50).max(60_000),
    maxPartition: z.number().int().min(2).max(256),
    retryBackoffMs: z.number().int().min(0).max(3_600_000),
    /** Finished events kept for the API. */
    history: z.number().int().min(1).max(10_000),
    /**
     * How overload relief migrates: precopy (default: the VM stays on the source until the copy is
     * done), postcopy (the load leaves at once, memory follows; a source lost mid-copy loses the VM),
     * or auto. Drains and consolidation always use the engine's default.
     */
    reliefMode: z.enum(['precopy', 'postcopy', 'auto']),
    /** Per-VM constraints by VM name (pin, ban, anti-affinity, follow-the-sun); shared by the mesh. */
    rules: z.array(ruleSchema).max(256),
    /** Bandwidth cap of the migrations placement starts (MiB/s; default: none), to spare the links. */
    migrationBandwidthMiBps: z.number().positive().max(1_000_000),
  })
  .partial()

type Given = z.infer<typeof placementSchema>
export type PlacementSettings = Readonly<
  Required<Omit<Given, 'migrationBandwidthMiBps'>> & Pick<Given, 'migrationBandwidthMiBps'>
>

export const DEFAULT_PLACEMENT_SETTINGS: PlacementSettings = Object.freeze({
  enabled: true,
  tickMs: 1000,
  overload: 0.9,
  underload: 0.3,
  headroom: 0.2,
  overloadGraceMs: 30_000,
  underloadGraceMs: 2_400_000,
  backoffMs: 600_000,
  minGain: 0.05,
  maxIn: 2,
  maxOut: 2,
  drainSpread: 4,
  leaseMs: 10_000,
  joinTimeoutMs: 1000,
  maxPartition: 12,
  retryBackoffMs: 30_000,
  history: 100,
  reliefMode: 'precopy',
  rules: [],
})

export function placementSettings(given: z.infer<typeof placementSchema> | undefined): PlacementSettings {
  const s = { ...DEFAULT_PLACEMENT_SETTINGS, ...given }
  if (s.underload >= s.overload) {
    // A host cannot be both: say so by key, like every other config error.
    const message = 'config: placement.underload: must be below placement.overload'
    throw new ConfigError(message, [message])
  }
  return Object.freeze(s)
}
