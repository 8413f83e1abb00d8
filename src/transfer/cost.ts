// Measured rates that decide, frame by frame, whether to compress and whether to hash for dedup.
import type { CompressionChoice, DedupChoice } from './options.js'
import { shouldCompress, shouldHash } from './policy.js'
import { Ewma, RateMeter } from './rate.js'

/** In auto mode, one frame in PROBE_EVERY is compressed (or hashed) anyway to keep the figures fresh. */
const PROBE_EVERY = 16

export class CostModel {
  /** Acknowledged wire bytes, all streams: the end-to-end link rate. */
  readonly link = new RateMeter(1000)
  readonly codecBps = new Ewma()
  readonly ratio = new Ewma()
  readonly hashBps = new Ewma()
  readonly hitRatio = new Ewma()
  #frames = 0

  constructor(
    readonly compression: CompressionChoice,
    readonly dedup: DedupChoice,
  ) {}

  /** Whether the next frame is compressed. */
  compressNext(): boolean {
    if (this.compression !== 'auto') return this.compression === 'on'
    this.#frames++
    if (this.#frames % PROBE_EVERY === 1) return true
    return shouldCompress(this.link.rate(), this.codecBps.value, this.ratio.value)
  }

  /** Whether the next frame's units are hashed for dedup. */
  hashNext(): boolean {
    if (this.dedup !== 'auto') return this.dedup === 'on'
    if (this.#frames % PROBE_EVERY === 2) return true
    return shouldHash(this.link.rate(), this.hashBps.value, this.hitRatio.value)
  }

  recordCompression(rawBytes: number, outBytes: number, ms: number): void {
    if (rawBytes <= 0) return
    this.ratio.add(outBytes / rawBytes)
    this.codecBps.add((rawBytes / Math.max(ms, 0.01)) * 1000)
  }

  recordHashing(bytes: number, hits: number, units: number, ms: number): void {
    if (units <= 0) return
    this.hitRatio.add(hits / units)
    this.hashBps.add((bytes / Math.max(ms, 0.01)) * 1000)
  }
}
