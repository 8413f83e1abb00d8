// Agent configuration: flags and an optional config file (JSON or YAML) are validated once, here,
// into a frozen, fully-defaulted object. Anything wrong is reported by the name of its key.
import { readFileSync } from 'node:fs'
import os from 'node:os'
import { extname, resolve } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { ConfigError } from './errors.js'
import { type PlacementSettings, placementSchema, placementSettings } from './placement/settings.js'

export const DEFAULT_LISTEN = '/ip4/0.0.0.0/tcp/4710'
export const DEFAULT_API = '127.0.0.1:4711'
export const KNOWN_DRIVERS = ['synthetic', 'qemu'] as const
export const NAT_REACHABILITY = ['auto', 'public', 'private'] as const
const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const

/** What the `skymesh agent` command line gives (all optional; absent = not given). */
export interface AgentFlags {
  dataDir?: string
  listen?: string[]
  bootstrap?: string[]
  api?: string
  site?: string
  driver?: string
  meshKey?: string
  apiTokenFile?: string
  config?: string
  logLevel?: string
}

const multiaddrString = z.string().superRefine((s, ctx) => {
  try {
    multiaddr(s)
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `not a valid multiaddr (${(err as Error).message})` })
  }
})

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected HOST:PORT, e.g. 127.0.0.1:4711')
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port must be 0..65535')

const resources = z.strictObject({
  vcpus: z.number().int().min(1).max(65536),
  memoryMiB: z.number().int().min(64),
  diskMiB: z.number().int().min(64),
})

const fileSchema = z.strictObject({
  dataDir: z.string().min(1),
  listen: z.array(multiaddrString).min(1),
  announce: z.array(multiaddrString),
  bootstrap: z.array(multiaddrString),
  api: hostPort,
  site: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'expected 1-63 letters, digits, . _ -'),
  driver: z.enum(KNOWN_DRIVERS, {
    error: (iss) => `unknown driver ${JSON.stringify(iss.input)} (known: ${KNOWN_DRIVERS.join(', ')})`,
  }),
  meshKey: z.string().min(1),
  /** A file holding the API token to use (e.g. a secret shared with Prometheus); default: generated. */
  apiTokenFile: z.string().min(1),
  logLevel: z.enum(LOG_LEVELS, {
    error: (iss) => `unknown log level ${JSON.stringify(iss.input)} (known: ${LOG_LEVELS.join(', ')})`,
  }),
  capacity: resources.partial(),
  /** Seconds between attempts to reach bootstrap peers we are not connected to. */
  bootstrapIntervalSec: z.number().min(0.1).max(3600),
  /** Gossip timings (all optional; defaults follow memberlist's LAN profile). */
  gossip: z
    .strictObject({
      probeIntervalMs: z.number().int().min(10).max(60000),
      probeTimeoutMs: z.number().int().min(5).max(60000),
      indirectChecks: z.number().int().min(0).max(16),
      gossipIntervalMs: z.number().int().min(10).max(60000),
      gossipNodes: z.number().int().min(1).max(32),
      sitePreference: z.number().min(1).max(1000),
      suspicionMult: z.number().min(1).max(100),
      heartbeatMs: z.number().int().min(100).max(3600000),
      debounceMs: z.number().int().min(0).max(60000),
      syncIntervalMs: z.number().int().min(0).max(3600000),
      meshDegree: z.number().int().min(1).max(32),
      gossipPeers: z.number().int().min(0).max(64),
      pubsubHeartbeatMs: z.number().int().min(100).max(60000),
    })
    .partial(),
  /** Milliseconds a dial may take (a dial to a mesh with another key hangs until this). */
  dialTimeoutMs: z.number().int().min(100).max(120000),
  /** Behind NAT: reachability, AutoNAT, hole punching (see nat.ts); all optional. */
  nat: z
    .strictObject({
      /**
       * public: reachable, never listens through relays (no reservation taken). auto (default) and
       * private: also listen through a relay of the mesh (`/p2p-circuit`), beside the direct
       * addresses that peers of the same site and hole punching use; dialers try direct ones first.
       */
      reachability: z.enum(NAT_REACHABILITY, {
        error: (iss) =>
          `unknown reachability ${JSON.stringify(iss.input)} (known: ${NAT_REACHABILITY.join(', ')})`,
      }),
      autonat: z.boolean(),
      holePunching: z.boolean(),
      /** How long bulk transfer waits for a direct connection before it uses a relayed one. */
      directTimeoutMs: z.number().int().min(0).max(120000),
    })
    .partial(),
  /** Serve as a circuit relay (v2) for mesh peers behind NAT; off unless enabled (`relay: true`). */
  relay: z.union([
    z.boolean(),
    z
      .strictObject({
        enabled: z.boolean(),
        maxReservations: z.number().int().min(1).max(10000),
        /** Bytes one relayed connection may carry (each direction) before the relay resets it. */
        dataLimitMiB: z.number().int().min(1).max(1048576),
        /** Seconds one relayed connection may last before the relay resets it. */
        durationLimitSec: z.number().int().min(10).max(86400),
      })
      .partial(),
  ]),
  /** Images (src/images): chunk size of images added here, and an upload cap per link for benchmarks. */
  images: z.strictObject({
    chunkKiB: z.number().int().min(4).max(4096).optional(),
    linkMiBps: z.number().min(0).max(100000).optional(),
  }),
  /** Virtual networks this host knows from the start (the overlay); more can be created by API. */
  networks: z.array(
    z.strictObject({
      name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'expected 1-63 letters, digits, . _ -'),
      subnet: z.string().regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, 'expected an IPv4 CIDR like 10.10.0.0/24'),
      mtu: z.number().int().min(576).max(9000).optional(),
    }),
  ),
  /** Cooperative placement (overload relief, consolidation, drain); see src/node/placement/settings.ts. */
  placement: placementSchema,
  /**
   * Live migration's direct data channel (src/transfer/direct.ts): `directData: false` keeps every
   * byte on libp2p streams; `directPort` fixes the listening port (default: ephemeral), and
   * `directAnnouncePort` is the port sources are told (a forwarded one).
   */
  migration: z
    .strictObject({
      directData: z.boolean(),
      directPort: z.number().int().min(0).max(65535),
      directAnnouncePort: z.number().int().min(0).max(65535),
      directConnectTimeoutMs: z.number().int().min(100).max(120000),
    })
    .partial(),
})

