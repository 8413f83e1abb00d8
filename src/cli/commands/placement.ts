// `skymesh plan [--apply ID]`, `skymesh drain HOST`, `skymesh undrain HOST` and `skymesh events`:
// cooperative placement, as the agent sees it.
import { setTimeout as sleep } from 'node:timers/promises'
import type { Command } from 'commander'
import type { DryRunResult, PlacementEventView, PlacementStatus } from '../../node/placement/index.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { CliError } from '../errors.js'
import { formatDuration, formatMiB, shortId, table } from '../format.js'
import { type CliIo, printJson } from '../io.js'
import { collect, parseNonNegative } from '../parse.js'
import { findPeer } from './migrate.js'

type Opts = ConnectionOptions & { json?: boolean; dryRun?: boolean }
const POLICY_HELP = 'repair, balance, affinity, consolidate or all'

export function registerPlacementCommands(program: Command, io: CliIo): void {
  addConnectionOptions(
    program
      .command('plan')
      .description(
        'what placement would move now and why, on the mesh as this agent sees it (a dry run: ' +
          'each event that would open, its partition and plan, with a plan id; nothing moves); ' +
          '--apply ID runs exactly that plan now',
      )
      .option('--dry-run', 'only show the plans (the default)')
      .option(
        '--apply <planId>',
        "run the plan a dry run showed (on its leader's agent); fails if the mesh changed",
      )
      .option('--policy <policy>', `${POLICY_HELP} (repeatable; default all)`, collect)
      .option('--host <peer>', 'only address the problems of this host (repeatable)', collect)
      .option('--vm <id>', 'only these VMs may move (repeatable)', collect),
  ).action(async (opts: Opts & { policy?: string[]; host?: string[]; vm?: string[]; apply?: string }) => {
    const client = await connect(opts, io)
    if (opts.apply !== undefined) {
      if (opts.dryRun || opts.policy?.length || opts.host?.length || opts.vm?.length)
        throw new CliError('--apply takes the plan id alone (no --dry-run, --policy, --host or --vm)')
      const res = await client.placementApply(opts.apply)
      if (opts.json) return printJson(io, res)
      io.stdout.write(
        `plan ${res.planId} running as event ${res.event.replace(/^[^#]+/, (p) => shortId(p))}: ` +
          `${res.moves.length} migration(s) over ${res.partition.length} host(s) (skymesh events to follow)\n`,
      )
      return
    }
    const known = opts.host?.length ? (await client.cluster()).hosts : []
    const hosts = opts.host?.map((h) => findPeer(known, h))
    const res = await client.placementPlan({
      dryRun: true,
      ...(opts.policy?.length ? { policy: opts.policy } : {}),
      ...(hosts ? { hosts } : {}),
      ...(opts.vm?.length ? { vms: opts.vm } : {}),
    })
    if (opts.json) return printJson(io, res)
    io.stdout.write(planText(res))
  })

  addConnectionOptions(
    program
      .command('drain')
      .description('move every VM off a host (spread over several others) and take none until it restarts')
      .argument('<host>', 'peer id of the host (or a unique part of it, as `skymesh cluster` shows)')
      .option('--wait', 'wait until the host runs no VM')
      .option('--timeout <seconds>', 'with --wait: give up after this long (default 600)', parseNonNegative),
  ).action(async (ref: string, opts: Opts & { wait?: boolean; timeout?: number }) => {
    const client = await connect(opts, io)
    const peer = findPeer((await client.cluster()).hosts, ref)
    const res = await client.drainHost(peer)
    if (!opts.wait) {
      if (opts.json) return printJson(io, res)
      io.stdout.write(`draining ${shortId(peer)}: ${res.vms} VM(s) to move (skymesh events to follow)\n`)
      return
    }
    const deadline = Date.now() + (opts.timeout ?? 600) * 1000
    const started = Date.now()
    for (;;) {
      const host = (await client.cluster()).hosts.find((h) => h.peerId === peer)
      const left = host?.vmCount ?? 0
      if (host && left === 0) break
      if (!host || host.status === 'dead' || host.status === 'left')
        throw new CliError(`host ${shortId(peer)} left the mesh while draining (${left} VM(s) on it)`)
      if (Date.now() > deadline)
        throw new CliError(
          `host ${shortId(peer)} still runs ${left} VM(s) after ${formatDuration(Date.now() - started)}`,
        )
      await sleep(500)
    }
    const took = Date.now() - started
    if (opts.json) return printJson(io, { ...res, drained: true, tookMs: took })
    io.stdout.write(`${shortId(peer)} drained: no VM left (${formatDuration(took)})\n`)
  })

  addConnectionOptions(
    program
      .command('undrain')
      .description('end the drain of a host: it takes VMs again (the VMs it still runs stay)')
      .argument('<host>', 'peer id of the host (or a unique part of it, as `skymesh cluster` shows)'),
  ).action(async (ref: string, opts: Opts) => {
    const client = await connect(opts, io)
    const peer = findPeer((await client.cluster()).hosts, ref)
    const res = await client.undrainHost(peer)
    if (opts.json) return printJson(io, res)
    io.stdout.write(`${shortId(peer)} no longer draining: it takes VMs again\n`)
  })

  addConnectionOptions(
    program
      .command('events')
      .description(
        'placement events this agent leads or led: partition, plan, outcome, times; and who holds it',
      ),
  ).action(async (opts: Opts) => {
    const client = await connect(opts, io)
    const res = await client.placementEvents()
    if (opts.json) return printJson(io, res)
    io.stdout.write(eventsText(res))
  })
}

