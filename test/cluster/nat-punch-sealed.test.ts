// Skymesh's own TCP hole punch (src/transfer/punch.ts) between two hosts behind two different NATs
// (network namespaces, see netns.ts: each NAT masquerades outbound and silently drops unsolicited
// inbound). A host of the open site answers "what is my address"; the test process stands in for
// the relayed libp2p stream and passes the offers; each side runs test/helpers/punch-peer.ts in its
// namespace with the real module: fixed local ports, simultaneous open, the sealed channel with the attempt's key.
import assert from 'node:assert/strict'
import { type ChildProcess, spawn } from 'node:child_process'
import { randomInt } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { decodeOffer, encodeOffer } from '../../src/transfer/index.js'
import { NetnsMesh, netnsUnavailable } from '../helpers/netns.js'

const why = await netnsUnavailable()
if (why) console.log(`# nat-punch-sealed: running no namespace tests here: ${why}`)

const PEER = fileURLToPath(new URL('../helpers/punch-peer.js', import.meta.url))

/** A punch-peer process: its JSON lines, one at a time. */
class Peer {
  readonly proc: ChildProcess
  readonly #lines: Record<string, unknown>[] = []
  readonly #waiters: (() => void)[] = []
  #stderr = ''
  #exited = false

  constructor(ns: string, args: string[]) {
    this.proc = spawn('ip', ['netns', 'exec', ns, process.execPath, PEER, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let buf = ''
    this.proc.stdout!.on('data', (d) => {
      buf += d
      let i = buf.indexOf('\n')
      while (i >= 0) {
        this.#lines.push(JSON.parse(buf.slice(0, i)))
        buf = buf.slice(i + 1)
        i = buf.indexOf('\n')
      }
      for (const w of this.#waiters.splice(0)) w()
    })
    this.proc.stderr!.on('data', (d) => {
      this.#stderr += d
    })
    this.proc.once('exit', () => {
      this.#exited = true
      for (const w of this.#waiters.splice(0)) w()
    })
  }

  async next(timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const until = Date.now() + timeoutMs
    while (this.#lines.length === 0) {
      if (this.#exited) throw new Error(`punch-peer exited: ${this.#stderr}`)
      if (Date.now() > until) throw new Error(`punch-peer said nothing in ${timeoutMs} ms: ${this.#stderr}`)
      await new Promise<void>((r) => {
        this.#waiters.push(r)
        setTimeout(r, 500).unref()
      })
    }
    return this.#lines.shift()!
  }

  send(o: object): void {
    this.proc.stdin!.write(`${JSON.stringify(o)}\n`)
  }

  stop(): void {
    if (!this.#exited) this.proc.kill('SIGKILL')
  }
}

describe('skymesh hole punch: a sealed channel between two NATed hosts', { skip: why }, () => {
  let mesh: NetnsMesh
  let observer: Peer
  const obsPort = 30000 + randomInt(5000)
  const peers: Peer[] = []

  before(async () => {
    mesh = await NetnsMesh.create([
      { name: 'pub', hosts: 1 },
      { name: 'east', hosts: 1, nat: true },
      { name: 'west', hosts: 1, nat: true },
    ])
    const pub = mesh.hostsOf('pub')[0]!
    observer = new Peer(pub.ns, ['observe', pub.ip, String(obsPort)])
    assert.deepEqual(await observer.next(), { listening: true })
  })

  after(async () => {
    for (const p of peers) p.stop()
    observer?.stop()
    await mesh?.destroy()
  })

  const start = (site: string, role: string, timeoutMs: number) => {
    const p = new Peer(mesh.hostsOf(site)[0]!.ns, [
      'punch',
      role,
      site,
      mesh.hostsOf('pub')[0]!.ip,
      String(obsPort),
      String(timeoutMs),
    ])
    peers.push(p)
    return p
  }

  it('east and west punch through both NATs and talk over the sealed channel', async (t) => {
    const east = start('east', 'initiator', 15_000)
    const west = start('west', 'responder', 15_000)
    const invite = await east.next()
    // Each learned its NAT's public address from the open site's host
    assert.equal(invite.publicIp, mesh.routerIp('east'))
    west.send({ offer: invite.offer })
    const answer = await west.next()
    assert.equal(answer.publicIp, mesh.routerIp('west'))
    east.send({ offer: answer.offer })
    const [e, w] = [await east.next(), await west.next()]
    t.diagnostic(`east: ${JSON.stringify(e)}`)
    t.diagnostic(`west: ${JSON.stringify(w)}`)
    assert.equal(e.ok, true, JSON.stringify(e))
    assert.equal(w.ok, true, JSON.stringify(w))
    // Each got the other's message, from the other's NAT address and the port it picked
    assert.equal(e.peer, 'west')
    assert.equal(w.peer, 'east')
    assert.equal(e.remote, `${mesh.routerIp('west')}:${answer.port}`)
    assert.equal(w.remote, `${mesh.routerIp('east')}:${invite.port}`)
    assert.match(String(e.cipher), /^AES-128-GCM, skymesh sealed/)
  })

  it('a wrong key gets a punched socket but no sealed channel', async () => {
    const east = start('east', 'initiator', 15_000)
    const west = start('west', 'responder', 15_000)
    const invite = await east.next()
    // The responder gets another key than the initiator holds (what a forged invite would carry)
    const real = decodeOffer(Buffer.from(String(invite.offer), 'base64'), true)
    const forged = encodeOffer({ ...real, key: Buffer.alloc(32, 7) })
    west.send({ offer: Buffer.from(forged).toString('base64') })
    east.send({ offer: (await west.next()).offer })
    const [e, w] = [await east.next(), await west.next()]
    assert.equal(e.ok, false)
    assert.equal(w.ok, false)
    assert.match(String(e.error), /^PunchError: hole-punched channel/, String(e.error))
    assert.match(String(w.error), /^PunchError: hole-punched channel/, String(w.error))
  })

  it('a peer that never punches back: a PunchError after the deadline, saying so', async () => {
    const east = start('east', 'initiator', 2_000)
    const invite = await east.next()
    // West's public address, a port nobody connects from
    const silent = encodeOffer({
      attemptId: decodeOffer(Buffer.from(String(invite.offer), 'base64'), true).attemptId,
      ip: mesh.routerIp('west'),
      port: 40000 + randomInt(5000),
    })
    east.send({ offer: Buffer.from(silent).toString('base64') })
    const e = await east.next()
    assert.equal(e.ok, false)
    assert.match(
      String(e.error),
      /^PunchError: no hole-punched connection to .* within 2000 ms/,
      String(e.error),
    )
  })
})
