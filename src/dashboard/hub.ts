// The dashboard's event stream: one hub per agent subscribes once to the agent's changes, recomputes
// the sections that depend on them at most every `flushMs`, and sends each connected browser a
// snapshot when it connects, then only what changed (server-sent events). Everything it keeps is
// bounded: the history ring, the finished migrations, the clients, and each client's unsent bytes (a
// browser that stops reading is dropped; its EventSource reconnects and starts from a new snapshot).
import type { Logger } from 'pino'
import type {
  ChangeKind,
  DashboardSource,
  DashMigration,
  Delta,
  HistoryPoint,
  Section,
  Snapshot,
} from './types.js'
import { buildMigrations, buildVms, historyPoint, MoveTracker } from './view.js'

/** Where the hub writes one browser's stream (node's ServerResponse fits). */
export interface SseSink {
  write(chunk: string): boolean
  readonly writableLength: number
  end(): void
}

export interface HubInit {
  source: DashboardSource
  logger?: Logger
  /** Coalescing delay between a change and its delta (default 250 ms). */
  flushMs?: number
  /** Sections that change without an event (load, placement, images) are re-read this often (default 1 s). */
  refreshMs?: number
  /** One point of the active-hosts chart this often (default 5 s)… */
  historyEveryMs?: number
  /** …keeping this many (default 720: an hour at 5 s). */
  historyMax?: number
  /** Finished migrations shown (default 20). */
  maxFinished?: number
  /** Browsers streaming at once (default 16). */
  maxClients?: number
  /** Unsent bytes a browser may fall behind by before it is dropped (default 1 MiB). */
  maxBacklogBytes?: number
  /** A comment line this often keeps proxies and dead-connection detection honest (default 15 s). */
  heartbeatMs?: number
  now?: () => number
}

export class TooManyClientsError extends Error {
  constructor(max: number) {
    super(`at most ${max} dashboard streams at once`)
    this.name = 'TooManyClientsError'
  }
}

const SECTIONS: Section[] = ['meta', 'hosts', 'vms', 'placement', 'images', 'vclusters']

export class DashboardHub {
  private readonly source: DashboardSource
  private readonly log?: Logger
  private readonly flushMs: number
  private readonly refreshMs: number
  private readonly historyEveryMs: number
  private readonly historyMax: number
  private readonly maxFinished: number
  private readonly maxClients: number
  private readonly maxBacklogBytes: number
  private readonly heartbeatMs: number
  private readonly now: () => number
  private readonly clients = new Set<SseSink>()
  private readonly moves = new MoveTracker()
  private readonly history: HistoryPoint[] = []
  /** Last JSON sent per section and per migration: a delta goes out only when it differs. */
  private readonly sent = new Map<string, string>()
  private readonly sentMigrations = new Map<string, string>()
  private dirty = new Set<Section | 'migrations'>()
  private flushTimer?: NodeJS.Timeout
  private refreshTimer?: NodeJS.Timeout
  private historyTimer?: NodeJS.Timeout
  private heartbeatTimer?: NodeJS.Timeout
  private unwatch?: () => void
  private seq = 0
  private running = false
  /** Deltas sent (all clients count once); for tests and metrics. */
  deltas = 0
  dropped = 0

  constructor(init: HubInit) {
    this.source = init.source
    this.log = init.logger
    this.flushMs = init.flushMs ?? 250
    this.refreshMs = init.refreshMs ?? 1000
    this.historyEveryMs = init.historyEveryMs ?? 5000
    this.historyMax = init.historyMax ?? 720
    this.maxFinished = init.maxFinished ?? 20
    this.maxClients = init.maxClients ?? 16
    this.maxBacklogBytes = init.maxBacklogBytes ?? 1024 * 1024
    this.heartbeatMs = init.heartbeatMs ?? 15_000
    this.now = init.now ?? Date.now
  }

  start(): void {
    if (this.running) return
    this.running = true
    this.unwatch = this.source.agent.watch?.((what) => this.changed(what))
    this.refreshTimer = setInterval(() => {
      for (const s of ['hosts', 'vms', 'placement', 'images', 'vclusters', 'migrations'] as const)
        this.dirty.add(s)
      this.schedule()
    }, this.refreshMs)
    this.historyTimer = setInterval(() => this.sample(), this.historyEveryMs)
    this.heartbeatTimer = setInterval(() => this.broadcast(': ping\n\n'), this.heartbeatMs)
    for (const t of [this.refreshTimer, this.historyTimer, this.heartbeatTimer]) t.unref()
    this.sample()
  }

  stop(): void {
    this.running = false
    this.unwatch?.()
    this.unwatch = undefined
    for (const t of [this.refreshTimer, this.historyTimer, this.heartbeatTimer]) clearInterval(t)
    clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    for (const c of this.clients) c.end()
    this.clients.clear()
  }

  /** The agent changed: its sections go out with the next flush. */
  changed(what: ChangeKind): void {
    if (what === 'migrations') this.dirty.add('migrations')
    else {
      this.dirty.add('hosts')
      this.dirty.add('vms')
    }
    this.schedule()
  }

