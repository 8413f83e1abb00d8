// Virtual clusters on the agent. `POST /v1/vclusters` checks the spec and places all N VMs over the
// gossip view (src/images placeVms over the placement core's arithmetic: --spread or --pack, --site);
// a cluster that does not fit is refused there, before anything starts. Then, in the background, it
// pushes the image to the chosen hosts that lack it (one pipelined push), creates each VM on its host
// (/skymesh/vcluster/1 for remote ones; any failure removes the VMs already made: never half-created)
// and hands every VM its context: written to `context.json` in the VM's directory on its host, served
// by `GET /v1/vclusters/:name/context?vm=NAME` there and on the creating host, and by `vmContext(vmId)`
// to the overlay's metadata responder (169.254.169.254). `GET /v1/vclusters/:name` shows the progress
// (phase, push, VMs running) until the state is `running`. Scaling adds VMs the same way or removes the
// last ones, and gives every VM its new context (its peers changed).
//
// A context moves with its VM. When a migration's offer reaches the destination, the destination asks
// the source for the VM's context (get_context, answered only for a VM migrating to the asker) and
// keeps it before it reserves anything: the context is there before any byte of the VM, so a source
// that dies after the handover takes nothing with it. On arrival it becomes the VM's context there
// (context.json in its new directory); the source forgets it when the VM leaves. The creating host
// follows its VMs by the gossiped location table (and a host a VM left names where it went), so
// scale and rm find a VM that moved.
//
// A scale while a VM moves: the creating host hands the new context to where it thinks the VM is. A
// host the VM is migrating away from keeps it and passes it on to the destination (which keeps it
// for the VM's arrival, or as its context if it arrived already); a host the VM left passes it on to
// where it went. Contexts carry the cluster's revision and every host keeps the newest it got, so the
// copy the destination fetched when the offer came never overwrites a newer one.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Connection, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import type { Logger } from 'pino'
import {
  type ClusterVmEntry,
  contexts,
  ImagesError,
  type PlacementHost,
  type PlacementMode,
  type PushView,
  placeVms,
  VCLUSTER_PROTOCOL,
  type VmContext,
  type VmShape,
} from '../images/index.js'
import { pb } from '../proto/index.js'
import type { CreateVclusterRequest } from './api/routes/images.js'
import { AgentError } from './errors.js'
import type { AgentImages } from './images.js'
import type { Host } from './p2p.js'
import type { Store } from './store.js'
import type { ClusterView, CreateVmRequest, VmRecord } from './types.js'

const MAX_MSG = 512 * 1024
/** VMs created at once while a cluster comes up. */
const CREATE_CONCURRENCY = 4

export type VclusterState = 'creating' | 'scaling' | 'running' | 'failed'
export type VclusterPhase = 'pushing' | 'starting' | 'contexts' | 'removing' | 'done'

export interface VclusterProgress {
  phase: VclusterPhase
  /** VMs the cluster is to have, and how many of them run now. */
  want: number
  running: number
  push?: { id: string; state: string; hosts: number; done: number; elapsedMs: number }
}

export interface VclusterSpec extends VmShape {
  placement: PlacementMode
  site?: string
  network?: string
  userData?: string
}

export interface VclusterView {
  name: string
  image: string
  createdAt: string
  state: VclusterState
  error?: string
  /** Times this host handed the cluster's contexts (each context carries it as its revision). */
  contextRevision?: number
  spec: VclusterSpec
  progress: VclusterProgress
  vms: ClusterVmEntry[]
}

export interface VclustersInit {
  self: string
  host: Host
  logger: Logger
  store: Store
  images: AgentImages
  cluster(): ClusterView
  isMember(peerId: string): boolean
  createVm(req: CreateVmRequest): Promise<VmRecord>
  deleteVm(id: string): Promise<void>
  vmDir(id: string): string
  /** Where gossip's location table puts a VM now (it may have migrated since the cluster placed it). */
  where?(vmId: string): { host: string; status: string } | undefined
  /** The host an outgoing migration of a local VM goes to, while one runs. */
  migratingTo?(vmId: string): string | undefined
}

