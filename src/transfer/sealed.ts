// The direct data channel's connection: length-prefixed messages over a plain TCP socket, each one an
// AES-128-GCM record of skymesh's own (handshake and keys: sealed-keys.ts, proto/transfer.proto).
//
// Why not node:tls (which this channel used before): on this 2-core machine the receiving end is the
// bottleneck, and node's TLS delivers a 1 MiB frame as 64 separate 16 KiB records, each a JS 'data'
// event with a fresh buffer, after copying the ciphertext into OpenSSL's BIO. Here the socket reads
// straight into one reused 1 MiB buffer (net's `onread`: no stream machinery, no allocation per read,
// reads of up to 1 MiB), and a whole frame is one record decrypted straight into the buffer it is
// delivered in (record-cipher.ts: by skymesh's native addon where it was built, else node:crypto).
// Measured on loopback (bench:throughput): ~1.4x node:tls with the same AES-GCM and node:crypto.
//
// The contract is `FrameChannel`'s, as for libp2p streams: garbage (a length over the limit, more
// buffered than the window allows, a record that fails authentication, a bad handshake) is a
// ProtocolError; a reset, or an end in the middle of a message, a LinkError. Nothing is handed to the
// reader before its record's tag checked out.
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { pb } from '../proto/index.js'
import { LinkError, ProtocolError } from './errors.js'
import { raiseMallocMmapThreshold } from './malloc-threshold.js'
import {
  type RecordEngine,
  type RecordOpener,
  type RecordSealer,
  recordOpener,
  recordSealer,
  RECORD_TAG_BYTES as TAG,
} from './record-cipher.js'
import {
  type DirectionKeys,
  deriveSessionKeys,
  PROOF_BYTES,
  proof,
  proofMatches,
  recordNonce,
  SEALED_NONCE_BYTES,
  SEALED_VERSION,
  type SessionKeys,
} from './sealed-keys.js'
import type { FrameChannel } from './wire.js'

const HEADER = 4
const CIPHER = 'aes-128-gcm'
/** What the channel's records are sealed with (for views and logs). */
export const SEALED_CIPHER = `AES-128-GCM, skymesh sealed v${SEALED_VERSION}`
/** Handshake messages are tiny; anything larger before the keys is garbage. */
const MAX_HANDSHAKE_MESSAGE = 256
const MAX_IDENTITY = 64
/** The socket reads into one reused buffer of this size. */
const READ_BUFFER = 1024 * 1024
/**
 * A writer goes on while less than this is queued in the socket: it encrypts the next frame while
 * the kernel takes the last (a plain socket hands queued buffers to writev as they are, no copy).
 */
const WRITE_AHEAD = 2 * 1024 * 1024
/** Smaller messages (acks, hellos) go out as one buffer instead of a corked header, body and tag. */
const ONE_BUFFER_BYTES = 16 * 1024
/** Leased messages: ones at least this large are assembled in reused buffers (see `SealedOptions`). */
const LEASE_MIN_BYTES = 64 * 1024
/** Reused buffers one connection keeps (each `maxMessage` long; only when that is <= 4 MiB). */
const LEASE_POOL = 8
const LEASE_MAX_DATA = 4 * 1024 * 1024
export const SEALED_HANDSHAKE_TIMEOUT_MS = 10_000

export interface SealedOptions {
  /** Largest message the peer may send. */
  maxMessage: number
  /** Most bytes the peer may have sent that we have not read yet (its window): more is a ProtocolError. */
  maxBuffer: number
  /**
   * 'leased': a message `read()` returns is valid only until the next `read()` (or close): its bytes
   * may then be reused for a later message (a fresh 1 MiB buffer per frame costs page faults, a reused
   * one does not). For readers that are done with a message before they ask for the next, as the
   * destination's data loop is. Default 'owned'.
   */
  messages?: 'owned' | 'leased'
  /** The handshake must be done within this (default 10 s), else the socket is destroyed. */
  handshakeTimeoutMs?: number
  /** Which code seals and opens records (record-cipher.ts); default the native addon when loaded. */
  engine?: RecordEngine
  signal?: AbortSignal
}

export interface SealedClientOptions extends SealedOptions {
  key: Uint8Array
  identity: string
}

export interface SealedServerOptions extends SealedOptions {
  /** The pre-shared key of a grant's identity, or null for an identity this side does not know. */
  lookup(identity: string): Uint8Array | null
}

