// The libp2p host the benchmark's migration nodes use: the agent's own (`createHost`), or, with
// `pingAbort: false`, a copy of its configuration whose connection monitor does not abort a connection
// when a heartbeat ping times out. libp2p pings every connection every 10 s and aborts it when the
// ping misses its (adaptive, >= 5 s) timeout; while a migration's data streams keep the connection
// busy that ping can starve, and the abort kills the migration. The copy exists only to measure the
// engine past that; the default is the agent's host.
import '../../src/node/polyfill.js'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import { createHost, type Host } from '../../src/node/p2p.js'

export async function createBenchHost(pingAbort = true): Promise<Host> {
  const privateKey = await generateKeyPair('Ed25519')
  const listen = ['/ip4/127.0.0.1/tcp/0']
  if (pingAbort) return createHost({ privateKey, listen })
  // Same modules and options as src/node/p2p.ts, plus the connection monitor setting
  return createLibp2p({
    privateKey,
    addresses: { listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionManager: { dialTimeout: 5000 },
    connectionMonitor: { abortConnectionOnPingFailure: false },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        allowPublishToZeroTopicPeers: true,
        maxInboundDataLength: 4 * 1024 * 1024,
        emitSelf: false,
      }),
    },
  })
}
