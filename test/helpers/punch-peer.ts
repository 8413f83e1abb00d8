// One side of a skymesh hole punch (src/transfer/punch.ts), run inside a network namespace by
// test/cluster/nat-punch-sealed.test.ts; the test process stands in for the relayed libp2p stream and
// passes the offers between the two sides (JSON lines on stdin/stdout).
//
//   node punch-peer.js observe IP PORT
//       a reachable host's "what is my address": answers each connection with PunchObserved
//       (the remote address it sees) and closes it; prints {"listening":true}
//   node punch-peer.js punch initiator|responder NAME OBSERVER_IP OBSERVER_PORT TIMEOUT_MS
//       learns its public IP from the observer, picks a fixed local port, prints {"offer": base64}
//       (the initiator's carries the attempt's key), reads the peer's {"offer": base64} from stdin,
//       punches, and over the TLS channel sends NAME and reads the peer's; prints the outcome.
import net from 'node:net'
import { createInterface } from 'node:readline'
import {
  decodeObserved,
  decodeOffer,
  encodeObserved,
  encodeOffer,
  newPunchSecret,
  observedFrom,
  pickPunchPort,
  punchDirect,
  SEALED_CIPHER,
} from '../../src/transfer/index.js'

const say = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`)
const [mode, ...args] = process.argv.slice(2)

if (mode === 'observe') {
  const [ip, port] = args
  const server = net.createServer((s) => {
    const seen = observedFrom(s.remoteAddress ?? '')
    s.end(encodeObserved({ ip: seen?.ip ?? '', port: s.remotePort ?? 0 }))
  })
  server.listen(Number(port), ip, () => say({ listening: true }))
  process.stdin.resume()
  process.stdin.on('end', () => process.exit(0))
} else if (mode === 'punch') {
  const [role, name, obsIp, obsPort, timeoutMs] = args as [
    'initiator' | 'responder',
    string,
    string,
    string,
    string,
  ]
  try {
    const publicIp = await new Promise<string>((resolve, reject) => {
      const s = net.connect({ host: obsIp, port: Number(obsPort) })
      const parts: Buffer[] = []
      s.on('data', (d: Buffer) => parts.push(d))
      s.on('end', () => {
        try {
          resolve(decodeObserved(Buffer.concat(parts)).ip)
        } catch (err) {
          reject(err)
        }
      })
      s.on('error', reject)
    })
    const port = await pickPunchPort()
    const secret = role === 'initiator' ? newPunchSecret() : undefined
    const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
    let attemptId = secret?.attemptId
    let key = secret?.key as Uint8Array | undefined
    let identity = secret?.identity
    let remote: { ip: string; port: number }
    if (secret) {
      say({
        publicIp,
        port,
        offer: Buffer.from(encodeOffer({ ...secret, ip: publicIp, port })).toString('base64'),
      })
      const answer = decodeOffer(Buffer.from(JSON.parse((await lines.next()).value).offer, 'base64'), false)
      if (answer.attemptId !== attemptId) throw new Error('answer for another attempt')
      remote = answer
    } else {
      const invite = decodeOffer(Buffer.from(JSON.parse((await lines.next()).value).offer, 'base64'), true)
      ;({ attemptId, key, identity } = invite)
      remote = invite
      say({
        publicIp,
        port,
        offer: Buffer.from(encodeOffer({ attemptId, ip: publicIp, port })).toString('base64'),
      })
    }
    const started = Date.now()
    const framed = await punchDirect({
      role,
      localPort: port,
      remote,
      key: key!,
      identity: identity!,
      timeoutMs: Number(timeoutMs),
    })
    await framed.write(Buffer.from(name))
    const peer = Buffer.from((await framed.read()) ?? []).toString()
    say({
      ok: true,
      peer,
      remote: `${framed.socket.remoteAddress}:${framed.socket.remotePort}`,
      cipher: SEALED_CIPHER,
      ms: Date.now() - started,
    })
    await framed.close()
  } catch (err) {
    say({ ok: false, error: `${(err as Error).name}: ${(err as Error).message}` })
  }
  process.exit(0)
} else {
  console.error('usage: punch-peer.js observe IP PORT | punch ROLE NAME OBS_IP OBS_PORT TIMEOUT_MS')
  process.exit(2)
}
