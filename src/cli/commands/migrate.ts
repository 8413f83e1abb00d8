// `skymesh vm migrate VM --to PEER [--wait]` and `skymesh migrations [ls|show|cancel]`: live migration.
import { SingleBar } from 'cli-progress'
import { type Command, InvalidArgumentError, Option } from 'commander'
import type { ClusterHost, MigrateVmRequest, MigrationView, VmRecord } from '../../node/types.js'
import { TERMINAL_PHASES } from '../../transfer/progress.js'
import type { ApiClient } from '../client.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { ApiError, ExitCode } from '../errors.js'
import { formatDuration, formatMiB, formatRate, keyValues, shortId, table } from '../format.js'
import { type CliIo, type OutStream, printJson } from '../io.js'
import { parsePositiveInt } from '../parse.js'
import { resolveVm } from './vm.js'

const MiB = 1024 * 1024
/** Finished migrations `skymesh migrations` lists without --all (running ones are always listed). */
const RECENT = 10

export interface MigrateDeps {
  /** How often `--wait` polls the migration (ms); default 200. */
  pollMs?: number
  /** Calls `handler` on each Ctrl-C while `--wait` waits; returns the unsubscribe. Default: SIGINT. */
  onInterrupt?: (handler: () => void) => () => void
}

export interface MigrateFlags {
  mode?: 'precopy' | 'postcopy' | 'auto'
  downtime?: number
  bandwidth?: number
  maxRounds?: number
  streams?: number
  compression?: 'auto' | 'on' | 'off'
  autoConverge?: boolean
}

type Opts = ConnectionOptions & { json?: boolean }
type MigrateOpts = Opts & MigrateFlags & { to: string; wait?: boolean }

export function registerMigrateCommand(vm: Command, io: CliIo, deps: MigrateDeps = {}): void {
  addConnectionOptions(
    vm
      .command('migrate')
      .description('live-migrate a VM to another host of the mesh')
      .argument('<vm>', 'VM id or name')
      .requiredOption(
        '--to <peer>',
        'destination: a peer id, or a unique prefix or suffix of one (12D3…x2AzLD as `skymesh cluster` shows)',
      )
      .addOption(
        new Option('--mode <mode>', 'pre-copy, post-copy, or auto (pre-copy that may switch)').choices([
          'precopy',
          'postcopy',
          'auto',
        ]),
      )
      .option('--downtime <ms>', 'target pause at the switch-over (ms)', parsePositiveInt)
      .option('--bandwidth <MiBps>', 'cap on the transfer rate (MiB/s)', parsePositive)
      .option('--max-rounds <n>', 'pre-copy rounds at most', parsePositiveInt)
      .option('--streams <n>', 'parallel data streams', parsePositiveInt)
      .addOption(new Option('--compression <when>', 'compress pages').choices(['auto', 'on', 'off']))
      .option('--no-auto-converge', 'pre-copy: never slow a guest that dirties memory faster than the link')
      .option(
        '--wait',
        'follow it: progress on stderr, then a summary; Ctrl-C cancels it; exit 1 unless it is done',
      ),
  ).action(async (ref: string, opts: MigrateOpts) => {
    const client = await connect(opts, io)
    const vm = await resolveVm(client, ref)
    const to = await resolvePeer(client, opts.to)
    const started = await client.migrateVm(vm.id, migrateRequest(to, opts))
    if (!opts.wait) {
      if (opts.json) return printJson(io, started)
      io.stdout.write(
        `migrating VM ${vm.name} (${vm.id}) to ${shortId(to)}: migration ${started.id}\n` +
          `follow it:  skymesh migrations show ${started.id}\n` +
          `cancel it:  skymesh migrations cancel ${started.id}\n`,
      )
      return
    }
    const final = await follow(client, started, vmBytes(vm), io, deps, opts.json === true)
    if (opts.json) printJson(io, final)
    else io.stdout.write(keyValues(describe(final, vm)))
    if (final.phase === 'done') return
    if (!opts.json) io.stderr.write(`error: ${failure(final)}\n`)
    throw new ExitCode(1)
  })
}

