// The agent: one per host. Wires the libp2p host, the store, the VM driver and the local API, and
// owns the lifecycle of this host's VMs (create, delete, suspend on stop, resume on start).
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import { Gossip } from '../gossip/index.js'
import type { LocalHostState, MemberStatus } from '../gossip/types.js'
import type { VmContext } from '../images/index.js'
import {
  type MetadataCaller,
  metadataFromContext,
  type NicRecord,
  OverlayError,
  OverlayService,
  type VmMetadata,
} from '../overlay/index.js'
import { describeSealedEngine } from '../transfer/index.js'
import { createDriver, QemuDriver, type SyntheticDriver } from '../vm/index.js'
import type { VmDriver, VmInstance, VmSpec, VmState, WorkloadSpec } from '../vm/types.js'
import { createApiServer } from './api/index.js'
import { Bootstrapper } from './bootstrap.js'
import type { AgentConfig } from './config.js'
import { AgentError } from './errors.js'
import { loadOrCreatePeerKey } from './identity.js'
import { AgentImages, imagesApi, meshView } from './images.js'
import { readMeshKey } from './mesh-key.js'
import { createNodeMetrics, type NodeMetrics } from './metrics.js'
import { AgentMigrations } from './migrations.js'
import { NatLinks } from './nat.js'
import { createHost, type Host } from './p2p.js'
import { PeerTracker } from './peers.js'
import { PlacementService } from './placement/index.js'
import { buildSitesView, decodeSiteLinks, SiteMeter, type SitesView } from './sites.js'
import { Store } from './store.js'
import { loadOrCreateToken } from './token.js'
import type {
  AgentService,
  ClusterHost,
  ClusterView,
  ClusterVm,
  CreateNetworkRequest,
  CreateVmRequest,
  MigrateVmRequest,
  MigrationView,
  NetworkApi,
  NetworkDetail,
  NetworkSummary,
  NodeInfo,
  PeerInfo,
  PingReport,
  PingRequest,
  Resources,
  VmDigest,
  VmNicView,
  VmRecord,
} from './types.js'
import { Vclusters } from './vclusters.js'
import { VERSION } from './version.js'

export const AGENT_FILE = 'agent.json'

/** What the store keeps per VM: the public record plus what a restart needs. */
interface StoredVm extends VmRecord {
  /** Set when a clean stop suspended the VM: the state to return to on the next start. */
  resumeState?: 'running' | 'paused'
}

/** States in which a VM holds its memory reservation on this host. */
const HOLDS_RESOURCES: ReadonlySet<VmState> = new Set(['running', 'paused', 'suspended'])

export interface AgentInit {
  config: AgentConfig
  logger: Logger
}

export class Agent implements AgentService, NetworkApi {
  readonly metrics = new Registry()
  private readonly config: AgentConfig
  private readonly log: Logger
  private host?: Host
  private store?: Store
  private driver?: VmDriver
  private peerTracker?: PeerTracker
  private bootstrapper?: Bootstrapper
  private gossip?: Gossip
  private migrations?: AgentMigrations
  private overlay?: OverlayService
  private placement?: PlacementService
  private api?: ReturnType<typeof createApiServer>
  private nodeMetrics?: NodeMetrics
  private natLinks?: NatLinks
  private siteMeter?: SiteMeter
  private readonly images: AgentImages
  private vclusters?: Vclusters
  private readonly records = new Map<string, StoredVm>()
  private readonly instances = new Map<string, VmInstance>()
  /** Serialises VM operations so capacity checks and registry writes never interleave. */
  private queue: Promise<unknown> = Promise.resolve()
  private startedAt = new Date()
  private apiUrl = ''
  private token = ''
  private stopping = false

  constructor(init: AgentInit) {
    this.config = init.config
    this.log = init.logger
    this.images = new AgentImages({
      dataDir: init.config.dataDir,
      logger: init.logger.child({ component: 'images' }),
      chunkKiB: init.config.images.chunkKiB,
      linkMiBps: init.config.images.linkMiBps,
      dialTimeoutMs: init.config.dialTimeoutMs,
    })
  }

  get peerId(): string {
    return this.requireHost().peerId.toString()
  }

  get apiBaseUrl(): string {
    return this.apiUrl
  }

  get apiToken(): string {
    return this.token
  }

