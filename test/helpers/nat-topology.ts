// The topology the NAT tests share (test/cluster/nat*.test.ts): a public relay host in site `pub` and
// two hosts, `east` and `west`, each in its own site behind its own NAT router (netns.ts: MASQUERADE
// out, new connections in refused). Plus what they all do with it: ask how two agents are connected,
// and migrate a paused VM and check it arrived whole.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type RunningAgent, removeDir, runCli, tempDir, waitFor } from './agent-process.js'
import { masquerade, type NetnsHost, NetnsMesh } from './netns.js'

/** Fast SWIM for tests: failures seen in about a second. */
export const TEST_GOSSIP = 'gossip:\n  probeIntervalMs: 300\n  probeTimeoutMs: 200\n  suspicionMult: 4\n'

export type PeerView = { peerId: string; connection?: string; addrs: string[] }

export interface NatTopology {
  mesh: NetnsMesh
  dir: string
  relay: RunningAgent
  east: RunningAgent
  west: RunningAgent
  /** Stops the agents, removes the namespaces and the temp dir. */
  stop(): Promise<void>
}

export interface NatTopologyOptions {
  /** Temp dir prefix (skymesh-...-). */
  prefix: string
  /** YAML config of the relay (public) host and of the two NATed hosts. */
  relayConfig: string
  natedConfig: string
  /** Extra agent arguments per host (e.g. a QUIC listen address). */
  args?: (host: NetnsHost, role: 'relay' | 'nated') => string[]
  /** Environment for the NATed agents only (e.g. DEBUG for libp2p's own logs). */
  natedEnv?: Record<string, string>
  /**
   * A mesh key for all three (as a real deployment has): with one, the QUIC gate (src/node/quic-gate.ts)
   * never starts a first-contact QUIC dial, so a dial to a NATed peer is not spent waiting on its
   * private QUIC address (UDP into the NAT is dropped silently) and reaches its relayed one.
   */
  meshKey?: boolean
}

