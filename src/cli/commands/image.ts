// `skymesh image add|ls|rm|verify|push`: the content-addressed images of this host and pushes of one
// image to many hosts at once (a pipeline tree; progress per host).
import { resolve } from 'node:path'
import { MultiBar, type SingleBar } from 'cli-progress'
import type { Command } from 'commander'
import type { ImageView, PushView } from '../../images/index.js'
import { addConnectionOptions, type ConnectionOptions, connect } from '../connection.js'
import { formatMiB, shortId, table } from '../format.js'
import { type CliIo, printJson } from '../io.js'
import { parsePositiveInt } from '../parse.js'

type Opts = ConnectionOptions & { json?: boolean }

export interface ImageCommandDeps {
  /** Poll interval of `image push` (tests make it fast). */
  pollMs?: number
}

export function registerImageCommands(program: Command, io: CliIo, deps: ImageCommandDeps = {}): void {
  const image = program
    .command('image')
    .description('content-addressed images: chunks by sha256, gossiped holders, pipelined pushes')

  addConnectionOptions(
    image
      .command('add')
      .description('add a file of this host as an image (the local agent reads it where it lies)')
      .argument('<file>', 'image file (raw disk image, qcow2, ...)')
      .option('--name <name>', 'image name (default: the file name)'),
  ).action(async (file: string, opts: Opts & { name?: string }) => {
    const client = await connect(opts, io)
    const body: Record<string, unknown> = { path: resolve(file) }
    if (opts.name) body.name = opts.name
    const img = await client.request<ImageView>('POST', '/v1/images', body)
    if (opts.json) return printJson(io, img)
    io.stdout.write(
      `added image ${img.name}: ${img.id}\n${formatMiB(img.size / 1048576)} in ${img.chunks} chunks\n`,
    )
  })

  addConnectionOptions(
    image.command('ls').alias('list').description('images on this host and their holders'),
  ).action(async (opts: Opts) => {
    const client = await connect(opts, io)
    const res = await client.request<{ images: ImageView[] }>('GET', '/v1/images')
    if (opts.json) return printJson(io, res)
    io.stdout.write(res.images.length === 0 ? 'no images\n' : imageTable(res.images))
  })

  addConnectionOptions(
    image
      .command('rm')
      .alias('remove')
      .description('remove an image from this host')
      .argument('<id>', 'image id, unique prefix or name'),
  ).action(async (id: string, opts: Opts) => {
    const client = await connect(opts, io)
    await client.request('DELETE', `/v1/images/${encodeURIComponent(id)}`)
    if (opts.json) return printJson(io, { removed: id })
    io.stdout.write(`removed image ${id}\n`)
  })

  addConnectionOptions(
    image
      .command('verify')
      .description('re-hash every chunk of an image on this host')
      .argument('<id>', 'image id, unique prefix or name'),
  ).action(async (id: string, opts: Opts) => {
    const client = await connect(opts, io)
    const res = await client.request<{ id: string; ok: boolean; bad: number[] }>(
      'POST',
      `/v1/images/${encodeURIComponent(id)}/verify`,
      {},
    )
    if (opts.json) return printJson(io, res)
    io.stdout.write(
      res.ok
        ? `image ${res.id}: every chunk matches its hash\n`
        : `image ${res.id}: ${res.bad.length} bad chunk(s): ${res.bad.join(', ')}\n`,
    )
    if (!res.ok) process.exitCode = 1
  })

  addConnectionOptions(
    image
      .command('push')
      .description(
        'propagate an image to many hosts at once: a pipeline tree, chunks forwarded while received',
      )
      .argument('<id>', 'image id, unique prefix or name')
      .requiredOption('--to <hosts>', "'all' or a comma-separated list of peer ids (or unique prefixes)")
      .option('--fanout <k>', 'children per host in the tree (1 = a chain)', parsePositiveInt)
      .option('--no-wait', 'return once the push started'),
  ).action(async (id: string, opts: Opts & { to: string; fanout?: number; wait: boolean }) => {
    const client = await connect(opts, io)
    const to =
      opts.to === 'all'
        ? 'all'
        : opts.to
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean)
    const body: Record<string, unknown> = { to }
    if (opts.fanout !== undefined) body.fanout = opts.fanout
    let view = await client.request<PushView>('POST', `/v1/images/${encodeURIComponent(id)}/distribute`, body)
    const bars = opts.wait && !opts.json && io.stdout.isTTY ? new PushBars(io) : undefined
    while (opts.wait && view.state === 'running') {
      bars?.update(view)
      await new Promise((r) => setTimeout(r, deps.pollMs ?? 500))
      view = await client.request<PushView>('GET', `/v1/images/${encodeURIComponent(view.image)}/distribute`)
    }
    bars?.update(view)
    bars?.stop()
    if (opts.json) return printJson(io, view)
    io.stdout.write(pushSummary(view))
    if (view.state === 'failed' || view.state === 'partial') process.exitCode = 1
  })
}

/** One bar per host (chunks received), redrawn in place on a TTY. */
class PushBars {
  readonly #multi: MultiBar
  readonly #bars = new Map<string, SingleBar>()

  constructor(io: CliIo) {
    this.#multi = new MultiBar({
      stream: io.stdout as NodeJS.WritableStream,
      format: '{host} {bar} {value}/{total} chunks | {state}{via}',
      barsize: 24,
      hideCursor: true,
      fps: 10,
    })
  }

  update(v: PushView): void {
    for (const h of v.hosts) {
      const payload = {
        host: shortId(h.peerId).padEnd(12),
        state: h.state,
        via: h.source ? ` from ${shortId(h.source)}` : '',
      }
      const bar = this.#bars.get(h.peerId)
      if (bar) bar.update(h.have, payload)
      else this.#bars.set(h.peerId, this.#multi.create(h.total, h.have, payload))
    }
  }

  stop(): void {
    this.#multi.stop()
  }
}

export function pushSummary(v: PushView): string {
  const head = `push ${v.id} of image ${v.image.slice(0, 12)}: ${v.state} in ${(v.elapsedMs / 1000).toFixed(1)} s\n\n`
  return (
    head +
    table(
      ['HOST', 'SITE', 'PARENT', 'STATE', 'CHUNKS', 'BAD'],
      v.hosts.map((h) => [
        shortId(h.peerId),
        h.site || '-',
        shortId(h.parent),
        h.error ? `${h.state} (${h.error})` : h.state,
        `${h.have}/${h.total}`,
        String(h.badChunks),
      ]),
      ['left', 'left', 'left', 'left', 'right', 'right'],
    )
  )
}

export function imageTable(images: ImageView[]): string {
  return table(
    ['ID', 'NAME', 'SIZE', 'CHUNKS', 'HOLDERS'],
    images.map((i) => [
      i.id.slice(0, 16),
      i.name,
      formatMiB(i.size / 1048576),
      i.complete ? String(i.chunks) : `${i.have}/${i.chunks}`,
      String(i.holders.length),
    ]),
    ['left', 'left', 'right', 'right', 'right'],
  )
}
