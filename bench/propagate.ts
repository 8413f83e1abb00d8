// bench:propagate — one image from one host to N = 1, 2, 4, 8 others over bandwidth-limited links,
// three ways measured in the same run over the same links:
//   sequential  the source copies to each host in turn (Nimbus with scp)
//   at once     the source serves all N hosts at the same time (one server, N clients)
//   pipeline    skymesh's push: a chain in which every host forwards chunks while it still receives
// and T(N)/T(1) for each. All three use the same agents, protocol and chunk verification.
//
// Links: by default every host sits in its own network namespace behind its own link, shaped with tc
// tbf in both directions (a NIC of --mbit), all hosts in one skymesh site (so the push builds one chain).
// Without root or namespaces (or with --loopback) the agents run on 127.0.0.1 and each emulates its
// upload link (images.linkMiBps, a clock shared by all its streams).
//
// Also recorded per run: CPU seconds the agents used (from /proc) and the machine's load, because on a
// small machine N hosts x link rate of encryption, hashing and copying can become the limit instead of
// the links: the JSON says how much of the machine each run took.
//
// Usage: npm run bench:propagate [-- --size MiB --mbit M --max-hosts N --chunk-kib K --loopback]
//   [--methods sequential,at-once,pipeline] [--part]: measure some methods only; with --part, in two
//   runs (e.g. `--methods sequential,pipeline --part`, then `--methods at-once --part`) whose results
//   join into propagate.json (each run holds the machine shorter).
// Prints a table and writes bench/results/propagate.json.
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { join } from 'node:path'
import { type RunningAgent, removeDir, startAgent, tempDir, waitFor } from '../test/helpers/agent-process.js'
import { NetnsMesh, netnsUnavailable } from '../test/helpers/netns.js'
import { checkBenchArgs } from './lib/args.js'
import { f, ratio, sleep, table } from './lib/format.js'

checkBenchArgs(import.meta.url, {
  valued: ['size', 'mbit', 'max-hosts', 'chunk-kib', 'methods'],
  flags: ['part', 'logs', 'loopback'],
})

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : dflt
}

const SIZE_MIB = arg('size', 16)
const MBIT = arg('mbit', 12)
const MAX_HOSTS = arg('max-hosts', 8)
const CHUNK_KIB = arg('chunk-kib', 256)
const COUNTS = [1, 2, 4, 8, 16].filter((n) => n <= MAX_HOSTS)
/** --part: see where the results are written. */
const PART = process.argv.includes('--part')
/** --methods pipeline (comma list): measure only these (quicker runs while profiling); default all three. */
const METHODS = (() => {
  const i = process.argv.indexOf('--methods')
  return i > 0 ? process.argv[i + 1]!.split(',') : ['sequential', 'at-once', 'pipeline']
})()

interface PushView {
  state: string
  elapsedMs: number
  hosts: { peerId: string; state: string; error?: string }[]
}

interface Run {
  method: 'sequential' | 'at-once' | 'pipeline'
  hosts: number
  ms: number
  /** CPU seconds all agents used during the run, and that as a share of the machine's cores. */
  cpuSec: number
  cpuShare: number
}

/** utime + stime of a process in seconds (Linux /proc). */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return 0
  }
}

