// The agent's glue for images (src/images): the image service on this host's libp2p node, its view
// of the mesh from gossip, and the API methods (images, pushes, virtual clusters).
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { Gossip } from '../gossip/index.js'
import {
  type ImageBase,
  ImageService,
  ImageStore,
  ImagesError,
  imageBase,
  type MeshView,
} from '../images/index.js'
import type { AddImageRequest, DistributeRequest, ImagesApi } from './api/routes/images.js'
import { AgentError } from './errors.js'
import type { Host } from './p2p.js'

export interface AgentImagesInit {
  dataDir: string
  logger: Logger
  chunkKiB?: number
  linkMiBps?: number
  dialTimeoutMs?: number
}

/** The mesh as images see it: live members with their site, addresses and the images they gossip. */
export function meshView(self: string, gossip: Gossip): MeshView {
  return {
    self,
    hosts() {
      const states = new Map(gossip.hosts().map((h) => [h.peerId, h]))
      return gossip
        .members()
        .filter((m) => m.status === 'alive' || m.self)
        .map((m) => {
          const st = states.get(m.peerId)
          return {
            peerId: m.peerId,
            site: st?.site || m.site,
            images: st?.images ?? [],
            addrs: m.addrs.length ? m.addrs : (st?.addrs ?? []),
          }
        })
    },
    isMember(peerId) {
      const m = gossip.members().find((x) => x.peerId === peerId)
      if (m) return m.status === 'alive' || m.status === 'suspect'
      return gossip.hosts().some((h) => h.peerId === peerId)
    },
  }
}

export class AgentImages {
  store?: ImageStore
  service?: ImageService
  readonly #init: AgentImagesInit

  constructor(init: AgentImagesInit) {
    this.#init = init
  }

  /** Opens the store (before VMs are recovered: a copy-on-write VM reads its base from it). */
  async open(): Promise<ImageStore> {
    this.store = await ImageStore.open(join(this.#init.dataDir, 'images'))
    return this.store
  }

  async start(host: Host, gossip: Gossip): Promise<void> {
    const store = this.store ?? (await this.open())
    this.service = new ImageService({
      host,
      store,
      mesh: meshView(host.peerId.toString(), gossip),
      logger: this.#init.logger,
      dialTimeoutMs: this.#init.dialTimeoutMs,
      linkMiBps: this.#init.linkMiBps,
      chunkSize: this.#init.chunkKiB ? this.#init.chunkKiB * 1024 : undefined,
    })
    store.onChange(() => gossip.notifyChanged())
    await this.service.start()
  }

  async stop(): Promise<void> {
    await this.service?.stop()
  }

  /** A complete local image as a copy-on-write base (restoring VMs), or undefined. */
  base(id: string): ImageBase | undefined {
    return this.store?.isComplete(id) ? imageBase(this.store, id) : undefined
  }

  /** `vm create --image`: the image, fetched from a holder if needed, as a base for a disk of diskMiB. */
  async prepare(ref: string, diskMiB: number, driver: string): Promise<ImageBase> {
    if (driver !== 'synthetic' && driver !== 'qemu')
      throw new AgentError(
        'BAD_REQUEST',
        `image: VMs from images need the synthetic or qemu driver here, not ${driver}`,
        { field: 'image' },
      )
    const svc = this.requireService()
    const id = resolveRef(svc, ref)
    try {
      await svc.ensure(id)
    } catch (err) {
      throw asAgentError(err, 'image')
    }
    const base = imageBase(svc.store, id)
    if (base.size > diskMiB * 1048576)
      throw new AgentError(
        'BAD_REQUEST',
        `diskMiB: ${diskMiB} MiB is smaller than the image (${Math.ceil(base.size / 1048576)} MiB)`,
        { field: 'diskMiB' },
      )
    return base
  }

  /**
   * The image (id, unique prefix or name) as one local read-only file — for the qemu driver's backing
   * file — fetched from the mesh by its id first if this host lacks it.
   */
  async localFile(ref: string, signal?: AbortSignal, sources: string[] = []): Promise<string> {
    const svc = this.requireService()
    const id = resolveRef(svc, ref)
    try {
      return await svc.localFile(id, signal, sources)
    } catch (err) {
      throw asAgentError(err, 'image')
    }
  }

  /** Image ids for the host state. */
  gossiped(): string[] {
    return this.service?.gossiped() ?? []
  }

  requireService(): ImageService {
    if (!this.service) throw new AgentError('NOT_RUNNING', 'the agent is not started')
    return this.service
  }
}

/** The API methods over the image service (`inUse` tells whether a VM here has the image as base). */
export function imagesApi(
  images: AgentImages,
  inUse: (id: string) => boolean,
  vclusters: Pick<
    ImagesApi,
    | 'createVcluster'
    | 'scaleVcluster'
    | 'listVclusters'
    | 'getVcluster'
    | 'vclusterContext'
    | 'deleteVcluster'
  >,
): ImagesApi {
  const svc = () => images.requireService()
  return {
    listImages: () => svc().list(),
    addImage: (req: AddImageRequest) => svc().add(req.path, req.name),
    getImage: (ref) => svc().get(ref),
    removeImage: (ref) => svc().remove(ref, inUse),
    verifyImage: (ref) => svc().verify(ref),
    distributeImage: (ref, req: DistributeRequest) => svc().distribute(ref, req.to, req.fanout),
    imagePush: (ref) => svc().pushOf(ref),
    ...vclusters,
  }
}

/** An image id, unique prefix or name known here; a full id not known here is kept, to fetch by it. */
function resolveRef(svc: ImageService, ref: string): string {
  try {
    return svc.store.resolve(ref)
  } catch (err) {
    if (!/^[0-9a-f]{64}$/.test(ref)) throw asAgentError(err, 'image')
    return ref
  }
}

function asAgentError(err: unknown, field: string): Error {
  if (err instanceof ImagesError)
    return new AgentError(err.code, `${field}: ${err.message}`, { field, ...err.details })
  return err as Error
}
