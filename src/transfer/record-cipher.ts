// The sealed channel's records, sealed and opened by one of two engines with the same bytes on the
// wire (AES-GCM; the 4-byte length prefix is the additional authenticated data):
// - 'openssl': skymesh's native addon (native-gcm.ts) writes ciphertext straight into a reused send
//   buffer, and plaintext straight into the message a record is read into;
// - 'node:crypto': node's Cipher/Decipher, whose every update returns a fresh buffer (allocated,
//   zero-filled, then copied once more into place).
// Measured on this 2-core host (bench:throughput): the sending end spends ~0.35 ms per MiB sealing
// with node:crypto against ~0.25 with the addon; the socket's share is ~0.3.
import { createCipheriv, createDecipheriv, type DecipherGCM } from 'node:crypto'
import { type NativeGcm, type NativeGcmContext, nativeGcm, nativeGcmState } from './native-gcm.js'

export type RecordEngine = 'openssl' | 'node:crypto'
export const RECORD_TAG_BYTES = 16

/** One sealed record, as the buffers to write in order; `release` once the socket has taken them. */
export interface SealedRecord {
  buffers: Buffer[]
  release?: () => void
}

export interface RecordSealer {
  /** `head` (the length prefix) leads the record and is its AAD; `parts` hold `length` bytes. */
  seal(nonce: Uint8Array, head: Buffer, parts: readonly Uint8Array[], length: number): SealedRecord
}

export interface RecordOpener {
  begin(nonce: Uint8Array, aad: Uint8Array): void
  /** Decrypts the record's next bytes into `out` at `at`. */
  update(bytes: Uint8Array, out: Buffer, at: number): void
  /** Whether the record's tag authenticates it (the plaintext must not be used otherwise). */
  open(tag: Uint8Array): boolean
}

export interface RecordCipherOptions {
  cipher: 'aes-128-gcm' | 'aes-256-gcm'
  /** Force an engine (tests, benchmarks); default: the addon when it loaded. */
  engine?: RecordEngine
}

/** Most bytes per node:crypto call: its outputs are allocated, and many small ones cost more. */
const NODE_SLICE = 256 * 1024
/** Records at least this large are sealed into reused buffers (smaller ones into fresh ones). */
const POOLED_MIN_BYTES = 64 * 1024
/** Reused send buffers per sealer: the socket's write-ahead (2 MiB) plus the record being sealed. */
const SEND_POOL = 6
/** Records larger than this are sealed into a fresh buffer each (a pool of them would hold too much). */
const POOLED_MAX_BYTES = 4 * 1024 * 1024
/** Pooled buffers are sized up to a multiple of this (a frame's size varies by its run list). */
const POOL_ROUNDING = 64 * 1024

export function recordSealer(key: Buffer, o: RecordCipherOptions): RecordSealer {
  const gcm = pickEngine(o.engine)
  return gcm ? new NativeSealer(gcm, key) : new NodeSealer(key, o.cipher)
}

export function recordOpener(key: Buffer, o: RecordCipherOptions): RecordOpener {
  const gcm = pickEngine(o.engine)
  return gcm ? new NativeOpener(gcm, key) : new NodeOpener(key, o.cipher)
}

/** What seals and opens this process's records by default (for logs and benchmark tables). */
export function describeSealedEngine(): string {
  const s = nativeGcmState()
  return s.loaded
    ? `AES-GCM by skymesh's native addon (node's OpenSSL ${process.versions.openssl}, into reused buffers)`
    : `AES-GCM by node:crypto; the native addon is not used: ${s.reason}`
}

function pickEngine(engine: RecordEngine | undefined): NativeGcm | null {
  if (engine === 'node:crypto') return null
  const gcm = nativeGcm()
  if (engine === 'openssl' && !gcm) throw new Error('the native AES-GCM addon is not loaded')
  return gcm
}

class NativeSealer implements RecordSealer {
  readonly #gcm: NativeGcm
  readonly #ctx: NativeGcmContext
  readonly #free: Buffer[] = []
  #pooled = 0

