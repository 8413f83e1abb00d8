// Ethernet II frames, ARP for IPv4 over Ethernet, and just enough of IPv4/ICMP to count, proxy
// and answer pings. Pure functions over Uint8Array; parsers return undefined for malformed input.
import { type Mac, macFromBytes, macToBytes } from './mac.js'

export const ETH_HEADER = 14
export const ETHERTYPE_IPV4 = 0x0800
export const ETHERTYPE_ARP = 0x0806
export const ETHERTYPE_RARP = 0x8035

export interface EthernetFrame {
  dst: Mac
  src: Mac
  ethertype: number
  payload: Uint8Array
}

export function parseEthernet(buf: Uint8Array): EthernetFrame | undefined {
  if (buf.length < ETH_HEADER) return undefined
  return {
    dst: macFromBytes(buf, 0),
    src: macFromBytes(buf, 6),
    ethertype: ((buf[12] ?? 0) << 8) | (buf[13] ?? 0),
    payload: buf.subarray(ETH_HEADER),
  }
}

export function buildEthernet(dst: Mac, src: Mac, ethertype: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(ETH_HEADER + payload.length)
  out.set(macToBytes(dst), 0)
  out.set(macToBytes(src), 6)
  out[12] = (ethertype >> 8) & 0xff
  out[13] = ethertype & 0xff
  out.set(payload, ETH_HEADER)
  return out
}

// ---------------------------------------------------------------- ARP (RFC 826), IPv4 over Ethernet

export const ARP_REQUEST = 1
export const ARP_REPLY = 2
const ARP_LENGTH = 28

export interface ArpPacket {
  op: number
  senderMac: Mac
  senderIp: string
  targetMac: Mac
  targetIp: string
}

export function parseArp(payload: Uint8Array): ArpPacket | undefined {
  if (payload.length < ARP_LENGTH) return undefined
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength)
  if (v.getUint16(0) !== 1 || v.getUint16(2) !== ETHERTYPE_IPV4) return undefined
  if (payload[4] !== 6 || payload[5] !== 4) return undefined
  const op = v.getUint16(6)
  if (op !== ARP_REQUEST && op !== ARP_REPLY) return undefined
  return {
    op,
    senderMac: macFromBytes(payload, 8),
    senderIp: ipFromBytes(payload, 14),
    targetMac: macFromBytes(payload, 18),
    targetIp: ipFromBytes(payload, 24),
  }
}

export function buildArp(p: ArpPacket): Uint8Array {
  const out = new Uint8Array(ARP_LENGTH)
  const v = new DataView(out.buffer)
  v.setUint16(0, 1)
  v.setUint16(2, ETHERTYPE_IPV4)
  out[4] = 6
  out[5] = 4
  v.setUint16(6, p.op)
  out.set(macToBytes(p.senderMac), 8)
  out.set(ipToBytes(p.senderIp), 14)
  out.set(macToBytes(p.targetMac), 18)
  out.set(ipToBytes(p.targetIp), 24)
  return out
}

/** The whole frame of an ARP reply telling `asker` that `ip` is at `mac`. */
export function arpReplyFrame(asker: { mac: Mac; ip: string }, answer: { mac: Mac; ip: string }): Uint8Array {
  const arp = buildArp({
    op: ARP_REPLY,
    senderMac: answer.mac,
    senderIp: answer.ip,
    targetMac: asker.mac,
    targetIp: asker.ip,
  })
  return buildEthernet(asker.mac, answer.mac, ETHERTYPE_ARP, arp)
}

/** Gratuitous ARP (a broadcast request for one's own address): "ip is at mac", refreshes caches. */
export function gratuitousArpFrame(mac: Mac, ip: string): Uint8Array {
  const arp = buildArp({
    op: ARP_REQUEST,
    senderMac: mac,
    senderIp: ip,
    targetMac: '00:00:00:00:00:00',
    targetIp: ip,
  })
  return buildEthernet('ff:ff:ff:ff:ff:ff', mac, ETHERTYPE_ARP, arp)
}

/** RARP "request reverse" (RFC 903) for one's own MAC, as QEMU's announce-self sends: switches learn the MAC. */
export const RARP_REQUEST_REVERSE = 3

export function rarpAnnounceFrame(mac: Mac): Uint8Array {
  const arp = buildArp({
    op: ARP_REQUEST,
    senderMac: mac,
    senderIp: '0.0.0.0',
    targetMac: mac,
    targetIp: '0.0.0.0',
  })
  new DataView(arp.buffer).setUint16(6, RARP_REQUEST_REVERSE)
  return buildEthernet('ff:ff:ff:ff:ff:ff', mac, ETHERTYPE_RARP, arp)
}