export async function startNatTopology(o: NatTopologyOptions): Promise<NatTopology> {
  const dir = await tempDir(o.prefix)
  await writeFile(join(dir, 'relay.yaml'), o.relayConfig)
  await writeFile(join(dir, 'nated.yaml'), o.natedConfig)
  const mesh = await NetnsMesh.create([
    { name: 'pub', hosts: 1 },
    { name: 'east', hosts: 1, nat: true },
    { name: 'west', hosts: 1, nat: true },
  ])
  const keyArgs: string[] = []
  if (o.meshKey) {
    const made = await runCli(['mesh-key', join(dir, 'mesh.key')])
    assert.equal(made.code, 0, made.stderr)
    keyArgs.push('--mesh-key', join(dir, 'mesh.key'))
  }
  const started: RunningAgent[] = []
  const stop = async () => {
    await Promise.all(started.map((a) => a.stop().catch(() => undefined)))
    await mesh.destroy()
    await removeDir(dir)
  }
  try {
    const pubHost = mesh.hostsOf('pub')[0]!
    const relay = await mesh.startAgent(pubHost, {
      dataDir: join(dir, 'relay'),
      args: [
        '--config',
        join(dir, 'relay.yaml'),
        '--log-level',
        'info',
        ...keyArgs,
        ...(o.args?.(pubHost, 'relay') ?? []),
      ],
    })
    started.push(relay)
    // The relay's TCP address (a QUIC one needs a proved key first: src/node/quic-gate.ts)
    const bootstrap = relay.addrs.filter((a) => a.includes(`/ip4/${pubHost.ip}/tcp/`)).slice(0, 1)
    const nated = async (name: 'east' | 'west') => {
      const host = mesh.hostsOf(name)[0]!
      const args = [
        '--config',
        join(dir, 'nated.yaml'),
        '--log-level',
        'info',
        ...keyArgs,
        ...(o.args?.(host, 'nated') ?? []),
      ]
      const saved = { ...process.env }
      Object.assign(process.env, o.natedEnv ?? {})
      try {
        const a = await mesh.startAgent(host, { dataDir: join(dir, name), bootstrap, args })
        started.push(a)
        return a
      } finally {
        for (const k of Object.keys(o.natedEnv ?? {})) {
          if (saved[k] === undefined) delete process.env[k]
          else process.env[k] = saved[k]
        }
      }
    }
    const east = await nated('east')
    const west = await nated('west')
    return { mesh, dir, relay, east, west, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

/** How `a` is connected to `peer` (GET /v1/peers), or undefined. */
export async function peerOf(a: RunningAgent, peer: string): Promise<PeerView | undefined> {
  return ((await a.request('GET', '/v1/peers')).body.peers as PeerView[]).find((p) => p.peerId === peer)
}

/**
 * Waits until `a` and `b` see each other connected in one of `kinds`; on timeout says what it last
 * saw (both sides' kind and addresses).
 */
export async function waitConnected(
  a: RunningAgent,
  b: RunningAgent,
  kinds: string[],
  timeoutMs = 60_000,
): Promise<void> {
  let seen = ''
  await waitFor(
    `${a.peerId.slice(-6)} and ${b.peerId.slice(-6)} connected (${kinds.join(' or ')})`,
    async () => {
      const [x, y] = [await peerOf(a, b.peerId), await peerOf(b, a.peerId)]
      seen = JSON.stringify([x ?? 'not connected', y ?? 'not connected'])
      return kinds.includes(x?.connection ?? '') && kinds.includes(y?.connection ?? '')
    },
    timeoutMs,
  ).catch((err: Error) => {
    throw new Error(`${err.message}; last seen: ${seen}`)
  })
}

/** Starts a migration of VM `id` from `from` to `to` and waits for its end; the source's view. */
export async function migrateAndWait(
  from: RunningAgent,
  to: RunningAgent,
  id: string,
  body: Record<string, unknown> = { mode: 'precopy' },
  timeoutMs = 90_000,
  // biome-ignore lint/suspicious/noExplicitAny: the API's JSON view
): Promise<any> {
  const started = await from.request('POST', `/v1/vms/${id}/migrate`, { to: to.peerId, ...body })
  assert.equal(started.status, 202, JSON.stringify(started.body))
  return waitFor(
    'the migration to end',
    async () => {
      const x = await from.request('GET', `/v1/migrations/${started.body.id}`)
      return ['done', 'failed', 'cancelled'].includes(x.body.phase) ? x.body : undefined
    },
    timeoutMs,
  )
}

/**
 * Moves VM `id` from `from` to `to` as the NAT tests do: wait until `to` knows it, pause it, migrate
 * (pre-copy), check it is done, the same bytes arrived and it left `from`; resume it at `to`. The
 * migration's view, for the caller's own checks (link, channel).
 */
// biome-ignore lint/suspicious/noExplicitAny: the API's JSON view
export async function movePausedVm(from: RunningAgent, to: RunningAgent, id: string): Promise<any> {
  await waitFor(
    'the destination knows the VM',
    async () => (await to.request('GET', `/v1/cluster/vms/${id}`)).body.host === from.peerId,
    30_000,
  )
  await from.request('POST', `/v1/vms/${id}/pause`)
  const paused = (await from.request('GET', `/v1/vms/${id}/digest`)).body
  assert.ok(paused.combined, JSON.stringify(paused))
  const m = await migrateAndWait(from, to, id)
  assert.equal(m.phase, 'done', JSON.stringify(m))
  assert.equal((await to.request('GET', `/v1/vms/${id}/digest`)).body.combined, paused.combined)
  assert.equal((await from.request('GET', `/v1/vms/${id}`)).status, 404)
  await to.request('POST', `/v1/vms/${id}/resume`)
  return m
}

/**
 * Makes a NATed site's router pick a random source port for every new outbound connection (iptables
 * MASQUERADE --random-fully): a NAT no hole punch gets through (the port the peer aims at is never the
 * one the mapping uses). Connections already open keep their mapping.
 */
export async function randomizeNatPorts(mesh: NetnsMesh, site: string): Promise<void> {
  const ip = mesh.hostsOf(site)[0]!.ip
  const lan = `${ip.split('.').slice(0, 3).join('.')}.0/24`
  // First in the chain: it wins over the router's plain MASQUERADE for new connections.
  const rule = ['-t', 'nat', '-I', 'POSTROUTING', '1', ...masquerade(lan, { randomPorts: true })]
  await mesh.exec(mesh.routerNs(site), 'iptables', ['-w', ...rule])
}