export type AgentConfig = Readonly<{
  dataDir: string
  listen: readonly string[]
  announce: readonly string[]
  bootstrap: readonly string[]
  api: { host: string; port: number }
  site: string
  driver: (typeof KNOWN_DRIVERS)[number]
  meshKey: string | undefined
  apiTokenFile: string | undefined
  logLevel: string
  capacity: Readonly<{ vcpus: number; memoryMiB: number; diskMiB: number }>
  bootstrapIntervalSec: number
  dialTimeoutMs: number
  networks: readonly { name: string; subnet: string; mtu?: number }[]
  nat: NatConfig
  relay: RelayConfig
  images: Readonly<{ chunkKiB?: number; linkMiBps?: number }>
  gossip: Readonly<{
    swim: {
      probeIntervalMs?: number
      probeTimeoutMs?: number
      indirectChecks?: number
      gossipIntervalMs?: number
      gossipNodes?: number
      sitePreference?: number
      suspicionMult?: number
    }
    state: { heartbeatMs?: number; debounceMs?: number; syncIntervalMs?: number }
    pubsub: { meshDegree?: number; gossipPeers?: number; heartbeatMs?: number }
  }>
  placement: PlacementSettings
  migration: Readonly<{
    directData?: boolean
    directPort?: number
    directAnnouncePort?: number
    directConnectTimeoutMs?: number
  }>
}>

export type NatConfig = Readonly<{
  reachability: (typeof NAT_REACHABILITY)[number]
  autonat: boolean
  holePunching: boolean
  directTimeoutMs: number
}>

export type RelayConfig = Readonly<{
  enabled: boolean
  maxReservations: number
  dataLimitMiB: number
  durationLimitSec: number
}>

export const NAT_DEFAULTS: NatConfig = Object.freeze({
  reachability: 'auto',
  autonat: true,
  holePunching: true,
  directTimeoutMs: 5000,
})

// A relay carries mesh control traffic (gossip, SWIM, hello) for as long as a host is behind NAT,
// plus the migrations that cannot get a direct connection: generous, but bounded, limits.
export const RELAY_DEFAULTS: RelayConfig = Object.freeze({
  enabled: false,
  maxReservations: 128,
  dataLimitMiB: 1024,
  durationLimitSec: 3600,
})

