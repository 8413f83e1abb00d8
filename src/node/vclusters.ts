// Virtual clusters on the agent: `POST /v1/vclusters` places N VMs over the mesh (spread over the
// gossip view, all checked before anything starts), pushes the image to the chosen hosts first, creates
// each VM on its host (/skymesh/vcluster/1 for remote ones; any failure removes the VMs already made),
// then hands every VM its context: written to `context.json` in the VM's directory on its host and
// served by `GET /v1/vclusters/:name/context?vm=NAME` on the creating host and on every VM's host.
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
  spread,
  VCLUSTER_PROTOCOL,
  type VmContext,
} from '../images/index.js'
import { pb } from '../proto/index.js'
import type { CreateVclusterRequest } from './api/routes/images.js'
import { AgentError } from './errors.js'
import type { AgentImages } from './images.js'
import type { Host } from './p2p.js'
import type { Store } from './store.js'
import type { ClusterView, CreateVmRequest, VmRecord } from './types.js'

const MAX_MSG = 512 * 1024

export interface VclusterView {
  name: string
  image: string
  createdAt: string
  vms: ClusterVmEntry[]
  push?: { id: string; state: string; elapsedMs: number }
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
}

export class Vclusters {
  readonly #init: VclustersInit
  /** Clusters created here. */
  readonly #clusters = new Map<string, VclusterView>()
  /** Contexts of local VMs of any cluster (received from the creating host): cluster -> vm id -> context. */
  readonly #contexts = new Map<string, Map<string, VmContext>>()

  constructor(init: VclustersInit) {
    this.#init = init
  }