export function registerMigrationsCommands(program: Command, io: CliIo): void {
  const group = program
    .command('migrations')
    .alias('migration')
    .description("the agent's live migrations: list (default), show, cancel")

  addConnectionOptions(
    group
      .command('ls', { isDefault: true })
      .alias('list')
      .description(`list running migrations and the last ${RECENT} finished ones`)
      .option('--all', 'every finished migration the agent keeps'),
  ).action(async (opts: Opts & { all?: boolean }) => {
    const client = await connect(opts, io)
    const res = await client.listMigrations()
    if (opts.json) return printJson(io, res)
    const shown = opts.all ? res.migrations : recent(res.migrations)
    if (shown.length === 0) {
      io.stdout.write('no migrations\n')
      return
    }
    io.stdout.write(migrationTable(shown, await vmNames(client)))
    const hidden = res.migrations.length - shown.length
    if (hidden > 0) io.stdout.write(`(${hidden} older finished migrations; --all lists them)\n`)
  })

  addConnectionOptions(
    group
      .command('show')
      .description('show one migration')
      .argument('<id>', 'migration id or a unique prefix of it'),
  ).action(async (ref: string, opts: Opts) => {
    const client = await connect(opts, io)
    const m = findMigration((await client.listMigrations()).migrations, ref)
    if (opts.json) return printJson(io, m)
    const vm = (await vmList(client)).find((v) => v.id === m.vmId)
    io.stdout.write(keyValues(describe(m, vm)))
  })

  addConnectionOptions(
    group
      .command('cancel')
      .description('cancel a migration before its handover (the VM stays where it was)')
      .argument('<id>', 'migration id or a unique prefix of it'),
  ).action(async (ref: string, opts: Opts) => {
    const client = await connect(opts, io)
    const m = findMigration((await client.listMigrations()).migrations, ref)
    const after = await client.cancelMigration(m.id).catch((err: unknown) => {
      if (err instanceof ApiError && err.status === 409) {
        throw new ApiError(409, err.code, `too late to cancel: ${err.message}`, err.details)
      }
      throw err
    })
    if (opts.json) return printJson(io, after)
    io.stdout.write(
      `cancelling migration ${after.id} (VM ${after.vmId}, ${after.direction === 'out' ? 'to' : 'from'} ` +
        `${shortId(peerOf(after))}); it was in ${m.phase}: the VM stays on its source host\n`,
    )
  })
}

// ------------------------------------------------------------------ requests and look-ups

export function migrateRequest(to: string, flags: MigrateFlags): MigrateVmRequest {
  const req: MigrateVmRequest = { to }
  if (flags.mode !== undefined) req.mode = flags.mode
  if (flags.downtime !== undefined) req.downtimeMs = flags.downtime
  if (flags.bandwidth !== undefined) req.bandwidthMiBps = flags.bandwidth
  if (flags.maxRounds !== undefined) req.maxRounds = flags.maxRounds
  if (flags.streams !== undefined) req.streams = flags.streams
  if (flags.compression !== undefined) req.compression = flags.compression
  // commander sets autoConverge to true unless --no-auto-converge: send only the deviation
  if (flags.autoConverge === false) req.autoConverge = false
  return req
}

/** A full libp2p peer id (Ed25519 `12D3Koo…`, or RSA `Qm…`). */
const FULL_PEER_ID = /^(?:12D3Koo|Qm)[1-9A-HJ-NP-Za-km-z]{40,}$/
/** Shortest prefix or suffix taken as a peer reference. */
const MIN_REF = 6

async function resolvePeer(client: ApiClient, ref: string): Promise<string> {
  // a full id needs no look-up: the agent checks that it is a live host of the mesh
  if (FULL_PEER_ID.test(ref)) return ref
  return findPeer((await client.cluster()).hosts, ref)
}

