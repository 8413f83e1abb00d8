// The client loop of one lane of a pull (pull.ts) on one channel to one source: windows of chunks taken
// from the pull's queue, two windows asked ahead so the link never idles waiting for the next request,
// every chunk verified and stored as it lands. On any failure the chunks it took and did not store go
// back to the queue (another source fetches them), then the error is thrown.
import type { ChunkQueue } from './pull.js'
import type { ImageStore } from './store.js'
import { type ImageChannel, ImageProtocolError } from './wire.js'

/** Chunks per request window. */
export const WINDOW = 2
/** Windows asked ahead: at most WINDOW x AHEAD chunks in flight (the channel's read buffer bounds it). */
export const AHEAD = 2

export async function fetchLane(
  ch: ImageChannel,
  opts: {
    store: ImageStore
    id: string
    peer: string
    queue: ChunkQueue
    /** How long the server may wait for a chunk it is itself still receiving (pipeline). */
    waitMs: number
    signal: AbortSignal
  },
): Promise<void> {
  const { store, id, peer, queue, waitMs, signal } = opts
  const imageId = Buffer.from(id, 'hex')
  // Windows asked and not finished, oldest first; each holds the indices not received yet.
  const windows: Set<number>[] = []
  const ask = async (): Promise<boolean> => {
    const w = queue.take(WINDOW)
    if (w.length === 0) return false
    windows.push(new Set(w))
    await ch.sendRequest({ imageId, chunks: { indices: w, waitMs } }, signal)
    return true
  }
  try {
    for (let k = 0; k < AHEAD; k++) if (!(await ask())) break
    while (windows.length > 0) {
      // A server waits at most waitMs for a chunk it is still receiving; more than that is a dead link.
      const res = await ch.readResponse(AbortSignal.any([signal, AbortSignal.timeout(waitMs + 15_000)]))
      if (res.done) {
        const w = windows[0]!
        if (w.size > 0) throw new ImageProtocolError(`window ended without chunks ${[...w].join(',')}`)
        windows.shift()
        await ask()
        continue
      }
      if (res.error) throw new Error(`${peer.slice(-6)}: ${res.error.code}: ${res.error.message}`)
      const c = res.chunk
      if (!c) throw new ImageProtocolError('expected a chunk')
      const index = c.index ?? 0
      const w = windows[0]!
      if (!w.has(index)) throw new ImageProtocolError(`chunk ${index} was not asked for (now)`)
      // Verified against the manifest's hash: a mismatch throws BadChunkError and the source is dropped.
      await store.writeChunk(id, index, c.data ?? new Uint8Array(), peer)
      w.delete(index)
    }
    await ch.close()
  } catch (err) {
    for (const w of windows) queue.giveBack(w)
    ch.abort(err as Error)
    throw err
  }
}
