// The libp2p v3 host: tcp + noise + yamux, identify and ping; a pre-shared key makes the mesh private.
// gossipsub carries host state (src/gossip); identify feeds it the topology.
// Behind NAT (nat.ts): AutoNAT, circuit relay v2 (transport everywhere, server on relay hosts) and
// DCUtR hole punching. Relayed connections are upgraded like any other (pnet + noise end to end),
// and a relay only serves peers that hold a pnet connection to it: both stay inside the mesh.
// QUIC (@chainsafe/libp2p-quic, on when a listen address is `/udp/N/quic-v1`) runs beside TCP; it
// skips the pnet protector, so MeshKeyGate (quic-gate.ts) admits over QUIC only peers that proved
// the mesh key on a protected connection.
import './polyfill.js'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { autoNAT } from '@libp2p/autonat'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { dcutr } from '@libp2p/dcutr'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import type { PrivateKey } from '@libp2p/interface'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import type { NatAddress } from './nat.js'
import { isQuic, MeshKeyGate } from './quic-gate.js'

export interface HostInit {
  privateKey: PrivateKey
  listen: readonly string[]
  announce?: readonly string[]
  /** Swarm key bytes (see mesh-key.ts); without it the mesh is open to any libp2p peer. */
  psk?: Uint8Array
  /** Seconds a pnet handshake may take before the connection is dropped. */
  dialTimeoutMs?: number
  /** gossipsub mesh settings (host state dissemination); defaults in PUBSUB_DEFAULTS. */
  pubsub?: PubsubInit
  /** NAT traversal; defaults in NAT_HOST_DEFAULTS. */
  nat?: NatHostInit
  /**
   * Whether a peer is in this host's site: gossipsub scores such peers higher, so when its mesh
   * sheds peers it keeps same-site ones and fewer links cross the (slow) links between sites.
   */
  sameSite?: (peerId: string) => boolean
}

/** Score bonus (before gossipsub's appSpecificWeight of 10) of a peer in our own site. */
export const SAME_SITE_SCORE = 1

export interface NatHostInit {
  /** Listen through relays (`/p2p-circuit`, a reservation on a relay of the mesh). */
  listenViaRelay?: boolean
  autonat?: boolean
  holePunching?: boolean
  /** Serve as a relay with these limits (absent: no relay service). */
  relay?: { maxReservations: number; dataLimitBytes: bigint; durationLimitMs: number }
}

export const NAT_HOST_DEFAULTS = Object.freeze({ listenViaRelay: false, autonat: false, holePunching: false })

export interface PubsubInit {
  /** Mesh degree D (Dlo, Dhi, Dscore and Dout follow from it). */
  meshDegree?: number
  /** Peers outside the mesh told about recent messages (IHAVE) at each heartbeat. */
  gossipPeers?: number
  /** gossipsub heartbeat (mesh upkeep, IHAVE gossip), ms. */
  heartbeatMs?: number
}

// gossipsub's defaults (D=6, Dlazy=6, gossip factor 0.25) are tuned for meshes of thousands of
// untrusted peers. Host states are few, signed, published straight to every peer (flood publish)
// and repaired by anti-entropy, so a smaller mesh and less IHAVE gossip lose no message and cost
// a fraction of the bytes at rest (bench/gossip.ts).
export const PUBSUB_DEFAULTS: Readonly<Required<PubsubInit>> = Object.freeze({
  meshDegree: 4,
  gossipPeers: 3,
  heartbeatMs: 1000,
})

/** gossipsub degree parameters from D: Dlo <= D <= Dhi, Dscore = Dlo, Dout < Dlo and Dout <= D/2. */
export function meshDegrees(d: number) {
  const D = Math.max(1, Math.floor(d))
  const Dlo = Math.max(1, Math.round((D * 2) / 3))
  return { D, Dlo, Dhi: 2 * D, Dscore: Dlo, Dout: Math.max(0, Math.min(Dlo - 1, Math.floor(D / 2), 2)) }
}

