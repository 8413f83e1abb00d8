// Bounds on repeated fields checked on the raw bytes, before a full decode builds objects for them.
import protobuf from 'protobufjs/minimal.js'

const { Reader } = protobuf

/**
 * Counts the top-level occurrences of each field number in `bytes` without decoding them. Throws
 * on bytes that are not a protobuf message.
 */
export function countFields(bytes: Uint8Array): Map<number, number> {
  const r = Reader.create(bytes)
  const counts = new Map<number, number>()
  while (r.pos < r.len) {
    const tag = r.uint32()
    const field = tag >>> 3
    if (field === 0) throw new Error('invalid field number 0')
    counts.set(field, (counts.get(field) ?? 0) + 1)
    r.skipType(tag & 7)
  }
  return counts
}

/**
 * Splits a message into the raw bytes of each top-level length-delimited occurrence of `field`,
 * so embedded messages can be checked one by one (and kept as received). Throws on bad bytes.
 */
export function rawFields(bytes: Uint8Array, field: number): Uint8Array[] {
  const r = Reader.create(bytes)
  const out: Uint8Array[] = []
  while (r.pos < r.len) {
    const tag = r.uint32()
    if (tag >>> 3 === 0) throw new Error('invalid field number 0')
    if (tag >>> 3 === field && (tag & 7) === 2) out.push(r.bytes())
    else r.skipType(tag & 7)
  }
  return out
}
