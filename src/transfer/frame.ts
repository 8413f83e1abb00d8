// Data frames: batches of pages and blocks as runs (DATA bytes, ZERO, or REF by content hash) plus one
// payload of the DATA bytes. Building on the source, strict decoding on the destination: every count,
// range and length is checked before anything is written to a VM.
import { pb } from '../proto/index.js'
import { FRAME_PAYLOAD_BYTES, HASH_BYTES, MAX_FRAME_BYTES, MAX_FRAME_UNITS, MAX_RUNS } from './constants.js'
import { ProtocolError } from './errors.js'

export type Space = 'memory' | 'disk'
export type RunKind = 'data' | 'zero' | 'ref'

export interface Run {
  space: Space
  kind: RunKind
  first: number
  count: number
  /** count x HASH_BYTES: required for REF, optional for DATA (registers the units), absent for ZERO. */
  hashes?: Uint8Array
}

export interface Geometry {
  pageSize: number
  pageCount: number
  blockSize: number
  blockCount: number
  /** REF runs and DATA hashes allowed (the offer said so). */
  dedup: boolean
}

export interface EncodedFrame {
  bytes: Uint8Array
  units: number
  rawLength: number
}

export interface ParsedFrame {
  seq: number
  round: number
  runs: Run[]
  codec: 'none' | 'lz4'
  /** As sent (compressed when codec is lz4). */
  payload: Uint8Array
  rawLength: number
}

interface OpenRun extends Omit<Run, 'hashes'> {
  hashes: Uint8Array[] | null
}

/**
 * Most hash bytes one frame carries (16384 hashes): with a full payload and MAX_RUNS runs the encoded
 * frame stays under MAX_FRAME_BYTES (1 MiB + 256 KiB + runs < 1.5 MiB).
 */
const MAX_FRAME_HASH_BYTES = 256 * 1024

/** Accumulates units into runs (consecutive units of one kind and space merge) and one payload. */
export class FrameBuilder {
  readonly #limit: number
  readonly #maxRuns: number
  #runs: OpenRun[] = []
  /** The payload, written in place (one allocation a frame instead of one a unit plus a concat). */
  #payload: Buffer | null = null
  #bytes = 0
  #units = 0
  /** Hash bytes in the runs: a frame of references carries no payload but 16 bytes a unit. */
  #hashBytes = 0

  readonly #alloc: (bytes: number) => Buffer

  /** `alloc`: where payload buffers come from (a pool of buffers of frames already acknowledged). */
  constructor(
    payloadLimit = FRAME_PAYLOAD_BYTES,
    maxRuns = MAX_RUNS,
    alloc: (bytes: number) => Buffer = Buffer.allocUnsafe,
  ) {
    this.#limit = payloadLimit
    this.#maxRuns = maxRuns
    this.#alloc = alloc
  }

  get payloadBytes(): number {
    return this.#bytes
  }

  get units(): number {
    return this.#units
  }

  get empty(): boolean {
    return this.#units === 0
  }

  /** True if a unit of `bytes` payload (and its hash) still fits (with room for a new run). */
  fits(bytes: number): boolean {
    return (
      this.#bytes + bytes <= this.#limit &&
      this.#hashBytes + HASH_BYTES <= MAX_FRAME_HASH_BYTES &&
      this.#runs.length < this.#maxRuns &&
      this.#units < MAX_FRAME_UNITS
    )
  }

  /** `data`: the bytes, or a function that copies `unit` bytes into (dst, off). */
  addData(
    space: Space,
    index: number,
    data: Uint8Array | ((dst: Uint8Array, off: number) => void),
    hash?: Uint8Array,
    unit = typeof data === 'function' ? 0 : data.length,
  ): void {
    if (typeof data === 'function' && unit === 0) throw new RangeError('addData with a copier needs its size')
    this.#payload ??= this.#alloc(this.#limit)
    if (this.#bytes + unit > this.#payload.length) throw new RangeError('frame payload overflow')
    if (typeof data === 'function') data(this.#payload, this.#bytes)
    else this.#payload.set(data, this.#bytes)
    this.#add(space, 'data', index, hash ?? null)
    this.#bytes += unit
  }

  addZero(space: Space, index: number): void {
    this.#add(space, 'zero', index, null)
  }

  addRef(space: Space, index: number, hash: Uint8Array): void {
    this.#add(space, 'ref', index, hash)
  }

  /** The runs and the raw payload so far (`buffer`: the whole buffer it is in); the builder starts over. */
  take(): { runs: Run[]; payload: Uint8Array; units: number; buffer: Buffer | null } {
    const runs: Run[] = this.#runs.map((r) => ({
      space: r.space,
      kind: r.kind,
      first: r.first,
      count: r.count,
      ...(r.hashes ? { hashes: Buffer.concat(r.hashes) } : {}),
    }))
    const payload = this.#payload ? this.#payload.subarray(0, this.#bytes) : new Uint8Array(0)
    const units = this.#units
    const buffer = this.#payload
    this.#runs = []
    this.#payload = null
    this.#bytes = 0
    this.#units = 0
    this.#hashBytes = 0
    return { runs, payload, units, buffer }
  }

  #add(space: Space, kind: RunKind, index: number, hash: Uint8Array | null): void {
    const last = this.#runs[this.#runs.length - 1]
    this.#units++
    if (hash) this.#hashBytes += hash.length
    if (
      last &&
      last.space === space &&
      last.kind === kind &&
      last.first + last.count === index &&
      (last.hashes === null) === (hash === null)
    ) {
      last.count++
      if (hash) last.hashes!.push(hash)
      return
    }
    this.#runs.push({ space, kind, first: index, count: 1, hashes: hash ? [hash] : null })
  }
}

