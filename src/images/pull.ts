// One host fetching one image. The missing chunks sit in one queue that lanes take windows from, each
// lane fetching from one source:
//   - a pipeline pull (a push's order: sources = the host's parent, then its ancestors) runs one lane, on
//     the first source that works: every host of the tree then uploads the image once, and a parent is
//     never shared with its grandchildren;
//   - a pull from holders (gossip says they hold the complete image: `ensure`, or a pipeline whose
//     sources are all used up) runs up to `parallel` lanes at once, holders of this host's site first,
//     so chunks come from several holders at the same time.
// Every chunk is verified on receipt; a chunk whose hash does not match is refused, its source dropped
// for good, and the chunk goes back to the queue for another source. A lane whose source fails or stalls
// gives its chunks back and the next source takes over. Chunks already stored are never fetched again,
// so a pull that was cut resumes.
import type { Logger } from 'pino'
import { BadChunkError } from './errors.js'
import type { ImageStore } from './store.js'
import { ImageProtocolError } from './wire.js'

export type PullState = 'pulling' | 'done' | 'failed'

export interface PullProgress {
  have: number
  total: number
  state: PullState
  source?: string
  /** Every source a lane fetches from now (source is the first). */
  sources?: string[]
  badChunks: number
  error?: string
  /** How chunks reach this host from its (first, or last) source: direct, hole-punched or relayed. */
  link?: ChunkLink
}

/** How a lane's chunks travel (transport.ts decides). */
export type ChunkLink = 'direct' | 'hole-punched' | 'relayed'

/** The missing chunks of one round of a pull, shared by its lanes (ascending: a pipeline fills in order). */
export class ChunkQueue {
  #todo: number[]

  constructor(indices: number[]) {
    this.#todo = [...indices]
  }

  get size(): number {
    return this.#todo.length
  }

  /** Up to `n` chunks to fetch, lowest first. */
  take(n: number): number[] {
    return this.#todo.splice(0, n)
  }

  /** Chunks a lane took and did not get: first in line again. */
  giveBack(indices: Iterable<number>): void {
    const back = [...indices]
    if (back.length === 0) return
    this.#todo = [...new Set([...back, ...this.#todo])].sort((a, b) => a - b)
  }
}

export interface PullInit {
  id: string
  store: ImageStore
  logger: Logger
  /** Sources in order of preference (a pipeline's ancestors). */
  sources: string[]
  /** Hosts that hold the complete image now (gossip), best first (this host's site first). */
  holders: () => string[]
  /**
   * Fetches chunks from `peer`, taking windows from `queue` until it is empty; every chunk is verified
   * and stored as it lands. On any failure it gives the chunks it took and did not store back to the
   * queue, then throws (BadChunkError for a chunk that does not match its hash).
   */
  fetch: (
    peer: string,
    queue: ChunkQueue,
    signal: AbortSignal,
    onLink: (l: ChunkLink) => void,
  ) => Promise<void>
  signal: AbortSignal
  /** Rounds over all sources before giving up (default 3). */
  rounds?: number
  retryDelayMs?: number
  /** Lanes at once on holders of the complete image (default 3). */
  parallel?: number
}

interface Lane {
  peer: string
  /** A lane on one of the given (pipeline) sources, not a holder. */
  pipeline: boolean
  link?: ChunkLink
}

export class Pull {
  readonly id: string
  state: PullState = 'pulling'
  badChunks = 0
  error: string | undefined
  readonly #init: PullInit
  readonly #bad = new Set<string>()
  readonly #sources: string[]
  readonly #lanes = new Set<Lane>()
  /** The link of the last lane that ended well (what a finished pull reports). */
  #lastLink: ChunkLink | undefined
  readonly done: Promise<void>

