// `skymesh status` and `skymesh peers`: what the local agent knows about itself and its peers.
import type { Command } from 'commander'
import type { NodeInfo, PeerInfo } from '../../node/types.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { formatAge, formatMiB, keyValues, table } from '../format.js'
import { type CliIo, printJson } from '../io.js'

type Opts = ConnectionOptions & { json?: boolean }

export function registerNodeCommands(program: Command, io: CliIo): void {
  addConnectionOptions(
    program.command('status').description("show the agent's identity, site and load"),
  ).action(async (opts: Opts) => {
    const client = await connect(opts, io)
    const node = await client.node()
    if (opts.json) return printJson(io, node)
    // the peer count is a nicety: a failure there should not hide the rest
    const peers = await client.peers().then(
      (r) => String(r.peers.length),
      () => '-',
    )
    const { capacity: cap, used } = node
    const [firstAddr = '-', ...moreAddrs] = node.addrs
    io.stdout.write(
      keyValues([
        ['peer id', node.peerId],
        ['site', node.site],
        ['driver', node.driver],
        ['version', node.version],
        ['uptime', formatAge(node.startedAt)],
        ['api', client.baseUrl],
        ['peers', peers],
        ['vms', String(node.vmCount)],
        ['vcpus', `${used.vcpus} / ${cap.vcpus}`],
        ['memory', `${formatMiB(used.memoryMiB)} / ${formatMiB(cap.memoryMiB)}`],
        ['disk', `${formatMiB(used.diskMiB)} / ${formatMiB(cap.diskMiB)}`],
        ['addrs', firstAddr],
        ...moreAddrs.map((a): [string, string] => ['', a]),
        ...natLines(node.nat),
        ...(node.dataChannel ? [['data channel', node.dataChannel] as [string, string]] : []),
      ]),
    )
  })

  addConnectionOptions(
    program.command('peers').description('list the peers the agent is connected to'),
  ).action(async (opts: Opts) => {
    const client = await connect(opts, io)
    const res = await client.peers()
    if (opts.json) return printJson(io, res)
    if (res.peers.length === 0) {
      io.stdout.write('no peers connected\n')
      return
    }
    io.stdout.write(peersTable(res.peers))
  })
}

/** Reachability lines of `skymesh status`: AutoNAT's verdict and how peers see this host. */
function natLines(nat: NodeInfo['nat']): [string, string][] {
  if (!nat) return []
  const seen = [...new Set(nat.observed.map((o) => o.addr))]
  return [
    ['reachability', `${nat.autonat} (AutoNAT; configured: ${nat.configured}): ${nat.reason}`],
    ...nat.confirmed.map((a, i): [string, string] => [i === 0 ? 'reachable at' : '', a]),
    ...nat.unreachable.map((a, i): [string, string] => [i === 0 ? 'unreachable at' : '', a]),
    ...seen.map((a, i): [string, string] => [i === 0 ? 'peers see' : '', a]),
    ...nat.relayed.map((a, i): [string, string] => [i === 0 ? 'relayed at' : '', a]),
  ]
}

export function peersTable(peers: PeerInfo[]): string {
  return table(
    ['PEER', 'SITE', 'DIRECTION', 'LINK', 'LATENCY', 'CONNECTED', 'ADDRESS'],
    peers.map((p) => [
      p.peerId,
      p.site ?? '-',
      p.direction,
      p.connection ?? '-',
      p.latencyMs === undefined ? '-' : `${Math.round(p.latencyMs * 10) / 10} ms`,
      formatAge(p.connectedAt),
      p.addrs.length > 1 ? `${p.addrs[0]} (+${p.addrs.length - 1})` : (p.addrs[0] ?? '-'),
    ]),
    ['left', 'left', 'left', 'left', 'right', 'right', 'left'],
  )
}