type Phase =
  | { role: 'client'; step: 'welcome'; key: Uint8Array; identity: string; hello: Uint8Array; nonce: Buffer }
  | { role: 'server'; step: 'hello'; lookup: (identity: string) => Uint8Array | null }
  | { role: 'server'; step: 'proof'; expected: Buffer; keys: SessionKeys }
  | { step: 'open' }

/** Where the reader is in the incoming byte stream: a length prefix, a message body, a record's tag. */
type Stage = 'head' | 'body' | 'tag'

export class SealedFramed implements FrameChannel {
  readonly socket: net.Socket
  #phase: Phase
  /** Settled when the handshake ends (rejected by any failure before). */
  readonly #ready: Promise<void>
  #readyResolve: () => void = () => undefined
  #readyReject: (err: Error) => void = () => undefined
  #identity = ''
  readonly #maxData: number
  readonly #maxBuffer: number
  readonly #engine: RecordEngine | undefined
  // Sending
  #tx: DirectionKeys | undefined
  #sealer: RecordSealer | undefined
  #txSeq = 0
  #wrote = 0
  // Receiving: the stage, the length prefix, the message being filled, the record's opener
  #rx: DirectionKeys | undefined
  #opener: RecordOpener | undefined
  /** Whether the message being read is a record (else a handshake message, in clear). */
  #sealed = false
  #rxSeq = 0
  #stage: Stage = 'head'
  readonly #head = Buffer.alloc(HEADER)
  #headGot = 0
  #message: Buffer = Buffer.alloc(0)
  #got = 0
  readonly #tag = Buffer.alloc(TAG)
  #tagGot = 0
  // Messages ready for `read`, with the pool buffer each lives in (leased mode)
  readonly #messages: Uint8Array[] = []
  readonly #owners: (Buffer | undefined)[] = []
  #queued = 0
  readonly #free: Buffer[] | undefined
  #pooled = 0
  #lent: Buffer | undefined
  #messageOwner: Buffer | undefined
  #ended = false
  #error: Error | null = null
  /** Waiters (a read and a write waiting for room may wait at once): all re-check on any event. */
  readonly #wakers = new Set<() => void>()

  /** The client's end over a connected socket: resolves once both ends proved they hold the key. */
  static async client(socket: net.Socket, o: SealedClientOptions): Promise<SealedFramed> {
    if (o.identity.length === 0 || o.identity.length > MAX_IDENTITY)
      throw new RangeError(`a sealed identity has 1-${MAX_IDENTITY} chars`)
    const nonce = randomBytes(SEALED_NONCE_BYTES)
    const hello = pb.SealedHello.encode({ version: SEALED_VERSION, identity: o.identity, nonce }).finish()
    const f = new SealedFramed(socket, o, {
      role: 'client',
      step: 'welcome',
      key: o.key,
      identity: o.identity,
      hello,
      nonce,
    })
    f.#writePlain(hello)
    await f.#handshake(o)
    return f
  }