  constructor(init: PullInit) {
    this.#init = init
    this.id = init.id
    this.#sources = [...init.sources]
    this.done = this.#run().then(
      () => {
        this.state = 'done'
      },
      (err: unknown) => {
        this.state = 'failed'
        this.error = (err as Error).message
        init.logger.warn({ image: init.id, err: this.error }, 'image pull failed')
      },
    )
  }

  /** The source of the first lane running now. */
  get source(): string | undefined {
    return this.state === 'pulling' ? [...this.#lanes][0]?.peer : undefined
  }

  /** More sources (a second pull order for the same image): tried first. */
  addSources(sources: string[]): void {
    for (const s of [...sources].reverse()) if (!this.#sources.includes(s)) this.#sources.unshift(s)
  }

  progress(): PullProgress {
    const s = this.#init.store.get(this.id)
    const sources = this.state === 'pulling' ? [...this.#lanes].map((l) => l.peer) : []
    const link = (this.state === 'pulling' ? [...this.#lanes][0]?.link : undefined) ?? this.#lastLink
    return {
      have: s?.have ?? 0,
      total: s?.chunks ?? 0,
      state: this.state,
      source: sources[0],
      ...(sources.length ? { sources } : {}),
      badChunks: this.badChunks,
      error: this.error,
      ...(link ? { link } : {}),
    }
  }

  async #run(): Promise<void> {
    const { store, signal } = this.#init
    const rounds = this.#init.rounds ?? 3
    let lastError = 'no source holds the image'
    for (let round = 0; round < rounds; round++) {
      const err = await this.#round()
      if (err) lastError = err
      if (signal.aborted) throw signal.reason
      if (store.missing(this.id).length === 0) return
      await sleep(this.#init.retryDelayMs ?? 1000, signal)
    }
    throw new Error(
      `image ${this.id.slice(0, 12)} incomplete after ${rounds} rounds over its sources: ${lastError}`,
    )
  }

  /** One round: lanes over the sources not tried yet in it, until the queue is empty or none is left. */
  async #round(): Promise<string | undefined> {
    const { store, signal } = this.#init
    const queue = new ChunkQueue(store.missing(this.id))
    const tried = new Set<string>()
    const running = new Set<Promise<void>>()
    let lastError: string | undefined
    const spawn = () => {
      while (queue.size > 0 && !signal.aborted) {
        // A pipeline lane runs alone (one parent); holders take up to `parallel` lanes together.
        if ([...this.#lanes].some((l) => l.pipeline)) return
        if (this.#lanes.size >= (this.#init.parallel ?? 3)) return
        const lane = this.#next(tried)
        if (!lane) return
        if (lane.pipeline && this.#lanes.size > 0) return // wait for the holder lanes to end first
        tried.add(lane.peer)
        this.#lanes.add(lane)
        const p: Promise<void> = this.#lane(lane, queue)
          .then(
            (err) => {
              if (err) lastError = err
            },
            () => undefined,
          )
          .finally(() => {
            this.#lanes.delete(lane)
            running.delete(p)
          })
        running.add(p)
      }
    }
    spawn()
    while (running.size > 0) {
      await Promise.race(running)
      spawn()
    }
    return lastError
  }

  /** Runs one lane to its end; the error message if its source failed. */
  async #lane(lane: Lane, queue: ChunkQueue): Promise<string | undefined> {
    const { signal, logger } = this.#init
    try {
      await this.#init.fetch(lane.peer, queue, signal, (l) => {
        lane.link = l
      })
      if (lane.link) this.#lastLink = lane.link
      return undefined
    } catch (err) {
      if (signal.aborted) return undefined
      if (err instanceof BadChunkError || err instanceof ImageProtocolError) {
        // A source that lies (or speaks garbage) is never asked again.
        this.#bad.add(lane.peer)
        if (err instanceof BadChunkError) this.badChunks++
        logger.warn(
          { image: this.id, source: lane.peer, err: (err as Error).message },
          'image source dropped',
        )
      } else {
        logger.info(
          { image: this.id, source: lane.peer, err: (err as Error).message },
          'image source failed; next one',
        )
      }
      return (err as Error).message
    }
  }

  #next(tried: Set<string>): Lane | undefined {
    const ok = (p: string) => !tried.has(p) && !this.#bad.has(p)
    const src = this.#sources.find(ok)
    if (src !== undefined) return { peer: src, pipeline: true }
    const holder = this.#init.holders().find(ok)
    return holder === undefined ? undefined : { peer: holder, pipeline: false }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms)
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(t)
        resolve()
      },
      { once: true },
    )
  })
}
