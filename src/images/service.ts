// The image service of one agent: the store, the /skymesh/images/1 protocol (serve manifests and
// chunks to mesh members, take pull orders, report progress), the pulls running here and the pushes
// this host started. The agent's API calls the methods below.
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import { DEFAULT_WAIT_MS, IMAGES_PROTOCOL, MAX_CHUNKS, MAX_SOURCES, MiB } from './constants.js'

/** Chunks per request window of a fetch (two windows in flight). */
const WINDOW = 2

import { Push, type PushView } from './distribute.js'
import { ImagesError } from './errors.js'
import { LinkClock } from './link.js'
import { Pull, type PullProgress } from './pull.js'
import type { ImageStore, ImageSummary } from './store.js'
import type { TreeHost } from './tree.js'
import { ImageChannel, ImageProtocolError, type ImageRequest, type ImageRequestProps } from './wire.js'

/** The libp2p host, as far as images need it. */
export interface ImagesHost {
  handle(
    protocol: string,
    handler: (stream: Stream, connection: Connection) => void | Promise<void>,
    opts?: { maxInboundStreams?: number; maxOutboundStreams?: number },
  ): Promise<void>
  unhandle(protocol: string): Promise<void>
  dialProtocol(
    peer: PeerId | ReturnType<typeof multiaddr>[],
    protocols: string,
    opts?: { signal?: AbortSignal },
  ): Promise<Stream>
}

/** What the images need from gossip: who is in the mesh, where, and what each holds. */
export interface MeshView {
  self: string
  /** Every live host (self included). */
  hosts(): { peerId: string; site: string; images: string[]; addrs: string[] }[]
  isMember(peerId: string): boolean
}

export interface ImageServiceInit {
  host: ImagesHost
  store: ImageStore
  mesh: MeshView
  logger: Logger
  dialTimeoutMs?: number
  /** This host's upload link in MiB/s, shared by all its streams (an emulated NIC for tests); 0 = none. */
  linkMiBps?: number
  /** How long a server waits for a chunk it is still receiving (pipeline) before MISSING. */
  waitMs?: number
  /** Chunk size of images added here. */
  chunkSize?: number
}

export interface ImageView extends ImageSummary {
  /** Hosts of the mesh whose gossip says they hold the complete image (this one included). */
  holders: string[]
  pull?: PullProgress
}

export class ImageService {
  readonly store: ImageStore
  readonly #init: ImageServiceInit
  readonly #log: Logger
  readonly #pulls = new Map<string, Pull>()
  readonly #pushes = new Map<string, Push>()
  readonly #lifetime = new AbortController()
  readonly #link: LinkClock

  constructor(init: ImageServiceInit) {
    this.#init = init
    this.store = init.store
    this.#log = init.logger
    this.#link = new LinkClock((init.linkMiBps ?? 0) * MiB)
  }

