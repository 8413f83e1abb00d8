// The chunk data path over sealed connections (src/transfer/sealed.ts) instead of a libp2p stream. libp2p's noise + yamux
// run in JS and cost CPU per TCP segment; on a small machine where every host of a pipeline receives,
// verifies and forwards at once, that CPU is what limits the push (bench:propagate). The sealed channel
// runs AES-GCM in C++ (node's crypto) over whole 1 MiB records, so the same bytes cost a fraction.
//
// Two ways to get such a connection, both agreed on /skymesh/images/1 (mesh members only; over a relay
// when that is all there is):
//   - direct: the client asks for a grant; the server listens on the IP the client reached it at (the
//     sealed-channel listener live migrations use, src/transfer/direct.ts) with a fresh key and identity for
//     that one connection; the client connects with connectDirect.
//   - hole-punched (both behind NAT, only a relayed libp2p connection): the client sends a punch invite
//     (src/transfer/punch.ts: its public address, one fixed port per parallel connection, a fresh key),
//     the server answers with its own address and ports, and both punch; several connections at once
//     when one cannot fill a slow inter-site link.
// transport.ts picks one (direct, then hole-punched, then the relay) and says which.
import type { Logger } from 'pino'
import {
  connectDirect,
  type DirectGrant,
  DirectListener,
  MAX_PUNCH_STREAMS,
  PUNCH_TIMEOUT_MS,
  type PunchEndpoint,
  type PunchInvite,
  pickPunchPorts,
  punchAll,
  punchChannels,
  punchPorts,
  type SealedFramed,
  withPorts,
} from '../transfer/index.js'
import { MAX_MESSAGE_BYTES } from './constants.js'
import { ImageChannel } from './wire.js'

/** A grant not used within this time is withdrawn. */
const GRANT_TTL_MS = 15_000

/** The server's side: grants direct connections and hands each accepted one to `onChannel`. */
export class DirectChunks {
  readonly #listener: DirectListener
  readonly #grants = new Map<string, { release(): void; timer: NodeJS.Timeout; peer: string }>()
  readonly #onChannel: (ch: ImageChannel, peer: string) => void
  readonly #log: Logger
  readonly #lifetime = new AbortController()

  constructor(log: Logger, onChannel: (ch: ImageChannel, peer: string) => void) {
    this.#log = log
    this.#onChannel = onChannel
    this.#listener = new DirectListener({ port: 0 }, log, (framed, label) => {
      const g = this.#grants.get(label)
      if (!g) {
        framed.abort(new Error('grant withdrawn'))
        return
      }
      // One connection per grant: stop accepting for it (the connection lives on).
      this.#withdraw(label)
      onChannel(new ImageChannel(framed, true), g.peer)
    })
  }

  /** Listens on `host` (one of our addresses) for one connection of `peer`; throws if it cannot. */
  async grant(host: string, peer: string): Promise<DirectGrant> {
    const label = `image-${Math.random().toString(36).slice(2)}-${Date.now()}`
    const g = await this.#listener.grant(host, label)
    const timer = setTimeout(() => this.#withdraw(label), GRANT_TTL_MS)
    timer.unref()
    this.#grants.set(label, { release: g.release, timer, peer })
    return { port: g.port, key: g.key, identity: g.identity }
  }

  /**
   * The responder's half of a hole punch for `peer` (its invite came over the protected stream): our
   * public IP (`ip`, learnt from a directly connected peer) and as many fresh local ports as the invite
   * has. Returns the answer at once and punches in the background; every connection that comes is
   * served like a direct one, the others are logged.
   */
  async punch(
    invite: PunchInvite,
    ip: string,
    peer: string,
    onPunched?: (peer: string) => void,
  ): Promise<PunchEndpoint> {
    const n = Math.min(punchPorts(invite).length, MAX_PUNCH_STREAMS)
    const localPorts = await pickPunchPorts(n)
    // The answer must reach the client before our SYNs matter: both keep trying for the timeout
    setImmediate(() => {
      const channels = punchChannels({
        role: 'responder',
        localPorts,
        remote: invite,
        key: invite.key,
        identity: invite.identity,
        timeoutMs: PUNCH_TIMEOUT_MS,
        signal: this.#lifetime.signal,
        maxMessage: MAX_MESSAGE_BYTES,
      })
      for (const c of channels)
        c.then(
          (framed) => {
            onPunched?.(peer)
            this.#onChannel(new ImageChannel(framed, true), peer)
          },
          (err: Error) => this.#log.info({ peer, err: err.message }, 'image hole punch failed'),
        )
    })
    return withPorts(ip, localPorts)
  }

  #withdraw(label: string): void {
    const g = this.#grants.get(label)
    if (!g) return
    this.#grants.delete(label)
    clearTimeout(g.timer)
    g.release()
  }

  close(): void {
    this.#lifetime.abort(new Error('image service stopped'))
    for (const label of [...this.#grants.keys()]) this.#withdraw(label)
    this.#listener.close()
  }
}

/** The read side of a client's chunk channel: up to `inFlight` chunk messages it asked for and did not read. */
function chunkReads(inFlight: number) {
  return { maxMessage: MAX_MESSAGE_BYTES, maxBuffer: (inFlight + 1) * MAX_MESSAGE_BYTES }
}

function asChannel(framed: SealedFramed): ImageChannel {
  return new ImageChannel(framed, true)
}

/** The client's side of a grant: one sealed connection to `host:grant.port` (connectDirect). */
export async function connectChunks(
  host: string,
  grant: DirectGrant,
  inFlight: number,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<ImageChannel> {
  const [framed] = await connectDirect(host, grant, 1, timeoutMs, signal, chunkReads(inFlight))
  return asChannel(framed!)
}

/**
 * The client's side of a punch: once the server answered `remote`, punches from `localPorts` (what our
 * invite said) with the invite's key; all connections or none (throws a PunchError).
 */
export async function punchChunks(o: {
  invite: PunchInvite
  localPorts: number[]
  remote: PunchEndpoint
  inFlight: number
  timeoutMs?: number
  signal: AbortSignal
}): Promise<ImageChannel[]> {
  const all = await punchAll({
    role: 'initiator',
    localPorts: o.localPorts,
    remote: o.remote,
    key: o.invite.key,
    identity: o.invite.identity,
    timeoutMs: o.timeoutMs ?? PUNCH_TIMEOUT_MS,
    signal: o.signal,
    ...chunkReads(o.inFlight),
  })
  return all.map(asChannel)
}
