// Varint-length-prefixed messages (the framing of lpStream and protobuf's encodeDelimited) cut out of
// a byte stream synchronously, as its chunks arrive: no promise per message, no byte-at-a-time
// reads of the prefix, and a message that lies inside one chunk is a view of it, not a copy.

/** What a stream's 'message' event carries: bytes, or a list of chunks (Uint8ArrayList). */
type Bytes = Uint8Array | { subarray(): Uint8Array }

export class MessageTooLargeError extends Error {
  constructor(length: number, max: number) {
    super(`message of ${length} bytes is over the ${max}-byte limit`)
    this.name = 'MessageTooLargeError'
  }
}

export class LpDecoder {
  private chunks: Uint8Array[] = []
  /** Index of the first unconsumed chunk. */
  private head = 0
  private buffered = 0
  /** Length of the message being received, once its prefix is read. */
  private need = -1

  constructor(private readonly maxLength: number) {}

  /** Bytes received; returns the messages they complete. Throws on a length over the limit. */
  push(data: Bytes): Uint8Array[] {
    const chunk = data instanceof Uint8Array ? data : data.subarray()
    if (chunk.length) {
      this.chunks.push(chunk)
      this.buffered += chunk.length
    }
    const out: Uint8Array[] = []
    for (;;) {
      if (this.need < 0) {
        const len = this.readPrefix()
        if (len === undefined) break
        if (len > this.maxLength) throw new MessageTooLargeError(len, this.maxLength)
        this.need = len
      }
      if (this.buffered < this.need) break
      out.push(this.take(this.need))
      this.need = -1
    }
    return out
  }

  /** Reads and consumes a varint prefix; undefined when it has not fully arrived. */
  private readPrefix(): number | undefined {
    let value = 0
    let shift = 0
    let size = 0
    for (let j = this.head; j < this.chunks.length; j++) {
      const c = this.chunks[j] ?? new Uint8Array(0)
      for (let i = 0; i < c.length; i++) {
        const b = c[i] ?? 0
        value += (b & 0x7f) * 2 ** shift
        size++
        if ((b & 0x80) === 0) {
          this.take(size)
          return value
        }
        shift += 7
        if (size >= 5) throw new MessageTooLargeError(2 ** 35, this.maxLength)
      }
    }
    return undefined
  }

  private take(n: number): Uint8Array {
    const first = this.chunks[this.head]
    this.buffered -= n
    if (first && first.length >= n) {
      if (first.length === n) this.advance()
      else this.chunks[this.head] = first.subarray(n)
      return first.subarray(0, n)
    }
    const out = new Uint8Array(n)
    let off = 0
    while (off < n) {
      const c = this.chunks[this.head]
      if (!c) break
      const k = Math.min(c.length, n - off)
      out.set(c.subarray(0, k), off)
      off += k
      if (k === c.length) this.advance()
      else this.chunks[this.head] = c.subarray(k)
    }
    return out
  }

  /** Drops the first chunk (an index moves; the array is compacted now and then, not shifted). */
  private advance(): void {
    this.head++
    if (this.head === this.chunks.length) {
      this.chunks = []
      this.head = 0
    } else if (this.head > 1024) {
      this.chunks = this.chunks.slice(this.head)
      this.head = 0
    }
  }
}