/** By exact id, by the `12D3…x2AzLD` short form, or by a unique prefix or suffix (>= 6 characters). */
export function findPeer(hosts: Pick<ClusterHost, 'peerId' | 'self'>[], ref: string): string {
  const exact = hosts.filter((h) => h.peerId === ref)
  const short = /^(.+?)(?:…|\.\.\.)(.+)$/.exec(ref)
  let matches = exact
  if (matches.length === 0 && short) {
    const [, head = '', tail = ''] = short
    matches = hosts.filter(
      (h) =>
        h.peerId.length > head.length + tail.length && h.peerId.startsWith(head) && h.peerId.endsWith(tail),
    )
  } else if (matches.length === 0) {
    if (ref.length < MIN_REF) {
      throw new ApiError(
        400,
        'BAD_REQUEST',
        `--to "${ref}": give a peer id or at least ${MIN_REF} of its characters`,
      )
    }
    matches = hosts.filter((h) => h.peerId.startsWith(ref) || h.peerId.endsWith(ref))
  }
  if (matches.length === 0) {
    if (FULL_PEER_ID.test(ref)) return ref
    throw new ApiError(
      404,
      'PEER_NOT_FOUND',
      `no host of the mesh has a peer id like "${ref}" (see skymesh cluster)`,
    )
  }
  if (matches.length > 1) {
    const ids = matches.map((h) => h.peerId).join(', ')
    throw new ApiError(
      409,
      'AMBIGUOUS',
      `"${ref}" matches ${matches.length} hosts (${ids}); give more of the id`,
    )
  }
  const host = matches[0]!
  if (host.self) throw new ApiError(400, 'BAD_REQUEST', `${shortId(host.peerId)} is this agent's own host`)
  return host.peerId
}

/** By exact id, then by a unique id prefix (the table shows 8 characters). */
export function findMigration(migrations: MigrationView[], ref: string): MigrationView {
  const exact = migrations.find((m) => m.id === ref)
  if (exact) return exact
  const byPrefix = ref.length >= 4 ? migrations.filter((m) => m.id.startsWith(ref)) : []
  if (byPrefix.length === 1) return byPrefix[0]!
  if (byPrefix.length > 1) {
    throw new ApiError(409, 'AMBIGUOUS', `"${ref}" starts ${byPrefix.length} migration ids; give more of it`)
  }
  throw new ApiError(404, 'NOT_FOUND', `no migration "${ref}" on this agent`)
}

function parsePositive(value: string): number {
  const n = Number(value)
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0)
    throw new InvalidArgumentError('expected a number > 0.')
  return n
}

/** The mesh's VMs (a migrated VM is no longer local); the local ones if gossip cannot answer. */
async function vmList(client: ApiClient): Promise<(Pick<VmRecord, 'id' | 'name'> & VmSize)[]> {
  return client
    .clusterVms()
    .catch(() => client.listVms())
    .then(
      (r) => r.vms,
      () => [],
    )
}

async function vmNames(client: ApiClient): Promise<Map<string, string>> {
  return new Map((await vmList(client)).map((v) => [v.id, v.name]))
}

// ------------------------------------------------------------------ --wait

/** How the progress of a followed migration is shown. */
interface ProgressView {
  update(v: MigrationView): void
  /** Something happened (a Ctrl-C, a cancel): say it, without breaking the bar. */
  note(message: string): void
  stop(): void
}

const isTerminal = (v: MigrationView): boolean => TERMINAL_PHASES.includes(v.phase)

/** Polls until a terminal phase. The first Ctrl-C cancels the migration, a second one stops waiting. */
async function follow(
  client: ApiClient,
  first: MigrationView,
  totalBytes: number,
  io: CliIo,
  deps: MigrateDeps,
  quiet: boolean,
): Promise<MigrationView> {
  const view: ProgressView =
    !quiet && io.stderr.isTTY ? new BarView(io.stderr, totalBytes) : new LineView(io.stderr, !quiet)
  const giveUp = new AbortController()
  let current = first
  let cancelling: Promise<void> | undefined
  const cancel = async (): Promise<void> => {
    view.note('Ctrl-C: cancelling the migration (Ctrl-C again stops waiting)')
    try {
      await client.cancelMigration(first.id)
      view.note('cancel requested: the VM stays on its source host')
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err)
      if (err instanceof ApiError && err.status === 409) {
        view.note(`too late to cancel (${message}): waiting for it to finish`)
      } else view.note(`could not cancel: ${message}`)
    }
  }
  const unsubscribe = (deps.onInterrupt ?? onSigint)(() => {
    if (cancelling) giveUp.abort()
    else cancelling = cancel()
  })
  try {
    view.update(current)
    while (!isTerminal(current)) {
      await sleep(deps.pollMs ?? 200, giveUp.signal)
      if (giveUp.signal.aborted) break
      current = await client.getMigration(first.id)
      view.update(current)
    }
    // its note comes before the summary
    if (!giveUp.signal.aborted) await cancelling
  } finally {
    unsubscribe()
    view.stop()
  }
  if (giveUp.signal.aborted) {
    io.stderr.write(`stopped waiting; follow it with: skymesh migrations show ${first.id}\n`)
    throw new ExitCode(130)
  }
  return current
}

