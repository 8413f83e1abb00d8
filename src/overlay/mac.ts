// MAC addresses as lowercase 'aa:bb:cc:dd:ee:ff' strings, and the allocation of a VM's MAC:
// locally administered unicast, derived from (network, VM id) so it is stable for the VM's life.
import { createHash } from 'node:crypto'

export type Mac = string

export const BROADCAST_MAC: Mac = 'ff:ff:ff:ff:ff:ff'
export const ZERO_MAC: Mac = '00:00:00:00:00:00'

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/

export function isMac(s: string): boolean {
  return MAC_RE.test(s)
}

/** Six bytes to text; `offset` into a frame. */
export function macFromBytes(buf: Uint8Array, offset = 0): Mac {
  let s = ''
  for (let i = 0; i < 6; i++) {
    const b = buf[offset + i] ?? 0
    s += (i ? ':' : '') + (b < 16 ? '0' : '') + b.toString(16)
  }
  return s
}

export function macToBytes(mac: Mac): Uint8Array {
  if (!isMac(mac)) throw new TypeError(`not a MAC address: ${JSON.stringify(mac)}`)
  return Uint8Array.from(mac.split(':').map((h) => Number.parseInt(h, 16)))
}

/** Broadcast and multicast (group bit set). */
export function isGroupMac(mac: Mac): boolean {
  return (Number.parseInt(mac.slice(0, 2), 16) & 1) === 1
}

/**
 * A VM's MAC on a network: a hash of (network, VM id), with the locally-administered bit set and
 * the group bit cleared. `taken` is consulted so two VMs never share one (the next attempt rehashes).
 */
export function allocateMac(network: string, vmId: string, taken: (mac: Mac) => boolean): Mac {
  for (let attempt = 0; attempt < 256; attempt++) {
    const h = createHash('sha256').update(`${network}\0${vmId}\0${attempt}`).digest()
    h[0] = ((h[0] ?? 0) & 0xfc) | 0x02
    const mac = macFromBytes(h)
    if (!taken(mac)) return mac
  }
  throw new Error(`no free MAC for ${vmId} on ${network} after 256 attempts`)
}
