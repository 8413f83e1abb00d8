// `skymesh cluster create|ls|show|scale|rm|context`: virtual clusters — N VMs from one image placed over
// the mesh (--spread or --pack, --site), each given its context (its name, role, address, its peers'
// and the user data). Added under `skymesh cluster`, whose own options (--json, connection) it shares.
// create and scale report progress until every VM runs (--no-wait: return once placed).
import { readFile } from 'node:fs/promises'
import type { Command } from 'commander'
import type { VmContext } from '../../images/index.js'
import type { VclusterView } from '../../node/vclusters.js'
import type { ApiClient } from '../client.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { shortId, table } from '../format.js'
import { type CliIo, printJson } from '../io.js'
import { parsePositiveInt } from '../parse.js'

type Opts = ConnectionOptions & { json?: boolean; wait?: boolean }

export interface VclusterCommandDeps {
  /** Poll interval while waiting for a cluster (tests make it fast). */
  pollMs?: number
}

export function registerVclusterCommands(program: Command, io: CliIo, deps: VclusterCommandDeps = {}): void {
  const cluster = program.commands.find((c) => c.name() === 'cluster')
  if (!cluster) throw new Error('registerVclusterCommands: register the cluster command first')
  const all = (cmd: Command) => cmd.optsWithGlobals() as Opts & Record<string, unknown>
  const path = (name: string) => `/v1/vclusters/${encodeURIComponent(name)}`

  /** Polls until the cluster is no longer being changed, printing each new progress line on stderr. */
  const follow = async (client: ApiClient, start: VclusterView, opts: Opts): Promise<VclusterView> => {
    let c = start
    let last = ''
    while (opts.wait !== false && (c.state === 'creating' || c.state === 'scaling')) {
      const line = progressLine(c)
      if (!opts.json && line !== last) io.stderr.write(`${line}\n`)
      last = line
      await new Promise((r) => setTimeout(r, deps.pollMs ?? 300))
      c = await client.request<VclusterView>('GET', path(c.name))
    }
    return c
  }
  const finish = (c: VclusterView, opts: Opts) => {
    if (c.state === 'failed') process.exitCode = 1
    if (opts.json) return printJson(io, c)
    io.stdout.write(`${clusterSummary(c)}\n`)
    if (c.vms.length) io.stdout.write(`\n${vclusterTable(c)}`)
  }

  addConnectionOptions(
    cluster
      .command('create')
      .description('a virtual cluster: N VMs from an image placed over the mesh, each given its context')
      .argument('<name>', 'cluster name (its VMs are NAME-0, NAME-1, ...)')
      .requiredOption('--image <id>', 'image id, unique prefix or name (held by this host)')
      .requiredOption('--count <n>', 'number of VMs', parsePositiveInt)
      .option('--vcpus <n>', 'virtual CPUs per VM', parsePositiveInt)
      .option('--memory <MiB>', 'memory per VM', parsePositiveInt)
      .option('--disk <MiB>', 'disk per VM (default: the image size, at least 64)', parsePositiveInt)
      .option('--network <name>', 'attach every VM to this virtual network (addresses in the context)')
      .option('--spread', 'over as many hosts as fit (the default)')
      .option('--pack', 'on as few hosts as possible')
      .option('--site <site>', 'only on hosts of this site')
      .option('--user-data <text>', 'handed to every VM in its context')
      .option('--user-data-file <file>', 'the same, read from a file')
      .option('--no-wait', 'return once the cluster is placed'),
  ).action(async (name: string, _o: unknown, cmd: Command) => {
    const opts = all(cmd)
    if (opts.spread && opts.pack) throw new Error('--spread and --pack: choose one')
    const body: Record<string, unknown> = { name, image: opts.image, count: opts.count }
    if (opts.vcpus !== undefined) body.vcpus = opts.vcpus
    if (opts.memory !== undefined) body.memoryMiB = opts.memory
    if (opts.disk !== undefined) body.diskMiB = opts.disk
    if (opts.network !== undefined) body.network = opts.network
    if (opts.pack) body.placement = 'pack'
    else if (opts.spread) body.placement = 'spread'
    if (opts.site !== undefined) body.site = opts.site
    if (typeof opts.userData === 'string') body.userData = opts.userData
    if (typeof opts.userDataFile === 'string') body.userData = await readFile(opts.userDataFile, 'utf8')
    const client = await connect(opts, io)
    const placed = await client.request<VclusterView>('POST', '/v1/vclusters', body)
    finish(await follow(client, placed, opts), opts)
  })

  addConnectionOptions(
    cluster.command('ls').alias('list').description('virtual clusters created on this host'),
  ).action(async (_o: unknown, cmd: Command) => {
    const opts = all(cmd)
    const client = await connect(opts, io)
    const res = await client.request<{ vclusters: VclusterView[] }>('GET', '/v1/vclusters')
    if (opts.json) return printJson(io, res)
    io.stdout.write(
      res.vclusters.length === 0
        ? 'no virtual clusters\n'
        : `${table(
            ['NAME', 'STATE', 'VMS', 'HOSTS', 'IMAGE', 'PLACEMENT'],
            res.vclusters.map((c) => [
              c.name,
              c.state,
              `${c.vms.length}/${c.progress.want}`,
              String(new Set(c.vms.map((v) => v.host)).size),
              c.image.slice(0, 12),
              c.spec.site ? `${c.spec.placement} in ${c.spec.site}` : c.spec.placement,
            ]),
          )}`,
    )
  })

  addConnectionOptions(
    cluster
      .command('show')
      .description('one virtual cluster: state, progress and its VMs')
      .argument('<name>', 'cluster name'),
  ).action(async (name: string, _o: unknown, cmd: Command) => {
    const opts = all(cmd)
    const client = await connect(opts, io)
    const c = await client.request<VclusterView>('GET', path(name))
    if (opts.json) return printJson(io, c)
    io.stdout.write(`${clusterSummary(c)}\n`)
    if (c.state === 'creating' || c.state === 'scaling') io.stdout.write(`${progressLine(c)}\n`)
    if (c.vms.length) io.stdout.write(`\n${vclusterTable(c)}`)
  })

  addConnectionOptions(
    cluster
      .command('scale')
      .description('grow or shrink a virtual cluster to N VMs (every VM gets its new context)')
      .argument('<name>', 'cluster name')
      .argument('<count>', 'VMs it is to have', parsePositiveInt)
      .option('--no-wait', 'return once the change is placed'),
  ).action(async (name: string, count: number, _o: unknown, cmd: Command) => {
    const opts = all(cmd)
    const client = await connect(opts, io)
    const c = await client.request<VclusterView>('POST', `${path(name)}/scale`, { count })
    finish(await follow(client, c, opts), opts)
  })

  addConnectionOptions(
    cluster
      .command('rm')
      .alias('remove')
      .description('remove a virtual cluster and its VMs')
      .argument('<name>', 'cluster name'),
  ).action(async (name: string, _o: unknown, cmd: Command) => {
    const opts = all(cmd)
    const client = await connect(opts, io)
    await client.request('DELETE', path(name))
    if (opts.json) return printJson(io, { removed: name })
    io.stdout.write(`removed virtual cluster ${name}\n`)
  })

  addConnectionOptions(
    cluster
      .command('context')
      .description("a VM's context from the context broker (what the VM finds in its context.json)")
      .argument('<name>', 'cluster name')
      .option('--vm <vm>', 'one VM (name or id)'),
  ).action(async (name: string, _o: unknown, cmd: Command) => {
    const opts = all(cmd)
    const client = await connect(opts, io)
    const q = typeof opts.vm === 'string' ? `?vm=${encodeURIComponent(opts.vm)}` : ''
    const res = await client.request<VmContext | { contexts: VmContext[] }>(
      'GET',
      `${path(name)}/context${q}`,
    )
    printJson(io, res)
  })
}

function progressLine(c: VclusterView): string {
  const p = c.progress
  const push = p.push ? `, image on ${p.push.done}/${p.push.hosts} hosts` : ''
  return `${c.name}: ${c.state}, ${p.phase}${push}, ${p.running}/${p.want} VMs running`
}

export function clusterSummary(c: VclusterView): string {
  const hosts = new Set(c.vms.map((v) => v.host)).size
  const err = c.error ? ` — ${c.error}` : ''
  return `virtual cluster ${c.name}: ${c.state}, ${c.vms.length} VMs on ${hosts} hosts${err}`
}

export function vclusterTable(c: VclusterView): string {
  return table(
    ['VM', 'ID', 'ROLE', 'HOST', 'IP'],
    c.vms.map((v) => [v.name, v.id, v.role, shortId(v.host), v.ip ?? '-']),
  )
}
