// Stand-ins for what the overlay service talks to (gossip and the libp2p host), for unit tests
// that run it without a network.
import type { OverlayGossip } from '../../src/overlay/service.js'

export type FakeLocation = { host: string; epoch: number; name: string }

/** Gossip in memory: `publish` plays a host's announcement, `locations` where gossip puts a VM. */
export class FakeOverlayGossip implements OverlayGossip {
  states = new Map<string, { peerId: string; version: number; overlay?: Uint8Array }>()
  locations = new Map<string, FakeLocation>()
  listeners = new Set<() => void>()
  /** How often the service said its own announcement changed. */
  changed = 0
  hosts() {
    return [...this.states.values()]
  }
  where(vmId: string) {
    return this.locations.get(vmId)
  }
  subscribe(fn: () => void) {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }
  notifyChanged() {
    this.changed++
  }
  publish(peerId: string, overlay: Uint8Array) {
    const prev = this.states.get(peerId)
    this.states.set(peerId, { peerId, version: (prev?.version ?? 0) + 1, overlay })
    for (const fn of this.listeners) fn()
  }
}

/** A libp2p host that registers handlers and refuses every dial. */
export const noNetworkHost = {
  handle: async () => {},
  unhandle: async () => {},
  dialProtocol: async () => {
    throw new Error('no network in this test')
  },
}
