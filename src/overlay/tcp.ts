// TCP segments (RFC 9293) over IPv4: parse and build, with the pseudo-header checksum. Just what the
// metadata responder needs; options other than MSS are skipped.
import { inetChecksum, ipToBytes } from './frame.js'

export const IP_PROTO_TCP = 6

export const TCP_FIN = 0x01
export const TCP_SYN = 0x02
export const TCP_RST = 0x04
export const TCP_PSH = 0x08
export const TCP_ACK = 0x10

export interface TcpSegment {
  srcPort: number
  dstPort: number
  seq: number
  ack: number
  flags: number
  window: number
  /** The MSS option, when present (SYN). */
  mss?: number
  payload: Uint8Array
}

/** The checksum over the IPv4 pseudo-header and the segment (zero when a received segment is intact). */
export function tcpChecksum(src: string, dst: string, segment: Uint8Array): number {
  const buf = new Uint8Array(12 + segment.length)
  buf.set(ipToBytes(src), 0)
  buf.set(ipToBytes(dst), 4)
  buf[9] = IP_PROTO_TCP
  buf[10] = (segment.length >> 8) & 0xff
  buf[11] = segment.length & 0xff
  buf.set(segment, 12)
  return inetChecksum(buf)
}

/** A segment carried by an IPv4 packet from `src` to `dst`; undefined if malformed or corrupt. */
export function parseTcp(src: string, dst: string, buf: Uint8Array): TcpSegment | undefined {
  if (buf.length < 20) return undefined
  const off = ((buf[12] ?? 0) >> 4) * 4
  if (off < 20 || off > buf.length) return undefined
  if (tcpChecksum(src, dst, buf) !== 0) return undefined
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  let mss: number | undefined
  for (let i = 20; i < off; ) {
    const kind = buf[i] ?? 0
    if (kind === 0) break
    if (kind === 1) {
      i++
      continue
    }
    const len = buf[i + 1] ?? 0
    if (len < 2 || i + len > off) return undefined
    if (kind === 2 && len === 4) mss = v.getUint16(i + 2)
    i += len
  }
  return {
    srcPort: v.getUint16(0),
    dstPort: v.getUint16(2),
    seq: v.getUint32(4),
    ack: v.getUint32(8),
    flags: (buf[13] ?? 0) & 0x3f,
    window: v.getUint16(14),
    ...(mss !== undefined ? { mss } : {}),
    payload: buf.subarray(off),
  }
}

/** A segment from `src` to `dst` with its checksum (MSS option when `mss` is given). */
export function buildTcp(src: string, dst: string, s: TcpSegment): Uint8Array {
  const opt = s.mss !== undefined ? 4 : 0
  const out = new Uint8Array(20 + opt + s.payload.length)
  const v = new DataView(out.buffer)
  v.setUint16(0, s.srcPort)
  v.setUint16(2, s.dstPort)
  v.setUint32(4, s.seq >>> 0)
  v.setUint32(8, s.ack >>> 0)
  out[12] = ((20 + opt) / 4) << 4
  out[13] = s.flags
  v.setUint16(14, s.window)
  if (s.mss !== undefined) {
    out[20] = 2
    out[21] = 4
    v.setUint16(22, s.mss)
  }
  out.set(s.payload, 20 + opt)
  v.setUint16(16, tcpChecksum(src, dst, out))
  return out
}

/** Sequence-number arithmetic modulo 2^32. */
export const seqAdd = (a: number, n: number) => (a + n) >>> 0
/** a - b as a signed 32-bit distance. */
export const seqDiff = (a: number, b: number) => ((a - b) | 0) as number
