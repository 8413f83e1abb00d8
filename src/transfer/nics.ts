// A VM's overlay NICs ride in the offer's spec (MigrationVmSpec.nics) so the destination plugs them in
// even before gossip brought the source's announcement; each carries its network's definition, so a
// destination that never heard of the network can join it. The engine only carries them: at most
// MAX_OFFER_NICS are read (the agent refuses more), and the overlay checks what they say.
import type { MigrationNetworkDef, MigrationNic } from './types.js'

/** More NICs than this in an offer: the agent refuses it. */
export const MAX_OFFER_NICS = 16

interface PbNetworkDef {
  subnet?: string | null
  mtu?: number | null
  createdMs?: number | null
  creator?: string | null
}

interface PbNic {
  network?: string | null
  mac?: string | null
  ip?: string | null
  attach?: string | null
  networkDef?: PbNetworkDef | null
}

/** The NICs of a decoded offer spec, as plain objects (at most MAX_OFFER_NICS + 1, to tell "too many"). */
export function offeredNics(spec: { nics?: readonly PbNic[] | null } | null | undefined): MigrationNic[] {
  return (spec?.nics ?? []).slice(0, MAX_OFFER_NICS + 1).map((n) => ({
    network: n.network ?? '',
    mac: n.mac ?? '',
    ip: n.ip ?? '',
    ...(n.attach ? { attach: n.attach } : {}),
    ...(n.networkDef ? { networkDef: fromPbDef(n.networkDef) } : {}),
  }))
}

/** The NICs for an offer's spec. */
export function nicsToOffer(nics: readonly MigrationNic[] | undefined): PbNic[] {
  return (nics ?? []).map((n) => ({
    network: n.network,
    mac: n.mac,
    ip: n.ip,
    attach: n.attach ?? '',
    ...(n.networkDef ? { networkDef: copyNetworkDef(n.networkDef) } : {}),
  }))
}

/** A network's definition with its four fields only (the overlay's NetworkDef carries more, e.g. its name). */
export function copyNetworkDef(d: MigrationNetworkDef): MigrationNetworkDef {
  return { subnet: d.subnet, mtu: d.mtu, createdMs: d.createdMs, creator: d.creator }
}

function fromPbDef(d: PbNetworkDef): MigrationNetworkDef {
  return {
    subnet: d.subnet ?? '',
    mtu: d.mtu ?? 0,
    createdMs: Number(d.createdMs ?? 0),
    creator: d.creator ?? '',
  }
}