  async start(): Promise<void> {
    const { config } = this
    // Read everything that can be wrong with the configuration before creating anything.
    const psk = config.meshKey ? await readMeshKey(config.meshKey) : undefined
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 })
    await mkdir(join(config.dataDir, 'vms'), { recursive: true })
    this.token = await loadOrCreateToken(config.dataDir, config.apiTokenFile)
    const privateKey = await loadOrCreatePeerKey(config.dataDir)
    try {
      this.store = await Store.open(join(config.dataDir, 'store'))
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') {
        throw new AgentError(
          'INVALID_STATE',
          `${config.dataDir} is in use by another agent (its store is locked)`,
        )
      }
      throw err
    }
    await this.images.open()
    this.driver =
      config.driver === 'synthetic'
        ? createDriver('synthetic', { resolveBase: (id) => this.images.base(id) })
        : createDriver(config.driver, {
            // this host's qcow2 bases (blank ones, mesh images as files), beside its VMs
            imageStore: join(config.dataDir, 'qemu-bases'),
            // qemu: mesh images as disk bases, fetched by id (creating from one, or arriving by migration)
            images: {
              localFile: (id: string, signal?: AbortSignal, sources?: string[]) =>
                this.images.localFile(id, signal, sources),
            },
          })
    this.startedAt = new Date()

    this.host = await createHost({
      privateKey,
      listen: config.listen,
      announce: config.announce,
      psk,
      dialTimeoutMs: config.dialTimeoutMs,
      pubsub: config.gossip.pubsub,
      sameSite: (peerId) => this.sameSite(peerId),
      nat: {
        listenViaRelay: config.nat.reachability !== 'public',
        autonat: config.nat.autonat,
        holePunching: config.nat.holePunching,
        relay: config.relay.enabled
          ? {
              maxReservations: config.relay.maxReservations,
              dataLimitBytes: BigInt(config.relay.dataLimitMiB) * 1048576n,
              durationLimitMs: config.relay.durationLimitSec * 1000,
            }
          : undefined,
      },
    })
    this.natLinks = new NatLinks({
      host: this.host,
      logger: this.log.child({ component: 'nat' }),
      directTimeoutMs: config.nat.directTimeoutMs,
      configured: config.nat.reachability,
      autonat: config.nat.autonat,
    })
    this.natLinks.start()
    this.siteMeter = new SiteMeter({
      siteOf: (peerId) => this.siteOf(peerId),
      rtts: () => this.rtts(),
    })
    this.log.info({ peerId: this.peerId, addrs: this.addrs(), private: Boolean(psk) }, 'libp2p host started')

    this.nodeMetrics = createNodeMetrics(this.metrics, {
      connections: () => this.host?.getConnections().length ?? 0,
      peers: () => this.host?.getPeers().length ?? 0,
      vmStates: () => [...this.records.values()].map((r) => r.state),
      usedMemoryMiB: () => this.used().memoryMiB,
      capacityMemoryMiB: () => this.config.capacity.memoryMiB,
    })

    await this.recoverVms()

    this.peerTracker = new PeerTracker({
      host: this.host,
      logger: this.log.child({ component: 'peers' }),
      latency: (peerId) => this.gossip?.swim.rtt(peerId),
      // Relayed, but bulk data (migrations, image chunks) got a hole-punched channel of its own
      // (transfer/punch.ts)
      connection: (peerId) => {
        const kind = this.natLinks?.kind(peerId)
        const punched =
          this.migrations?.service.punchedPeers.has(peerId) || this.images.service?.punchedPeers.has(peerId)
        return kind === 'relayed' && punched ? 'hole-punched' : kind
      },
      hello: () => ({
        version: VERSION,
        site: config.site,
        driver: config.driver,
        startedAtMs: this.startedAt.getTime(),
        capacity: {
          vcpus: config.capacity.vcpus,
          memoryMib: config.capacity.memoryMiB,
          diskMib: config.capacity.diskMiB,
        },
        used: { vcpus: this.used().vcpus, memoryMib: this.used().memoryMiB, diskMib: this.used().diskMiB },
        vmCount: this.records.size,
      }),
    })
    await this.peerTracker.start()
    this.gossip = new Gossip(
      {
        host: this.host,
        privateKey,
        logger: this.log.child({ component: 'gossip' }),
        localState: () => this.localState(),
        site: config.site,
        metrics: this.metrics,
      },
      { swim: config.gossip.swim, state: config.gossip.state },
    )
    await this.gossip.start()
    await this.startOverlay()
    await this.images.start(this.host, this.gossip)
    const mesh = meshView(this.peerId, this.gossip)
    this.vclusters = new Vclusters({
      self: this.peerId,
      host: this.host,
      logger: this.log.child({ component: 'vclusters' }),
      store: this.requireStore(),
      images: this.images,
      cluster: () => this.cluster(),
      isMember: (p) => mesh.isMember(p),
      createVm: (req) => this.createVm(req),
      deleteVm: (id) => this.deleteVm(id),
      vmDir: (id) => this.vmDir(id),
      where: (id) => this.gossip?.where(id),
      migratingTo: (id) => this.migrations?.activeFor(id)?.to,
    })
    await this.vclusters.start()
    this.migrations = new AgentMigrations({
      host: this.host,
      logger: this.log.child({ component: 'transfer' }),
      driver: this.requireDriver(),
      store: this.requireStore(),
      metrics: this.metrics,
      link: this.natLinks,
      direct: {
        enabled: this.config.migration.directData ?? true,
        port: this.config.migration.directPort ?? 0,
        ...(this.config.migration.directAnnouncePort
          ? { announcePort: this.config.migration.directAnnouncePort }
          : {}),
        ...(this.config.migration.directConnectTimeoutMs
          ? { connectTimeoutMs: this.config.migration.directConnectTimeoutMs }
          : {}),
      },
      owner: {
        peerId: this.peerId,
        record: (id) => this.records.get(id),
        instance: (id) => this.instances.get(id),
        free: () => {
          const used = this.used()
          const cap = this.config.capacity
          return {
            vcpus: cap.vcpus - used.vcpus,
            memoryMiB: cap.memoryMiB - used.memoryMiB,
            diskMiB: cap.diskMiB - used.diskMiB,
          }
        },
        vmDir: (id) => this.vmDir(id),
        adoptIncoming: (rec, instance, nics) =>
          this.serial(async () => {
            // A disk that arrived as a layer over a base image keeps that image in use here.
            const image = instance.disk.baseImage?.id
            await this.saveRecord(image ? { ...rec, image } : rec)
            this.adopt(instance)
            const from = this.migrations?.activeFor(rec.id)?.from
            this.overlay?.arrived(
              rec.id,
              rec.epoch,
              from,
              () => instance.state === 'running',
              instance.nicSocket,
              nics,
            )
            // its virtual-cluster context, fetched when the offer came, is its context here now
            await this.vclusters
              ?.arrived(rec.id)
              .catch((err: unknown) =>
                this.log.warn({ vm: rec.id, err }, 'context of an arrived VM not filed'),
              )
          }),
        // its NICs travel in the offer, so it keeps them where gossip has not brought them yet
        nicsOf: (id) => this.overlay?.offerNics(id) ?? [],
        checkNics: (id, nics) => this.overlay?.checkOffered(id, nics),
        // held until the commit, journaled with the migration (src/node/migrations.ts)
        holdNics: (mid, id, nics) => this.overlay?.hold(mid, id, nics) ?? nics,
        releaseNics: (mid) => this.overlay?.unhold(mid),
        hasNics: (id) => (this.overlay?.nicsOf(id).length ?? 0) > 0,
        restoreNics: (id, nics) => void this.overlay?.restoreNics(id, nics),
        prepareIncoming: async (id, from, signal) => {
          await this.vclusters?.fetchIncoming(
            id,
            from,
            AbortSignal.any([signal, AbortSignal.timeout(15_000)]),
          )
        },
        ensureImage: async (id, signal, from) => {
          if (this.config.driver !== 'synthetic') return false
          try {
            // The migration's source holds the image, whatever gossip says yet
            await this.images.requireService().ensure(id, signal, from ? [from] : [])
            return true
          } catch (err) {
            this.log.info(
              { image: id, err: (err as Error).message },
              'base image not available: full disk copy',
            )
            return false
          }
        },
        releaseOutgoing: (id) =>
          this.serial(async () => {
            const to = this.migrations?.activeFor(id)?.to
            this.overlay?.departed(id, to)
            await this.vclusters
              ?.departed(id, to)
              .catch((err: unknown) => this.log.warn({ vm: id, err }, 'context of a departed VM not dropped'))
            const instance = this.instances.get(id)
            this.instances.delete(id)
            await instance?.destroy()
            await rm(this.vmDir(id), { recursive: true, force: true })
            this.records.delete(id)
            await this.requireStore().deleteVm(id)
            this.gossip?.notifyChanged()
          }),
        update: async (id, patch) => {
          const rec = this.records.get(id)
          if (rec) await this.saveRecord({ ...rec, ...patch })
        },
        crashIncoming: (id) =>
          this.serial(async () => {
            const instance = this.instances.get(id)
            this.instances.delete(id)
            await instance?.stop().catch(() => undefined)
            const rec = this.records.get(id)
            if (rec) await this.saveRecord({ ...rec, state: 'crashed', resumeState: undefined })
          }),
        hasVmDir: async (id) => existsSync(this.vmDir(id)),
        restoreRecord: (rec) =>
          this.serial(async () => {
            if (!this.records.has(rec.id)) await this.saveRecord(rec)
          }),
        discardIncomingDir: (id) =>
          this.serial(async () => {
            if (this.records.has(id)) return
            // a guest process the dead agent left there (qemu: its paused incoming copy) goes too
            await this.driver?.discard?.(this.vmDir(id)).catch(() => undefined)
            await rm(this.vmDir(id), { recursive: true, force: true })
          }),
      },
    })
    await this.migrations.start()
    await this.startPlacement()
    // Bandwidth between sites, as migrations measured it (both ends learn it).
    this.migrations.service.on('finished', (m) => {
      if (m.direction === 'in' && m.phase !== 'done')
        void this.vclusters?.incomingFailed(m.vmId).catch(() => {})
      if (m.phase !== 'done') return
      // the link rate the engine measured; else the average over the whole migration
      const average = m.totalMs ? m.wireBytes / 1048576 / (m.totalMs / 1000) : 0
      this.siteMeter?.recordBandwidth(
        m.direction === 'out' ? m.to : m.from,
        m.bandwidthMiBps > 0 ? m.bandwidthMiBps : average,
      )
      this.gossip?.notifyChanged()
    })
    this.bootstrapper = new Bootstrapper({
      host: this.host,
      logger: this.log.child({ component: 'bootstrap' }),
      addrs: config.bootstrap,
      intervalMs: config.bootstrapIntervalSec * 1000,
      dialTimeoutMs: config.dialTimeoutMs,
    })
    this.bootstrapper.start()

    this.api = createApiServer({
      agent: this,
      networks: this,
      placement: this.placement,
      images: imagesApi(this.images, (id) => [...this.records.values()].some((r) => r.image === id), {
        createVcluster: (req) => this.requireVclusters().create(req),
        scaleVcluster: (name, count) => this.requireVclusters().scale(name, count),
        listVclusters: () => this.requireVclusters().list(),
        getVcluster: (name) => this.requireVclusters().get(name),
        vclusterContext: (name, vm) => this.requireVclusters().context(name, vm),
        deleteVcluster: (name) => this.requireVclusters().delete(name),
      }),
      token: this.token,
      logger: this.log.child({ component: 'api' }),
      host: config.api.host,
      port: config.api.port,
    })
    this.apiUrl = await this.api.listen()
    await this.writeAgentFile()
    this.log.info(
      { api: this.apiUrl, dataDir: config.dataDir, site: config.site, dataChannel: describeSealedEngine() },
      'agent ready',
    )
  }

  /** Clean stop: suspends every live VM to disk so the next start resumes it with the same digest. */
  async stop(): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    await rm(join(this.config.dataDir, AGENT_FILE), { force: true })
    await this.api?.close()
    this.bootstrapper?.stop()
    // Tell the mesh first, so our suspended VMs show as host-left rather than host-lost.
    await this.gossip?.leave()
    await this.peerTracker?.stop().catch(() => {})
    await this.placement?.stop()
    // Outgoing migrations not past their handover roll back (the VM runs here), then get suspended.
    await this.migrations
      ?.stop()
      .catch((err: unknown) => this.log.warn({ err }, 'migrations did not stop cleanly'))
    await this.serial(async () => {
      for (const [id, vm] of this.instances) {
        const rec = this.records.get(id)
        if (!rec || (vm.state !== 'running' && vm.state !== 'paused')) continue
        const resumeState = vm.state
        try {
          await vm.suspend()
          await this.saveRecord({ ...rec, state: 'suspended', resumeState })
          this.log.info({ vm: id, name: rec.name }, 'VM suspended')
        } catch (err) {
          this.log.error({ vm: id, err }, 'VM could not be suspended; it will be listed as crashed')
        }
      }
      this.instances.clear()
    })
    await this.overlay?.stop().catch((err: unknown) => this.log.warn({ err }, 'overlay did not stop cleanly'))
    await this.vclusters?.stop()
    await this.images.stop().catch((err: unknown) => this.log.warn({ err }, 'images did not stop cleanly'))
    await this.gossip?.stop().catch((err: unknown) => this.log.warn({ err }, 'gossip did not stop cleanly'))
    this.natLinks?.stop()
    await this.host?.stop()
    await this.driver?.close()
    await this.store?.close()
    this.log.info('agent stopped')
  }

  // --- AgentService ---

  nodeInfo(): NodeInfo {
    return {
      peerId: this.peerId,
      addrs: this.addrs(),
      version: VERSION,
      site: this.config.site,
      driver: this.config.driver,
      startedAt: this.startedAt.toISOString(),
      capacity: { ...this.config.capacity },
      used: this.used(),
      vmCount: this.records.size,
      nat: this.natLinks?.status(),
      dataChannel: describeSealedEngine(),
    }
  }

  peers(): PeerInfo[] {
    return this.peerTracker?.list() ?? []
  }

  /** Sites, hosts per site, and the latency/bandwidth their hosts measured between them. */
  sites(): SitesView {
    const gossip = this.requireGossip()
    const states = new Map(gossip.hosts().map((h) => [h.peerId, h]))
    const alive = new Map(gossip.members().map((m) => [m.peerId, m.status === 'alive']))
    const ids = new Set([...states.keys(), ...alive.keys()])
    const hosts = [...ids].map((peerId) => {
      const self = peerId === this.peerId
      return {
        peerId,
        site: self ? this.config.site : (states.get(peerId)?.site ?? this.siteOf(peerId) ?? ''),
        alive: self || (alive.get(peerId) ?? false),
        links: self ? (this.siteMeter?.report() ?? []) : decodeSiteLinks(states.get(peerId)?.sites),
      }
    })
    return buildSitesView({ peerId: this.peerId, site: this.config.site }, hosts)
  }

  /** The dashboard's feed: membership changes, gossiped host states, migration progress. */
  watch(fn: (what: 'members' | 'hosts' | 'migrations') => void): () => void {
    const gossip = this.requireGossip()
    const service = this.requireMigrations().service
    const members = () => fn('members')
    const hosts = () => fn('hosts')
    const migrations = () => fn('migrations')
    const events = ['member:alive', 'member:suspect', 'member:dead', 'member:left'] as const
    for (const e of events) gossip.swim.addEventListener(e, members)
    gossip.state.on('host:update', hosts)
    service.on('progress', migrations)
    service.on('finished', migrations)
    return () => {
      for (const e of events) gossip.swim.removeEventListener(e, members)
      gossip.state.off('host:update', hosts)
      service.off('progress', migrations)
      service.off('finished', migrations)
    }
  }

  listVms(): VmRecord[] {
    return [...this.records.values()]
      .map((r) => this.withNics(this.withMigration(publicRecord(r))))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  getVm(id: string): VmRecord {
    return this.withNics(this.withMigration(publicRecord(this.requireRecord(id))))
  }

  migrateVm(id: string, req: MigrateVmRequest): MigrationView {
    this.requireRecord(id)
    const { to, ...options } = req
    if (to === this.peerId) throw new AgentError('BAD_REQUEST', 'to: that is this host', { field: 'to' })
    const member = this.gossip?.members().find((m) => m.peerId === to)
    const connected = this.host?.getPeers().some((p) => p.toString() === to)
    if (!connected && member?.status !== 'alive') {
      throw new AgentError('BAD_REQUEST', `to: ${to} is not a live host of this mesh`, { field: 'to' })
    }
    return this.requireMigrations().migrate(id, to, options)
  }

  listMigrations(): MigrationView[] {
    return this.requireMigrations().list()
  }

  getMigration(id: string): MigrationView {
    return this.requireMigrations().get(id)
  }

  cancelMigration(id: string): MigrationView {
    return this.requireMigrations().cancel(id)
  }

  async createVm(req: CreateVmRequest): Promise<VmRecord> {
    // An image is fetched (from any holder) before the VM queue: that may take a while.
    const image = req.image
      ? await this.images.prepare(req.image, req.diskMiB, this.config.driver)
      : undefined
    if (req.guestArgs && this.config.driver !== 'qemu') {
      throw new AgentError('BAD_REQUEST', `guestArgs: only the qemu driver's guests take them`, {
        field: 'guestArgs',
      })
    }
    return this.serial(async () => {
      const workload = fillWorkload(req)
      if ([...this.records.values()].some((r) => r.name === req.name)) {
        throw new AgentError('NAME_TAKEN', `a VM named '${req.name}' already exists on this host`)
      }
      const used = this.used()
      const cap = this.config.capacity
      if (used.memoryMiB + req.memoryMiB > cap.memoryMiB) {
        throw new AgentError(
          'INSUFFICIENT_CAPACITY',
          `memoryMiB: ${req.memoryMiB} MiB does not fit: ${cap.memoryMiB - used.memoryMiB} MiB free of ${cap.memoryMiB} MiB`,
          { field: 'memoryMiB', freeMiB: cap.memoryMiB - used.memoryMiB },
        )
      }
      if (used.diskMiB + req.diskMiB > cap.diskMiB) {
        throw new AgentError(
          'INSUFFICIENT_CAPACITY',
          `diskMiB: ${req.diskMiB} MiB does not fit: ${cap.diskMiB - used.diskMiB} MiB free of ${cap.diskMiB} MiB`,
          { field: 'diskMiB', freeMiB: cap.diskMiB - used.diskMiB },
        )
      }
      const id = `vm-${randomBytes(6).toString('hex')}`
      if (req.nicAttach && this.config.driver !== 'synthetic')
        throw new AgentError('BAD_REQUEST', `nicAttach: a ${this.config.driver} VM has its own NIC`, {
          field: 'nicAttach',
        })
      // Addresses first: an unknown network refuses the VM before anything is made.
      const nics = req.networks?.length
        ? this.overlayCall(() =>
            this.requireOverlay().allocate(id, req.networks ?? [], { attach: req.nicAttach }),
          )
        : []
      const spec: VmSpec = {
        id,
        name: req.name,
        vcpus: req.vcpus,
        memoryMiB: req.memoryMiB,
        diskMiB: req.diskMiB,
        workload,
      }
      const dir = this.vmDir(id)
      let instance: VmInstance | undefined
      try {
        const driver = this.requireDriver()
        const nicOpts = { ...this.guestNic(nics[0]), ...(req.guestArgs ? { guestArgs: req.guestArgs } : {}) }
        instance =
          image && driver instanceof QemuDriver
            ? await driver.create(spec, { dir, ...nicOpts, imageId: image.id })
            : image
              ? await (driver as SyntheticDriver).createFromImage(spec, { dir, ...nicOpts }, image)
              : await driver.create(spec, { dir, ...nicOpts })
        const now = new Date().toISOString()
        const rec: StoredVm = {
          ...spec,
          ...(image ? { image: image.id } : {}),
          state: instance.state,
          host: this.peerId,
          epoch: 1,
          createdAt: now,
          updatedAt: now,
        }
        await this.saveRecord(rec)
        this.adopt(instance)
        const created = instance
        this.overlay?.attach(id, nics, () => created.state === 'running', created.nicSocket)
        this.nodeMetrics?.vmOperations.inc({ op: 'create', outcome: 'ok' })
        this.log.info({ vm: id, name: req.name, memoryMiB: req.memoryMiB }, 'VM created')
        return this.withNics(publicRecord(rec))
      } catch (err) {
        // Leave nothing behind: no half-made VM, no record.
        await instance?.destroy().catch(() => {})
        this.overlay?.release(id)
        await rm(dir, { recursive: true, force: true })
        this.records.delete(id)
        await this.store?.deleteVm(id).catch(() => {})
        this.nodeMetrics?.vmOperations.inc({ op: 'create', outcome: 'error' })
        throw err
      }
    })
  }

  deleteVm(id: string): Promise<void> {
    return this.serial(async () => {
      const rec = this.requireRecord(id)
      this.refuseWhileMigrating(id, 'delete')
      const instance = this.instances.get(id)
      if (instance) await instance.destroy()
      else await rm(this.vmDir(id), { recursive: true, force: true })
      this.instances.delete(id)
      this.records.delete(id)
      this.overlay?.release(id)
      await this.requireStore().deleteVm(id)
      this.gossip?.notifyChanged()
      this.nodeMetrics?.vmOperations.inc({ op: 'delete', outcome: 'ok' })
      this.log.info({ vm: id, name: rec.name }, 'VM deleted')
    })
  }

  pauseVm(id: string): Promise<VmRecord> {
    return this.serial(async () => {
      const vm = this.requireInstance(id, 'pause')
      this.refuseWhileMigrating(id, 'pause')
      if (vm.state !== 'running')
        throw new AgentError('INVALID_STATE', `VM ${id} is ${vm.state}, not running`)
      await vm.pause()
      return publicRecord(await this.syncState(id))
    })
  }

  resumeVm(id: string): Promise<VmRecord> {
    return this.serial(async () => {
      const vm = this.requireInstance(id, 'resume')
      this.refuseWhileMigrating(id, 'resume')
      if (vm.state !== 'paused') throw new AgentError('INVALID_STATE', `VM ${id} is ${vm.state}, not paused`)
      await vm.resume()
      return publicRecord(await this.syncState(id))
    })
  }

  async vmDigest(id: string): Promise<VmDigest> {
    const vm = this.requireInstance(id, 'digest')
    return { id, ...(await vm.digest()) }
  }

  cluster(): ClusterView {
    const gossip = this.requireGossip()
    const now = Date.now()
    const counts: Record<MemberStatus, number> = { alive: 0, suspect: 0, dead: 0, left: 0 }
    const states = new Map(gossip.hosts().map((h) => [h.peerId, h]))
    const hosts = new Map<string, ClusterHost>()
    for (const m of gossip.members()) {
      counts[m.status] += 1
      hosts.set(m.peerId, {
        peerId: m.peerId,
        self: m.self,
        status: m.status,
        incarnation: m.incarnation,
        statusSince: new Date(m.statusSince).toISOString(),
        site: m.site,
        addrs: m.addrs,
        vmCount: 0,
      })
    }
    for (const [peerId, st] of states) {
      const base = hosts.get(peerId) ?? {
        peerId,
        self: peerId === this.peerId,
        status: 'unknown' as const,
        site: st.site,
        addrs: st.addrs,
        vmCount: 0,
      }
      hosts.set(peerId, {
        ...base,
        site: st.site || base.site,
        addrs: base.addrs.length ? base.addrs : st.addrs,
        capacity: st.capacity,
        used: st.used,
        cpuLoad: st.cpuLoad,
        vmCount: st.vms.length,
        stateVersion: st.version,
        stateTimestampMs: st.timestampMs,
        receivedAtMs: st.receivedAtMs,
        receivedAgoMs: Math.max(0, now - st.receivedAtMs),
        agentVersion: st.agentVersion,
      })
    }
    const list = [...hosts.values()].sort(
      (a, b) => a.site.localeCompare(b.site) || a.peerId.localeCompare(b.peerId),
    )
    return { self: this.peerId, hosts: list, counts }
  }

  clusterVms(): ClusterVm[] {
    const gossip = this.requireGossip()
    const sites = new Map(gossip.hosts().map((h) => [h.peerId, h.site]))
    return gossip
      .vms()
      .map((loc) => ({
        id: loc.vmId,
        name: loc.name,
        host: loc.host,
        site: sites.get(loc.host),
        epoch: loc.epoch,
        status: loc.status,
        state: loc.vm.state,
        vcpus: loc.vm.vcpus,
        memoryMiB: loc.vm.memoryMiB,
        diskMiB: loc.vm.diskMiB,
        cpu: loc.vm.cpu,
        dirtyMiBps: loc.vm.dirtyMiBps,
      }))
      .sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id))
  }

  where(idOrName: string): ClusterVm {
    const vms = this.clusterVms()
    const byId = vms.find((v) => v.id === idOrName)
    if (byId) return byId
    const byName = vms.filter((v) => v.name === idOrName)
    if (byName.length === 1) return byName[0]!
    if (byName.length > 1) {
      throw new AgentError(
        'BAD_REQUEST',
        `${byName.length} VMs of the mesh are named '${idOrName}': use an id`,
        {
          ids: byName.map((v) => v.id),
        },
      )
    }
    throw new AgentError('VM_NOT_FOUND', `no VM '${idOrName}' in the mesh (as far as gossip tells)`)
  }

  // --- NetworkApi (the overlay) ---

  listNetworks(): NetworkSummary[] {
    return this.requireOverlay().listNetworks()
  }

  createNetwork(req: CreateNetworkRequest): NetworkSummary {
    return this.overlayCall(() => this.requireOverlay().createNetwork(req))
  }

  getNetwork(name: string): NetworkDetail {
    return this.overlayCall(() => this.requireOverlay().getNetwork(name))
  }

  vmNics(id: string): VmNicView[] {
    this.requireRecord(id)
    const overlay = this.requireOverlay()
    return overlay.nicsOf(id).map((n) => ({
      ...n,
      ...overlay.nicView(id, n.network),
      firstFrameAfterArrivalMs: overlay.firstFrameAfterArrival(id, n.network),
    }))
  }

  async pingFromVm(id: string, req: PingRequest): Promise<PingReport> {
    this.requireRecord(id)
    const overlay = this.requireOverlay()
    return this.overlayCall(() => overlay.probe(id, req.ip, req)).catch((err: unknown) => {
      throw err instanceof OverlayError ? new AgentError(err.code, err.message, err.details) : err
    })
  }

  // --- internals ---

  /** Placement: this host's side of the cooperative protocol; it moves VMs as the API's migrate does. */
  private async startPlacement(): Promise<void> {
    const gossip = this.requireGossip()
    this.placement = new PlacementService({
      self: this.peerId,
      site: this.config.site,
      capacity: this.config.capacity,
      settings: this.config.placement,
      logger: this.log.child({ component: 'placement' }),
      metrics: this.metrics,
      gossip,
      host: this.requireHost(),
      dialTimeoutMs: this.config.dialTimeoutMs,
      localVms: () => {
        const vms = this.localState().vms.map((v) => ({
          ...v,
          migrating: Boolean(this.migrations?.activeFor(v.id)),
        }))
        // Room held for VMs arriving now counts as a VM that cannot move.
        const held = this.migrations?.reserved()
        if (held && held.memoryMiB + held.diskMiB + held.vcpus > 0)
          vms.push({
            ...held,
            id: `incoming@${this.peerId}`,
            name: 'incoming',
            cpu: 0,
            dirtyMiBps: 0,
            state: 'running',
            epoch: 1,
            migrating: true,
          })
        return vms
      },
      migrate: (vm, to, opts) => {
        const bandwidthMiBps = this.config.placement.migrationBandwidthMiBps
        return this.migrateVm(vm, { to, ...opts, ...(bandwidthMiBps ? { bandwidthMiBps } : {}) })
      },
      migrationPhase: (id) => this.migrations?.list().find((m) => m.id === id)?.phase,
      // Cross-site moves weigh the bandwidth migrations measured between sites.
      siteLinks: () => {
        const links: Record<string, number> = {}
        for (const l of this.sites().links)
          if (l.from !== l.to && l.bandwidthMiBps) links[`${l.from}>${l.to}`] = l.bandwidthMiBps * 1048576
        return links
      },
      store: {
        load: () => this.requireStore().getMeta('placement'),
        save: (value) => this.requireStore().putMeta('placement', value),
      },
    })
    await this.placement.start()
  }

  /** The overlay: networks from config and the store, frames over libp2p, NICs of local VMs. */
  private async startOverlay(): Promise<void> {
    const gossip = this.requireGossip()
    const store = this.requireStore()
    this.overlay = new OverlayService({
      self: this.peerId,
      host: this.requireHost(),
      logger: this.log.child({ component: 'overlay' }),
      metrics: this.metrics,
      networks: this.config.networks,
      dialTimeoutMs: this.config.dialTimeoutMs,
      metadata: (vm) => this.vmMetadata(vm),
      store: {
        load: () => store.getMeta('overlay'),
        save: (snapshot) => store.putMeta('overlay', snapshot),
      },
      gossip: {
        hosts: () => gossip.hosts(),
        where: (vmId) => gossip.where(vmId),
        subscribe: (fn) => {
          gossip.state.on('host:update', fn)
          return () => gossip.state.off('host:update', fn)
        },
        notifyChanged: () => gossip.notifyChanged(),
      },
    })
    await this.overlay.start()
    // VMs resumed before the overlay started get their NICs back.
    for (const [id, instance] of this.instances)
      this.overlay.plug(id, () => instance.state === 'running', instance.nicSocket)
  }

  /** What a local VM reads at 169.254.169.254: its virtual cluster context (context.json) if it has one. */
  private async vmMetadata(vm: MetadataCaller): Promise<VmMetadata> {
    const base = { ...vm, name: this.records.get(vm.vmId)?.name ?? vm.vmId }
    const ctx =
      this.vclusters?.vmContext(vm.vmId) ??
      (await readFile(join(this.vmDir(vm.vmId), 'context.json'), 'utf8').then(
        (s) => JSON.parse(s) as unknown,
        () => undefined,
      ))
    return metadataFromContext(base, ctx)
  }

  /** What the metadata service (169.254.169.254) answers a local VM on its first NIC. */
  async vmMetadataOf(id: string): Promise<VmMetadata> {
    this.requireRecord(id)
    const nic = this.requireOverlay().nicsOf(id)[0]
    if (!nic)
      throw new AgentError('INVALID_STATE', `VM ${id} has no NIC: nothing reaches the metadata service`)
    return this.vmMetadata({ vmId: id, network: nic.network, mac: nic.mac, ip: nic.ip })
  }

  private overlayCall<T>(fn: () => T): T {
    try {
      return fn()
    } catch (err) {
      if (err instanceof OverlayError) throw new AgentError(err.code, err.message, err.details)
      throw err
    }
  }

  private withNics(rec: VmRecord): VmRecord {
    const nics = this.overlay?.nicsOf(rec.id)
    return nics?.length ? { ...rec, nics: nics.map(({ network, mac, ip }) => ({ network, mac, ip })) } : rec
  }

  private requireOverlay(): OverlayService {
    if (!this.overlay) throw new AgentError('NOT_RUNNING', 'the agent is not started')
    return this.overlay
  }

  /** What gossip publishes about this host. */
  private localState(): LocalHostState {
    let cpuLoad = 0
    const vms = []
    // Every VM of the registry, crashed ones too: the mesh should know where a crashed VM's disk is.
    for (const r of this.records.values()) {
      const stats = this.instances.get(r.id)?.stats()
      cpuLoad += stats?.cpu ?? 0
      vms.push({
        id: r.id,
        name: r.name,
        vcpus: r.vcpus,
        memoryMiB: r.memoryMiB,
        diskMiB: r.diskMiB,
        cpu: stats?.cpu ?? 0,
        dirtyMiBps: stats?.dirtyMiBps ?? 0,
        state: r.state,
        epoch: r.epoch,
      })
    }
    return {
      site: this.config.site,
      capacity: { ...this.config.capacity },
      used: this.used(),
      cpuLoad,
      vms,
      agentVersion: VERSION,
      addrs: this.addrs(),
      overlay: this.overlay?.announcement(),
      sites: this.siteMeter?.encode(),
      images: this.images.gossiped(),
    }
  }

  /** Sites of the hosts gossip knows, refreshed at most once a second (gossipsub asks per peer). */
  private siteCache = { at: 0, sites: new Map<string, string>() }

  private sameSite(peerId: string): boolean {
    const now = Date.now()
    if (now - this.siteCache.at > 1000 && this.gossip) {
      const sites = new Map<string, string>()
      for (const m of this.gossip.members()) if (m.site) sites.set(m.peerId, m.site)
      for (const h of this.gossip.hosts()) if (h.site) sites.set(h.peerId, h.site)
      this.siteCache = { at: now, sites }
    }
    return this.siteCache.sites.get(peerId) === this.config.site
  }

  private siteOf(peerId: string): string | undefined {
    if (peerId === this.peerId) return this.config.site
    const g = this.gossip
    if (!g) return undefined
    return (
      g.hosts().find((h) => h.peerId === peerId)?.site ||
      g.members().find((m) => m.peerId === peerId)?.site ||
      undefined
    )
  }

  private *rtts(): Iterable<[string, number]> {
    const g = this.gossip
    if (!g) return
    for (const m of g.members()) {
      if (m.self || m.status !== 'alive') continue
      const ms = g.swim.rtt(m.peerId)
      if (ms !== undefined) yield [m.peerId, ms]
    }
  }

  private addrs(): string[] {
    return this.requireHost()
      .getMultiaddrs()
      .map((a) => a.toString())
  }

  private used(): Resources {
    let vcpus = 0
    let memoryMiB = 0
    let diskMiB = 0
    for (const r of this.records.values()) {
      if (!HOLDS_RESOURCES.has(r.state)) continue
      vcpus += r.vcpus
      memoryMiB += r.memoryMiB
      diskMiB += r.diskMiB
    }
    const held = this.migrations?.reserved()
    return {
      vcpus: vcpus + (held?.vcpus ?? 0),
      memoryMiB: memoryMiB + (held?.memoryMiB ?? 0),
      diskMiB: diskMiB + (held?.diskMiB ?? 0),
    }
  }

  /** On start: resume what a clean stop suspended; a VM that was live when the agent died is crashed. */
  private async recoverVms(): Promise<void> {
    const driver = this.requireDriver()
    for (const rec of await this.requireStore().listVms()) {
      const stored = rec as StoredVm
      this.records.set(stored.id, stored)
      const dir = this.vmDir(stored.id)
      if (stored.state === 'suspended' && (await driver.hasSuspendImage(dir))) {
        try {
          const instance = await driver.restore(specOf(stored), { dir })
          if (stored.resumeState === 'paused') await instance.pause()
          this.adopt(instance)
          await this.saveRecord({ ...stored, state: instance.state, resumeState: undefined })
          this.log.info({ vm: stored.id, name: stored.name }, 'VM resumed')
          continue
        } catch (err) {
          this.log.error(
            { vm: stored.id, err: (err as Error).message },
            'VM could not be resumed; marked crashed',
          )
        }
      }
      if ((stored.state === 'running' || stored.state === 'paused') && driver.attach) {
        // A guest that outlives the agent (qemu): take it back if it still runs
        try {
          const instance = await driver.attach(specOf(stored), { dir })
          if (instance) {
            this.adopt(instance)
            await this.saveRecord({ ...stored, state: instance.state, resumeState: undefined })
            this.log.info({ vm: stored.id, name: stored.name, state: instance.state }, 'VM re-attached')
            continue
          }
          this.log.warn({ vm: stored.id, name: stored.name }, 'VM process gone while the agent was down')
        } catch (err) {
          this.log.error({ vm: stored.id, err: (err as Error).message }, 'VM could not be re-attached')
        }
      }
      if (stored.state !== 'stopped' && stored.state !== 'crashed') {
        await this.saveRecord({ ...stored, state: 'crashed', resumeState: undefined })
        this.log.warn(
          { vm: stored.id, name: stored.name, was: stored.state },
          'VM was live when the agent died: crashed',
        )
      }
    }
  }

  private adopt(instance: VmInstance): void {
    const id = instance.spec.id
    this.instances.set(id, instance)
    instance.onStateChange(() => {
      if (this.instances.get(id) === instance && !this.stopping) void this.syncState(id).catch(() => {})
    })
  }

  private async syncState(id: string): Promise<StoredVm> {
    const rec = this.requireRecord(id)
    const vm = this.instances.get(id)
    if (!vm || vm.state === rec.state) return rec
    const next = { ...rec, state: vm.state }
    await this.saveRecord(next)
    return next
  }

  /** The MAC and address a guest with a real NIC configures: those of its first overlay NIC. */
  private guestNic(nic: NicRecord | undefined): { mac?: string; ip?: string } {
    if (!nic || !this.overlay) return {}
    const prefix = this.overlay.getNetwork(nic.network).subnet.split('/')[1]
    return { mac: nic.mac, ip: `${nic.ip}/${prefix}` }
  }

  private async saveRecord(rec: StoredVm): Promise<void> {
    const next = { ...rec, updatedAt: new Date().toISOString() }
    if (next.resumeState === undefined) delete next.resumeState
    await this.requireStore().putVm(next)
    this.records.set(rec.id, next)
    this.gossip?.notifyChanged()
  }

  private async writeAgentFile(): Promise<void> {
    const file = join(this.config.dataDir, AGENT_FILE)
    const body = { pid: process.pid, peerId: this.peerId, api: this.apiUrl, addrs: this.addrs() }
    await writeFile(`${file}.tmp`, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 })
    await rename(`${file}.tmp`, file)
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn)
    this.queue = run.catch(() => {})
    return run
  }

  private vmDir(id: string): string {
    return join(this.config.dataDir, 'vms', id)
  }

  private requireRecord(id: string): StoredVm {
    const rec = this.records.get(id)
    if (!rec) throw new AgentError('VM_NOT_FOUND', `no VM with id '${id}' on this host`)
    return rec
  }

  private requireInstance(id: string, what: string): VmInstance {
    const rec = this.requireRecord(id)
    const vm = this.instances.get(id)
    if (!vm) throw new AgentError('INVALID_STATE', `cannot ${what} VM ${id}: it is ${rec.state}`)
    return vm
  }

  private requireHost(): Host {
    if (!this.host) throw new AgentError('NOT_RUNNING', 'the agent is not started')
    return this.host
  }

  private withMigration(rec: VmRecord): VmRecord {
    const m = this.migrations?.activeFor(rec.id)
    if (!m) return rec
    return {
      ...rec,
      migration: {
        id: m.id,
        direction: m.direction,
        peer: m.direction === 'out' ? m.to : m.from,
        phase: m.phase,
      },
    }
  }

  private refuseWhileMigrating(id: string, what: string): void {
    const m = this.migrations?.activeFor(id)
    if (m) throw new AgentError('INVALID_STATE', `cannot ${what} VM ${id}: migration ${m.id} is in progress`)
  }

  private requireMigrations(): AgentMigrations {
    if (!this.migrations) throw new AgentError('NOT_RUNNING', 'the agent is not started')
    return this.migrations
  }

  private requireGossip(): Gossip {
    if (!this.gossip) throw new AgentError('NOT_RUNNING', 'the agent is not started')
    return this.gossip
  }

  /** The virtual-cluster context of a VM of this host (what its metadata service serves), or undefined. */
  vmContext(vmId: string): VmContext | undefined {
    return this.vclusters?.vmContext(vmId)
  }

  private requireVclusters(): Vclusters {
    if (!this.vclusters) throw new AgentError('NOT_RUNNING', 'the agent is not started')
    return this.vclusters
  }

  private requireStore(): Store {
    if (!this.store) throw new AgentError('NOT_RUNNING', 'the agent is not started')
    return this.store
  }

  private requireDriver(): VmDriver {
    if (!this.driver) throw new AgentError('NOT_RUNNING', 'the agent is not started')
    return this.driver
  }
}

