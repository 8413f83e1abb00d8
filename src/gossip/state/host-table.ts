// The newest verified state of every host, by version, with the signed bytes kept for relaying.
// The VM location table is derived from it as states arrive.
import type { DropReason, HostStateView } from '../types.js'
import { toHostStateView } from './convert.js'
import type { OpenedHostState } from './envelope.js'
import { type LocationChange, LocationTable, type LocationTableInit } from './location-table.js'
import { wireKey } from './peer-key.js'

export interface HostEntry {
  peerId: string
  peerIdBytes: Uint8Array
  /** peerIdBytes in base64: how anti-entropy digests name the host. */
  wireKey: string
  version: number
  view: HostStateView
  /** The encoded SignedHostState, as its host signed it. */
  signed: Uint8Array
}

export type AcceptResult =
  | { ok: true; entry: HostEntry; previous?: HostEntry; changes: LocationChange[] }
  | { ok: false; reason: DropReason; version: number }

export interface AcceptOptions {
  /** gossipsub's verified `from`: a host may only publish its own state there. */
  sender?: string
  /** Our own state, from the publisher (skips the `self` check). */
  local?: boolean
}

export interface HostTableInit extends LocationTableInit {
  /** Our own peer id: our state from the network is dropped as `self`. */
  self: string
  now?: () => number
}

export class HostTable {
  readonly locations: LocationTable
  private readonly hosts = new Map<string, HostEntry>()
  private readonly now: () => number

  constructor(private readonly init: HostTableInit) {
    this.locations = new LocationTable(init)
    this.now = init.now ?? Date.now
  }

  /** Takes a verified state if it is the newest from its host. Never throws. */
  accept(opened: OpenedHostState, opts: AcceptOptions = {}): AcceptResult {
    const { peerId, version } = opened
    if (opts.sender !== undefined && opts.sender !== peerId)
      return { ok: false, reason: 'wrong-sender', version }
    if (!opts.local && peerId === this.init.self) return { ok: false, reason: 'self', version }
    const previous = this.hosts.get(peerId)
    if (previous && version < previous.version) return { ok: false, reason: 'stale', version }
    if (previous && version === previous.version) return { ok: false, reason: 'replayed', version }
    const now = this.now()
    const entry: HostEntry = {
      peerId,
      peerIdBytes: opened.peerIdBytes,
      wireKey: wireKey(opened.peerIdBytes),
      version,
      view: toHostStateView(peerId, opened.state, now),
      signed: opened.signed,
    }
    this.hosts.set(peerId, entry)
    const changes = this.locations.applyHost(peerId, previous?.view.vms ?? [], entry.view.vms, now)
    return previous ? { ok: true, entry, previous, changes } : { ok: true, entry, changes }
  }

  get(peerId: string): HostEntry | undefined {
    return this.hosts.get(peerId)
  }

  version(peerId: string): number | undefined {
    return this.hosts.get(peerId)?.version
  }

  entries(): IterableIterator<HostEntry> {
    return this.hosts.values()
  }

  /** Every host's state, ordered by peer id. */
  views(): HostStateView[] {
    return [...this.hosts.values()]
      .map((e) => e.view)
      .sort((a, b) => (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0))
  }

  get size(): number {
    return this.hosts.size
  }
}