  async start(): Promise<void> {
    await this.#init.host.handle(IMAGES_PROTOCOL, (stream, conn) => this.#serve(stream, conn), {
      maxInboundStreams: 64,
      maxOutboundStreams: 64,
    })
  }

  async stop(): Promise<void> {
    this.#lifetime.abort(new Error('image service stopped'))
    for (const p of this.#pushes.values()) p.cancel()
    await this.#init.host.unhandle(IMAGES_PROTOCOL).catch(() => {})
    await Promise.allSettled([...this.#pulls.values()].map((p) => p.done))
  }

  // --- API ---

  async add(path: string, name?: string): Promise<ImageView> {
    const s = await this.store.addFile(path, { name, chunkSize: this.#init.chunkSize })
    this.#log.info({ image: s.id, name: s.name, size: s.size }, 'image added')
    return this.#view(s)
  }

  list(): ImageView[] {
    return this.store.list().map((s) => this.#view(s))
  }

  get(ref: string): ImageView {
    return this.#view(this.store.get(this.store.resolve(ref))!)
  }

  async remove(ref: string, inUse: (id: string) => boolean): Promise<void> {
    const id = this.store.resolve(ref)
    if (inUse(id))
      throw new ImagesError('INVALID_STATE', `image ${id.slice(0, 12)} is the base of a VM on this host`)
    if (this.#pulls.get(id)?.state === 'pulling')
      throw new ImagesError('INVALID_STATE', `image ${id.slice(0, 12)} is being fetched`)
    this.#pulls.delete(id)
    await this.store.remove(id)
  }

  async verify(ref: string): Promise<{ id: string; ok: boolean; bad: number[] }> {
    const id = this.store.resolve(ref)
    const bad = await this.store.verify(id)
    return { id, ok: bad.length === 0, bad }
  }

  /** Makes sure the image is complete here, fetching it from any holder if not. */
  async ensure(id: string, signal?: AbortSignal): Promise<void> {
    if (this.store.isComplete(id)) return
    if (!this.store.has(id)) {
      const encoded = await this.#fetchManifest(id, signal)
      await this.store.register(id, encoded)
    }
    const pull = this.#startPull(id, [])
    if (signal) {
      // The pull goes on (others may wait for it too); only this caller stops waiting.
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(signal.reason ?? new Error('aborted'))
        if (signal.aborted) return onAbort()
        signal.addEventListener('abort', onAbort, { once: true })
        void pull.done.then(() => {
          signal.removeEventListener('abort', onAbort)
          resolve()
        })
      })
    } else await pull.done
    if (!this.store.isComplete(id))
      throw new ImagesError('INVALID_STATE', `image ${id.slice(0, 12)} could not be fetched: ${pull.error}`)
  }

  /**
   * The path of the image as one local file (qemu's backing file), fetching it from the mesh first if
   * it is not complete here. The file is read-only and stays until the image is removed.
   */
  async localFile(id: string, signal?: AbortSignal): Promise<string> {
    await this.ensure(id, signal)
    return this.store.file(id)
  }

  /**
   * Starts a push of a local image to `to` ('all' or peer ids / unique prefixes). Fanout 1 (a chain in
   * each site) is the default: every host uploads the image once, so with links of equal speed the
   * whole push takes about one copy's time (bench:propagate); a wider tree uploads k copies per host.
   */
  async distribute(ref: string, to: 'all' | string[], fanout = 1): Promise<PushView> {
    return (await this.push(ref, to, fanout)).view
  }

  /**
   * As distribute, with a promise of the push's end (its final view). A host is skipped only if it
   * says now that it holds the whole image: gossip may still list a host that just dropped it.
   */
  async push(
    ref: string,
    to: 'all' | string[],
    fanout = 1,
  ): Promise<{ view: PushView; done: Promise<PushView> }> {
    const id = this.store.resolve(ref)
    if (!this.store.isComplete(id))
      throw new ImagesError('INVALID_STATE', `image ${id.slice(0, 12)} is not complete on this host`)
    const { mesh } = this.#init
    const hosts = mesh.hosts()
    const self = hosts.find((h) => h.peerId === mesh.self) ?? {
      peerId: mesh.self,
      site: '',
      images: [],
      addrs: [],
    }
    let chosen: typeof hosts
    if (to === 'all') chosen = hosts.filter((h) => h.peerId !== mesh.self)
    else {
      chosen = []
      for (const ref of to) {
        const found = hosts.filter(
          (h) => h.peerId === ref || h.peerId.startsWith(ref) || h.peerId.endsWith(ref),
        )
        if (found.length !== 1)
          throw new ImagesError(
            'BAD_REQUEST',
            `to: '${ref}' ${found.length ? 'names several hosts' : 'is not a live host of this mesh'}`,
            { field: 'to' },
          )
        if (found[0]!.peerId !== mesh.self && !chosen.includes(found[0]!)) chosen.push(found[0]!)
      }
    }
    const chunks = this.store.manifest(id).chunks.length
    const holds = await Promise.all(
      chosen.map((h) => (h.images.includes(id) ? this.#confirmHolds(h.peerId, id, chunks) : false)),
    )
    const targets: TreeHost[] = []
    const skipped: TreeHost[] = []
    chosen.forEach((h, i) => {
      ;(holds[i] ? skipped : targets).push({ id: h.peerId, site: h.site })
    })
    const push = new Push(
      {
        logger: this.#log,
        self: mesh.self,
        order: (peer, sources, job, signal) => this.#order(peer, id, sources, job, signal),
        status: (peer, signal) => this.#status(peer, id, signal),
      },
      id,
      chunks,
      { id: mesh.self, site: self.site },
      targets,
      skipped,
      fanout,
    )
    this.#pushes.set(id, push)
    this.#log.info(
      { image: id, push: push.view.id, hosts: targets.length, skipped: skipped.length },
      'push started',
    )
    return { view: push.view, done: push.done.then(() => push.view) }
  }

  /**
   * Whether a host gossip lists as a holder holds the whole image now, by its own fresh answer: a
   * status taken at this moment (have = total, state done). No answer, or any other, is a no: the host
   * becomes a target (a pull of an image already there ends at once; a dead host is routed around).
   */
  async #confirmHolds(peer: string, id: string, chunks: number): Promise<boolean> {
    try {
      const p = await this.#status(
        peer,
        id,
        AbortSignal.any([this.#lifetime.signal, AbortSignal.timeout(5000)]),
      )
      return p.state === 'done' && p.total === chunks && p.have === chunks
    } catch (err) {
      this.#log.debug({ image: id, peer, err: (err as Error).message }, 'holder did not confirm: pushed to')
      return false
    }
  }

  /** The latest push of an image started here. */
  pushOf(ref: string): PushView {
    const id = /^[0-9a-f]{64}$/.test(ref) ? ref : this.store.resolve(ref)
    const p = this.#pushes.get(id)
    if (!p) throw new ImagesError('NOT_FOUND', `no push of image ${id.slice(0, 12)} was started on this host`)
    return p.view
  }

  /** Image ids gossip should list for this host. */
  gossiped(): string[] {
    return this.store.completeIds()
  }

  /** Holders of an image by gossip (live hosts other than this one). */
  holders(id: string): string[] {
    return this.#init.mesh
      .hosts()
      .filter((h) => h.peerId !== this.#init.mesh.self && h.images.includes(id))
      .map((h) => h.peerId)
  }

  // --- pulls ---

  #startPull(id: string, sources: string[]): Pull {
    const running = this.#pulls.get(id)
    if (running?.state === 'pulling') {
      running.addSources(sources)
      return running
    }
    const pull = new Pull({
      id,
      store: this.store,
      logger: this.#log,
      sources: sources.filter((s) => s !== this.#init.mesh.self),
      holders: () => this.holders(id),
      fetch: (peer, indices, signal) => this.#fetchChunks(peer, id, indices, signal),
      signal: this.#lifetime.signal,
    })
    this.#pulls.set(id, pull)
    void pull.done.then(() => {
      if (pull.state === 'done') this.#log.info({ image: id, badChunks: pull.badChunks }, 'image complete')
    })
    return pull
  }

  #progress(id: string): PullProgress {
    const pull = this.#pulls.get(id)
    if (pull) return pull.progress()
    const s = this.store.get(id)
    return {
      have: s?.have ?? 0,
      total: s?.chunks ?? 0,
      state: s?.complete ? 'done' : 'pulling',
      badChunks: 0,
    }
  }

  // --- client side of the protocol ---

  async #open(peer: string, signal?: AbortSignal): Promise<ImageChannel> {
    const sig = AbortSignal.any([
      AbortSignal.timeout(this.#init.dialTimeoutMs ?? 5000),
      this.#lifetime.signal,
      ...(signal ? [signal] : []),
    ])
    try {
      return new ImageChannel(
        await this.#init.host.dialProtocol(peerIdFromString(peer), IMAGES_PROTOCOL, { signal: sig }),
      )
    } catch (err) {
      // Not connected and no address known to libp2p: try the addresses the host gossips.
      const addrs = this.#init.mesh.hosts().find((h) => h.peerId === peer)?.addrs ?? []
      if (addrs.length === 0 || sig.aborted) throw err
      const mas = addrs.map((a) => multiaddr(a.includes('/p2p/') ? a : `${a}/p2p/${peer}`))
      return new ImageChannel(await this.#init.host.dialProtocol(mas, IMAGES_PROTOCOL, { signal: sig }))
    }
  }

  async #call(peer: string, req: ImageRequestProps, signal?: AbortSignal) {
    const ch = await this.#open(peer, signal)
    const sig = AbortSignal.any([AbortSignal.timeout(15_000), ...(signal ? [signal] : [])])
    try {
      await ch.sendRequest(req, sig)
      const res = await ch.readResponse(sig)
      await ch.close()
      if (res.error) throw new Error(`${res.error.code}: ${res.error.message}`)
      return res
    } catch (err) {
      ch.abort(err as Error)
      throw err
    }
  }

  async #fetchManifest(id: string, signal?: AbortSignal): Promise<Uint8Array> {
    for (const peer of this.holders(id)) {
      try {
        const res = await this.#call(peer, { imageId: Buffer.from(id, 'hex'), manifest: true }, signal)
        if (res.manifest?.length) return Uint8Array.from(res.manifest)
      } catch (err) {
        this.#log.debug({ image: id, peer, err: (err as Error).message }, 'manifest fetch failed')
      }
    }
    throw new ImagesError(
      'NOT_FOUND',
      `no host of the mesh holds image ${id.slice(0, 12)} (as far as gossip tells)`,
    )
  }

  async #order(peer: string, id: string, sources: string[], job: string, signal: AbortSignal): Promise<void> {
    if (peer === this.#init.mesh.self) {
      this.#startPull(id, sources)
      return
    }
    const res = await this.#call(
      peer,
      {
        imageId: Buffer.from(id, 'hex'),
        pull: { manifest: this.store.encodedManifest(id), sources, job },
      },
      signal,
    )
    if (!res.accepted) throw new Error('pull order not accepted')
  }

  async #status(peer: string, id: string, signal: AbortSignal): Promise<PullProgress> {
    if (peer === this.#init.mesh.self) return this.#progress(id)
    const res = await this.#call(peer, { imageId: Buffer.from(id, 'hex'), status: {} }, signal)
    const p = res.progress
    if (!p) throw new Error('no progress in the answer')
    return {
      have: p.have ?? 0,
      total: p.total ?? 0,
      state: p.state === 'done' ? 'done' : p.state === 'failed' ? 'failed' : 'pulling',
      source: p.source || undefined,
      badChunks: p.badChunks ?? 0,
      error: p.error || undefined,
    }
  }

  /** Fetches `indices` of image `id` from `peer`, verifying each chunk as it lands. */
  async #fetchChunks(peer: string, id: string, indices: number[], signal: AbortSignal): Promise<void> {
    const ch = await this.#open(peer, signal)
    const waitMs = this.#init.waitMs ?? DEFAULT_WAIT_MS
    try {
      // Windows of WINDOW chunks, at most two outstanding: at most 2 x WINDOW chunks in flight, under
      // the read buffer's bound, and the link never idles waiting for the next request.
      const windows: number[][] = []
      for (let k = 0; k < indices.length; k += WINDOW) windows.push(indices.slice(k, k + WINDOW))
      let sent = 0
      const ask = async () => {
        const w = windows[sent++]
        if (w)
          await ch.sendRequest({ imageId: Buffer.from(id, 'hex'), chunks: { indices: w, waitMs } }, signal)
      }
      await ask()
      await ask()
      const wanted = new Set(indices)
      let finished = 0
      for (;;) {
        // A server waits at most waitMs for a chunk it is still receiving; more than that is a dead link.
        const res = await ch.readResponse(AbortSignal.any([signal, AbortSignal.timeout(waitMs + 15_000)]))
        if (res.done) {
          if (++finished >= windows.length) break
          await ask()
          continue
        }
        if (res.error) throw new Error(`${peer.slice(-6)}: ${res.error.code}: ${res.error.message}`)
        const c = res.chunk
        if (!c) throw new ImageProtocolError('expected a chunk')
        const index = c.index ?? 0
        if (!wanted.has(index)) throw new ImageProtocolError(`chunk ${index} was not asked for`)
        wanted.delete(index)
        // Verified against the manifest's hash: a mismatch throws BadChunkError and the source is dropped.
        await this.store.writeChunk(id, index, c.data ?? new Uint8Array(), peer)
      }
      await ch.close()
    } catch (err) {
      ch.abort(err as Error)
      throw err
    }
  }

  // --- server side ---

  async #serve(stream: Stream, conn: Connection): Promise<void> {
    const remote = conn.remotePeer.toString()
    const ch = new ImageChannel(stream)
    if (!this.#init.mesh.isMember(remote)) {
      this.#log.debug({ peer: remote }, 'image request from a peer outside the mesh refused')
      await ch
        .sendResponse({ error: { code: 'FORBIDDEN', message: 'not a member of this mesh' } })
        .catch(() => {})
      ch.abort(new Error('not a mesh member'))
      return
    }
    const signal = this.#lifetime.signal
    try {
      const req = await ch.readRequest(AbortSignal.any([signal, AbortSignal.timeout(15_000)]))
      const id = Buffer.from(req.imageId ?? []).toString('hex')
      if (id.length !== 64) throw new ImageProtocolError('image id is not 32 bytes')
      switch (req.op) {
        case 'manifest':
          if (!this.store.has(id))
            await ch.sendResponse({ error: { code: 'NOT_FOUND', message: 'no such image here' } })
          else await ch.sendResponse({ manifest: this.store.encodedManifest(id) })
          break
        case 'status':
          await ch.sendResponse({ progress: this.#progress(id) })
          break
        case 'pull': {
          const pull = req.pull!
          if ((pull.sources?.length ?? 0) > MAX_SOURCES) throw new ImageProtocolError('too many sources')
          const sources = (pull.sources ?? []).filter((s) => s.length <= 128)
          for (const s of sources) peerIdFromString(s) // throws on garbage
          try {
            await this.store.register(id, pull.manifest ?? new Uint8Array())
          } catch (err) {
            await ch.sendResponse({ error: { code: 'BAD_REQUEST', message: (err as Error).message } })
            break
          }
          this.#log.info({ image: id, job: pull.job, sources: sources.map((s) => s.slice(-6)) }, 'pull order')
          this.#startPull(id, sources)
          await ch.sendResponse({ accepted: true })
          break
        }
        case 'chunks': {
          // Windows of chunks on one stream, one request each, until the client ends the stream: the
          // client bounds what is in flight (its read buffer is bounded), we serve in order.
          let next: ImageRequest | null = req
          while (next) {
            if (next.op !== 'chunks' || Buffer.from(next.imageId ?? []).toString('hex') !== id)
              throw new ImageProtocolError('expected a chunks request for the same image')
            if (
              !(await this.#serveChunks(ch, id, next.chunks?.indices ?? [], next.chunks?.waitMs ?? 0, signal))
            )
              break
            next = await ch.nextRequest(AbortSignal.any([signal, AbortSignal.timeout(120_000)]))
          }
          break
        }
        default:
          throw new ImageProtocolError('unknown request')
      }
      await ch.close()
    } catch (err) {
      this.#log.debug({ peer: remote, err: (err as Error).message }, 'image request dropped')
      ch.abort(err as Error)
    }
  }

  async #serveChunks(
    ch: ImageChannel,
    id: string,
    indices: number[],
    waitMs: number,
    signal: AbortSignal,
  ): Promise<boolean> {
    // One window; false if it ended with an error answer (the stream is then done).
    const fail = async (code: string, message: string) => {
      await ch.sendResponse({ error: { code, message } })
      return false
    }
    if (!this.store.has(id)) return fail('NOT_FOUND', 'no such image here')
    const count = this.store.manifest(id).chunks.length
    if (indices.length > MAX_CHUNKS || indices.some((i) => i >= count))
      return fail('BAD_REQUEST', 'chunk index out of range')
    const wait = Math.min(waitMs, 60_000)
    for (const i of indices) {
      // Pipeline: a chunk this host is itself still receiving is sent as soon as it lands.
      if (!this.store.hasChunk(id, i) && !(await this.store.waitChunk(id, i, wait, signal))) {
        return fail('MISSING', `chunk ${i} is not here (yet)`)
      }
      const data = await this.store.readChunk(id, i)
      // An emulated link (images.linkMiBps): the chunk leaves when the host's link would have delivered it.
      await this.#link.send(data.length, signal)
      await ch.sendResponse({ chunk: { index: i, data } }, signal)
    }
    await ch.sendResponse({ done: true }, signal)
    return true
  }

  #view(s: ImageSummary): ImageView {
    const holders = this.#init.mesh
      .hosts()
      .filter((h) => h.images.includes(s.id))
      .map((h) => h.peerId)
    if (s.complete && !holders.includes(this.#init.mesh.self)) holders.unshift(this.#init.mesh.self)
    const pull = this.#pulls.get(s.id)
    return { ...s, holders, ...(pull ? { pull: pull.progress() } : {}) }
  }
}
