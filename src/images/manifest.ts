// Image manifests: name, size, chunk size and the sha256 of every chunk. The image id is the sha256 of
// the encoded manifest, so a manifest from a peer is checked against the id it was asked for.
import { createHash } from 'node:crypto'
import { pb } from '../proto/index.js'
import { HASH_BYTES, IMAGE_NAME_RE, MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_MANIFEST_BYTES } from './constants.js'
import { ImagesError } from './errors.js'

export interface Manifest {
  name: string
  size: number
  chunkSize: number
  /** sha256 of each chunk, in order. */
  chunks: Uint8Array[]
}

export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest()
}

export function encodeManifest(m: Manifest): Uint8Array {
  return pb.ImageManifest.encode({
    name: m.name,
    size: m.size,
    chunkSize: m.chunkSize,
    chunks: m.chunks,
  }).finish()
}

/** The image id (hex) of an encoded manifest. */
export function imageIdOf(encoded: Uint8Array): string {
  return sha256(encoded).toString('hex')
}

/** Bytes of chunk `i` of an image (the last one may be short). */
export function chunkLength(m: Manifest, i: number): number {
  return Math.min(m.chunkSize, m.size - i * m.chunkSize)
}

/**
 * Decodes and checks a manifest (from disk or a peer): size limits, chunk count that matches the size,
 * hashes of 32 bytes; with `expectId`, its hash must be that id. Throws ImagesError BAD_REQUEST.
 */
export function decodeManifest(bytes: Uint8Array, expectId?: string): Manifest {
  if (bytes.length > MAX_MANIFEST_BYTES) throw bad(`manifest of ${bytes.length} bytes is over the limit`)
  if (expectId !== undefined && imageIdOf(bytes) !== expectId)
    throw bad(`manifest does not hash to ${expectId}`)
  let raw: ReturnType<typeof pb.ImageManifest.decode>
  try {
    raw = pb.ImageManifest.decode(bytes)
  } catch (err) {
    throw bad(`malformed manifest: ${(err as Error).message}`)
  }
  const m: Manifest = {
    name: raw.name ?? '',
    size: Number(raw.size ?? 0),
    chunkSize: raw.chunkSize ?? 0,
    chunks: (raw.chunks ?? []).map((c) => Uint8Array.from(c)),
  }
  checkManifest(m)
  return m
}

export function checkManifest(m: Manifest): void {
  if (!IMAGE_NAME_RE.test(m.name)) throw bad(`image name ${JSON.stringify(m.name)} is not valid`)
  if (!Number.isSafeInteger(m.size) || m.size < 1) throw bad(`image size ${m.size} is not valid`)
  if (!Number.isInteger(m.chunkSize) || m.chunkSize < 4096 || m.chunkSize > MAX_CHUNK_SIZE)
    throw bad(`chunk size ${m.chunkSize} is not 4 KiB..${MAX_CHUNK_SIZE}`)
  const want = Math.ceil(m.size / m.chunkSize)
  if (want > MAX_CHUNKS) throw bad(`image has ${want} chunks, more than ${MAX_CHUNKS}`)
  if (m.chunks.length !== want) throw bad(`manifest lists ${m.chunks.length} chunks, its size needs ${want}`)
  for (const h of m.chunks) if (h.length !== HASH_BYTES) throw bad('a chunk hash is not 32 bytes')
}

function bad(message: string): ImagesError {
  return new ImagesError('BAD_REQUEST', message)
}