  /** The server's end over an accepted socket: resolves with the identity the client proved. */
  static async server(
    socket: net.Socket,
    o: SealedServerOptions,
  ): Promise<{ framed: SealedFramed; identity: string }> {
    const f = new SealedFramed(socket, o, { role: 'server', step: 'hello', lookup: o.lookup })
    await f.#handshake(o)
    return { framed: f, identity: f.#identity }
  }

  private constructor(socket: net.Socket, o: SealedOptions, phase: Phase) {
    raiseMallocMmapThreshold()
    this.#phase = phase
    this.#maxData = o.maxMessage
    this.#maxBuffer = o.maxBuffer
    this.#engine = o.engine
    if (o.messages === 'leased' && o.maxMessage <= LEASE_MAX_DATA) this.#free = []
    this.#ready = new Promise<void>((resolve, reject) => {
      this.#readyResolve = resolve
      this.#readyReject = reject
    })
    this.#ready.catch(() => undefined)
    const adopted = adoptSocket(socket, (c) => this.#onData(c))
    this.socket = adopted.socket
    this.socket.setNoDelay(true)
    this.socket.on('end', () => {
      if (this.#partial > 0) this.#fail(new LinkError('a direct data connection ended mid-message'))
      else if (this.#phase.step !== 'open') this.#fail(new LinkError('the peer closed during the handshake'))
      this.#ended = true
      this.#wakeAll()
    })
    this.socket.on('error', (err) => this.#fail(new LinkError(`direct data connection: ${err.message}`)))
    this.socket.on('drain', () => this.#wakeAll())
    this.socket.on('close', () => {
      if (!this.#ended) this.#fail(new LinkError('a direct data connection closed'))
      this.#wakeAll()
    })
    for (const b of adopted.early) this.#onData(b)
  }

  /** Waits for the handshake (bounded); on failure the socket is destroyed. */
  async #handshake(o: SealedOptions): Promise<void> {
    const ms = o.handshakeTimeoutMs ?? SEALED_HANDSHAKE_TIMEOUT_MS
    const timer = setTimeout(() => this.#fail(new LinkError(`no sealed handshake within ${ms} ms`)), ms)
    const onAbort = () => this.#fail(o.signal?.reason ?? new Error('aborted'))
    o.signal?.addEventListener('abort', onAbort, { once: true })
    try {
      if (o.signal?.aborted) onAbort()
      await this.#ready
    } catch (err) {
      this.socket.destroy()
      throw err
    } finally {
      clearTimeout(timer)
      o.signal?.removeEventListener('abort', onAbort)
    }
  }

  get written(): number {
    return this.#wrote
  }

  /** The identity the client used (server side; the grant's on the client). */
  get identity(): string {
    return this.#identity
  }

  #wakeAll(): void {
    for (const w of this.#wakers) w()
  }

  #fail(err: Error): void {
    if (this.#error) return
    this.#error = err
    this.#readyReject(err)
    this.#sealed = false
    if (err instanceof ProtocolError || err instanceof LinkError) this.socket.destroy()
    this.#wakeAll()
  }

  // ------------------------------------------------------------------ receiving

  /** A chunk the socket read (a view of the reused read buffer: consumed before this returns). */
  #onData(c: Buffer): void {
    const had = this.#messages.length
    let off = 0
    while (this.#error === null) {
      if (this.#stage === 'head') {
        if (off === c.length) break
        const take = topUp(this.#head, this.#headGot, c, off)
        this.#headGot += take
        off += take
        if (this.#headGot < HEADER) break
        if (!this.#begin(this.#head.readUInt32BE(0))) return
        this.#stage = 'body'
      }
      if (this.#stage === 'body') {
        const take = Math.min(this.#message.length - this.#got, c.length - off)
        if (take > 0) {
          this.#fill(c.subarray(off, off + take))
          off += take
        }
        if (this.#got < this.#message.length) break
        this.#stage = 'tag'
      }
      if (this.#sealed) {
        // A record: its tag, then the check
        if (off === c.length) break
        const take = topUp(this.#tag, this.#tagGot, c, off)
        this.#tagGot += take
        off += take
        if (this.#tagGot < TAG) break
        if (!this.#openRecord()) return
      } else if (!this.#onHandshake(this.#message)) return
      this.#stage = 'head'
      this.#headGot = 0
      this.#tagGot = 0
    }
    if (this.#error) return
    // The sender keeps a window of unacknowledged bytes: more than that waiting here breaks the protocol
    if (this.#queued + this.#partial > this.#maxBuffer) {
      this.#fail(new ProtocolError('the peer sent past its window'))
      return
    }
    if (this.#messages.length > had) this.#wakeAll()
  }

  /** A length prefix arrived: checks it and gets the message's buffer (and begins the record). */
  #begin(len: number): boolean {
    this.#got = 0
    if (this.#phase.step !== 'open') {
      if (len > MAX_HANDSHAKE_MESSAGE) {
        this.#fail(
          new ProtocolError(`a sealed handshake message of ${len} bytes: not a skymesh data channel`),
        )
        return false
      }
      this.#message = Buffer.alloc(len)
      return true
    }
    if (len > this.#maxData) {
      this.#fail(new ProtocolError(`bad frame length: ${len} bytes`))
      return false
    }
    const rx = this.#rx!
    this.#opener!.begin(recordNonce(rx.ivPrefix, this.#rxSeq++), this.#head)
    this.#sealed = true
    this.#message = this.#buffer(len)
    return true
  }

  /** Body bytes: copied (handshake) or decrypted (record) into the message, in order. */
  #fill(bytes: Buffer): void {
    if (this.#sealed) this.#opener!.update(bytes, this.#message, this.#got)
    else this.#message.set(bytes, this.#got)
    this.#got += bytes.length
  }

  /** The record's tag arrived: authenticates it, then queues the message for `read`. */
  #openRecord(): boolean {
    this.#sealed = false
    if (!this.#opener!.open(this.#tag)) {
      this.#fail(
        new ProtocolError('a data record failed authentication: a wrong key, or bytes altered on the way'),
      )
      return false
    }
    this.#messages.push(this.#message)
    this.#owners.push(this.#messageOwner)
    this.#queued += this.#message.length
    this.#message = EMPTY
    this.#messageOwner = undefined
    return true
  }

  /** Bytes of a message (and its framing) that arrived but not all of it yet. */
  get #partial(): number {
    return this.#headGot + (this.#stage === 'head' ? 0 : this.#got + this.#tagGot)
  }

  /** A buffer of `len` bytes for a record to be decrypted into: a pool buffer's start when leased. */
  #buffer(len: number): Buffer {
    const free = this.#free
    if (!free || len < LEASE_MIN_BYTES) return Buffer.allocUnsafe(len)
    let owner = free.pop()
    if (!owner && this.#pooled < LEASE_POOL) {
      owner = Buffer.allocUnsafeSlow(this.#maxData)
      this.#pooled++
    }
    if (!owner) return Buffer.allocUnsafe(len)
    this.#messageOwner = owner
    return owner.subarray(0, len)
  }

  // ------------------------------------------------------------------ handshake

  /** A handshake message arrived (in clear): the next step of the phase, or a failure. */
  #onHandshake(bytes: Uint8Array): boolean {
    const phase = this.#phase
    try {
      if ('role' in phase && phase.role === 'server' && phase.step === 'hello') {
        const hello = pb.SealedHello.decode(bytes)
        if (hello.version !== SEALED_VERSION)
          throw new ProtocolError(
            `sealed channel version ${hello.version}; this agent speaks ${SEALED_VERSION}`,
          )
        if (hello.nonce.length !== SEALED_NONCE_BYTES || hello.identity.length > MAX_IDENTITY)
          throw new ProtocolError('a malformed sealed hello')
        const key = phase.lookup(hello.identity)
        if (!key) throw new ProtocolError('a sealed hello for an unknown or expired grant')
        const nonce = randomBytes(SEALED_NONCE_BYTES)
        const keys = deriveSessionKeys(key, hello.identity, hello.nonce, nonce)
        this.#identity = hello.identity
        this.#phase = {
          role: 'server',
          step: 'proof',
          keys,
          expected: proof(keys.clientProofKey, bytes, nonce),
        }
        this.#writePlain(
          pb.SealedWelcome.encode({ nonce, proof: proof(keys.serverProofKey, bytes, nonce) }).finish(),
        )
        return true
      }
      if ('role' in phase && phase.role === 'server' && phase.step === 'proof') {
        const p = pb.SealedProof.decode(bytes)
        if (!proofMatches(p.proof, phase.expected))
          throw new ProtocolError('the peer does not hold the grant key (sealed proof mismatch)')
        this.#open(phase.keys.serverToClient, phase.keys.clientToServer)
        return true
      }
      if ('role' in phase && phase.role === 'client') {
        const w = pb.SealedWelcome.decode(bytes)
        if (w.nonce.length !== SEALED_NONCE_BYTES || w.proof.length !== PROOF_BYTES)
          throw new ProtocolError('a malformed sealed welcome')
        const keys = deriveSessionKeys(phase.key, phase.identity, phase.nonce, w.nonce)
        if (!proofMatches(w.proof, proof(keys.serverProofKey, phase.hello, w.nonce)))
          throw new ProtocolError(
            'the direct data listener does not hold the grant key (sealed proof mismatch)',
          )
        this.#identity = phase.identity
        this.#writePlain(
          pb.SealedProof.encode({ proof: proof(keys.clientProofKey, phase.hello, w.nonce) }).finish(),
        )
        this.#open(keys.clientToServer, keys.serverToClient)
        return true
      }
      throw new ProtocolError('an unexpected sealed handshake message')
    } catch (err) {
      this.#fail(
        err instanceof ProtocolError
          ? err
          : new ProtocolError(`an undecodable sealed handshake message: ${(err as Error).message}`),
      )
      return false
    }
  }

  #open(tx: DirectionKeys, rx: DirectionKeys): void {
    this.#tx = tx
    this.#rx = rx
    const o = { cipher: CIPHER, engine: this.#engine } as const
    this.#sealer = recordSealer(tx.key, o)
    this.#opener = recordOpener(rx.key, o)
    this.#phase = { step: 'open' }
    this.#readyResolve()
  }

  #writePlain(bytes: Uint8Array): void {
    const b = Buffer.allocUnsafe(HEADER + bytes.length)
    b.writeUInt32BE(bytes.length, 0)
    b.set(bytes, HEADER)
    this.socket.write(b)
  }

  // ------------------------------------------------------------------ the FrameChannel

  async write(message: Uint8Array | readonly Uint8Array[], signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted()
    if (this.#error) throw this.#error
    if (this.socket.destroyed || this.socket.writableEnded)
      throw new LinkError('a direct data connection closed')
    const tx = this.#tx
    const sealer = this.#sealer
    if (!tx || !sealer) throw new LinkError('the direct data connection is not open yet')
    const parts = message instanceof Uint8Array ? [message] : message
    let length = 0
    for (const p of parts) length += p.length
    const head = Buffer.allocUnsafe(HEADER)
    head.writeUInt32BE(length, 0)
    const record = sealer.seal(recordNonce(tx.ivPrefix, this.#txSeq++), head, parts, length)
    const out = record.buffers
    // The socket's callback runs once the kernel has the bytes: a reused buffer may then be reused
    if (out.length === 1) this.socket.write(out[0]!, record.release)
    else if (length < ONE_BUFFER_BYTES) this.socket.write(Buffer.concat(out))
    else {
      // One writev of all the pieces: a plain socket passes them to the kernel as they are
      this.socket.cork()
      for (const b of out) this.socket.write(b)
      this.socket.uncork()
    }
    this.#wrote += HEADER + length + TAG
    if (this.socket.writableLength <= WRITE_AHEAD) return
    await this.#until(() => this.socket.writableLength <= WRITE_AHEAD, signal)
  }

  async read(signal?: AbortSignal): Promise<Uint8Array | null> {
    // Leased: the caller is done with the message it read before
    if (this.#lent) {
      this.#free?.push(this.#lent)
      this.#lent = undefined
    }
    while (true) {
      const m = this.#messages.shift()
      if (m) {
        this.#lent = this.#owners.shift()
        this.#queued -= m.length
        return m
      }
      if (this.#error) throw this.#error
      if (this.#ended) return null
      await this.#until(() => this.#messages.length > 0 || this.#error !== null || this.#ended, signal)
    }
  }

  /** Waits for `ready` (re-checked on every data, drain, end or error event of the socket). */
  async #until(ready: () => boolean, signal: AbortSignal | undefined): Promise<void> {
    while (!ready()) {
      signal?.throwIfAborted()
      if (this.#error) throw this.#error
      if (this.socket.destroyed && !this.#ended) throw new LinkError('a direct data connection closed')
      let wake: (() => void) | undefined
      await new Promise<void>((resolve) => {
        wake = resolve
        this.#wakers.add(wake)
        signal?.addEventListener('abort', wake, { once: true })
      })
      if (wake) {
        this.#wakers.delete(wake)
        signal?.removeEventListener('abort', wake)
      }
    }
    signal?.throwIfAborted()
  }

  async close(): Promise<void> {
    if (this.socket.destroyed) return
    this.socket.end()
    const t = setTimeout(() => this.socket.destroy(), 2000)
    t.unref()
    try {
      if (!this.socket.destroyed) await new Promise((r) => this.socket.once('close', r))
    } finally {
      clearTimeout(t)
    }
  }

  abort(err: Error): void {
    this.#fail(err)
    this.socket.destroy()
  }
}

const EMPTY = Buffer.alloc(0)

/** Copies from `c` (at `off`) into a fixed-size field that holds `got` bytes so far; returns the bytes taken. */
function topUp(field: Buffer, got: number, c: Buffer, off: number): number {
  const take = Math.min(field.length - got, c.length - off)
  c.copy(field, got, off, off + take)
  return take
}

/**
 * Takes over a connected socket's handle in a socket that reads with net's `onread` (into one reused
 * buffer, handed to `onData`, which must consume it at once). Node offers `onread` only to sockets it
 * creates for `net.connect`; an accepted socket (a server with `pauseOnConnect`, so nothing was read
 * yet) or a hole-punched one gets it this way. `early`: bytes the old socket had already buffered
 * (they come before anything `onData` gets).
 */
export function adoptSocket(
  old: net.Socket,
  onData: (chunk: Buffer) => void,
): { socket: net.Socket; early: Buffer[] } {
  const holder = old as unknown as { _handle: unknown }
  const handle = holder._handle
  if (!handle) throw new LinkError('a direct data connection closed before it was set up')
  old.pause()
  const early: Buffer[] = []
  for (let b = old.read() as Buffer | null; b !== null; b = old.read() as Buffer | null) early.push(b)
  // The handle is ours: the old socket is destroyed without closing it (a server counts it gone)
  holder._handle = null
  old.destroy()
  const buffer = Buffer.allocUnsafeSlow(READ_BUFFER)
  const socket = new net.Socket({
    handle,
    readable: true,
    writable: true,
    onread: { buffer, callback: (n: number) => void onData(buffer.subarray(0, n)) },
  } as net.SocketConstructorOpts)
  return { socket, early }
}