  constructor(gcm: NativeGcm, key: Buffer) {
    this.#gcm = gcm
    this.#ctx = gcm.create(key, true)
  }

  seal(nonce: Uint8Array, head: Buffer, parts: readonly Uint8Array[], length: number): SealedRecord {
    const size = head.length + length + RECORD_TAG_BYTES
    const owner = this.#take(length, size)
    const out = owner ? owner.subarray(0, size) : Buffer.allocUnsafe(size)
    out.set(head, 0)
    const gcm = this.#gcm
    gcm.begin(this.#ctx, nonce, head)
    let at = head.length
    for (const p of parts) {
      gcm.update(this.#ctx, p, out.subarray(at, at + p.length))
      at += p.length
    }
    gcm.seal(this.#ctx, out.subarray(at, at + RECORD_TAG_BYTES))
    return owner ? { buffers: [out], release: () => this.#free.push(owner) } : { buffers: [out] }
  }

  /** A reused buffer for a large record, or undefined (then the record gets a fresh one). */
  #take(length: number, size: number): Buffer | undefined {
    if (length < POOLED_MIN_BYTES || length > POOLED_MAX_BYTES) return undefined
    const b = this.#free.pop()
    if (b && b.length >= size) return b
    // Too small for this record (records of one transfer are nearly all one size): make a larger one
    if (!b && this.#pooled >= SEND_POOL) return undefined
    if (!b) this.#pooled++
    return Buffer.allocUnsafeSlow(Math.ceil(size / POOL_ROUNDING) * POOL_ROUNDING)
  }
}

class NativeOpener implements RecordOpener {
  readonly #gcm: NativeGcm
  readonly #ctx: NativeGcmContext

  constructor(gcm: NativeGcm, key: Buffer) {
    this.#gcm = gcm
    this.#ctx = gcm.create(key, false)
  }

  begin(nonce: Uint8Array, aad: Uint8Array): void {
    this.#gcm.begin(this.#ctx, nonce, aad)
  }

  update(bytes: Uint8Array, out: Buffer, at: number): void {
    this.#gcm.update(this.#ctx, bytes, out.subarray(at, at + bytes.length))
  }

  open(tag: Uint8Array): boolean {
    return this.#gcm.open(this.#ctx, tag)
  }
}

class NodeSealer implements RecordSealer {
  constructor(
    readonly key: Buffer,
    readonly cipher: RecordCipherOptions['cipher'],
  ) {}

  seal(nonce: Uint8Array, head: Buffer, parts: readonly Uint8Array[]): SealedRecord {
    const c = createCipheriv(this.cipher, this.key, nonce)
    c.setAAD(head)
    const buffers: Buffer[] = [head]
    for (const p of parts)
      for (let o = 0; o < p.length; o += NODE_SLICE) buffers.push(c.update(p.subarray(o, o + NODE_SLICE)))
    c.final()
    buffers.push(c.getAuthTag())
    return { buffers }
  }
}

class NodeOpener implements RecordOpener {
  #decipher: DecipherGCM | undefined

  constructor(
    readonly key: Buffer,
    readonly cipher: RecordCipherOptions['cipher'],
  ) {}

  begin(nonce: Uint8Array, aad: Uint8Array): void {
    this.#decipher = createDecipheriv(this.cipher, this.key, nonce)
    this.#decipher.setAAD(aad)
  }

  update(bytes: Uint8Array, out: Buffer, at: number): void {
    const d = this.#decipher!
    for (let o = 0; o < bytes.length; o += NODE_SLICE) {
      const plain = d.update(bytes.subarray(o, o + NODE_SLICE))
      // TypedArray set: a plain memcpy (Buffer#copy checks its arguments in JS first)
      out.set(plain, at)
      at += plain.length
    }
  }

  open(tag: Uint8Array): boolean {
    const d = this.#decipher!
    this.#decipher = undefined
    try {
      d.setAuthTag(tag)
      d.final()
      return true
    } catch {
      return false
    }
  }
}
