// bench:images — propagating one image from one host to N others: skymesh's pipeline (every host
// forwards chunks to its children while it still receives them) against a sequential copy from the
// source to each host in turn, both measured in the same run over the same links: real agents on
// loopback whose uploads are capped per stream (images.linkMiBps), as bandwidth-limited links are.
//
// Usage: npm run bench:images [-- --size MiB --hosts N --link MiBps --fanout K]
// Prints a table and writes bench/results/images.json.
import { randomBytes } from 'node:crypto'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../test/helpers/agent-process.js'
import { f, ratio, sleep, table } from './lib/format.js'

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : dflt
}

const SIZE_MIB = arg('size', 64)
const HOSTS = arg('hosts', 6)
const LINK = arg('link', 16)
const FANOUT = arg('fanout', 1)

interface PushView {
  state: string
  elapsedMs: number
  hosts: { peerId: string; state: string }[]
}

async function pushAndWait(
  src: RunningAgent,
  image: string,
  to: 'all' | string[],
  fanout: number,
): Promise<PushView> {
  const r = await src.request('POST', `/v1/images/${image}/distribute`, { to, fanout })
  if (r.status !== 202) throw new Error(`push refused: ${JSON.stringify(r.body)}`)
  for (;;) {
    await sleep(100)
    const v = (await src.request('GET', `/v1/images/${image}/distribute`)).body as PushView
    if (v.state !== 'running') {
      if (v.state !== 'done') throw new Error(`push ended ${v.state}: ${JSON.stringify(v.hosts)}`)
      return v
    }
  }
}

async function holders(a: RunningAgent, image: string): Promise<number> {
  return ((await a.request('GET', `/v1/images/${image}`)).body.holders ?? []).length
}

async function main(): Promise<void> {
  const dir = await tempDir('skymesh-bench-images-')
  const agents: RunningAgent[] = []
  try {
    const config = join(dir, 'agent.yaml')
    await writeFile(
      config,
      `gossip:\n  probeIntervalMs: 500\n  probeTimeoutMs: 250\nimages:\n  linkMiBps: ${LINK}\n`,
    )
    const args = ['--config', config, '--log-level', 'warn']
    agents.push(await startAgent({ dataDir: join(dir, 'src'), site: 'one', args }))
    for (let i = 0; i < HOSTS; i++) {
      agents.push(
        await startAgent({
          dataDir: join(dir, `h${i}`),
          site: 'one',
          args,
          bootstrap: [agents[0]!.addrs[0]!],
        }),
      )
    }
    const [src, ...targets] = agents as [RunningAgent, ...RunningAgent[]]
    await waitFor(
      'the mesh',
      async () => (await src.request('GET', '/v1/cluster')).body.counts.alive === HOSTS + 1,
      60_000,
    )
    const file = join(dir, 'image.img')
    await writeFile(file, randomBytes(SIZE_MIB * 1024 * 1024))
    const img = (await src.request('POST', '/v1/images', { path: file, name: 'bench' })).body as {
      id: string
    }

    // Baseline: the source copies to each host in turn (same protocol, same per-link cap).
    const perHost: number[] = []
    for (const t of targets) perHost.push((await pushAndWait(src, img.id, [t.peerId], 1)).elapsedMs)
    const sequentialMs = perHost.reduce((a, b) => a + b, 0)
    const oneMs = perHost[0]!

    // Forget it everywhere but the source, and wait until gossip says so (else hosts are skipped).
    for (const t of targets) await t.request('DELETE', `/v1/images/${img.id}`)
    await waitFor('gossip to forget the copies', async () => (await holders(src, img.id)) === 1, 30_000)

    const pipe = await pushAndWait(src, img.id, 'all', FANOUT)
    const pipelineMs = pipe.elapsedMs
    for (const t of targets) {
      const v = await t.request('POST', `/v1/images/${img.id}/verify`, {})
      if (!v.body.ok) throw new Error(`host ${t.peerId} holds a bad copy`)
    }

    const rows = [
      ['one copy (N=1)', f(oneMs), '1.00', ''],
      [`sequential, N=${HOSTS}`, f(sequentialMs), ratio(sequentialMs / oneMs), ''],
      [
        `pipeline (fanout ${FANOUT}), N=${HOSTS}`,
        f(pipelineMs),
        ratio(pipelineMs / oneMs),
        ratio(sequentialMs / pipelineMs),
      ],
    ]
    process.stdout.write(
      `\nbench:images — ${SIZE_MIB} MiB image, ${HOSTS} hosts, ${LINK} MiB/s per link, loopback\n\n` +
        table(['method', 'time ms', 'T/T(1)', 'speed-up vs sequential'], rows),
    )
    const out = join(process.cwd(), 'bench/results')
    await mkdir(out, { recursive: true })
    await writeFile(
      join(out, 'images.json'),
      `${JSON.stringify(
        {
          bench: 'images',
          date: new Date().toISOString(),
          sizeMiB: SIZE_MIB,
          hosts: HOSTS,
          linkMiBps: LINK,
          fanout: FANOUT,
          oneCopyMs: oneMs,
          sequentialMs,
          sequentialPerHostMs: perHost,
          pipelineMs,
          pipelineOverOne: pipelineMs / oneMs,
          sequentialOverOne: sequentialMs / oneMs,
          speedup: sequentialMs / pipelineMs,
        },
        null,
        2,
      )}\n`,
    )
  } finally {
    await Promise.allSettled(agents.map((a) => a.stop()))
    await removeDir(dir)
  }
}

await main()
