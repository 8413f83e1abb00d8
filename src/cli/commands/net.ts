// `skymesh net ls|create|show`: the virtual networks of the mesh (overlay) and who is on them.
import type { Command } from 'commander'
import type { NetworkDetail, NetworkSummary } from '../../node/types.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { keyValues, shortId, table } from '../format.js'
import { type CliIo, printJson } from '../io.js'
import { parsePositiveInt } from '../parse.js'

type Opts = ConnectionOptions & { json?: boolean }

export function registerNetCommands(program: Command, io: CliIo): void {
  const net = program
    .command('net')
    .description('virtual networks: each VM keeps its MAC and IP wherever it runs')

  addConnectionOptions(net.command('ls').alias('list').description('list the networks of the mesh')).action(
    async (opts: Opts) => {
      const client = await connect(opts, io)
      const res = await client.request<{ networks: NetworkSummary[] }>('GET', '/v1/networks')
      if (opts.json) return printJson(io, res)
      io.stdout.write(res.networks.length === 0 ? 'no networks\n' : networkTable(res.networks))
    },
  )

  addConnectionOptions(
    net
      .command('create')
      .description('create a network (known mesh-wide through gossip)')
      .argument('<name>', 'name of the network')
      .requiredOption('--subnet <cidr>', 'IPv4 subnet its VMs get addresses from, e.g. 10.10.0.0/24')
      .option('--mtu <bytes>', 'largest Ethernet payload (576..9000)', parsePositiveInt),
  ).action(async (name: string, opts: Opts & { subnet: string; mtu?: number }) => {
    const client = await connect(opts, io)
    const body: Record<string, unknown> = { name, subnet: opts.subnet }
    if (opts.mtu !== undefined) body.mtu = opts.mtu
    const n = await client.request<NetworkSummary>('POST', '/v1/networks', body)
    if (opts.json) return printJson(io, n)
    io.stdout.write(`created network ${n.name}: ${n.subnet}, MTU ${n.mtu}\n`)
  })

  addConnectionOptions(
    net
      .command('show')
      .description('one network: which VM, MAC and IP is on which host')
      .argument('<name>', 'name of the network'),
  ).action(async (name: string, opts: Opts) => {
    const client = await connect(opts, io)
    const n = await client.request<NetworkDetail>('GET', `/v1/networks/${encodeURIComponent(name)}`)
    if (opts.json) return printJson(io, n)
    io.stdout.write(
      keyValues([
        ['network', n.name],
        ['subnet', n.subnet],
        ['mtu', String(n.mtu)],
        ['members', `${n.members} on ${n.hosts} host${n.hosts === 1 ? '' : 's'}`],
      ]),
    )
    if (n.vms.length === 0) return void io.stdout.write('\nno VMs on it\n')
    io.stdout.write('\n')
    io.stdout.write(
      table(
        ['IP', 'MAC', 'VM', 'ID', 'HOST'],
        n.vms.map((v) => [v.ip, v.mac, v.name ?? '-', v.vmId, `${shortId(v.host)}${v.local ? ' *' : ''}`]),
      ),
    )
  })
}

export function networkTable(networks: NetworkSummary[]): string {
  return table(
    ['NAME', 'SUBNET', 'MTU', 'VMS', 'HOSTS'],
    networks.map((n) => [n.name, n.subnet, String(n.mtu), String(n.members), String(n.hosts)]),
    ['left', 'left', 'right', 'right', 'right'],
  )
}