function publicRecord(rec: StoredVm): VmRecord {
  const { resumeState: _omit, ...pub } = rec
  return pub
}

function specOf(rec: VmRecord): VmSpec {
  return {
    id: rec.id,
    name: rec.name,
    vcpus: rec.vcpus,
    memoryMiB: rec.memoryMiB,
    diskMiB: rec.diskMiB,
    workload: rec.workload,
  }
}

function fillWorkload(req: CreateVmRequest): WorkloadSpec {
  const w = req.workload ?? {}
  const workload: WorkloadSpec = {
    dirtyMiBps: w.dirtyMiBps ?? 0,
    hotSetMiB: w.hotSetMiB ?? Math.min(64, req.memoryMiB),
    cpu: w.cpu ?? 0,
    diskWriteMiBps: w.diskWriteMiBps ?? 0,
  }
  if (workload.hotSetMiB > req.memoryMiB) {
    throw new AgentError(
      'BAD_REQUEST',
      `workload.hotSetMiB: ${workload.hotSetMiB} is larger than memoryMiB ${req.memoryMiB}`,
      {
        field: 'workload.hotSetMiB',
      },
    )
  }
  if (workload.cpu > req.vcpus) {
    throw new AgentError('BAD_REQUEST', `workload.cpu: ${workload.cpu} is more than vcpus ${req.vcpus}`, {
      field: 'workload.cpu',
    })
  }
  return workload
}