function onSigint(handler: () => void): () => void {
  process.on('SIGINT', handler)
  return () => void process.off('SIGINT', handler)
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve()
    const done = () => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
  })
}

/** Not a TTY: one line per phase change (and the notes). */
class LineView implements ProgressView {
  private phase: string | undefined
  private readonly t0 = Date.now()

  constructor(
    private readonly out: OutStream,
    private readonly phases: boolean,
  ) {}

  update(v: MigrationView): void {
    if (!this.phases || v.phase === this.phase) return
    this.phase = v.phase
    const facts = isTerminal(v)
      ? [v.error ? `${v.error.code}: ${v.error.message}` : '']
      : [`round ${v.round}`, `${formatBytes(v.bytesSent)} sent`, formatRate(v.bandwidthMiBps)]
    const elapsed = `${((Date.now() - this.t0) / 1000).toFixed(1)}s`.padStart(6)
    this.out.write(`[${elapsed}] ${v.phase}  ${facts.filter((f) => f && f !== '-').join(', ')}`.trimEnd())
    this.out.write('\n')
  }

  note(message: string): void {
    this.out.write(`${message}\n`)
  }

  stop(): void {}
}

/** A TTY: one bar redrawn in place; notes ride on the bar and are printed once it stops. */
class BarView implements ProgressView {
  private readonly bar: SingleBar
  private readonly notes: string[] = []
  private started = false

  constructor(
    private readonly out: OutStream,
    private readonly totalBytes: number,
  ) {
    this.bar = new SingleBar({
      stream: out as NodeJS.WritableStream,
      // payload keys must not collide with cli-progress's own (value, total, eta, ...)
      format: '{bar} {percentage}% | {phase} | round {round} | {sent} | {rate} | ETA {left}{note}',
      barsize: 24,
      hideCursor: true,
      fps: 10,
    })
  }

  update(v: MigrationView): void {
    // the estimate is the VM's size: re-sent dirty pages can push past it, zero pages keep it under
    const value = v.phase === 'done' ? this.totalBytes : Math.min(v.bytesSent, this.totalBytes)
    const payload = {
      phase: v.phase,
      round: v.round,
      sent: `${formatBytes(v.bytesSent)} / ~${formatBytes(this.totalBytes)}`,
      rate: formatRate(v.bandwidthMiBps),
      left: v.etaMs === undefined || isTerminal(v) ? '-' : formatMs(v.etaMs),
      note: this.notes.length ? ` | ${this.notes.at(-1)}` : '',
    }
    if (!this.started) {
      this.started = true
      this.bar.start(this.totalBytes, value, payload)
    } else this.bar.update(value, payload)
  }

  note(message: string): void {
    this.notes.push(message)
    if (this.started) this.bar.update({ note: ` | ${message}` })
  }

  stop(): void {
    if (this.started) this.bar.stop()
    for (const n of this.notes) this.out.write(`${n}\n`)
  }
}

// ------------------------------------------------------------------ output

type VmSize = Pick<VmRecord, 'memoryMiB' | 'diskMiB'>

function vmBytes(vm: VmSize): number {
  return (vm.memoryMiB + vm.diskMiB) * MiB
}

const peerOf = (m: MigrationView): string => (m.direction === 'out' ? m.to : m.from)

function modeName(v: MigrationView): string {
  return v.postcopy && v.mode !== 'postcopy' ? `${v.mode}, switched to post-copy` : v.mode
}

