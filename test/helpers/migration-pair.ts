// Two real agents for migration fault tests, A (source) and B (destination), that reach each other
// only through TCP relays (each announces its relay's address, and B bootstraps to A's relay), so a
// test can cut the link between them; each listens on a fixed port, so it can be killed and restarted
// with the same data dir (same identity) and the other's relay still reaches it. The direct data
// channel of migrations (src/transfer/direct.ts) goes through relays too (fixed listening port,
// the relay's port announced), so a cut reaches it, and `cutData` cuts it alone.
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type RunningAgent, removeDir, sleep, startAgent, tempDir, waitFor } from './agent-process.js'
import { freePort, TcpRelay } from './tcp-relay.js'

export const TERMINAL = ['done', 'failed', 'cancelled']

export interface MigrationPair {
  a: RunningAgent
  b: RunningAgent
  relayA: TcpRelay
  relayB: TcpRelay
  /** Relays in front of each agent's direct data channel listener. */
  dataA: TcpRelay
  dataB: TcpRelay
  /** Cuts only the direct data connections (libp2p stays up) / lets them through again. */
  cutData(): void
  healData(): void
  /** kill -9 of one side (the relays stay). */
  kill(side: 'a' | 'b'): Promise<void>
  /** Starts a killed side again with the same data dir and port. */
  restart(side: 'a' | 'b'): Promise<RunningAgent>
  /** Cuts the link both ways (resets every connection, refuses new ones) / lets it through again. */
  cut(): void
  heal(): void
  /** The link goes silent both ways (no reset) / carries the held bytes again. */
  freeze(): void
  thaw(): void
  /** Until each side has a connection to the other. */
  connected(timeoutMs?: number): Promise<void>
  /** Until neither side has a connection to the other (after a cut: proof that all went via the relays). */
  disconnected(timeoutMs?: number): Promise<void>
  close(): Promise<void>
}

export async function startPair(): Promise<MigrationPair> {
  const dir = await tempDir('skymesh-migfault-')
  const [portA, portB] = [await freePort(), await freePort()]
  const relayA = await TcpRelay.start(portA)
  const relayB = await TcpRelay.start(portB)
  const [dportA, dportB] = [await freePort(), await freePort()]
  const dataA = await TcpRelay.start(dportA)
  const dataB = await TcpRelay.start(dportB)
  const direct = (port: number, relay: TcpRelay) =>
    `migration:\n  directPort: ${port}\n  directAnnouncePort: ${relay.port}\n`
  const gossip = 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 150\n  suspicionMult: 3\n'
  const common = `bootstrapIntervalSec: 0.5\ndialTimeoutMs: 3000\n${gossip}`
  await writeFile(join(dir, 'a.yaml'), `announce: ['${relayA.addr}']\n${common}${direct(dportA, dataA)}`)
  const configA = ['--config', join(dir, 'a.yaml'), '--log-level', 'debug']
  const startA = () =>
    startAgent({ dataDir: join(dir, 'a'), listen: `/ip4/127.0.0.1/tcp/${portA}`, args: configA })
  let a = await startA()
  await writeFile(join(dir, 'b.yaml'), `announce: ['${relayB.addr}']\n${common}${direct(dportB, dataB)}`)
  const configB = ['--config', join(dir, 'b.yaml'), '--log-level', 'debug']
  const startB = () =>
    startAgent({
      dataDir: join(dir, 'b'),
      listen: `/ip4/127.0.0.1/tcp/${portB}`,
      args: configB,
      bootstrap: [`${relayA.addr}/p2p/${a.peerId}`],
    })
  let b = await startB()
  const pair: MigrationPair = {
    get a() {
      return a
    },
    get b() {
      return b
    },
    relayA,
    relayB,
    dataA,
    dataB,
    cutData() {
      dataA.cut()
      dataB.cut()
    },
    healData() {
      dataA.heal()
      dataB.heal()
    },
    async kill(side) {
      await (side === 'a' ? a : b).kill9()
    },
    async restart(side) {
      if (side === 'a') a = await startA()
      else b = await startB()
      return side === 'a' ? a : b
    },
    cut() {
      for (const r of [relayA, relayB, dataA, dataB]) r.cut()
    },
    heal() {
      for (const r of [relayA, relayB, dataA, dataB]) r.heal()
    },
    freeze() {
      for (const r of [relayA, relayB, dataA, dataB]) r.freeze()
    },
    thaw() {
      for (const r of [relayA, relayB, dataA, dataB]) r.thaw()
    },
    async connected(timeoutMs = 20_000) {
      await waitFor(
        'A and B to be connected',
        async () => {
          const [pa, pb] = await Promise.all([a.request('GET', '/v1/peers'), b.request('GET', '/v1/peers')])
          return hasPeer(pa.body, b.peerId) && hasPeer(pb.body, a.peerId)
        },
        timeoutMs,
      )
    },
    async disconnected(timeoutMs = 10_000) {
      await waitFor(
        'A and B to lose each other',
        async () => {
          const [pa, pb] = await Promise.all([a.request('GET', '/v1/peers'), b.request('GET', '/v1/peers')])
          return !hasPeer(pa.body, b.peerId) && !hasPeer(pb.body, a.peerId)
        },
        timeoutMs,
      )
    },
    async close() {
      await Promise.all(
        [a, b].map((x) => (x.proc.exitCode === null && x.proc.signalCode === null ? x.stop() : 0)),
      )
      for (const r of [relayA, relayB, dataA, dataB]) await r.close()
      await removeDir(dir)
    },
  }
  await pair.connected()
  return pair
}

