// `skymesh vm create|ls|show|rm|pause|resume` (and `migrate`, from migrate.ts). A VM is named by its id or
// its name.
import type { Command } from 'commander'
import type { CreateVmRequest, VmRecord } from '../../node/types.js'
import type { WorkloadSpec } from '../../vm/types.js'
import type { ApiClient } from '../client.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { ApiError, ExitCode, reportError } from '../errors.js'
import { formatAge, formatMiB, formatRate, keyValues, shortId, table } from '../format.js'
import { type CliIo, printJson } from '../io.js'
import { parseMiB, parseNonNegative, parsePositiveInt } from '../parse.js'
import { type MigrateDeps, registerMigrateCommand } from './migrate.js'

type Opts = ConnectionOptions & { json?: boolean }

interface CreateOpts extends Opts {
  memory: number
  disk: number
  vcpus: number
  dirty?: number
  hotSet?: number
  cpu?: number
  diskWrite?: number
  network?: string[]
  tap?: boolean
  image?: string
}

export function registerVmCommands(program: Command, io: CliIo, migrate: MigrateDeps = {}): void {
  const vm = program.command('vm').description('create, list and manage VMs')

  addConnectionOptions(
    vm
      .command('create')
      .description('create a VM on the agent')
      .argument('<name>', 'name of the VM')
      .requiredOption('--memory <MiB>', 'guest memory (MiB; 512M, 1G also work)', parseMiB)
      .requiredOption('--disk <MiB>', 'disk size (MiB; 512M, 1G also work)', parseMiB)
      .option('--vcpus <n>', 'virtual CPUs', parsePositiveInt, 1)
      .option('--dirty <MiBps>', 'workload: memory dirtied per second (MiB/s)', parseNonNegative)
      .option('--hot-set <MiB>', 'workload: size of the set of pages it writes (MiB)', parseNonNegative)
      .option('--cpu <share>', 'workload: share of one CPU it uses (0..vcpus)', parseNonNegative)
      .option('--disk-write <MiBps>', 'workload: disk written per second (MiB/s)', parseNonNegative)
      .option(
        '--network <name>',
        'attach to a virtual network (repeatable)',
        (v: string, acc: string[] = []) => [...acc, v],
      )
      .option('--tap', 'plug its NICs in as Linux TAP devices (synthetic driver; root and socat)')
      .option('--image <id>', 'start the disk from an image, copy-on-write (id, unique prefix or name)'),
  ).action(async (name: string, opts: CreateOpts) => {
    const client = await connect(opts, io)
    const vm = await client.createVm(createRequest(name, opts))
    if (opts.json) return printJson(io, vm)
    io.stdout.write(
      `created VM ${vm.name} (${vm.id}) on ${shortId(vm.host)}: ${vm.vcpus} vcpu, ` +
        `${formatMiB(vm.memoryMiB)} memory, ${formatMiB(vm.diskMiB)} disk, ${vm.state}\n`,
    )
    for (const n of vm.nics ?? []) io.stdout.write(`  network ${n.network}: ip ${n.ip}, mac ${n.mac}\n`)
  })

  addConnectionOptions(vm.command('ls').alias('list').description('list VMs')).action(async (opts: Opts) => {
    const client = await connect(opts, io)
    const res = await client.listVms()
    if (opts.json) return printJson(io, res)
    io.stdout.write(res.vms.length === 0 ? 'no VMs\n' : vmTable(res.vms))
  })

  addConnectionOptions(
    vm
      .command('show')
      .description('show one VM')
      .argument('<vm>', 'VM id or name')
      .option('--digest', "also compute the digest of the VM's memory and disk"),
  ).action(async (ref: string, opts: Opts & { digest?: boolean }) => {
    const client = await connect(opts, io)
    const { id } = await resolveVm(client, ref)
    const vm = await client.getVm(id)
    const digest = opts.digest ? await client.vmDigest(id) : undefined
    // one JSON document: the API's record, plus the API's digest answer under `digest`
    if (opts.json) return printJson(io, digest ? { ...vm, digest } : vm)
    const w = vm.workload
    io.stdout.write(
      keyValues([
        ['id', vm.id],
        ['name', vm.name],
        ['state', vm.state],
        ['host', vm.host],
        ['epoch', String(vm.epoch)],
        ['vcpus', String(vm.vcpus)],
        ['memory', formatMiB(vm.memoryMiB)],
        ['disk', formatMiB(vm.diskMiB)],
        [
          'workload',
          `dirty ${formatRate(w?.dirtyMiBps)}, hot set ${formatMiB(w?.hotSetMiB ?? 0)}, ` +
            `cpu ${w?.cpu ?? 0}, disk writes ${formatRate(w?.diskWriteMiBps)}`,
        ],
        ['created', `${vm.createdAt} (${formatAge(vm.createdAt)} ago)`],
        ['updated', `${vm.updatedAt} (${formatAge(vm.updatedAt)} ago)`],
        ...(digest
          ? ([
              ['digest', digest.combined],
              ['  memory', digest.memory],
              ['  disk', digest.disk],
            ] as [string, string][])
          : []),
      ]),
    )
  })

  addConnectionOptions(
    vm.command('rm').alias('remove').description('destroy VMs').argument('<vm...>', 'VM ids or names'),
  ).action(async (refs: string[], opts: Opts) => {
    const client = await connect(opts, io)
    const { vms } = await client.listVms()
    const removed: string[] = []
    let failed = false
    // one failure does not stop the others; the exit code says something went wrong
    for (const ref of refs) {
      try {
        const vm = findVm(vms, ref)
        await client.deleteVm(vm.id)
        removed.push(vm.id)
        if (!opts.json) io.stdout.write(`removed VM ${vm.name} (${vm.id})\n`)
      } catch (err) {
        failed = true
        reportError(err, io)
      }
    }
    if (opts.json) printJson(io, { removed })
    if (failed) throw new ExitCode(1)
  })

  for (const action of ['pause', 'resume'] as const) {
    addConnectionOptions(
      vm
        .command(action)
        .description(action === 'pause' ? 'pause a running VM' : 'resume a paused VM')
        .argument('<vm>', 'VM id or name'),
    ).action(async (ref: string, opts: Opts) => {
      const client = await connect(opts, io)
      const { id } = await resolveVm(client, ref)
      const vm = action === 'pause' ? await client.pauseVm(id) : await client.resumeVm(id)
      if (opts.json) return printJson(io, vm)
      io.stdout.write(`${action === 'pause' ? 'paused' : 'resumed'} VM ${vm.name} (${vm.id}): ${vm.state}\n`)
    })
  }

  registerMigrateCommand(vm, io, migrate)
}

