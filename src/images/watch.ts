// Progress of the hosts of a push: one watch stream per host (StatusRequest.watch) that the host feeds
// whenever its progress changes, read here into a cache the push polls. Opening a libp2p stream per poll
// (every 100 ms per host) cost the pushing host more CPU than serving the image; a stream per host costs
// one message per change. A host that does not keep its stream (an older agent, a broken connection) is
// asked with one status call per poll, as before.
import type { PullProgress } from './pull.js'
import type { ImageChannel } from './wire.js'

/** A watch that said nothing for this long is dead (the server sends at least every WATCH_BEAT_MS). */
const WATCH_SILENCE_MS = 20_000
/** The server's heartbeat on a watch stream, and how often it looks at its progress. */
export const WATCH_BEAT_MS = 5_000
export const WATCH_CHECK_MS = 50
/** The server ends a watch after this long (the client then asks with status calls). */
export const WATCH_MAX_MS = 10 * 60_000

/** An ImageProgress message as decoded. */
interface ProgressMessage {
  have?: number | null
  total?: number | null
  state?: string | null
  source?: string | null
  badChunks?: number | null
  error?: string | null
  link?: string | null
}

export function toProgress(p: ProgressMessage): PullProgress {
  return {
    have: p.have ?? 0,
    total: p.total ?? 0,
    state: p.state === 'done' ? 'done' : p.state === 'failed' ? 'failed' : 'pulling',
    source: p.source || undefined,
    badChunks: p.badChunks ?? 0,
    error: p.error || undefined,
    ...(p.link === 'direct' || p.link === 'hole-punched' || p.link === 'relayed' ? { link: p.link } : {}),
  }
}

interface Watch {
  latest?: PullProgress
  live: boolean
}

/** The watches of one push (a new push of the same image watches afresh). */
export class ProgressWatches {
  readonly #watches = new Map<string, Watch>()

  constructor(
    private readonly open: (peer: string, signal: AbortSignal) => Promise<ImageChannel>,
    private readonly imageId: Uint8Array,
    private readonly signal: AbortSignal,
  ) {}

  /** The latest progress `peer` told on its watch stream (starting one), or undefined: ask it directly. */
  latest(peer: string): PullProgress | undefined {
    let w = this.#watches.get(peer)
    if (!w) {
      w = { live: true }
      this.#watches.set(peer, w)
      void this.#run(peer, w)
    }
    return w.live ? w.latest : undefined
  }

  async #run(peer: string, w: Watch): Promise<void> {
    let ch: ImageChannel | undefined
    try {
      ch = await this.open(peer, this.signal)
      await ch.sendRequest({ imageId: this.imageId, status: { watch: true } }, this.signal)
      for (;;) {
        const res = await ch.readResponse(
          AbortSignal.any([this.signal, AbortSignal.timeout(WATCH_SILENCE_MS)]),
        )
        if (!res.progress) throw new Error('no progress on the watch stream')
        w.latest = toProgress(res.progress)
        if (w.latest.state !== 'pulling') break
      }
      await ch.close()
    } catch (err) {
      ch?.abort(err as Error)
      // A final state already read stays; anything else falls back to status calls.
      if (w.latest?.state === 'pulling' || !w.latest) w.live = false
    }
  }
}
