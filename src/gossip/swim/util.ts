// Small helpers of the SWIM service: randomness, waiting with a signal, error classification.
import { setMaxListeners } from 'node:events'
import type { DropReason } from '../types.js'

/** Fisher-Yates shuffle (in place) with the given randomness. */
export function shuffle<T>(list: T[], random: () => number): T[] {
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    const t = list[i] as T
    list[i] = list[j] as T
    list[j] = t
  }
  return list
}

/** Up to `k` distinct random elements. */
export function pickRandom<T>(list: readonly T[], k: number, random: () => number): T[] {
  return shuffle([...list], random).slice(0, Math.max(0, k))
}

/** Resolves after `ms`, or at once when `signal` aborts; never rejects. */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve()
    const done = () => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, Math.max(0, ms))
    timer.unref()
    signal?.addEventListener('abort', done, { once: true })
  })
}

/** A read that failed because of the peer's bytes (a drop), or for another reason (undefined). */
export function readErrorReason(err: unknown): DropReason | undefined {
  const name = err instanceof Error ? err.name : ''
  if (name === 'InvalidDataLengthError' || name === 'InvalidDataLengthLengthError') return 'oversized'
  if (name === 'InvalidMessageLengthError' || name === 'UnexpectedEOFError') return 'malformed'
  return undefined
}

export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

/** AbortSignal.any whose listener limit is lifted (libp2p adds several listeners per exchange). */
export function anySignal(signals: AbortSignal[]): AbortSignal {
  const signal = AbortSignal.any(signals)
  setMaxListeners(Number.POSITIVE_INFINITY, signal)
  return signal
}

/** Wait for `p`, or reject with the signal's reason when it aborts first (`p` keeps running). */
export function raceSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(asError(signal.reason))
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(asError(signal.reason))
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (err) => {
        signal.removeEventListener('abort', onAbort)
        reject(err)
      },
    )
  })
}