export function createRequest(name: string, opts: CreateOpts): CreateVmRequest {
  const req: CreateVmRequest = { name, vcpus: opts.vcpus, memoryMiB: opts.memory, diskMiB: opts.disk }
  const workload: Partial<WorkloadSpec> = {}
  if (opts.dirty !== undefined) workload.dirtyMiBps = opts.dirty
  if (opts.hotSet !== undefined) workload.hotSetMiB = opts.hotSet
  if (opts.cpu !== undefined) workload.cpu = opts.cpu
  if (opts.diskWrite !== undefined) workload.diskWriteMiBps = opts.diskWrite
  if (Object.keys(workload).length > 0) req.workload = workload
  if (opts.network?.length) req.networks = opts.network
  if (opts.tap) req.nicAttach = 'tap'
  if (opts.image) req.image = opts.image
  return req
}

export async function resolveVm(client: ApiClient, ref: string): Promise<VmRecord> {
  const { vms } = await client.listVms()
  return findVm(vms, ref)
}

/** By exact id, then by name, then by a unique id prefix. */
export function findVm(vms: VmRecord[], ref: string): VmRecord {
  const byId = vms.find((v) => v.id === ref)
  if (byId) return byId
  const byName = vms.filter((v) => v.name === ref)
  if (byName.length === 1) return byName[0]!
  if (byName.length > 1) {
    throw new ApiError(
      409,
      'AMBIGUOUS',
      `"${ref}" names ${byName.length} VMs (${byName.map((v) => v.id).join(', ')}); use an id`,
    )
  }
  const byPrefix = ref.length >= 4 ? vms.filter((v) => v.id.startsWith(ref)) : []
  if (byPrefix.length === 1) return byPrefix[0]!
  throw new ApiError(404, 'VM_NOT_FOUND', `no VM with id or name "${ref}"`)
}

export function vmTable(vms: VmRecord[]): string {
  return table(
    ['ID', 'NAME', 'STATE', 'HOST', 'VCPUS', 'MEMORY', 'DISK', 'DIRTY', 'AGE'],
    vms.map((v) => [
      v.id,
      v.name,
      v.state,
      shortId(v.host),
      String(v.vcpus),
      formatMiB(v.memoryMiB),
      formatMiB(v.diskMiB),
      formatRate(v.workload?.dirtyMiBps),
      formatAge(v.createdAt),
    ]),
    ['left', 'left', 'left', 'left', 'right', 'right', 'right', 'right', 'right'],
  )
}