function formatIssues(error: z.ZodError, source: string): string[] {
  return error.issues.map((issue) => {
    const path = issue.path
      .map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`))
      .join('')
    if (issue.code === 'unrecognized_keys') {
      const keys = issue.keys.map((k) => (path ? `${path}.${k}` : k))
      return `${source}: unknown key${keys.length > 1 ? 's' : ''} ${keys.map((k) => `'${k}'`).join(', ')}`
    }
    return `${source}: ${path || '(root)'}: ${issue.message}`
  })
}

function readConfigFile(file: string): unknown {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    const message = `config: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`
    throw new ConfigError(message, [message])
  }
  try {
    const ext = extname(file).toLowerCase()
    const data = ext === '.json' ? JSON.parse(text) : parseYaml(text)
    return data ?? {}
  } catch (err) {
    const message = `config: ${file} is not valid ${extname(file).toLowerCase() === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message}`
    throw new ConfigError(message, [message])
  }
}

function defaultCapacity() {
  return {
    vcpus: os.cpus().length * 4,
    // Leave a fifth of the host's memory to the host itself.
    memoryMiB: Math.floor((os.totalmem() / 1048576) * 0.8),
    diskMiB: 102400,
  }
}

/** Validates flags (which win) over the config file; throws ConfigError naming every bad key. */
export function loadConfig(flags: AgentFlags, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const fromFile = flags.config ? readConfigFile(flags.config) : {}
  const fileResult = fileSchema.partial().safeParse(fromFile)
  if (!fileResult.success) {
    const issues = formatIssues(fileResult.error, flags.config ?? 'config')
    throw new ConfigError(issues.join('\n'), issues)
  }
  const merged: Record<string, unknown> = { ...fileResult.data }
  const fromFlags: Record<string, unknown> = {
    dataDir: flags.dataDir ?? env.SKYMESH_DATA_DIR,
    listen: flags.listen?.length ? flags.listen : undefined,
    bootstrap: flags.bootstrap?.length ? flags.bootstrap : undefined,
    api: flags.api,
    site: flags.site,
    driver: flags.driver,
    meshKey: flags.meshKey,
    apiTokenFile: flags.apiTokenFile,
    logLevel: flags.logLevel ?? env.SKYMESH_LOG_LEVEL,
  }
  for (const [k, v] of Object.entries(fromFlags)) if (v !== undefined) merged[k] = v
  const flagResult = fileSchema.partial().safeParse(merged)
  if (!flagResult.success) {
    const issues = formatIssues(flagResult.error, 'flag')
    throw new ConfigError(issues.join('\n'), issues)
  }
  const c = flagResult.data
  if (!c.dataDir) throw new ConfigError('dataDir: required (--data-dir DIR)', ['flag: dataDir: required'])
  const api = c.api ?? DEFAULT_API
  const sep = api.lastIndexOf(':')
  const config: AgentConfig = {
    dataDir: resolve(c.dataDir),
    listen: c.listen ?? [DEFAULT_LISTEN],
    announce: c.announce ?? [],
    bootstrap: c.bootstrap ?? [],
    api: { host: api.slice(0, sep).replace(/^\[|\]$/g, ''), port: Number(api.slice(sep + 1)) },
    site: c.site ?? 'default',
    driver: c.driver ?? 'synthetic',
    meshKey: c.meshKey ? resolve(c.meshKey) : undefined,
    apiTokenFile: c.apiTokenFile ? resolve(c.apiTokenFile) : undefined,
    logLevel: c.logLevel ?? 'info',
    capacity: Object.freeze({ ...defaultCapacity(), ...c.capacity }),
    bootstrapIntervalSec: c.bootstrapIntervalSec ?? 5,
    dialTimeoutMs: c.dialTimeoutMs ?? 5000,
    networks: c.networks ?? [],
    nat: Object.freeze({ ...NAT_DEFAULTS, ...c.nat }),
    relay: Object.freeze({
      ...RELAY_DEFAULTS,
      // `relay: true`, or a `relay:` section (which enables it unless it says `enabled: false`)
      ...(c.relay === undefined
        ? {}
        : typeof c.relay === 'boolean'
          ? { enabled: c.relay }
          : { enabled: true, ...c.relay }),
    }),
    images: Object.freeze({ ...c.images }),
    gossip: splitGossip(c.gossip ?? {}),
    placement: placementSettings(c.placement),
    migration: Object.freeze({ ...c.migration }),
  }
  return Object.freeze(config)
}

/** The flat `gossip:` config section, split into what membership and host state each take. */
function splitGossip(g: Partial<Record<string, number>>): AgentConfig['gossip'] {
  const { heartbeatMs, debounceMs, syncIntervalMs, meshDegree, gossipPeers, pubsubHeartbeatMs, ...swim } = g
  const state = { heartbeatMs, debounceMs, syncIntervalMs }
  const pubsub = { meshDegree, gossipPeers, heartbeatMs: pubsubHeartbeatMs }
  const defined = <T extends object>(o: T) =>
    Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined))
  return Object.freeze({ swim: defined(swim), state: defined(state), pubsub: defined(pubsub) })
}
