// `skymesh cluster` and `skymesh where VM`: the mesh as the agent's gossip sees it.
import type { Command } from 'commander'
import type { ClusterHost, ClusterVm } from '../../node/types.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { formatDuration, formatMiB, formatRate, keyValues, shortId, table } from '../format.js'
import { type CliIo, printJson } from '../io.js'

type Opts = ConnectionOptions & { json?: boolean; vms?: boolean }

export function registerClusterCommands(program: Command, io: CliIo): void {
  addConnectionOptions(
    program
      .command('cluster')
      .description('every host of the mesh: liveness, site, load and age of its state (--vms: every VM)')
      .option('--vms', 'list every VM of the mesh with its host and epoch instead'),
  ).action(async (opts: Opts) => {
    const client = await connect(opts, io)
    if (opts.vms) {
      const res = await client.clusterVms()
      if (opts.json) return printJson(io, res)
      io.stdout.write(res.vms.length === 0 ? 'no VMs in the mesh\n' : clusterVmTable(res.vms))
      return
    }
    const view = await client.cluster()
    if (opts.json) return printJson(io, view)
    const c = view.counts
    io.stdout.write(
      `${view.hosts.length} hosts: ${c.alive} alive, ${c.suspect} suspect, ${c.dead} dead, ${c.left} left\n\n`,
    )
    io.stdout.write(clusterHostTable(view.hosts))
  })

  addConnectionOptions(
    program
      .command('where')
      .description('which host runs a VM of the mesh, and at which epoch')
      .argument('<vm>', 'VM id or name'),
  ).action(async (ref: string, opts: Opts) => {
    const client = await connect(opts, io)
    const vm = await client.where(ref)
    if (opts.json) return printJson(io, vm)
    io.stdout.write(
      keyValues([
        ['vm', `${vm.name} (${vm.id})`],
        ['host', vm.host],
        ['site', vm.site ?? '-'],
        ['epoch', String(vm.epoch)],
        ['status', vm.status],
        ['state', vm.state],
        ['memory', formatMiB(vm.memoryMiB)],
      ]),
    )
  })
}

export function clusterHostTable(hosts: ClusterHost[]): string {
  return table(
    ['PEER', 'SITE', 'STATUS', 'VMS', 'VCPUS', 'MEMORY', 'DISK', 'STATE AGE'],
    hosts.map((h) => [
      `${shortId(h.peerId)}${h.self ? ' *' : ''}`,
      h.site || '-',
      h.status,
      String(h.vmCount),
      h.used && h.capacity ? `${h.used.vcpus}/${h.capacity.vcpus}` : '-',
      h.used && h.capacity ? `${formatMiB(h.used.memoryMiB)} / ${formatMiB(h.capacity.memoryMiB)}` : '-',
      h.used && h.capacity ? `${formatMiB(h.used.diskMiB)} / ${formatMiB(h.capacity.diskMiB)}` : '-',
      h.receivedAgoMs === undefined ? '-' : formatDuration(h.receivedAgoMs),
    ]),
    ['left', 'left', 'left', 'right', 'right', 'right', 'right', 'right'],
  )
}

export function clusterVmTable(vms: ClusterVm[]): string {
  return table(
    ['VM', 'ID', 'HOST', 'SITE', 'EPOCH', 'STATUS', 'STATE', 'MEMORY', 'DIRTY'],
    vms.map((v) => [
      v.name,
      v.id,
      shortId(v.host),
      v.site ?? '-',
      String(v.epoch),
      v.status,
      v.state,
      formatMiB(v.memoryMiB),
      formatRate(v.dirtyMiBps),
    ]),
    ['left', 'left', 'left', 'left', 'right', 'left', 'left', 'right', 'right'],
  )
}
