// The image service of one agent: the store, the /skymesh/images/1 protocol (serve manifests and
// chunks to mesh members, take pull orders, report progress), the pulls running here and the pushes
// this host started. The agent's API calls the methods below.
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { Logger } from 'pino'
import { pb } from '../proto/index.js'
import { askObserved, decodeOffer, type MigrationHost } from '../transfer/index.js'
import { DEFAULT_WAIT_MS, IMAGES_PROTOCOL, MAX_CHUNKS, MAX_SOURCES, MiB } from './constants.js'
import { DirectChunks } from './direct.js'
import { Push, type PushView } from './distribute.js'
import { BadChunkError, ImagesError } from './errors.js'
import { AHEAD, fetchLane, WINDOW } from './fetch.js'
import { LinkClock } from './link.js'
import { type ChunkLink, type ChunkQueue, Pull, type PullProgress } from './pull.js'
import type { ImageStore, ImageSummary } from './store.js'
import { ChunkTransport } from './transport.js'
import type { TreeHost } from './tree.js'
import { ProgressWatches, toProgress, WATCH_BEAT_MS, WATCH_CHECK_MS, WATCH_MAX_MS } from './watch.js'
import {
  ImageChannel,
  ImageProtocolError,
  type ImageRequest,
  type ImageRequestProps,
  type ImageResponseProps,
} from './wire.js'

/** The libp2p host, as far as images need it. */
export interface ImagesHost {
  handle(
    protocol: string,
    handler: (stream: Stream, connection: Connection) => void | Promise<void>,
    opts?: { maxInboundStreams?: number; maxOutboundStreams?: number; runOnLimitedConnection?: boolean },
  ): Promise<void>
  unhandle(protocol: string): Promise<void>
  dialProtocol(
    peer: PeerId | ReturnType<typeof multiaddr>[],
    protocols: string,
    opts?: { signal?: AbortSignal; runOnLimitedConnection?: boolean },
  ): Promise<Stream>
  /** The connections to a peer (to find the IP a direct chunk channel can use). */
  getConnections?(peer?: PeerId): Connection[]
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
  /** Chunk data over direct TLS connections where possible (direct.ts; default true). */
  direct?: boolean
  /** Parallel hole-punched connections per source between two NATed hosts (1..8, default 3). */
  punchStreams?: number
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
  #direct: DirectChunks | undefined
  readonly #transport: ChunkTransport
  /** Peers chunks went to or came from over a hole-punched channel (GET /v1/peers says so). */
  readonly punchedPeers = new Set<string>()