export async function createHost(init: HostInit) {
  const pubsub = { ...PUBSUB_DEFAULTS, ...definedOnly(init.pubsub ?? {}) }
  const nat = { ...NAT_HOST_DEFAULTS, ...definedOnly(init.nat ?? {}) }
  const listen = [...init.listen]
  if (nat.listenViaRelay && !nat.relay && !listen.includes('/p2p-circuit')) listen.push('/p2p-circuit')
  const gate = new MeshKeyGate(init.psk !== undefined)
  return createLibp2p({
    privateKey: init.privateKey,
    addresses: { listen, announce: init.announce?.length ? [...init.announce] : undefined },
    // Every host can dial relayed addresses; reservations are made only when listening on /p2p-circuit.
    transports: [
      tcp(),
      ...(await quicTransport(listen)),
      circuitRelayTransport({ reservationCompletionTimeout: 10_000 }),
    ],
    connectionGater: gate.gater(),
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionProtector: init.psk ? preSharedKey({ psk: init.psk, timeout: init.dialTimeoutMs }) : undefined,
    connectionManager: { dialTimeout: init.dialTimeoutMs ?? 5000 },
    // The monitor opens a ping stream to every peer every interval and, by default, aborts a
    // connection whose ping is late: a link saturated by a migration answers late, and aborting it
    // kills the migration it carries. SWIM (src/gossip) is the failure detector and probes every
    // member anyway, and yamux keep-alive frames keep idle connections warm: the monitor is off.
    connectionMonitor: { enabled: false },
    services: {
      identify: identify(),
      ping: ping(),
      ...natServices(nat, gate),
      pubsub: gossipsub({
        ...meshDegrees(pubsub.meshDegree),
        Dlazy: pubsub.gossipPeers,
        gossipFactor: 0,
        heartbeatInterval: pubsub.heartbeatMs,
        // Our own states go to every subscribed peer at once (one hop), the mesh relays the rest.
        floodPublish: true,
        // Messages are signed with the sender's key and checked on receipt (StrictSign, the default).
        allowPublishToZeroTopicPeers: true,
        // Host states are small; a peer sending more is misbehaving.
        maxInboundDataLength: 4 * 1024 * 1024,
        emitSelf: false,
        // Hosts behind NAT may be reachable only through a relay (a limited connection).
        runOnLimitedConnection: true,
        // gossipsub penalises more than 10 peers behind one IP address, and graylists them: that is
        // every agent of a test mesh on one machine, and every host of a site behind one NAT. Our
        // peers are authenticated (mesh key, signed host states), so the colocation score is off.
        scoreParams: {
          IPColocationFactorWeight: 0,
          appSpecificScore: (peer) => (init.sameSite?.(peer) ? SAME_SITE_SCORE : 0),
        },
      }),
    },
  })
}

export type Host = Awaited<ReturnType<typeof createHost>>

/** Our addresses as the address manager keeps them (verified by AutoNAT or not): `status()` in nat.ts. */
function addressView(components: { addressManager: { getAddressesWithMetadata(): NatAddress[] } }) {
  return { withMetadata: () => components.addressManager.getAddressesWithMetadata() }
}

/**
 * AutoNAT (asks peers to dial us back, so the address manager learns which addresses are public),
 * DCUtR (upgrades a relayed connection to a direct one by a synchronised dial from both ends), and
 * the relay server. Typed as optional entries so `Host` does not depend on the configuration.
 */
function natServices(
  nat: NatHostInit,
  gate: MeshKeyGate,
): {
  /** The mesh key on QUIC (quic-gate.ts): proved peers, refusals. */
  meshKeyGate?: () => MeshKeyGate
  autonat?: ReturnType<typeof autoNAT>
  dcutr?: ReturnType<typeof dcutr>
  relay?: ReturnType<typeof circuitRelayServer>
  addresses?: typeof addressView
} {
  const services: ReturnType<typeof natServices> = { addresses: addressView, meshKeyGate: () => gate }
  if (nat.autonat) services.autonat = autoNAT({ startupDelay: 2000, refreshInterval: 60_000 })
  if (nat.holePunching) services.dcutr = dcutr({ retries: 3 })
  if (nat.relay) {
    services.relay = circuitRelayServer({
      reservations: {
        maxReservations: nat.relay.maxReservations,
        applyDefaultLimit: true,
        defaultDataLimit: nat.relay.dataLimitBytes,
        defaultDurationLimit: nat.relay.durationLimitMs,
      },
    })
  }
  return services
}

/**
 * The QUIC transport when this host listens on QUIC. Loaded only then: it is a native module
 * (prebuilt binaries for the common platforms), and a host that listens on TCP only has no use for it.
 */
async function quicTransport(listen: readonly string[]) {
  if (!listen.some((a) => isQuic(multiaddr(a)))) return []
  const { quic } = await import('@chainsafe/libp2p-quic')
  return [quic()]
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>
}
