// lz4 (lz4-napi: napi-rs prebuilt binaries shipped in npm packages) for data frame payloads. Compression
// runs on the libuv thread pool (async), so it overlaps the main thread's encryption. Decompression
// checks the size prefix against the frame's declared length before allocating: a peer cannot make
// us allocate more than a frame.
import { compress, uncompress } from 'lz4-napi'
import { ProtocolError } from './errors.js'

/** lz4 block with a 4-byte little-endian size prefix. */
export async function compressPayload(data: Uint8Array): Promise<Uint8Array> {
  const out = await compress(toBuffer(data))
  return out
}

/** Decompresses a payload that must expand to exactly `rawLength` (<= `max`) bytes. */
export async function decompressPayload(
  data: Uint8Array,
  rawLength: number,
  max: number,
): Promise<Uint8Array> {
  if (rawLength > max) throw new ProtocolError(`compressed frame declares ${rawLength} bytes > ${max}`)
  if (data.length < 4) throw new ProtocolError('compressed payload is truncated')
  const declared = data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)
  if (declared >>> 0 !== rawLength) {
    throw new ProtocolError(`compressed payload expands to ${declared >>> 0} bytes, frame says ${rawLength}`)
  }
  let out: Buffer
  try {
    out = await uncompress(toBuffer(data))
  } catch (err) {
    throw new ProtocolError(`corrupt lz4 payload: ${err instanceof Error ? err.message : String(err)}`)
  }
  if (out.length !== rawLength)
    throw new ProtocolError(`lz4 payload expanded to ${out.length} bytes, not ${rawLength}`)
  return out
}

function toBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)
}