export function planText(p: DryRunResult): string {
  const head =
    `dry run over ${p.hosts} host(s), ${p.vms} VM(s), policies ${p.policies.join(', ')}: ` +
    `${p.moves.length} migration(s) in ${p.waves} wave(s)` +
    (p.emptied.length ? `, empties ${p.emptied.map(shortId).join(', ')}` : '') +
    '\n' +
    (p.events ?? [])
      .map(
        (e) =>
          `event: ${e.kind} of ${shortId(e.leader)} over ${e.partition.length} host(s), ` +
          `${e.moves.length} migration(s)` +
          (e.planId ? `, plan ${e.planId} (skymesh plan --apply ${e.planId} on that host)` : '') +
          (e.note ? ` (${e.note})` : '') +
          '\n',
      )
      .join('')
  const unresolved = p.unresolved.length
    ? `cannot fix: ${p.unresolved.map((u) => `${u.kind} of ${shortId(u.host)}`).join(', ')}\n`
    : ''
  if (p.moves.length === 0) return `${head}${unresolved}`
  return `${head}${unresolved}\n${table(
    ['WAVE', 'VM', 'FROM', 'TO', 'MEMORY', 'WHY'],
    p.moves.map((m) => [
      String(m.wave),
      m.vm,
      shortId(m.from),
      shortId(m.to),
      formatMiB(m.bytes / 1048576),
      m.why,
    ]),
    ['right', 'left', 'left', 'left', 'right', 'left'],
  )}`
}

export function eventsText(s: PlacementStatus): string {
  const lines = [
    `placement ${s.enabled ? 'on' : 'off'}${s.draining ? ', draining' : ''}` +
      (s.reservedBy ? `; held by event ${s.reservedBy.id} (${s.reservedBy.kind})` : '; not held'),
  ]
  const all: PlacementEventView[] = [...s.open, ...s.recent]
  if (all.length === 0) return `${lines[0]}\nno placement events yet\n`
  return `${lines[0]}\n\n${table(
    ['EVENT', 'KIND', 'STATE', 'OPENED', 'TOOK', 'HOSTS', 'MOVES'],
    all.map((e) => [
      e.id.replace(/^[^#]+/, (p) => shortId(p)),
      e.kind,
      e.state,
      e.openedAt.slice(11, 19),
      e.durationMs === undefined ? '-' : formatDuration(e.durationMs),
      String(e.members.length),
      e.moves.length ? e.moves.map((m) => `${m.vm}->${shortId(m.to)}`).join(' ') : '-',
    ]),
    ['left', 'left', 'left', 'left', 'right', 'right', 'left'],
  )}`
}