function failure(v: MigrationView): string {
  if (v.error) return `${v.error.code}: ${v.error.message}`
  return v.phase === 'cancelled'
    ? 'CANCELLED: the migration was cancelled'
    : `${v.phase.toUpperCase()}: the migration ended ${v.phase}`
}

export function formatMs(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms) || ms < 0) return '-'
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`
  return formatDuration(ms)
}

function formatBytes(bytes: number): string {
  return bytes === 0 ? '0 B' : formatMiB(bytes / MiB)
}

/** ` (0.96× the VM's 640 MiB)`, or ` (0.33×)` without the size. */
function ratio(bytes: number, of: number | undefined, withSize: boolean): string {
  if (!of) return ''
  return ` (${(bytes / of).toFixed(2)}×${withSize ? ` the VM's ${formatBytes(of)}` : ''})`
}

/** One migration as key/value pairs: the summary of `--wait` and `migrations show`. */
export function describe(
  v: MigrationView,
  vm?: Pick<VmRecord, 'id' | 'name'> & Partial<VmSize>,
): [string, string][] {
  const size =
    vm?.memoryMiB !== undefined && vm.diskMiB !== undefined ? (vm.memoryMiB + vm.diskMiB) * MiB : undefined
  const running = !isTerminal(v)
  const pairs: [string, string][] = [
    ['migration', v.id],
    ['vm', vm ? `${vm.name} (${v.vmId})` : v.vmId],
    ['direction', v.direction],
    ['from', v.from],
    ['to', v.to],
    ['phase', v.phase],
    ['mode', modeName(v)],
    ['rounds', String(v.round)],
    ['sent', `${formatBytes(v.bytesSent)}${ratio(v.bytesSent, size, true)}`],
    ['on the wire', `${formatBytes(v.wireBytes)}${ratio(v.wireBytes, size, false)}`],
    ['pages', `${v.pagesSent} sent, ${v.zeroPages} zero, ${v.dedupPages} dedup`],
  ]
  if (v.postcopy || v.faultPages > 0) pairs.push(['faults', `${v.faultPages} pages asked for by the guest`])
  if (running) {
    pairs.push(['rate', formatRate(v.bandwidthMiBps)], ['dirty rate', formatRate(v.dirtyRateMiBps)])
    pairs.push(['eta', formatMs(v.etaMs)])
  } else pairs.push(['total', formatMs(v.totalMs)], ['downtime', formatMs(v.downtimeMs)])
  if (v.epoch !== undefined) pairs.push(['epoch', String(v.epoch)])
  if (v.error) pairs.push(['error', `${v.error.code}: ${v.error.message}`])
  return pairs
}

/** Running ones and the last RECENT finished ones, in the agent's order (newest first). */
function recent(migrations: MigrationView[]): MigrationView[] {
  let finished = 0
  return migrations.filter((m) => !isTerminal(m) || ++finished <= RECENT)
}

export function migrationTable(migrations: MigrationView[], names: Map<string, string>): string {
  return table(
    ['ID', 'VM', 'DIRECTION', 'PEER', 'MODE', 'PHASE', 'ROUND', 'SENT', 'MiB/s', 'TOTAL', 'DOWNTIME'],
    migrations.map((m) => [
      m.id.slice(0, 8),
      names.get(m.vmId) ?? m.vmId.slice(0, 8),
      m.direction,
      shortId(peerOf(m)),
      m.postcopy && m.mode !== 'postcopy' ? `${m.mode}→postcopy` : m.mode,
      m.phase === 'failed' && m.error ? `failed: ${m.error.code}` : m.phase,
      String(m.round),
      formatBytes(m.bytesSent),
      rate(m),
      formatMs(m.totalMs),
      formatMs(m.downtimeMs),
    ]),
    ['left', 'left', 'left', 'left', 'left', 'left', 'right', 'right', 'right', 'right', 'right'],
  )
}

/** The current rate while it runs; the average once it ended. */
function rate(m: MigrationView): string {
  if (!isTerminal(m)) return m.bandwidthMiBps ? m.bandwidthMiBps.toFixed(1) : '-'
  return m.totalMs ? (m.bytesSent / MiB / (m.totalMs / 1000)).toFixed(1) : '-'
}