const SPACE_TO_PB = { memory: pb.Space.MEMORY, disk: pb.Space.DISK } as const
const KIND_TO_PB = { data: pb.RunKind.DATA, zero: pb.RunKind.ZERO, ref: pb.RunKind.REF } as const

export interface FrameFields {
  seq: number
  round: number
  runs: Run[]
  payload: Uint8Array
  codec: 'none' | 'lz4'
  rawLength: number
}

/** Field 4 (`payload`), length-delimited: its key byte in the protobuf encoding. */
const PAYLOAD_KEY = (4 << 3) | 2

/**
 * The frame as parts written back to back, without copying the payload: the protobuf encoding of
 * every field but `payload`, then the payload field's key and length, then the payload itself. Fields
 * may come in any order in protobuf, so the concatenation is a valid `DataFrame` (the same bytes
 * `encodeFrame` gives, and `parseFrame` reads it unchanged).
 */
export function encodeFrameParts(f: FrameFields): Uint8Array[] {
  const head = pb.DataFrame.encode({
    seq: f.seq,
    round: f.round,
    runs: f.runs.map((r) => ({
      space: SPACE_TO_PB[r.space],
      kind: KIND_TO_PB[r.kind],
      first: r.first,
      count: r.count,
      hashes: r.hashes ?? new Uint8Array(0),
    })),
    codec: f.codec === 'lz4' ? pb.Codec.LZ4 : pb.Codec.NONE,
    rawLength: f.rawLength,
  }).finish()
  if (f.payload.length === 0) return [head]
  const key = Buffer.allocUnsafe(head.length + 1 + 5)
  key.set(head, 0)
  let off = head.length
  key[off++] = PAYLOAD_KEY
  let n = f.payload.length
  while (n >= 0x80) {
    key[off++] = (n & 0x7f) | 0x80
    n >>>= 7
  }
  key[off++] = n
  return [key.subarray(0, off), f.payload]
}

/** The frame in one buffer (tests, and channels that cannot write parts). */
export function encodeFrame(f: FrameFields): Uint8Array {
  const parts = encodeFrameParts(f)
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts)
}

/** Bytes of a frame given as parts. */
export function partsLength(parts: readonly Uint8Array[]): number {
  let n = 0
  for (const p of parts) n += p.length
  return n
}

/** Decodes and checks a frame against the VM's geometry; throws ProtocolError on anything off. */
export function parseFrame(bytes: Uint8Array, g: Geometry): ParsedFrame {
  if (bytes.length > MAX_FRAME_BYTES)
    throw new ProtocolError(`frame of ${bytes.length} bytes > ${MAX_FRAME_BYTES}`)
  let m: InstanceType<typeof pb.DataFrame>
  try {
    m = pb.DataFrame.decode(bytes)
  } catch (err) {
    throw new ProtocolError(`undecodable data frame: ${err instanceof Error ? err.message : String(err)}`)
  }
  if (m.runs.length > MAX_RUNS) throw new ProtocolError(`frame has ${m.runs.length} runs > ${MAX_RUNS}`)
  if (m.codec !== pb.Codec.NONE && m.codec !== pb.Codec.LZ4)
    throw new ProtocolError(`unknown codec ${m.codec}`)
  const runs: Run[] = []
  let units = 0
  let dataBytes = 0
  for (const r of m.runs) {
    const space: Space | undefined =
      r.space === pb.Space.MEMORY ? 'memory' : r.space === pb.Space.DISK ? 'disk' : undefined
    if (!space) throw new ProtocolError(`unknown space ${r.space}`)
    const kind: RunKind | undefined =
      r.kind === pb.RunKind.DATA
        ? 'data'
        : r.kind === pb.RunKind.ZERO
          ? 'zero'
          : r.kind === pb.RunKind.REF
            ? 'ref'
            : undefined
    if (!kind) throw new ProtocolError(`unknown run kind ${r.kind}`)
    const first = r.first ?? 0
    const count = r.count ?? 0
    const limit = space === 'memory' ? g.pageCount : g.blockCount
    const unit = space === 'memory' ? g.pageSize : g.blockSize
    if (!(count >= 1) || first + count > limit) {
      throw new ProtocolError(`run ${space} ${first}+${count} outside 0..${limit}`)
    }
    units += count
    if (units > MAX_FRAME_UNITS) throw new ProtocolError(`frame describes more than ${MAX_FRAME_UNITS} units`)
    const hashes = r.hashes && r.hashes.length > 0 ? r.hashes : undefined
    if (hashes) {
      if (!g.dedup) throw new ProtocolError('content hashes in a migration without dedup')
      if (kind === 'zero') throw new ProtocolError('hashes on a zero run')
      if (hashes.length !== count * HASH_BYTES) throw new ProtocolError('run hashes do not match its count')
    } else if (kind === 'ref') {
      throw new ProtocolError('reference run without hashes')
    }
    if (kind === 'data') dataBytes += count * unit
    runs.push({ space, kind, first, count, ...(hashes ? { hashes } : {}) })
  }
  if (dataBytes !== m.rawLength)
    throw new ProtocolError(`runs carry ${dataBytes} bytes, frame says ${m.rawLength}`)
  if (m.rawLength > FRAME_PAYLOAD_BYTES)
    throw new ProtocolError(`frame payload ${m.rawLength} > ${FRAME_PAYLOAD_BYTES}`)
  if (m.codec === pb.Codec.NONE && m.payload.length !== m.rawLength) {
    throw new ProtocolError(`payload is ${m.payload.length} bytes, frame says ${m.rawLength}`)
  }
  return {
    seq: m.seq,
    round: m.round,
    runs,
    codec: m.codec === pb.Codec.LZ4 ? 'lz4' : 'none',
    payload: m.payload,
    rawLength: m.rawLength,
  }
}