  constructor(init: ImageServiceInit) {
    this.#init = init
    this.store = init.store
    this.#log = init.logger
    this.#link = new LinkClock((init.linkMiBps ?? 0) * MiB)
    const host = init.host
    this.#transport = new ChunkTransport({
      getConnections: host.getConnections?.bind(host),
      // "what is my address" asks a directly connected peer (the migration service answers it)
      dialProtocol: ((peer: PeerId, protocol: string, opts?: { signal?: AbortSignal }) =>
        host.dialProtocol(peer, protocol, opts)) as MigrationHost['dialProtocol'],
      call: (peer, req, signal) => this.#call(peer, req, signal),
      open: (peer, signal) => this.#open(peer, signal),
      log: this.#log,
      direct: init.direct !== false,
      punchStreams: init.punchStreams ?? 3,
      inFlight: WINDOW * AHEAD,
      onPunched: (peer) => this.punchedPeers.add(peer),
    })
  }

  async start(): Promise<void> {
    if (this.#init.direct !== false)
      this.#direct = new DirectChunks(this.#log, (ch, peer) => void this.#serveDirect(ch, peer))
    // Relayed connections too (hosts behind NAT): small requests there, chunks only within the relay's
    // limit (transport.ts)
    await this.#init.host.handle(IMAGES_PROTOCOL, (stream, conn) => this.#serve(stream, conn), {
      maxInboundStreams: 64,
      maxOutboundStreams: 64,
      runOnLimitedConnection: true,
    })
  }

  async stop(): Promise<void> {
    this.#lifetime.abort(new Error('image service stopped'))
    for (const p of this.#pushes.values()) p.cancel()
    await this.#init.host.unhandle(IMAGES_PROTOCOL).catch(() => {})
    this.#direct?.close()
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

  /**
   * Makes sure the image is complete here, fetching it from any holder if not. `sources`: hosts known
   * to hold it whatever gossip says yet (the source of a migration of a VM on this image), tried first.
   */
  async ensure(id: string, signal?: AbortSignal, sources: string[] = []): Promise<void> {
    if (this.store.isComplete(id)) return
    if (!this.store.has(id)) {
      const encoded = await this.#fetchManifest(id, signal, sources)
      await this.store.register(id, encoded)
    }
    const pull = this.#startPull(id, sources)
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
  async localFile(id: string, signal?: AbortSignal, sources: string[] = []): Promise<string> {
    await this.ensure(id, signal, sources)
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
    const watches = new ProgressWatches(
      (peer, signal) => this.#open(peer, signal),
      Buffer.from(id, 'hex'),
      this.#lifetime.signal,
    )
    const push = new Push(
      {
        logger: this.#log,
        self: mesh.self,
        order: (peer, sources, job, signal) => this.#order(peer, id, sources, job, signal),
        status: (peer, signal) => this.#status(peer, id, signal, watches),
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

  /** Holders of an image by gossip (live hosts other than this one), those of this host's site first. */
  holders(id: string): string[] {
    const hosts = this.#init.mesh.hosts()
    const site = hosts.find((h) => h.peerId === this.#init.mesh.self)?.site
    return hosts
      .filter((h) => h.peerId !== this.#init.mesh.self && h.images.includes(id))
      .sort((a, b) => Number(b.site === site) - Number(a.site === site))
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
      fetch: (peer, queue, signal, onLink) => this.#fetchChunks(peer, id, queue, signal, onLink),
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
        await this.#init.host.dialProtocol(peerIdFromString(peer), IMAGES_PROTOCOL, {
          signal: sig,
          runOnLimitedConnection: true,
        }),
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

  async #fetchManifest(id: string, signal?: AbortSignal, sources: string[] = []): Promise<Uint8Array> {
    // A host that just restarted holds its images before gossip tells anyone again: named sources first
    const self = this.#init.mesh.self
    const peers = [...new Set([...sources.filter((s) => s !== self), ...this.holders(id)])]
    for (const peer of peers) {
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

  async #status(
    peer: string,
    id: string,
    signal: AbortSignal,
    watches?: ProgressWatches,
  ): Promise<PullProgress> {
    if (peer === this.#init.mesh.self) return this.#progress(id)
    const watched = watches?.latest(peer)
    if (watched) return watched
    const res = await this.#call(peer, { imageId: Buffer.from(id, 'hex'), status: {} }, signal)
    const p = res.progress
    if (!p) throw new Error('no progress in the answer')
    return toProgress(p)
  }

  /** A watch stream: the progress now, then whenever it changes, until the pull ends (watch.ts). */
  async #serveWatch(ch: ImageChannel, id: string, signal: AbortSignal): Promise<void> {
    let last = ''
    let sent = 0
    // Bounded: a host that neither finishes nor fails (no pull running) is not watched for ever.
    const until = Date.now() + WATCH_MAX_MS
    while (Date.now() < until) {
      const p = this.#progress(id)
      const key = JSON.stringify(p)
      if (key !== last || Date.now() - sent >= WATCH_BEAT_MS) {
        await ch.sendResponse({ progress: p }, signal)
        last = key
        sent = Date.now()
      }
      if (p.state !== 'pulling') return
      await new Promise((r) => setTimeout(r, WATCH_CHECK_MS))
      signal.throwIfAborted()
    }
  }

  /**
   * One lane of a pull: chunks of image `id` from `peer`, windows taken from `queue`, each verified.
   * Over direct, hole-punched or relayed channels (transport.ts); several punched channels share the
   * queue as sub-lanes.
   */
  async #fetchChunks(
    peer: string,
    id: string,
    queue: ChunkQueue,
    signal: AbortSignal,
    onLink: (l: ChunkLink) => void,
  ): Promise<void> {
    const sig = AbortSignal.any([signal, this.#lifetime.signal])
    const bytes = queue.size * this.store.manifest(id).chunkSize
    const lane = await this.#transport.open(peer, id, bytes, sig)
    onLink(lane.link)
    const waitMs = this.#init.waitMs ?? DEFAULT_WAIT_MS
    const runs = await Promise.allSettled(
      lane.channels.map((ch) => fetchLane(ch, { store: this.store, id, peer, queue, waitMs, signal })),
    )
    const failed = runs
      .filter((r): r is PromiseRejectedResult => r.status === 'rejected')
      .map((r) => r.reason)
    // A lying source fails the lane; a channel that dropped is fine if the others took its chunks
    const bad = failed.find((e) => e instanceof BadChunkError || e instanceof ImageProtocolError)
    if (bad) throw bad
    if (failed.length > 0 && (failed.length === runs.length || queue.size > 0)) throw failed[0]
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
          if (req.status?.watch) await this.#serveWatch(ch, id, signal)
          else await ch.sendResponse({ progress: this.#progress(id) })
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
        case 'direct': {
          const host = req.direct?.host ?? ''
          let grant: Awaited<ReturnType<DirectChunks['grant']>> | undefined
          try {
            if (!this.#direct) throw new Error('direct chunk channels are off on this host')
            grant = await this.#direct.grant(host, remote)
          } catch (err) {
            await ch.sendResponse({ error: { code: 'UNAVAILABLE', message: (err as Error).message } })
            break
          }
          await ch.sendResponse({ direct: grant })
          break
        }
        case 'punch': {
          // Hole punch (transport.ts): answer with our public address and ports, then punch
          let answer: ImageResponseProps['punch']
          try {
            if (!this.#direct) throw new Error('direct chunk channels are off on this host')
            const invite = decodeOffer(pb.PunchOffer.encode(req.punch!).finish(), true)
            const { ip } = await askObserved(
              this.#transport.observedHost,
              AbortSignal.any([signal, AbortSignal.timeout(10_000)]),
            )
            const at = await this.#direct.punch(invite, ip, remote, (p) => this.punchedPeers.add(p))
            answer = { attemptId: invite.attemptId, ip: at.ip, port: at.port, morePorts: at.morePorts ?? [] }
          } catch (err) {
            await ch.sendResponse({ error: { code: 'UNAVAILABLE', message: (err as Error).message } })
            break
          }
          await ch.sendResponse({ punch: answer })
          break
        }
        case 'chunks':
          await this.#serveChunkRequests(ch, id, req, signal)
          break
        default:
          throw new ImageProtocolError('unknown request')
      }
      await ch.close()
    } catch (err) {
      this.#log.debug({ peer: remote, err: (err as Error).message }, 'image request dropped')
      ch.abort(err as Error)
    }
  }

  /** A direct TLS channel a mesh member was granted: chunk requests, as on a stream. */
  async #serveDirect(ch: ImageChannel, peer: string): Promise<void> {
    const signal = this.#lifetime.signal
    try {
      const req = await ch.readRequest(AbortSignal.any([signal, AbortSignal.timeout(15_000)]))
      const id = Buffer.from(req.imageId ?? []).toString('hex')
      if (id.length !== 64) throw new ImageProtocolError('image id is not 32 bytes')
      await this.#serveChunkRequests(ch, id, req, signal)
      await ch.close()
    } catch (err) {
      this.#log.debug({ peer, err: (err as Error).message }, 'direct chunk channel dropped')
      ch.abort(err as Error)
    }
  }

  /**
   * Windows of chunks on one channel, one request each, until the client ends it: the client bounds
   * what is in flight (its read buffer is bounded), we serve in order.
   */
  async #serveChunkRequests(
    ch: ImageChannel,
    id: string,
    first: ImageRequest,
    signal: AbortSignal,
  ): Promise<void> {
    let next: ImageRequest | null = first
    while (next) {
      if (next.op !== 'chunks' || Buffer.from(next.imageId ?? []).toString('hex') !== id)
        throw new ImageProtocolError('expected a chunks request for the same image')
      if (!(await this.#serveChunks(ch, id, next.chunks?.indices ?? [], next.chunks?.waitMs ?? 0, signal)))
        break
      next = await ch.nextRequest(AbortSignal.any([signal, AbortSignal.timeout(120_000)]))
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
      if (!this.store.canServe(id, i) && !(await this.store.waitChunk(id, i, wait, signal))) {
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
