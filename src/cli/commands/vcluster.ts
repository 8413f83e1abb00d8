// `skymesh cluster create|rm|context`: virtual clusters — N VMs from one image spread over the mesh,
// each with its context (its name, role, address and its peers'). Added under `skymesh cluster`, whose
// own options (--json, connection) it shares.
import type { Command } from 'commander'
import type { VmContext } from '../../images/index.js'
import type { VclusterView } from '../../node/vclusters.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { shortId, table } from '../format.js'
import { type CliIo, printJson } from '../io.js'
import { parsePositiveInt } from '../parse.js'

type Opts = ConnectionOptions & { json?: boolean }

export function registerVclusterCommands(program: Command, io: CliIo): void {
  const cluster = program.commands.find((c) => c.name() === 'cluster')
  if (!cluster) throw new Error('registerVclusterCommands: register the cluster command first')
  const all = (cmd: Command) => cmd.optsWithGlobals() as Opts & Record<string, unknown>

  addConnectionOptions(
    cluster
      .command('create')
      .description('a virtual cluster: N VMs from an image, spread over the mesh, each given its context')
      .argument('<name>', 'cluster name (its VMs are NAME-0, NAME-1, ...)')
      .requiredOption('--image <id>', 'image id, unique prefix or name (held by this host)')
      .requiredOption('--count <n>', 'number of VMs', parsePositiveInt)
      .option('--vcpus <n>', 'virtual CPUs per VM', parsePositiveInt)
      .option('--memory <MiB>', 'memory per VM', parsePositiveInt)
      .option('--disk <MiB>', 'disk per VM (default: the image size, at least 64)', parsePositiveInt)
      .option('--network <name>', 'attach every VM to this virtual network (addresses in the context)'),
  ).action(async (name: string, _o: unknown, cmd: Command) => {
    const opts = all(cmd)
    const client = await connect(opts, io)
    const body: Record<string, unknown> = { name, image: opts.image, count: opts.count }
    if (opts.vcpus !== undefined) body.vcpus = opts.vcpus
    if (opts.memory !== undefined) body.memoryMiB = opts.memory
    if (opts.disk !== undefined) body.diskMiB = opts.disk
    if (opts.network !== undefined) body.network = opts.network
    const c = await client.request<VclusterView>('POST', '/v1/vclusters', body)
    if (opts.json) return printJson(io, c)
    io.stdout.write(
      `virtual cluster ${c.name}: ${c.vms.length} VMs on ${new Set(c.vms.map((v) => v.host)).size} hosts\n\n`,
    )
    io.stdout.write(vclusterTable(c))
  })

  addConnectionOptions(
    cluster
      .command('rm')
      .description('remove a virtual cluster and its VMs')
      .argument('<name>', 'cluster name'),
  ).action(async (name: string, _o: unknown, cmd: Command) => {
    const opts = all(cmd)
    const client = await connect(opts, io)
    await client.request('DELETE', `/v1/vclusters/${encodeURIComponent(name)}`)
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
      `/v1/vclusters/${encodeURIComponent(name)}/context${q}`,
    )
    printJson(io, res)
  })
}

export function vclusterTable(c: VclusterView): string {
  return table(
    ['VM', 'ID', 'ROLE', 'HOST', 'IP'],
    c.vms.map((v) => [v.name, v.id, v.role, shortId(v.host), v.ip ?? '-']),
  )
}
