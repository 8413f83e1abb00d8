// `skymesh sites`: the sites of the mesh, their hosts, and the round trips and bandwidth their hosts
// measured between them (each host reports its own links; the table shows the median per pair).
import type { Command } from 'commander'
import type { SitesView } from '../../node/sites.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { table } from '../format.js'
import { type CliIo, printJson } from '../io.js'

type Opts = ConnectionOptions & { json?: boolean }

export function registerSitesCommand(program: Command, io: CliIo): void {
  addConnectionOptions(
    program
      .command('sites')
      .description('sites of the mesh, hosts per site, measured latency and bandwidth between sites'),
  ).action(async (opts: Opts) => {
    const client = await connect(opts, io)
    const view = await client.sites()
    if (opts.json) return printJson(io, view)
    io.stdout.write(sitesTables(view))
  })
}

export function sitesTables(view: SitesView): string {
  const sites = table(
    ['SITE', 'HOSTS', 'ALIVE'],
    view.sites.map((s) => [
      `${s.name}${s.name === view.self.site ? ' *' : ''}`,
      String(s.hosts.length),
      String(s.alive),
    ]),
    ['left', 'right', 'right'],
  )
  if (view.links.length === 0) return `${sites}\nno measurements yet\n`
  const links = table(
    ['FROM', 'TO', 'RTT', 'BANDWIDTH', 'REPORTERS'],
    view.links.map((l) => [
      l.from,
      l.to,
      l.rttMs === undefined ? '-' : `${Math.round(l.rttMs * 10) / 10} ms`,
      l.bandwidthMiBps === undefined ? '-' : `${(Math.round(l.bandwidthMiBps * 10) / 10).toFixed(1)} MiB/s`,
      String(l.reporters),
    ]),
    ['left', 'left', 'right', 'right', 'right'],
  )
  return `${sites}\n${links}`
}