  async start(): Promise<void> {
    const saved = (await this.#init.store.getMeta<{ clusters: VclusterView[]; contexts: VmContext[] }>(
      'vclusters',
    )) ?? {
      clusters: [],
      contexts: [],
    }
    for (const c of saved.clusters) this.#clusters.set(c.name, c)
    for (const ctx of saved.contexts) this.#keepContext(ctx)
    await this.#init.host.handle(VCLUSTER_PROTOCOL, (s, c) => this.#serve(s, c), { maxInboundStreams: 32 })
  }

  async stop(): Promise<void> {
    await this.#init.host.unhandle(VCLUSTER_PROTOCOL).catch(() => {})
  }

  list(): VclusterView[] {
    return [...this.#clusters.values()]
  }

  get(name: string): VclusterView {
    const c = this.#clusters.get(name)
    if (!c) throw new AgentError('NOT_FOUND', `no virtual cluster '${name}' was created on this host`)
    return c
  }

  context(name: string, vm?: string): unknown {
    const c = this.#clusters.get(name)
    const local = this.#contexts.get(name)
    const all = c ? contexts(c.name, c.image, c.vms) : [...(local?.values() ?? [])]
    if (all.length === 0) throw new AgentError('NOT_FOUND', `no virtual cluster '${name}' known on this host`)
    if (vm === undefined) return { cluster: name, contexts: all }
    const one = all.find((x) => x.vm.name === vm || x.vm.id === vm)
    if (!one) throw new AgentError('NOT_FOUND', `no VM '${vm}' in virtual cluster '${name}' (as known here)`)
    return one
  }

  async create(req: CreateVclusterRequest): Promise<VclusterView> {
    if (this.#clusters.has(req.name))
      throw new AgentError('NAME_TAKEN', `a virtual cluster named '${req.name}' exists`)
    const svc = this.#init.images.requireService()
    const image = wrap(() => svc.store.resolve(req.image), 'image')
    if (!svc.store.isComplete(image))
      throw new AgentError('INVALID_STATE', `image: ${image.slice(0, 12)} is not complete on this host`, {
        field: 'image',
      })
    const imageMiB = Math.ceil(svc.store.manifest(image).size / 1048576)
    const shape = {
      vcpus: req.vcpus ?? 1,
      memoryMiB: req.memoryMiB ?? 64,
      diskMiB: req.diskMiB ?? Math.max(64, imageMiB),
    }
    if (shape.diskMiB < imageMiB)
      throw new AgentError(
        'BAD_REQUEST',
        `diskMiB: ${shape.diskMiB} MiB is smaller than the image (${imageMiB} MiB)`,
        { field: 'diskMiB' },
      )
    const view = this.#init.cluster()
    const hosts = view.hosts
      .filter((h) => (h.status === 'alive' || h.self) && h.capacity && h.used)
      .map((h) => ({
        peerId: h.peerId,
        site: h.site,
        freeMemoryMiB: h.capacity!.memoryMiB - h.used!.memoryMiB,
        freeDiskMiB: h.capacity!.diskMiB - h.used!.diskMiB,
        freeVcpus: h.capacity!.vcpus - h.used!.vcpus,
      }))
    // Refused before anything starts when it does not fit.
    const placement = wrap(() => spread(hosts, req.count, shape), 'count')
    const log = this.#init.logger
    log.info(
      { cluster: req.name, count: req.count, hosts: new Set(placement).size },
      'virtual cluster: placing',
    )

    // The image first, to every chosen host that lacks it (one pipelined push).
    const remote = [...new Set(placement)].filter((p) => p !== this.#init.self)
    let push: VclusterView['push']
    if (remote.length) {
      const started = wrap(() => svc.distribute(image, remote, 2), 'image')
      const done = await svc.pushDone(image)
      push = { id: started.id, state: done.state, elapsedMs: done.elapsedMs }
      const failed = done.hosts.filter((h) => h.state === 'failed')
      if (failed.length)
        throw new AgentError(
          'INVALID_STATE',
          `image: the push failed on ${failed.length} host(s); no VM was started`,
          { failed: failed.map((h) => h.peerId) },
        )
    }

    const vms: ClusterVmEntry[] = []
    try {
      for (let i = 0; i < placement.length; i++) {
        const host = placement[i]!
        const vmReq: CreateVmRequest = {
          name: `${req.name}-${i}`,
          ...shape,
          image,
          ...(req.network ? { networks: [req.network] } : {}),
        }
        const rec =
          host === this.#init.self
            ? await this.#init.createVm(vmReq)
            : await this.#remoteCreate(host, req.name, vmReq)
        vms.push({
          index: i,
          name: rec.name,
          id: rec.id,
          host,
          role: i === 0 ? 'head' : 'worker',
          ...(rec.nics?.[0] ? { ip: rec.nics[0].ip } : {}),
        })
      }
    } catch (err) {
      // Not half-created: the VMs made so far go away again.
      log.warn(
        { cluster: req.name, err: (err as Error).message, made: vms.length },
        'virtual cluster failed; removing its VMs',
      )
      await Promise.allSettled(vms.map((v) => this.#deleteVm(v)))
      throw err
    }
    const cluster: VclusterView = {
      name: req.name,
      image,
      createdAt: new Date().toISOString(),
      vms,
      ...(push ? { push } : {}),
    }
    this.#clusters.set(cluster.name, cluster)
    for (const ctx of contexts(cluster.name, image, vms)) {
      if (ctx.vm.host === this.#init.self) await this.#deliver(ctx)
      else
        await this.#rpc(ctx.vm.host, {
          context: { vmId: ctx.vm.id, contextJson: JSON.stringify(ctx) },
        }).catch((err: unknown) =>
          log.warn({ vm: ctx.vm.id, err: (err as Error).message }, 'context not delivered'),
        )
    }
    await this.#save()
    log.info({ cluster: cluster.name, vms: vms.length }, 'virtual cluster up')
    return cluster
  }

  async delete(name: string): Promise<void> {
    const c = this.get(name)
    await Promise.allSettled(c.vms.map((v) => this.#deleteVm(v)))
    this.#clusters.delete(name)
    this.#contexts.delete(name)
    await this.#save()
  }

  async #deleteVm(v: ClusterVmEntry): Promise<void> {
    if (v.host === this.#init.self) await this.#init.deleteVm(v.id)
    else await this.#rpc(v.host, { deleteVm: v.id })
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

  async #rpc(peer: string, req: Parameters<typeof pb.VclusterRequest.encode>[0]) {
    const signal = AbortSignal.timeout(120_000)
    const stream = await this.#init.host.dialProtocol(peerIdFromString(peer), VCLUSTER_PROTOCOL, { signal })
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_MSG })
      await lp.write(pb.VclusterRequest.encode(req).finish(), { signal })
      const res = pb.VclusterResponse.decode((await lp.read({ signal })).subarray())
      await stream.close({ signal }).catch(() => {})
      if (!res.ok)
        throw new AgentError(
          (res.code as 'BAD_REQUEST') || 'INTERNAL',
          `host ${peer.slice(-6)}: ${res.message}`,
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
    try {
      const req = pb.VclusterRequest.decode((await lp.read({ signal })).subarray())
      let vmJson = ''
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
        const ctx = JSON.parse(req.context.contextJson ?? '') as VmContext
        if (ctx.vm?.id !== req.context.vmId || ctx.vm.host !== this.#init.self)
          throw new AgentError('BAD_REQUEST', 'context is not of a VM of this host')
        await this.#deliver(ctx)
        await this.#save()
      } else if (req.deleteVm) {
        await this.#init.deleteVm(req.deleteVm)
      } else throw new AgentError('BAD_REQUEST', 'unknown request')
      await lp.write(pb.VclusterResponse.encode({ ok: true, vmJson }).finish(), { signal })
      await stream.close({ signal }).catch(() => {})
    } catch (err) {
      const code = err instanceof AgentError ? err.code : 'INTERNAL'
      await lp
        .write(pb.VclusterResponse.encode({ ok: false, code, message: (err as Error).message }).finish(), {
          signal,
        })
        .catch(() => {})
      await stream.close({ signal }).catch(() => stream.abort(err as Error))
    }
  }

  /** Writes the context where the VM's software finds it, and keeps it to serve by API. */
  async #deliver(ctx: VmContext): Promise<void> {
    await writeFile(join(this.#init.vmDir(ctx.vm.id), 'context.json'), `${JSON.stringify(ctx, null, 2)}\n`)
    this.#keepContext(ctx)
  }

  #keepContext(ctx: VmContext): void {
    const m = this.#contexts.get(ctx.cluster) ?? new Map<string, VmContext>()
    m.set(ctx.vm.id, ctx)
    this.#contexts.set(ctx.cluster, m)
  }

  async #save(): Promise<void> {
    const ctxs = [...this.#contexts.values()].flatMap((m) => [...m.values()])
    await this.#init.store.putMeta('vclusters', { clusters: [...this.#clusters.values()], contexts: ctxs })
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
