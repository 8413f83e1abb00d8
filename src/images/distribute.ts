// A push of one image to many hosts, run by the host that was asked: it builds the propagation tree,
// sends each host its pull order (parents before children, each host's sources = its ancestors), and
// follows every host's progress until all hold the image or have failed. A host that cannot be reached
// is routed around: its children get its parent as their first source.
import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { PullProgress } from './pull.js'
import { ancestors, buildTree, reparent, type Tree, type TreeHost } from './tree.js'

export type PushHostState = 'pending' | 'pulling' | 'done' | 'failed' | 'skipped'

export interface PushHostView {
  peerId: string
  site: string
  /** The host it pulls from in the tree (after any re-parenting). */
  parent?: string
  /** The host it actually pulls from now (its own report). */
  source?: string
  state: PushHostState
  have: number
  total: number
  badChunks: number
  error?: string
}

export interface PushView {
  id: string
  image: string
  root: string
  fanout: number
  state: 'running' | 'done' | 'partial' | 'failed'
  startedAt: string
  finishedAt?: string
  elapsedMs: number
  hosts: PushHostView[]
}

export interface PushDeps {
  logger: Logger
  self: string
  /** Sends a pull order to `peer` (or starts it here when peer is self). */
  order(peer: string, sources: string[], job: string, signal: AbortSignal): Promise<void>
  /** The host's progress on the image. */
  status(peer: string, signal: AbortSignal): Promise<PullProgress>
  pollMs?: number
  /** A host whose status cannot be read this many times in a row has failed. */
  maxStatusFailures?: number
  /** The push gives up on hosts that made no progress for this long. */
  stallMs?: number
}

export class Push {
  readonly view: PushView
  readonly done: Promise<void>
  #tree: Tree
  readonly #deps: PushDeps
  readonly #abort = new AbortController()
  readonly #failures = new Map<string, number>()
  readonly #lastProgress = new Map<string, number>()
  readonly #t0 = Date.now()

  constructor(
    deps: PushDeps,
    image: string,
    chunks: number,
    root: TreeHost,
    targets: TreeHost[],
    skipped: TreeHost[],
    fanout: number,
  ) {
    this.#deps = deps
    this.#tree = buildTree(root, targets, fanout)
    this.view = {
      id: `push-${randomBytes(5).toString('hex')}`,
      image,
      root: root.id,
      fanout,
      state: 'running',
      startedAt: new Date().toISOString(),
      elapsedMs: 0,
      hosts: [
        ...targets.map((t) => ({
          peerId: t.id,
          site: t.site,
          parent: this.#tree.parent.get(t.id),
          state: 'pending' as PushHostState,
          have: 0,
          total: chunks,
          badChunks: 0,
        })),
        ...skipped.map((t) => ({
          peerId: t.id,
          site: t.site,
          state: 'skipped' as PushHostState,
          have: chunks,
          total: chunks,
          badChunks: 0,
        })),
      ],
    }
    this.done = this.#run().catch((err: unknown) => {
      this.view.state = 'failed'
      deps.logger.warn({ push: this.view.id, err: (err as Error).message }, 'push failed')
    })
  }

  cancel(): void {
    this.#abort.abort(new Error('push cancelled'))
  }

  #host(id: string): PushHostView {
    return this.view.hosts.find((h) => h.peerId === id)!
  }

  #fail(id: string, why: string): void {
    const h = this.#host(id)
    if (h.state === 'done' || h.state === 'failed') return
    h.state = 'failed'
    h.error = why
    if (id !== this.#tree.root && this.#tree.parent.has(id)) {
      this.#tree = reparent(this.#tree, id)
      for (const x of this.view.hosts)
        if (x.state !== 'skipped') x.parent = this.#tree.parent.get(x.peerId) ?? x.parent
    }
    this.#deps.logger.warn({ push: this.view.id, host: id, why }, 'push: host failed; routed around')
  }

  async #run(): Promise<void> {
    const signal = this.#abort.signal
    // Parents first, so a child's first source already knows the image when the child asks it.
    for (const id of [...this.#tree.order]) {
      if (this.#host(id).state === 'failed') continue
      const sources = ancestors(this.#tree, id)
      try {
        await this.#deps.order(id, sources, this.view.id, signal)
        this.#host(id).state = 'pulling'
        this.#lastProgress.set(id, Date.now())
      } catch (err) {
        this.#fail(id, `pull order not taken: ${(err as Error).message}`)
      }
    }
    const pollMs = this.#deps.pollMs ?? 100
    const stallMs = this.#deps.stallMs ?? 120_000
    for (;;) {
      const live = this.view.hosts.filter((h) => h.state === 'pulling')
      if (live.length === 0) break
      await Promise.all(
        live.map(async (h) => {
          try {
            const p = await this.#deps.status(
              h.peerId,
              AbortSignal.any([signal, AbortSignal.timeout(10_000)]),
            )
            this.#failures.set(h.peerId, 0)
            if (p.have > h.have) this.#lastProgress.set(h.peerId, Date.now())
            h.have = p.have
            h.total = p.total || h.total
            h.source = p.source
            h.badChunks = p.badChunks
            if (p.state === 'done') h.state = 'done'
            else if (p.state === 'failed') this.#fail(h.peerId, p.error ?? 'pull failed')
            else if (Date.now() - (this.#lastProgress.get(h.peerId) ?? 0) > stallMs)
              this.#fail(h.peerId, 'no progress')
          } catch (err) {
            const n = (this.#failures.get(h.peerId) ?? 0) + 1
            this.#failures.set(h.peerId, n)
            if (n >= (this.#deps.maxStatusFailures ?? 4))
              this.#fail(h.peerId, `unreachable: ${(err as Error).message}`)
          }
        }),
      )
      this.view.elapsedMs = Date.now() - this.#t0
      if (signal.aborted) throw signal.reason
      await new Promise((r) => setTimeout(r, pollMs))
    }
    const failed = this.view.hosts.some((h) => h.state === 'failed')
    const anyDone = this.view.hosts.some((h) => h.state === 'done' || h.state === 'skipped')
    this.view.state = failed ? (anyDone ? 'partial' : 'failed') : 'done'
    this.view.finishedAt = new Date().toISOString()
    this.view.elapsedMs = Date.now() - this.#t0
  }
}