async function main(): Promise<void> {
  const why = process.argv.includes('--loopback') ? 'asked for --loopback' : await netnsUnavailable()
  const useNetns = why === undefined
  const dir = await tempDir('skymesh-bench-propagate-')
  const agents: RunningAgent[] = []
  let mesh: NetnsMesh | undefined
  const cpu = () => agents.reduce((a, x) => a + cpuSeconds(x.pid), 0)
  const load0 = loadavg()[0]!
  try {
    const config = join(dir, 'agent.yaml')
    const linkMiBps = MBIT / 8
    await writeFile(
      config,
      [
        // gossip at its defaults (probe 1 s): the agents as they run in production
        'images:',
        `  chunkKiB: ${CHUNK_KIB}`,
        ...(useNetns ? [] : [`  linkMiBps: ${linkMiBps}`]),
        '',
      ].join('\n'),
    )
    const logs = process.argv.includes('--logs')
    const args = ['--config', config, '--log-level', logs ? 'debug' : 'warn']
    const total = MAX_HOSTS + 1
    if (useNetns) {
      // One namespace "site" per host: each host's link to the backbone is its own, shaped both ways.
      mesh = await NetnsMesh.create(Array.from({ length: total }, (_, i) => ({ name: `h${i}`, hosts: 1 })))
      for (const s of mesh.sites) await mesh.shapeSite(s.name, { rateMbit: MBIT })
      for (let i = 0; i < total; i++) {
        const h = mesh.hosts[i]!
        agents.push(
          await startAgent({
            dataDir: join(dir, `h${i}`),
            netns: h.ns,
            listenHost: h.ip,
            site: 'one', // one skymesh site: the push builds one chain over all of them
            args,
            ...(i > 0 ? { bootstrap: [agents[0]!.addrs.find((a) => a.includes(mesh!.hosts[0]!.ip))!] } : {}),
          }),
        )
      }
    } else {
      for (let i = 0; i < total; i++) {
        agents.push(
          await startAgent({
            dataDir: join(dir, `h${i}`),
            site: 'one',
            args,
            ...(i > 0 ? { bootstrap: [agents[0]!.addrs[0]!] } : {}),
          }),
        )
      }
    }
    const [src, ...targets] = agents as [RunningAgent, ...RunningAgent[]]
    await waitFor(
      'the mesh',
      async () => (await src.request('GET', '/v1/cluster')).body.counts.alive === total,
      90_000,
    )
    const file = join(dir, 'image.img')
    await writeFile(file, randomBytes(SIZE_MIB * 1024 * 1024))
    const added = await src.request('POST', '/v1/images', { path: file, name: 'bench' })
    if (added.status !== 201) throw new Error(`image add: ${JSON.stringify(added.body)}`)
    const image = added.body.id as string

    const push = async (to: string[], fanout: number): Promise<number> => {
      const r = await src.request('POST', `/v1/images/${image}/distribute`, { to, fanout })
      if (r.status !== 202) throw new Error(`push refused: ${JSON.stringify(r.body)}`)
      for (;;) {
        await sleep(100)
        const v = (await src.request('GET', `/v1/images/${image}/distribute`)).body as PushView
        if (v.state === 'running') continue
        if (v.state !== 'done') throw new Error(`push ended ${v.state}: ${JSON.stringify(v.hosts)}`)
        return v.elapsedMs
      }
    }
    // Forget the copies everywhere but the source, and wait until gossip says so (else hosts are skipped).
    const forget = async (hosts: RunningAgent[]) => {
      for (const t of hosts) {
        const r = await t.request('DELETE', `/v1/images/${image}`)
        if (r.status !== 204) throw new Error(`image rm on ${t.peerId}: ${JSON.stringify(r.body)}`)
      }
      await waitFor(
        'gossip to forget the copies',
        async () => ((await src.request('GET', `/v1/images/${image}`)).body.holders ?? []).length === 1,
        30_000,
      )
    }
    const runs: Run[] = []
    const measure = async (method: Run['method'], n: number, fn: () => Promise<number>) => {
      const c0 = cpu()
      const ms = await fn()
      const cpuSec = cpu() - c0
      runs.push({ method, hosts: n, ms, cpuSec, cpuShare: cpuSec / (ms / 1000) / cpus().length })
      process.stdout.write(`  ${method} N=${n}: ${f(ms)} ms, agents used ${f(cpuSec, 1)} CPU s\n`)
    }

    process.stdout.write(
      `bench:propagate: ${SIZE_MIB} MiB, ${MBIT} Mbit/s per host link (${useNetns ? 'namespaces + tc tbf' : `loopback, emulated (${why})`}), chunks ${CHUNK_KIB} KiB\n`,
    )
    // Sequential: the source copies to each host in turn; T_seq(N) is the sum of the first N copies.
    const copies: number[] = []
    for (const t of METHODS.includes('sequential') ? targets : []) {
      const c0 = cpu()
      const ms = await push([t.peerId], 1)
      copies.push(ms)
      process.stdout.write(`  copy ${copies.length}: ${f(ms)} ms, ${f(cpu() - c0, 1)} CPU s\n`)
    }
    for (const n of copies.length ? COUNTS : []) {
      const ms = copies.slice(0, n).reduce((a, b) => a + b, 0)
      runs.push({ method: 'sequential', hosts: n, ms, cpuSec: Number.NaN, cpuShare: Number.NaN })
    }
    if (copies.length) await forget(targets)

    for (const n of COUNTS) {
      const group = targets.slice(0, n)
      const ids = group.map((t) => t.peerId)
      // At once: the source is every host's parent (a star), all served together.
      if (METHODS.includes('at-once')) {
        await measure('at-once', n, () => push(ids, Math.max(1, n)))
        await forget(group)
      }
      await measure('pipeline', n, () => push(ids, 1))
      for (const t of group) {
        const v = await t.request('POST', `/v1/images/${image}/verify`, {})
        if (!v.body.ok) throw new Error(`host ${t.peerId} holds a bad copy`)
      }
      await forget(group)
    }

    // --part: the runs of this invocation join those of an earlier part (same image size, link, chunk)
    // for the methods not measured now; once the parts hold all three methods they make propagate.json.
    const partFile = join(process.cwd(), 'bench/results/propagate-part.json')
    let parts = [new Date().toISOString()]
    if (PART) {
      try {
        const prev = JSON.parse(readFileSync(partFile, 'utf8'))
        if (prev.sizeMiB === SIZE_MIB && prev.mbitPerHost === MBIT && prev.chunkKiB === CHUNK_KIB) {
          for (const r of prev.runs as Run[]) if (!METHODS.includes(r.method)) runs.push(r)
          if (copies.length === 0) copies.push(...(prev.sequentialCopiesMs as number[]))
          parts = [...(prev.parts ?? [prev.date]), ...parts]
        }
      } catch {
        // no earlier part
      }
    }
    const complete = (['sequential', 'at-once', 'pipeline'] as const).every((m) =>
      runs.some((r) => r.method === m),
    )
    const none: Run = {
      method: 'pipeline',
      hosts: 0,
      ms: Number.NaN,
      cpuSec: Number.NaN,
      cpuShare: Number.NaN,
    }
    const t1 = (m: Run['method']) => (runs.find((r) => r.method === m && r.hosts === 1) ?? none).ms
    const rows = COUNTS.map((n) => {
      const get = (m: Run['method']) => runs.find((r) => r.method === m && r.hosts === n) ?? none
      const s = get('sequential')
      const o = get('at-once')
      const p = get('pipeline')
      return [
        String(n),
        f(s.ms),
        ratio(s.ms / t1('sequential')),
        f(o.ms),
        ratio(o.ms / t1('at-once')),
        f(p.ms),
        ratio(p.ms / t1('pipeline')),
        `${f(p.cpuShare * 100)} %`,
      ]
    })
    const ideal = ((SIZE_MIB * 8 * 1.048576) / MBIT) * 1000
    process.stdout.write(
      `\nbench:propagate — ${SIZE_MIB} MiB image, ${MBIT} Mbit/s per host (one copy ideally ${f(ideal)} ms)\n\n` +
        table(
          [
            'N',
            'sequential ms',
            'T/T(1)',
            'at once ms',
            'T/T(1)',
            'pipeline ms',
            'T/T(1)',
            'pipeline CPU of machine',
          ],
          rows,
        ) +
        '\n',
    )
    const out = join(process.cwd(), 'bench/results')
    await mkdir(out, { recursive: true })
    await writeFile(
      // A run of some methods only (--methods) does not replace the full run's figures.
      complete ? join(out, 'propagate.json') : PART ? partFile : join(out, 'propagate-partial.json'),
      `${JSON.stringify(
        {
          bench: 'propagate',
          date: new Date().toISOString(),
          ...(parts.length > 1 ? { parts } : {}),
          links: useNetns ? 'netns-tbf' : 'loopback-emulated',
          sizeMiB: SIZE_MIB,
          mbitPerHost: MBIT,
          chunkKiB: CHUNK_KIB,
          cores: cpus().length,
          loadAvgAtStart: load0,
          oneCopyIdealMs: ideal,
          sequentialCopiesMs: copies,
          ratios: Object.fromEntries(
            (['sequential', 'at-once', 'pipeline'] as const).map((m) => [
              m,
              Object.fromEntries(
                COUNTS.map((n) => [
                  n,
                  (runs.find((r) => r.method === m && r.hosts === n) ?? none).ms / t1(m),
                ]),
              ),
            ]),
          ),
          runs,
        },
        null,
        2,
      )}\n`,
    )
  } finally {
    if (process.argv.includes('--logs'))
      for (const [i, a] of agents.entries()) await writeFile(`/tmp/propagate-h${i}.log`, a.output())
    await Promise.allSettled(agents.map((a) => a.stop()))
    await mesh?.destroy()
    await removeDir(dir)
  }
}

await main()