export function arpRequestFrame(from: { mac: Mac; ip: string }, targetIp: string): Uint8Array {
  const arp = buildArp({
    op: ARP_REQUEST,
    senderMac: from.mac,
    senderIp: from.ip,
    targetMac: '00:00:00:00:00:00',
    targetIp,
  })
  return buildEthernet('ff:ff:ff:ff:ff:ff', from.mac, ETHERTYPE_ARP, arp)
}

// ---------------------------------------------------------------- IPv4 addresses

const IP_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

export function ipToNumber(ip: string): number | undefined {
  const m = IP_RE.exec(ip)
  if (!m) return undefined
  let n = 0
  for (let i = 1; i <= 4; i++) {
    const o = Number(m[i])
    if (o > 255) return undefined
    n = n * 256 + o
  }
  return n
}

export function ipFromNumber(n: number): string {
  return [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff].join('.')
}

export function ipFromBytes(buf: Uint8Array, offset: number): string {
  return `${buf[offset]}.${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}`
}

export function ipToBytes(ip: string): Uint8Array {
  const n = ipToNumber(ip)
  if (n === undefined) throw new TypeError(`not an IPv4 address: ${JSON.stringify(ip)}`)
  return Uint8Array.of((n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff)
}

// ---------------------------------------------------------------- IPv4 header, ICMP echo

export const IP_PROTO_ICMP = 1

export interface Ipv4Packet {
  src: string
  dst: string
  protocol: number
  ttl: number
  /** The payload inside the header's total length. */
  payload: Uint8Array
}

export function parseIpv4(buf: Uint8Array): Ipv4Packet | undefined {
  if (buf.length < 20) return undefined
  const b0 = buf[0] ?? 0
  const ihl = (b0 & 0x0f) * 4
  if (b0 >> 4 !== 4 || ihl < 20 || buf.length < ihl) return undefined
  const total = ((buf[2] ?? 0) << 8) | (buf[3] ?? 0)
  if (total < ihl || total > buf.length) return undefined
  return {
    src: ipFromBytes(buf, 12),
    dst: ipFromBytes(buf, 16),
    protocol: buf[9] ?? 0,
    ttl: buf[8] ?? 0,
    payload: buf.subarray(ihl, total),
  }
}

export function buildIpv4(
  src: string,
  dst: string,
  protocol: number,
  payload: Uint8Array,
  ttl = 64,
): Uint8Array {
  const out = new Uint8Array(20 + payload.length)
  const v = new DataView(out.buffer)
  out[0] = 0x45
  v.setUint16(2, out.length)
  out[8] = ttl
  out[9] = protocol
  out.set(ipToBytes(src), 12)
  out.set(ipToBytes(dst), 16)
  v.setUint16(10, inetChecksum(out.subarray(0, 20)))
  out.set(payload, 20)
  return out
}

/** The Internet checksum (RFC 1071). */
export function inetChecksum(buf: Uint8Array): number {
  let sum = 0
  for (let i = 0; i + 1 < buf.length; i += 2) sum += ((buf[i] ?? 0) << 8) | (buf[i + 1] ?? 0)
  if (buf.length % 2) sum += (buf[buf.length - 1] ?? 0) << 8
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16)
  return ~sum & 0xffff
}

export const ICMP_ECHO_REQUEST = 8
export const ICMP_ECHO_REPLY = 0

export interface IcmpEcho {
  type: number
  id: number
  seq: number
  data: Uint8Array
}

export function parseIcmpEcho(buf: Uint8Array): IcmpEcho | undefined {
  if (buf.length < 8) return undefined
  const type = buf[0] ?? 0
  if ((type !== ICMP_ECHO_REQUEST && type !== ICMP_ECHO_REPLY) || buf[1] !== 0) return undefined
  if (inetChecksum(buf) !== 0) return undefined
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  return { type, id: v.getUint16(4), seq: v.getUint16(6), data: buf.subarray(8) }
}

export function buildIcmpEcho(e: IcmpEcho): Uint8Array {
  const out = new Uint8Array(8 + e.data.length)
  const v = new DataView(out.buffer)
  out[0] = e.type
  v.setUint16(4, e.id)
  v.setUint16(6, e.seq)
  out.set(e.data, 8)
  v.setUint16(2, inetChecksum(out))
  return out
}