function hasPeer(body: any, id: string): boolean {
  return Array.isArray(body?.peers) && body.peers.some((p: { peerId?: string }) => p.peerId === id)
}

export async function createVm(agent: RunningAgent, body: object): Promise<{ id: string }> {
  const r = await agent.request('POST', '/v1/vms', body)
  if (r.status !== 201) throw new Error(`create VM: ${r.status} ${JSON.stringify(r.body)}`)
  return r.body as { id: string }
}

export async function migrationEnd(agent: RunningAgent, id: string, timeoutMs = 90_000) {
  return waitFor(
    `migration ${id} to end`,
    async () => {
      const r = await agent.request('GET', `/v1/migrations/${id}`)
      return r.status === 200 && TERMINAL.includes(r.body.phase) ? r.body : undefined
    },
    timeoutMs,
  )
}

/** Polls the migration's view until `pred` holds (or it ends: then returns that view). */
export async function migrationWhen(
  agent: RunningAgent,
  id: string,
  pred: (view: any) => boolean,
  timeoutMs = 60_000,
) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const r = await agent.request('GET', `/v1/migrations/${id}`)
    if (r.status === 200 && (pred(r.body) || TERMINAL.includes(r.body.phase))) return r.body
    if (Date.now() > deadline)
      throw new Error(`migration ${id}: condition not met, last ${JSON.stringify(r.body)}`)
    await sleep(20)
  }
}

/** Resolves when the agent's log (from `from` on) has a line matching `re`; polls every 2 ms. */
export async function logLine(
  agent: RunningAgent,
  re: RegExp,
  from = 0,
  timeoutMs = 60_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const out = agent.output().slice(from)
    const line = out.split('\n').find((l) => re.test(l))
    if (line) return line
    if (agent.proc.exitCode !== null || agent.proc.signalCode !== null)
      throw new Error(`agent exited before logging ${re}`)
    if (Date.now() > deadline) throw new Error(`timed out waiting for a log line ${re}`)
    await sleep(2)
  }
}

/** The VM's record on an agent, or undefined (404). */
export async function vmOn(agent: RunningAgent, vmId: string): Promise<any> {
  const r = await agent.request('GET', `/v1/vms/${vmId}`)
  if (r.status === 404) return undefined
  if (r.status !== 200) throw new Error(`GET VM: ${r.status} ${JSON.stringify(r.body)}`)
  return r.body
}

export function vmDirExists(agent: RunningAgent, vmId: string): boolean {
  return existsSync(join(agent.dataDir, 'vms', vmId))
}
