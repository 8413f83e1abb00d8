// One host fetching one image: chunk by chunk from the first source that works (its pipeline parent,
// then the parent's ancestors, then any host gossip says holds the image). Every chunk is verified on
// receipt; a source that sends a bad chunk is dropped for good; a source that fails or stalls is left
// for the next. Chunks already stored are never fetched again, so a pull that was cut resumes.
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
  badChunks: number
  error?: string
}

export interface PullInit {
  id: string
  store: ImageStore
  logger: Logger
  /** Sources in order of preference (a pipeline's ancestors). */
  sources: string[]
  /** Hosts that hold the complete image now (gossip), tried once the given sources are used up. */
  holders: () => string[]
  /** Fetches the missing chunks `indices` from `peer` into the store; throws on any failure. */
  fetch: (peer: string, indices: number[], signal: AbortSignal) => Promise<void>
  signal: AbortSignal
  /** Rounds over all sources before giving up (default 3). */
  rounds?: number
  retryDelayMs?: number
}

export class Pull {
  readonly id: string
  state: PullState = 'pulling'
  source: string | undefined
  badChunks = 0
  error: string | undefined
  readonly #init: PullInit
  readonly #bad = new Set<string>()
  readonly #sources: string[]
  readonly done: Promise<void>

  constructor(init: PullInit) {
    this.#init = init
    this.id = init.id
    this.#sources = [...init.sources]
    this.done = this.#run().then(
      () => {
        this.state = 'done'
        this.source = undefined
      },
      (err: unknown) => {
        this.state = 'failed'
        this.error = (err as Error).message
        init.logger.warn({ image: init.id, err: this.error }, 'image pull failed')
      },
    )
  }

  /** More sources (a second pull order for the same image): tried first. */
  addSources(sources: string[]): void {
    for (const s of sources.reverse()) if (!this.#sources.includes(s)) this.#sources.unshift(s)
  }

  progress(): PullProgress {
    const s = this.#init.store.get(this.id)
    return {
      have: s?.have ?? 0,
      total: s?.chunks ?? 0,
      state: this.state,
      source: this.source,
      badChunks: this.badChunks,
      error: this.error,
    }
  }

  async #run(): Promise<void> {
    const { store, signal, logger } = this.#init
    const rounds = this.#init.rounds ?? 3
    let lastError = 'no source holds the image'
    for (let round = 0; round < rounds; round++) {
      const tried = new Set<string>()
      for (;;) {
        if (signal.aborted) throw signal.reason
        const missing = store.missing(this.id)
        if (missing.length === 0) return
        const next = this.#next(tried)
        if (next === undefined) break
        tried.add(next)
        this.source = next
        try {
          await this.#init.fetch(next, missing, signal)
        } catch (err) {
          if (signal.aborted) throw signal.reason
          if (err instanceof BadChunkError || err instanceof ImageProtocolError) {
            // A source that lies (or speaks garbage) is never asked again.
            this.#bad.add(next)
            if (err instanceof BadChunkError) this.badChunks++
            logger.warn({ image: this.id, source: next, err: (err as Error).message }, 'image source dropped')
          } else {
            logger.info(
              { image: this.id, source: next, err: (err as Error).message },
              'image source failed; next one',
            )
          }
          lastError = (err as Error).message
        }
      }
      if (store.missing(this.id).length === 0) return
      await sleep(this.#init.retryDelayMs ?? 1000, signal)
    }
    throw new Error(
      `image ${this.id.slice(0, 12)} incomplete after ${rounds} rounds over its sources: ${lastError}`,
    )
  }

  #next(tried: Set<string>): string | undefined {
    const ok = (p: string) => !tried.has(p) && !this.#bad.has(p)
    return this.#sources.find(ok) ?? this.#init.holders().find(ok)
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