  /** Adds a browser: it gets a snapshot now, then the deltas. Returns its removal. */
  addClient(sink: SseSink): () => void {
    if (this.clients.size >= this.maxClients) throw new TooManyClientsError(this.maxClients)
    this.clients.add(sink)
    // Its snapshot may be newer than what the others were sent: the next flush sends every section
    // again (deltas replace whole sections, so a repeat is harmless).
    this.sent.clear()
    this.sentMigrations.clear()
    for (const s of SECTIONS) this.dirty.add(s)
    this.dirty.add('migrations')
    this.schedule()
    // A reconnecting EventSource waits this long (ms) before it tries again.
    this.send(
      sink,
      `retry: 2000\nid: ${++this.seq}\nevent: snapshot\ndata: ${JSON.stringify(this.snapshot())}\n\n`,
    )
    return () => {
      this.clients.delete(sink)
    }
  }

  get clientCount(): number {
    return this.clients.size
  }

  /** Sizes of everything the hub keeps, for tests that check nothing grows without bound. */
  footprint(): { clients: number; history: number; sections: number; migrations: number; tracked: number } {
    return {
      clients: this.clients.size,
      history: this.history.length,
      sections: this.sent.size,
      migrations: this.sentMigrations.size,
      tracked: this.moves.size,
    }
  }

  snapshot(): Snapshot {
    const now = this.now()
    const vms = buildVms(this.source, this.moves, now)
    const snap: Snapshot = {
      serverNow: now,
      meta: this.source.agent.nodeInfo(),
      hosts: this.source.agent.cluster().hosts,
      vms,
      migrations: buildMigrations(this.source.agent.listMigrations(), vms, this.maxFinished),
      placement: this.source.placement?.status() ?? null,
      history: [...this.history],
      images: this.safe(() => this.source.images?.listImages() ?? null),
      vclusters: this.safe(() => this.source.images?.listVclusters() ?? null),
    }
    return snap
  }

  private schedule(): void {
    // Nobody watching: nothing to send (a new client starts from a snapshot and marks all dirty).
    if (!this.running || this.flushTimer || this.clients.size === 0) return
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined
      this.flush()
    }, this.flushMs)
    this.flushTimer.unref()
  }

  /** Recomputes dirty sections and sends what differs from what was sent last. */
  flush(): void {
    const dirty = this.dirty
    this.dirty = new Set()
    if (this.clients.size === 0) {
      // Nobody watches: forget what was sent, so the next client's deltas start from its snapshot.
      this.sent.clear()
      this.sentMigrations.clear()
      return
    }
    const now = this.now()
    let vms: ReturnType<typeof buildVms> | undefined
    const getVms = () => {
      vms ??= buildVms(this.source, this.moves, now)
      return vms
    }
    for (const section of SECTIONS) {
      if (!dirty.has(section)) continue
      const data = this.read(section, getVms)
      const json = JSON.stringify(data)
      if (this.sent.get(section) === json) continue
      this.sent.set(section, json)
      this.emit({ section, data })
    }
    if (dirty.has('migrations')) {
      const list = buildMigrations(this.source.agent.listMigrations(), getVms(), this.maxFinished)
      const ids = new Set<string>()
      for (const m of list) {
        ids.add(m.id)
        const json = JSON.stringify(m)
        if (this.sentMigrations.get(m.id) === json) continue
        this.sentMigrations.set(m.id, json)
        this.emit({ section: 'migration', data: m as DashMigration })
      }
      for (const id of [...this.sentMigrations.keys()]) {
        if (ids.has(id)) continue
        this.sentMigrations.delete(id)
        this.emit({ section: 'migration-gone', data: id })
      }
    }
  }

  private read(section: Section, vms: () => ReturnType<typeof buildVms>): unknown {
    switch (section) {
      case 'meta':
        return this.source.agent.nodeInfo()
      case 'hosts':
        return this.source.agent.cluster().hosts
      case 'vms':
        return vms()
      case 'placement':
        return this.source.placement?.status() ?? null
      case 'images':
        return this.safe(() => this.source.images?.listImages() ?? null)
      case 'vclusters':
        return this.safe(() => this.source.images?.listVclusters() ?? null)
    }
  }

  /** Adds one point to the active-hosts history (the timer calls it; tests too). */
  sample(): void {
    try {
      const now = this.now()
      const point = historyPoint(this.source, buildVms(this.source, this.moves, now), now)
      this.history.push(point)
      while (this.history.length > this.historyMax) this.history.shift()
      this.emit({ section: 'history', data: point })
    } catch (err) {
      this.log?.debug({ err }, 'dashboard: no history point')
    }
  }

  private emit(delta: Delta): void {
    if (this.clients.size === 0) return
    this.deltas++
    this.broadcast(`id: ${++this.seq}\nevent: delta\ndata: ${JSON.stringify(delta)}\n\n`)
  }

  private broadcast(chunk: string): void {
    for (const c of this.clients) this.send(c, chunk)
  }

  private send(sink: SseSink, chunk: string): void {
    if (sink.writableLength > this.maxBacklogBytes) {
      this.clients.delete(sink)
      this.dropped++
      this.log?.debug('dashboard: a browser fell behind its stream; dropped (it reconnects)')
      sink.end()
      return
    }
    sink.write(chunk)
  }

  private safe<T>(fn: () => T): T | null {
    try {
      return fn()
    } catch {
      return null
    }
  }
}
