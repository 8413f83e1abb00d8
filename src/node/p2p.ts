// The libp2p v3 host: tcp + noise + yamux, identify and ping; a pre-shared key makes the mesh private.
// gossipsub carries host state (src/gossip); identify feeds it the topology.
import './polyfill.js'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import type { PrivateKey } from '@libp2p/interface'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'

export interface HostInit {
  privateKey: PrivateKey
  listen: readonly string[]
  announce?: readonly string[]
  /** Swarm key bytes (see mesh-key.ts); without it the mesh is open to any libp2p peer. */
  psk?: Uint8Array
  /** Seconds a pnet handshake may take before the connection is dropped. */
  dialTimeoutMs?: number
}

export async function createHost(init: HostInit) {
  return createLibp2p({
    privateKey: init.privateKey,
    addresses: { listen: [...init.listen], announce: init.announce?.length ? [...init.announce] : undefined },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionProtector: init.psk ? preSharedKey({ psk: init.psk, timeout: init.dialTimeoutMs }) : undefined,
    connectionManager: { dialTimeout: init.dialTimeoutMs ?? 5000 },
    // The monitor pings every peer and, by default, aborts a connection whose ping is late: a link
    // saturated by a migration answers late, and aborting it kills the migration it carries. SWIM
    // (src/gossip) is the failure detector; the monitor only keeps idle connections warm.
    connectionMonitor: { pingInterval: 30_000, abortConnectionOnPingFailure: false },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        // Messages are signed with the sender's key and checked on receipt (StrictSign, the default).
        allowPublishToZeroTopicPeers: true,
        // Host states are small; a peer sending more is misbehaving.
        maxInboundDataLength: 4 * 1024 * 1024,
        emitSelf: false,
        // gossipsub penalises more than 10 peers behind one IP address, and graylists them: that is
        // every agent of a test mesh on one machine, and every host of a site behind one NAT. Our
        // peers are authenticated (mesh key, signed host states), so the colocation score is off.
        scoreParams: { IPColocationFactorWeight: 0 },
      }),
    },
  })
}

export type Host = Awaited<ReturnType<typeof createHost>>