/** VMs that left this host, remembered to tell a creating host where they went. */
const MOVED_KEEP = 1024
/** A context passed on from host to host (the VM moved on) at most this many times. */
const MAX_CONTEXT_HOPS = 4

export class Vclusters {
  readonly #init: VclustersInit
  /** Clusters created here. */
  readonly #clusters = new Map<string, VclusterView>()
  /** The push a cluster waits for (live progress). */
  readonly #pushes = new Map<string, PushView>()
  /** Contexts of local VMs of any cluster (received from the creating host): cluster -> vm id -> context. */
  readonly #contexts = new Map<string, Map<string, VmContext>>()
  /** Contexts of VMs migrating here, fetched from the source when the offer came: vm id -> context. */
  readonly #incoming = new Map<string, VmContext>()
  /** VMs whose context is being fetched from their source (an offer came): vm id -> fetches. */
  readonly #fetching = new Map<string, number>()
  /** VMs that migrated away from here: vm id -> destination. */
  readonly #movedTo = new Map<string, string>()
  /** Background jobs (create, scale), awaited on stop. */
  readonly #jobs = new Set<Promise<void>>()

  constructor(init: VclustersInit) {
    this.#init = init
  }

  async start(): Promise<void> {
    const saved = (await this.#init.store.getMeta<{
      clusters: VclusterView[]
      contexts: VmContext[]
      incoming?: VmContext[]
    }>('vclusters')) ?? { clusters: [], contexts: [] }
    for (const c of saved.clusters) {
      // A job cut by a restart: the cluster keeps the VMs it had (rm removes them, scale retries).
      if (c.state === 'creating' || c.state === 'scaling') {
        c.state = 'failed'
        c.error = 'the agent restarted while the cluster was being changed'
      }
      c.spec ??= { vcpus: 1, memoryMiB: 64, diskMiB: 64, placement: 'spread' }
      c.progress ??= { phase: 'done', want: c.vms.length, running: c.vms.length }
      this.#clusters.set(c.name, c)
    }
    for (const ctx of saved.contexts) this.#keepContext(ctx)
    for (const ctx of saved.incoming ?? []) this.#incoming.set(ctx.vm.id, ctx)
    // small control messages (a VM's context when it migrates): relayed connections carry them too
    await this.#init.host.handle(VCLUSTER_PROTOCOL, (s, c) => this.#serve(s, c), {
      maxInboundStreams: 32,
      runOnLimitedConnection: true,
    })
  }

  async stop(): Promise<void> {
    await this.#init.host.unhandle(VCLUSTER_PROTOCOL).catch(() => {})
    await Promise.allSettled([...this.#jobs])
  }

  list(): VclusterView[] {
    return [...this.#clusters.values()].map((c) => {
      this.#follow(c)
      return this.#withPush(c)
    })
  }

  get(name: string): VclusterView {
    const c = this.#clusters.get(name)
    if (!c) throw new AgentError('NOT_FOUND', `no virtual cluster '${name}' was created on this host`)
    this.#follow(c)
    return this.#withPush(c)
  }

  /**
   * The context of a VM that runs on this host, for the metadata service its guest queries
   * (169.254.169.254), or undefined if the VM is in no virtual cluster known here.
   */
  vmContext(vmId: string): VmContext | undefined {
    for (const m of this.#contexts.values()) {
      const ctx = m.get(vmId)
      if (ctx) return ctx
    }
    // Arrived, but the agent stopped before the context was filed as the VM's (see arrived()).
    return this.#incoming.get(vmId)
  }

  // --- migrations: the context moves with its VM ---

  /**
   * Destination, when a migration's offer comes in: fetches the VM's context from the source and keeps
   * it (stored) before anything else happens. Throws if the source does not answer: the migration is
   * then refused and the VM stays where it is, with its context.
   */
  async fetchIncoming(vmId: string, from: string, signal?: AbortSignal): Promise<void> {
    // Meanwhile, a newer context the source passes on (a scale) is kept for the arrival
    this.#fetching.set(vmId, (this.#fetching.get(vmId) ?? 0) + 1)
    try {
      const res = await this.#rpc(from, { getContext: vmId }, signal)
      const json = res.contextJson ?? ''
      if (json === '') {
        if (this.#incoming.delete(vmId)) await this.#save()
        return
      }
      const ctx = parseContext(json)
      if (ctx.vm.id !== vmId) throw new AgentError('BAD_REQUEST', `the context sent is not VM ${vmId}'s`)
      this.#keepIncoming(ctx)
      await this.#save()
    } finally {
      const n = (this.#fetching.get(vmId) ?? 1) - 1
      if (n > 0) this.#fetching.set(vmId, n)
      else this.#fetching.delete(vmId)
    }
  }

  /** A context for a VM migrating here: kept for its arrival, unless an as new one is kept already. */
  #keepIncoming(ctx: VmContext): boolean {
    const cur = this.#incoming.get(ctx.vm.id)
    if (cur && (cur.revision ?? 0) > (ctx.revision ?? 0)) return false
    this.#incoming.set(ctx.vm.id, { ...ctx, vm: { ...ctx.vm, host: this.#init.self } })
    return true
  }

  /**
   * A context handed to this host (by the creating host, or passed on by the VM's previous host). A VM
   * migrating here keeps it for its arrival; a VM of this host gets it (and, while it migrates away,
   * its destination too); a VM that left has it passed on to where it went.
   */
  async #receiveContext(ctx: VmContext, hops: number): Promise<void> {
    const id = ctx.vm.id
    if (this.#fetching.has(id) || this.#incoming.has(id)) {
      if (this.#keepIncoming(ctx)) await this.#save()
      return
    }
    const moved = this.#movedTo.get(id)
    const to = moved ?? this.#init.migratingTo?.(id)
    if (!moved) {
      if (ctx.vm.host !== this.#init.self && !to)
        throw new AgentError('BAD_REQUEST', 'context is not of a VM of this host')
      const here = this.#deliver({ ...ctx, vm: { ...ctx.vm, host: this.#init.self } }).then(() =>
        this.#save(),
      )
      // while the VM leaves, its directory may go at any time: the destination's copy is what counts
      if (to) await here.catch(() => undefined)
      else await here
    }
    if (!to) return
    if (hops >= MAX_CONTEXT_HOPS)
      throw new AgentError('INVALID_STATE', `context of VM ${id} passed on ${hops} times; dropped`)
    const next = { ...ctx, vm: { ...ctx.vm, host: to } }
    await this.#rpc(to, { context: { vmId: id, contextJson: JSON.stringify(next), hops: hops + 1 } })
    this.#init.logger.info({ vm: id, to, revision: ctx.revision }, "context passed on to the VM's new host")
  }

  /** Destination, once the VM is adopted: its fetched context becomes its context here. */
  async arrived(vmId: string): Promise<void> {
    this.#movedTo.delete(vmId)
    this.#relocate(vmId, this.#init.self)
    const ctx = this.#incoming.get(vmId)
    if (ctx) {
      this.#incoming.delete(vmId)
      await this.#deliver(ctx)
    }
    await this.#save()
  }

  /** Destination, a migration in that did not end here: the fetched context goes. */
  async incomingFailed(vmId: string): Promise<void> {
    if (this.#incoming.delete(vmId)) await this.#save()
  }

  /** Source, once the VM left: its context goes with it (its directory is removed by the agent). */
  async departed(vmId: string, to: string | undefined): Promise<void> {
    this.#dropContext(vmId)
    if (to) {
      this.#movedTo.set(vmId, to)
      if (this.#movedTo.size > MOVED_KEEP) this.#movedTo.delete(this.#movedTo.keys().next().value!)
      this.#relocate(vmId, to)
    }
    await this.#save()
  }

  context(name: string, vm?: string): unknown {
    const c = this.#clusters.get(name)
    const local = this.#contexts.get(name)
    const all = c
      ? contexts(c.name, c.image, c.vms, c.spec.userData, c.contextRevision)
      : [...(local?.values() ?? [])]
    if (all.length === 0) throw new AgentError('NOT_FOUND', `no virtual cluster '${name}' known on this host`)
    if (vm === undefined) return { cluster: name, contexts: all }
    const one = all.find((x) => x.vm.name === vm || x.vm.id === vm)
    if (!one) throw new AgentError('NOT_FOUND', `no VM '${vm}' in virtual cluster '${name}' (as known here)`)
    return one
  }

  /** Checks and places the whole cluster (refused here if it does not fit), then builds it in the background. */
  create(req: CreateVclusterRequest): VclusterView {
    if (this.#clusters.has(req.name))
      throw new AgentError('NAME_TAKEN', `a virtual cluster named '${req.name}' exists`)
    const svc = this.#init.images.requireService()
    const image = wrap(() => svc.store.resolve(req.image), 'image')
    if (!svc.store.isComplete(image))
      throw new AgentError('INVALID_STATE', `image: ${image.slice(0, 12)} is not complete on this host`, {
        field: 'image',
      })
    const imageMiB = Math.ceil(svc.store.manifest(image).size / 1048576)
    const spec: VclusterSpec = {
      vcpus: req.vcpus ?? 1,
      memoryMiB: req.memoryMiB ?? 64,
      diskMiB: req.diskMiB ?? Math.max(64, imageMiB),
      placement: req.placement ?? 'spread',
      ...(req.site !== undefined ? { site: req.site } : {}),
      ...(req.network !== undefined ? { network: req.network } : {}),
      ...(req.userData !== undefined ? { userData: req.userData } : {}),
    }
    if (spec.diskMiB < imageMiB)
      throw new AgentError(
        'BAD_REQUEST',
        `diskMiB: ${spec.diskMiB} MiB is smaller than the image (${imageMiB} MiB)`,
        { field: 'diskMiB' },
      )
    // Refused before anything starts when it does not fit.
    const hosts = this.#placement(req.count, spec, [])
    const cluster: VclusterView = {
      name: req.name,
      image,
      createdAt: new Date().toISOString(),
      state: 'creating',
      spec,
      progress: { phase: 'pushing', want: req.count, running: 0 },
      vms: [],
    }
    this.#clusters.set(cluster.name, cluster)
    this.#init.logger.info(
      { cluster: req.name, count: req.count, hosts: new Set(hosts).size, placement: spec.placement },
      'virtual cluster: placed',
    )
    this.#job(cluster, () => this.#grow(cluster, hosts))
    return this.get(cluster.name)
  }

  /** Grows or shrinks a cluster to `count` VMs (growth placed and checked first, like a creation). */
  scale(name: string, count: number): VclusterView {
    const c = this.#clusters.get(name)
    if (!c) throw new AgentError('NOT_FOUND', `no virtual cluster '${name}' was created on this host`)
    if (c.state === 'creating' || c.state === 'scaling')
      throw new AgentError('INVALID_STATE', `virtual cluster '${name}' is ${c.state}: wait until it is done`)
    if (!Number.isInteger(count) || count < 1)
      throw new AgentError('BAD_REQUEST', 'count: an integer >= 1', { field: 'count' })
    this.#follow(c)
    const have = c.vms.length
    if (count === have) return this.get(name)
    if (count > have) {
      const hosts = this.#placement(count - have, c.spec, c.vms)
      c.state = 'scaling'
      c.error = undefined
      c.progress = { phase: 'pushing', want: count, running: have }
      this.#job(c, () => this.#grow(c, hosts))
    } else {
      c.state = 'scaling'
      c.error = undefined
      c.progress = { phase: 'removing', want: count, running: have }
      this.#job(c, () => this.#shrink(c, count))
    }
    return this.get(name)
  }

  async delete(name: string): Promise<void> {
    const c = this.#clusters.get(name)
    if (!c) throw new AgentError('NOT_FOUND', `no virtual cluster '${name}' was created on this host`)
    if (c.state === 'creating' || c.state === 'scaling')
      throw new AgentError('INVALID_STATE', `virtual cluster '${name}' is ${c.state}: wait until it is done`)
    const results = await Promise.allSettled(c.vms.map((v) => this.#deleteVm(v)))
    const failed = c.vms.filter((_, i) => results[i]!.status === 'rejected')
    if (failed.length) {
      c.vms = failed
      await this.#save()
      throw new AgentError(
        'INTERNAL',
        `${failed.length} VM(s) of '${name}' could not be removed; try again`,
        {
          vms: failed.map((v) => v.name),
        },
      )
    }
    this.#clusters.delete(name)
    this.#contexts.delete(name)
    await this.#save()
  }

  // --- jobs ---

  #job(c: VclusterView, fn: () => Promise<void>): void {
    const p = fn()
      .then(() => {
        c.state = 'running'
        c.progress.phase = 'done'
      })
      .catch((err: unknown) => {
        c.state = 'failed'
        c.error = (err as Error).message
        this.#init.logger.warn({ cluster: c.name, err: c.error }, 'virtual cluster job failed')
      })
      .finally(async () => {
        this.#pushes.delete(c.name)
        this.#jobs.delete(p)
        await this.#save().catch(() => {})
      })
    this.#jobs.add(p)
  }

  /** Adds one VM per entry of `hosts` (next indices), then gives every VM its context. */
  async #grow(c: VclusterView, hosts: string[]): Promise<void> {
    const svc = this.#init.images.requireService()
    const log = this.#init.logger
    // The image first, to every chosen host that lacks it (one pipelined push).
    const remote = [...new Set(hosts)].filter((p) => p !== this.#init.self)
    if (remote.length) {
      c.progress.phase = 'pushing'
      const push = await wrapAsync(() => svc.push(c.image, remote), 'image')
      this.#pushes.set(c.name, push.view)
      const done = await push.done
      const failed = done.hosts.filter((h) => h.state === 'failed')
      if (failed.length)
        throw new AgentError(
          'INVALID_STATE',
          `image: the push failed on ${failed.length} host(s); no VM was started`,
          { failed: failed.map((h) => h.peerId) },
        )
    }
    c.progress.phase = 'starting'
    const first = c.vms.reduce((m, v) => Math.max(m, v.index + 1), 0)
    const made: ClusterVmEntry[] = []
    try {
      let next = 0
      const worker = async () => {
        while (next < hosts.length) {
          const k = next++
          const index = first + k
          const host = hosts[k]!
          const req: CreateVmRequest = {
            name: `${c.name}-${index}`,
            vcpus: c.spec.vcpus,
            memoryMiB: c.spec.memoryMiB,
            diskMiB: c.spec.diskMiB,
            image: c.image,
            ...(c.spec.network ? { networks: [c.spec.network] } : {}),
          }
          const rec =
            host === this.#init.self
              ? await this.#init.createVm(req)
              : await this.#remoteCreate(host, c.name, req)
          const entry: ClusterVmEntry = {
            index,
            name: rec.name,
            id: rec.id,
            host,
            role: index === 0 ? 'head' : 'worker',
            ...(rec.nics?.[0] ? { ip: rec.nics[0].ip } : {}),
          }
          made.push(entry)
          c.progress.running++
        }
      }
      await Promise.all(Array.from({ length: Math.min(CREATE_CONCURRENCY, hosts.length) }, worker))
    } catch (err) {
      // Not half-created: the VMs this job made go away again.
      log.warn(
        { cluster: c.name, err: (err as Error).message, made: made.length },
        'virtual cluster: a VM could not be created; removing the ones this step made',
      )
      await Promise.allSettled(made.map((v) => this.#deleteVm(v)))
      c.progress.running = c.vms.length
      throw err
    }
    c.vms = [...c.vms, ...made].sort((a, b) => a.index - b.index)
    await this.#save()
    await this.#handContexts(c)
    log.info({ cluster: c.name, vms: c.vms.length }, 'virtual cluster up')
  }

  /** Removes the VMs of the highest indices until `count` remain, then refreshes the contexts. */
  async #shrink(c: VclusterView, count: number): Promise<void> {
    const sorted = [...c.vms].sort((a, b) => a.index - b.index)
    const gone = sorted.slice(count)
    for (const v of gone) {
      await this.#deleteVm(v)
      c.vms = c.vms.filter((x) => x.id !== v.id)
      c.progress.running = c.vms.length
      await this.#save()
    }
    await this.#handContexts(c)
  }

  /** Every VM's context (peers and all) to the VM's host. */
  async #handContexts(c: VclusterView): Promise<void> {
    c.progress.phase = 'contexts'
    this.#follow(c)
    const log = this.#init.logger
    c.contextRevision = (c.contextRevision ?? 0) + 1
    await Promise.all(
      contexts(c.name, c.image, c.vms, c.spec.userData, c.contextRevision).map(async (ctx) => {
        // here (or migrating away from here, or gone from here: passed on to where it went)
        const sent =
          ctx.vm.host === this.#init.self
            ? this.#receiveContext(ctx, 0)
            : this.#rpc(ctx.vm.host, { context: { vmId: ctx.vm.id, contextJson: JSON.stringify(ctx) } })
        await sent.catch((err: unknown) =>
          log.warn({ vm: ctx.vm.id, err: (err as Error).message }, 'context not delivered'),
        )
      }),
    )
    await this.#save()
  }

  #placement(count: number, spec: VclusterSpec, existing: readonly ClusterVmEntry[]): string[] {
    const view = this.#init.cluster()
    const perHost = new Map<string, number>()
    for (const v of existing) perHost.set(v.host, (perHost.get(v.host) ?? 0) + 1)
    const hosts: PlacementHost[] = view.hosts
      .filter((h) => (h.status === 'alive' || h.self) && h.capacity && h.used)
      .map((h) => ({
        peerId: h.peerId,
        site: h.site,
        capacity: { cpu: h.capacity!.vcpus, mem: h.capacity!.memoryMiB, disk: h.capacity!.diskMiB },
        used: { cpu: h.used!.vcpus, mem: h.used!.memoryMiB, disk: h.used!.diskMiB },
        clusterVms: perHost.get(h.peerId) ?? 0,
      }))
    return wrap(
      () =>
        placeVms(hosts, count, spec, {
          mode: spec.placement,
          ...(spec.site !== undefined ? { site: spec.site } : {}),
        }),
      'count',
    )
  }

  #withPush(c: VclusterView): VclusterView {
    const p = this.#pushes.get(c.name)
    if (!p) return { ...c, progress: { ...c.progress } }
    const hosts = p.hosts.filter((h) => h.state !== 'skipped')
    return {
      ...c,
      progress: {
        ...c.progress,
        push: {
          id: p.id,
          state: p.state,
          hosts: hosts.length,
          done: hosts.filter((h) => h.state === 'done').length,
          elapsedMs: p.elapsedMs,
        },
      },
    }
  }

  /**
   * Removes a VM of a cluster wherever it runs now: where gossip puts it, else where it was; a host it
   * left names where it went. Not found where it was last seen: it is gone.
   */
  async #deleteVm(v: ClusterVmEntry): Promise<void> {
    this.#locate(v)
    const tried = new Set<string>()
    while (!tried.has(v.host)) {
      tried.add(v.host)
      if (v.host === this.#init.self) {
        const found = await this.#init.deleteVm(v.id).then(
          () => true,
          (err: unknown) => {
            if ((err as AgentError).code !== 'VM_NOT_FOUND') throw err
            return false
          },
        )
        this.#dropContext(v.id)
        const to = this.#movedTo.get(v.id)
        if (found || !to) return
        v.host = to
        continue
      }
      try {
        await this.#rpc(v.host, { deleteVm: v.id })
        return
      } catch (err) {
        const e = err as AgentError
        if (e.code !== 'VM_NOT_FOUND') throw err
        const to = e.details?.movedTo
        if (typeof to !== 'string' || to === '') return
        v.host = to
      }
    }
  }

  /** The VM's host as gossip's location table has it now (a VM may have migrated). */
  #locate(v: ClusterVmEntry): boolean {
    const loc = this.#init.where?.(v.id)
    if (!loc || loc.host === v.host || loc.status !== 'ok') return false
    v.host = loc.host
    return true
  }

  /** Follows the cluster's VMs to where they run now; stores the cluster if any moved. */
  #follow(c: VclusterView): void {
    let moved = false
    for (const v of c.vms) moved = this.#locate(v) || moved
    if (moved) void this.#save().catch(() => {})
  }

  /** A VM of a cluster created here now runs on `host`. */
  #relocate(vmId: string, host: string): void {
    for (const c of this.#clusters.values()) for (const v of c.vms) if (v.id === vmId) v.host = host
  }

  async #remoteCreate(host: string, cluster: string, r: CreateVmRequest): Promise<VmRecord> {
    const res = await this.#rpc(host, {
      create: {
        cluster,
        name: r.name,
        imageId: Buffer.from(r.image!, 'hex'),
        vcpus: r.vcpus,
        memoryMib: r.memoryMiB,
        diskMib: r.diskMiB,
        networks: r.networks ?? [],
      },
    })
    return JSON.parse(res.vmJson ?? '{}') as VmRecord
  }

  async #rpc(peer: string, req: Parameters<typeof pb.VclusterRequest.encode>[0], outer?: AbortSignal) {
    const signal = outer
      ? AbortSignal.any([outer, AbortSignal.timeout(120_000)])
      : AbortSignal.timeout(120_000)
    const stream = await this.#init.host.dialProtocol(peerIdFromString(peer), VCLUSTER_PROTOCOL, {
      signal,
      // a migration between two NATed hosts asks over their relayed connection
      runOnLimitedConnection: true,
    })
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_MSG })
      await lp.write(pb.VclusterRequest.encode(req).finish(), { signal })
      const res = pb.VclusterResponse.decode((await lp.read({ signal })).subarray())
      await stream.close({ signal }).catch(() => {})
      if (!res.ok)
        throw new AgentError(
          (res.code as 'BAD_REQUEST') || 'INTERNAL',
          `host ${peer.slice(-6)}: ${res.message}`,
          res.movedTo ? { movedTo: res.movedTo } : undefined,
        )
      return res
    } catch (err) {
      stream.abort(err as Error)
      throw err
    }
  }

  async #serve(stream: Stream, conn: Connection): Promise<void> {
    if (!this.#init.isMember(conn.remotePeer.toString())) {
      stream.abort(new Error('not a mesh member'))
      return
    }
    const lp = lpStream(stream, { maxDataLength: MAX_MSG })
    const signal = AbortSignal.timeout(120_000)
    const remote = conn.remotePeer.toString()
    let movedTo = ''
    try {
      const req = pb.VclusterRequest.decode((await lp.read({ signal })).subarray())
      let vmJson = ''
      let contextJson = ''
      if (req.create) {
        const c = req.create
        const rec = await this.#init.createVm({
          name: c.name ?? '',
          vcpus: c.vcpus ?? 1,
          memoryMiB: Number(c.memoryMib ?? 0),
          diskMiB: Number(c.diskMib ?? 0),
          image: Buffer.from(c.imageId ?? []).toString('hex'),
          ...((c.networks?.length ?? 0) > 0 ? { networks: (c.networks ?? []).slice(0, 16) } : {}),
        })
        vmJson = JSON.stringify(rec)
      } else if (req.context) {
        const ctx = parseContext(req.context.contextJson ?? '')
        if (ctx.vm.id !== req.context.vmId || typeof ctx.cluster !== 'string')
          throw new AgentError('BAD_REQUEST', 'context is not of a VM of this host')
        await this.#receiveContext(ctx, req.context.hops ?? 0)
      } else if (req.deleteVm) {
        const id = req.deleteVm
        // Not here: the asker is told where it went, if it left by migration.
        movedTo = this.#movedTo.get(id) ?? ''
        const gone = await this.#init.deleteVm(id).then(
          () => undefined,
          (err: unknown) => err as AgentError,
        )
        if (gone && gone.code !== 'VM_NOT_FOUND') throw gone
        this.#dropContext(id)
        await this.#save()
        if (gone) throw gone
      } else if (req.getContext) {
        // Only to the host the VM is migrating to: it is asking because our offer reached it.
        const id = req.getContext
        if (this.#init.migratingTo?.(id) !== remote)
          throw new AgentError('INVALID_STATE', `VM ${id} is not migrating to the asking host`)
        const ctx = this.vmContext(id)
        if (ctx) contextJson = JSON.stringify(ctx)
      } else throw new AgentError('BAD_REQUEST', 'unknown request')
      await lp.write(pb.VclusterResponse.encode({ ok: true, vmJson, contextJson }).finish(), { signal })
      await stream.close({ signal }).catch(() => {})
    } catch (err) {
      const code = err instanceof AgentError ? err.code : 'INTERNAL'
      const res = { ok: false, code, message: (err as Error).message, movedTo }
      await lp
        .write(pb.VclusterResponse.encode(res).finish(), {
          signal,
        })
        .catch(() => {})
      await stream.close({ signal }).catch(() => stream.abort(err as Error))
    }
  }

  /** Writes the context where the VM's software finds it, and keeps it to serve by API. */
  async #deliver(ctx: VmContext): Promise<void> {
    const cur = this.#contexts.get(ctx.cluster)?.get(ctx.vm.id)
    if (cur && (cur.revision ?? 0) > (ctx.revision ?? 0)) return // a newer one came first
    await writeFile(join(this.#init.vmDir(ctx.vm.id), 'context.json'), `${JSON.stringify(ctx, null, 2)}\n`)
    // a copy: the cluster record's entries change as VMs move, a VM's context only when it is handed
    this.#keepContext(structuredClone(ctx))
  }

  #keepContext(ctx: VmContext): void {
    const m = this.#contexts.get(ctx.cluster) ?? new Map<string, VmContext>()
    m.set(ctx.vm.id, ctx)
    this.#contexts.set(ctx.cluster, m)
  }

  #dropContext(vmId: string): void {
    for (const [name, m] of this.#contexts) {
      m.delete(vmId)
      if (m.size === 0) this.#contexts.delete(name)
    }
  }

  async #save(): Promise<void> {
    const ctxs = [...this.#contexts.values()].flatMap((m) => [...m.values()])
    await this.#init.store.putMeta('vclusters', {
      clusters: [...this.#clusters.values()],
      contexts: ctxs,
      incoming: [...this.#incoming.values()],
    })
  }
}

/** A context as it crosses the wire: JSON with the fields a context must have. */
function parseContext(json: string): VmContext {
  let ctx: VmContext
  try {
    ctx = JSON.parse(json) as VmContext
  } catch {
    throw new AgentError('BAD_REQUEST', 'context is not JSON')
  }
  if (
    !ctx ||
    typeof ctx.cluster !== 'string' ||
    typeof ctx.vm?.id !== 'string' ||
    typeof ctx.vm.host !== 'string' ||
    !Array.isArray(ctx.peers)
  )
    throw new AgentError('BAD_REQUEST', 'context lacks cluster, vm or peers')
  return ctx
}

async function wrapAsync<T>(fn: () => Promise<T>, field: string): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    if (err instanceof ImagesError)
      throw new AgentError(err.code, `${field}: ${err.message}`, { field, ...err.details })
    throw err
  }
}

function wrap<T>(fn: () => T, field: string): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof ImagesError)
      throw new AgentError(err.code, `${field}: ${err.message}`, { field, ...err.details })
    throw err
  }
}
