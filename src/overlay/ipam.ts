// IPv4 subnets of virtual networks and the choice of a VM's address in one. Pure: what is taken
// (mesh-wide, as gossip tells) comes in as a predicate; the caller persists what it chose.
import { createHash } from 'node:crypto'
import { ipFromNumber, ipToNumber } from './frame.js'

export interface Subnet {
  /** Canonical text, e.g. 10.10.0.0/24. */
  cidr: string
  base: number
  prefix: number
}

/** Parses `a.b.c.d/len`; the address must be the network's own (host bits zero), len 8..30. */
export function parseSubnet(cidr: string): Subnet {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(cidr)
  const base = m ? ipToNumber(m[1] ?? '') : undefined
  const prefix = m ? Number(m[2]) : Number.NaN
  if (!m || base === undefined)
    throw new RangeError(`expected an IPv4 CIDR like 10.10.0.0/24, got ${JSON.stringify(cidr)}`)
  if (prefix < 8 || prefix > 30) throw new RangeError(`prefix length must be 8 to 30, got /${prefix}`)
  const size = 2 ** (32 - prefix)
  if (base % size !== 0) {
    throw new RangeError(
      `${cidr} has host bits set (the network is ${ipFromNumber(base - (base % size))}/${prefix})`,
    )
  }
  return { cidr: `${ipFromNumber(base)}/${prefix}`, base, prefix }
}

export function subnetContains(s: Subnet, ip: string): boolean {
  const n = ipToNumber(ip)
  return n !== undefined && n >= s.base && n < s.base + 2 ** (32 - s.prefix)
}

/** Usable host addresses: not the network address, not .1 (kept for a gateway), not broadcast. */
export function usableRange(s: Subnet): { first: number; last: number } {
  const size = 2 ** (32 - s.prefix)
  return { first: s.base + 2, last: s.base + size - 2 }
}

/**
 * An address for `vmId`: starts at a hash of the VM id (two hosts allocating at once rarely pick
 * the same one) and probes upwards past taken addresses. Throws when the subnet is full.
 */
export function allocateIp(s: Subnet, vmId: string, taken: (ip: string) => boolean): string {
  const { first, last } = usableRange(s)
  const count = last - first + 1
  const start = createHash('sha256').update(vmId).digest().readUInt32BE(0) % count
  for (let i = 0; i < count; i++) {
    const ip = ipFromNumber(first + ((start + i) % count))
    if (!taken(ip)) return ip
  }
  throw new RangeError(`subnet ${s.cidr} is full (${count} addresses)`)
}
