// bench:sites — two sites in network namespaces (test/helpers/netns.ts), real agents.
//
//  transfer: 2 + 2 hosts, the inter-site link shaped with tc tbf (--rate Mbit/s). A paused VM
//            (memory filled by its workload first) migrates inside a site and across the link;
//            an image goes from one host to another inside the site and to one host across.
//            Baseline: the same operation inside a site, in the same run (ratio across / inside).
//  gossip:   2 sites of N/2 hosts (--sizes), at rest: bytes every host sends to the other site and
//            inside its own (iptables counters in each host's namespace), per gossip round (one
//            SWIM probe interval, 1 s), with SWIM's site preference (default) and without it
//            (sitePreference 1: plain SWIM, the baseline).
//
// Usage: npm run bench:sites [-- --part transfer|gossip|all --rate 100 --vm 64 --image 48
//        --sizes 4,8,12 --rest 15]. Needs root. Prints tables, merges bench/results/sites.json.
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { type RunningAgent, removeDir, tempDir, waitFor } from '../test/helpers/agent-process.js'
import { type NetnsHost, NetnsMesh, netnsUnavailable } from '../test/helpers/netns.js'
import { checkBenchArgs } from './lib/args.js'
import { f, median, ratio, sleep, table } from './lib/format.js'

checkBenchArgs(import.meta.url, { valued: ['part', 'rate', 'vm', 'image', 'sizes', 'rest'] })

const run = promisify(execFile)

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? (process.argv[i + 1] ?? dflt) : dflt
}

const PART = arg('part', 'all')
const RATE_MBIT = Number(arg('rate', '100'))
const VM_MIB = Number(arg('vm', '64'))
const IMAGE_MIB = Number(arg('image', '48'))
const SIZES = arg('sizes', '4,8,12').split(',').map(Number)
const REST_SEC = Number(arg('rest', '15'))
const PREFERENCES = [1, 8]

const RESULTS = join(process.cwd(), 'bench/results/sites.json')

// ---------------------------------------------------------------- byte counters per host namespace

/** Counts what a host sends: to its own site, to the test's API door, to other sites. */
async function addCounters(mesh: NetnsMesh, host: NetnsHost, door: string): Promise<void> {
  const ownSite = host.ip.replace(/\.\d+$/, '.0/24')
  const backbone = host.ip.replace(/\.\d+\.\d+$/, '.0.0/16')
  const ipt = (args: string[]) => mesh.exec(host.ns, 'iptables', ['-w', ...args])
  await ipt(['-N', 'SMACCT'])
  await ipt(['-I', 'OUTPUT', '-j', 'SMACCT'])
  for (const dst of [ownSite, `${door}/32`, backbone]) await ipt(['-A', 'SMACCT', '-d', dst, '-j', 'RETURN'])
}

interface Bytes {
  intra: number
  inter: number
}

async function readCounters(mesh: NetnsMesh, host: NetnsHost): Promise<Bytes> {
  const out = await mesh.exec(host.ns, 'iptables', ['-w', '-L', 'SMACCT', '-vnx'])
  const rows = out
    .split('\n')
    .filter((l) => /RETURN/.test(l))
    .map((l) => Number(l.trim().split(/\s+/)[1]))
  return { intra: rows[0] ?? 0, inter: rows[2] ?? 0 }
}

async function sumCounters(mesh: NetnsMesh, hosts: NetnsHost[]): Promise<Bytes> {
  const all = await Promise.all(hosts.map((h) => readCounters(mesh, h)))
  return all.reduce((a, b) => ({ intra: a.intra + b.intra, inter: a.inter + b.inter }), {
    intra: 0,
    inter: 0,
  })
}

function doorOf(mesh: NetnsMesh): string {
  return mesh.routerIp(mesh.sites[0]!.name).replace(/\.\d+$/, '.254')
}

// ---------------------------------------------------------------- a mesh of agents in two sites

async function startMesh(
  mesh: NetnsMesh,
  dir: string,
  config: string,
): Promise<{ agents: RunningAgent[]; hosts: NetnsHost[] }> {
  const cfg = join(dir, 'agent.yaml')
  await writeFile(cfg, config)
  const args = ['--config', cfg, '--log-level', 'warn']
  const hosts = mesh.hosts
  const first = await mesh.startAgent(hosts[0]!, { dataDir: join(dir, hosts[0]!.ns), args })
  const bootstrap = first.addrs.filter((a) => a.includes(`/ip4/${hosts[0]!.ip}/`)).slice(0, 1)
  const rest = await Promise.all(
    hosts
      .slice(1)
      .map((h) => mesh.startAgent(h, { dataDir: join(dir, h.ns), bootstrap, args, timeoutMs: 60_000 })),
  )
  const agents = [first, ...rest]
  for (const a of agents) {
    await waitFor(
      `${a.peerId} sees ${agents.length} alive`,
      async () => (await a.request('GET', '/v1/cluster')).body.counts.alive === agents.length,
      90_000,
    )
  }
  return { agents, hosts }
}

async function stopAll(agents: RunningAgent[]): Promise<void> {
  await Promise.all(agents.map((a) => a.stop().catch(() => undefined)))
}

// ---------------------------------------------------------------- transfer: migration and images

interface MigrationRun {
  where: 'inside' | 'across'
  from: string
  to: string
  ms: number
  bytesSent: number
  wireBytes: number
  interSiteBytes: number
}

async function migrateOnce(
  mesh: NetnsMesh,
  src: RunningAgent,
  dst: RunningAgent,
  where: 'inside' | 'across',
  name: string,
): Promise<MigrationRun> {
  const created = await src.request('POST', '/v1/vms', {
    name,
    vcpus: 1,
    memoryMiB: VM_MIB,
    diskMiB: 64,
    workload: { dirtyMiBps: 256, hotSetMiB: VM_MIB },
  })
  if (created.status !== 201) throw new Error(`create: ${JSON.stringify(created.body)}`)
  const id = created.body.id as string
  await sleep(Math.ceil((VM_MIB / 256) * 3000)) // the workload writes ~3x the memory: nearly every page
  await src.request('POST', `/v1/vms/${id}/pause`)
  const before = await sumCounters(mesh, mesh.hosts)
  const started = await src.request('POST', `/v1/vms/${id}/migrate`, { to: dst.peerId, mode: 'precopy' })
  if (started.status !== 202) throw new Error(`migrate: ${JSON.stringify(started.body)}`)
  const m = await waitFor(
    'the migration',
    async () => {
      const r = await src.request('GET', `/v1/migrations/${started.body.id}`)
      return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
    },
    300_000,
  )
  if (m.phase !== 'done') throw new Error(`migration ${m.phase}: ${JSON.stringify(m.error)}`)
  const after = await sumCounters(mesh, mesh.hosts)
  await dst.request('DELETE', `/v1/vms/${id}`)
  return {
    where,
    from: src.peerId,
    to: dst.peerId,
    ms: m.totalMs,
    bytesSent: m.bytesSent,
    wireBytes: m.wireBytes,
    interSiteBytes: after.inter - before.inter,
  }
}

interface ImageRun {
  where: 'inside' | 'across'
  ms: number
  interSiteBytes: number
}

async function pushImage(
  mesh: NetnsMesh,
  src: RunningAgent,
  dst: RunningAgent,
  image: string,
  where: 'inside' | 'across',
): Promise<ImageRun> {
  const before = await sumCounters(mesh, mesh.hosts)
  const r = await src.request('POST', `/v1/images/${image}/distribute`, { to: [dst.peerId], fanout: 1 })
  if (r.status !== 202) throw new Error(`push refused: ${JSON.stringify(r.body)}`)
  const v = await waitFor(
    'the image push',
    async () => {
      const p = (await src.request('GET', `/v1/images/${image}/distribute`)).body
      return p.state !== 'running' ? p : undefined
    },
    300_000,
  )
  if (v.state !== 'done') throw new Error(`push ended ${v.state}: ${JSON.stringify(v.hosts)}`)
  const after = await sumCounters(mesh, mesh.hosts)
  const ok = (await dst.request('POST', `/v1/images/${image}/verify`, {})).body.ok
  if (!ok) throw new Error(`${dst.peerId} holds a bad copy`)
  await dst.request('DELETE', `/v1/images/${image}`)
  return { where, ms: v.elapsedMs, interSiteBytes: after.inter - before.inter }
}

async function transferPart(): Promise<Record<string, unknown>> {
  const dir = await tempDir('skymesh-bench-sites-')
  const mesh = await NetnsMesh.create([
    { name: 'a', hosts: 2 },
    { name: 'b', hosts: 2 },
  ])
  let agents: RunningAgent[] = []
  try {
    for (const h of mesh.hosts) await addCounters(mesh, h, doorOf(mesh))
    ;({ agents } = await startMesh(mesh, dir, 'gossip:\n  probeIntervalMs: 500\n  probeTimeoutMs: 250\n'))
    await mesh.shapeSite('b', { rateMbit: RATE_MBIT })
    const [a0, a1, b0, b1] = agents as [RunningAgent, RunningAgent, RunningAgent, RunningAgent]
    // A fresh VM each time (no destination already holds its pages), alternating inside/across.
    const migrations: MigrationRun[] = []
    migrations.push(await migrateOnce(mesh, a0, a1, 'inside', 'in-a'))
    migrations.push(await migrateOnce(mesh, a0, b0, 'across', 'x-ab'))
    migrations.push(await migrateOnce(mesh, b1, b0, 'inside', 'in-b'))
    migrations.push(await migrateOnce(mesh, b1, a1, 'across', 'x-ba'))

    const file = join(dir, 'image.img')
    await writeFile(file, randomBytes(IMAGE_MIB * 1024 * 1024))
    const img = (await a0.request('POST', '/v1/images', { path: file, name: 'bench-sites' })).body as {
      id: string
    }
    const images: ImageRun[] = []
    images.push(await pushImage(mesh, a0, a1, img.id, 'inside'))
    images.push(await pushImage(mesh, a0, b0, img.id, 'across'))
    images.push(await pushImage(mesh, a0, a1, img.id, 'inside'))
    images.push(await pushImage(mesh, a0, b1, img.id, 'across'))

    const med = <T extends { where: string; ms: number }>(xs: T[], w: string) =>
      median(xs.filter((x) => x.where === w).map((x) => x.ms))
    const mIn = med(migrations, 'inside')
    const mAcross = med(migrations, 'across')
    const iIn = med(images, 'inside')
    const iAcross = med(images, 'across')
    const linkMiBps = (RATE_MBIT * 1e6) / 8 / 1048576
    const rows = [
      [`migration, ${VM_MIB} MiB VM (paused)`, f(mIn), f(mAcross), ratio(mAcross / mIn)],
      [`image, ${IMAGE_MIB} MiB`, f(iIn), f(iAcross), ratio(iAcross / iIn)],
    ]
    process.stdout.write(
      `\nbench:sites transfer — 2 sites x 2 hosts, inter-site link ${RATE_MBIT} Mbit/s (tc tbf, ${f(linkMiBps, 1)} MiB/s), median of 2\n\n` +
        `${table(['operation', 'inside ms', 'across ms', 'across / inside'], rows)}\n\n` +
        table(
          ['run', 'where', 'ms', 'VM MiB sent', 'MiB over the link', 'MiB/s'],
          [
            ...migrations.map((m) => [
              'migration',
              m.where,
              f(m.ms),
              f(m.bytesSent / 1048576, 1),
              f(m.interSiteBytes / 1048576, 1),
              f(m.bytesSent / 1048576 / (m.ms / 1000), 1),
            ]),
            ...images.map((i) => [
              'image',
              i.where,
              f(i.ms),
              f(IMAGE_MIB, 1),
              f(i.interSiteBytes / 1048576, 1),
              f(IMAGE_MIB / (i.ms / 1000), 1),
            ]),
          ],
        ) +
        '\n',
    )
    return {
      rateMbit: RATE_MBIT,
      linkMiBps,
      vmMiB: VM_MIB,
      imageMiB: IMAGE_MIB,
      migration: { insideMs: mIn, acrossMs: mAcross, acrossOverInside: mAcross / mIn, runs: migrations },
      image: { insideMs: iIn, acrossMs: iAcross, acrossOverInside: iAcross / iIn, runs: images },
    }
  } finally {
    await stopAll(agents)
    await mesh.destroy()
    await removeDir(dir)
  }
}

// ---------------------------------------------------------------- gossip at rest

interface GossipRun {
  hosts: number
  sitePreference: number
  seconds: number
  /** Bytes per gossip round (1 s) for the whole mesh. */
  interPerRound: number
  intraPerRound: number
  interShare: number
}

async function gossipOnce(n: number, preference: number): Promise<GossipRun> {
  const dir = await tempDir('skymesh-bench-sites-')
  const mesh = await NetnsMesh.create([
    { name: 'a', hosts: n / 2 },
    { name: 'b', hosts: n - n / 2 },
  ])
  let agents: RunningAgent[] = []
  try {
    for (const h of mesh.hosts) await addCounters(mesh, h, doorOf(mesh))
    ;({ agents } = await startMesh(mesh, dir, `gossip:\n  sitePreference: ${preference}\n`))
    await sleep(5000) // joins, syncs and first state messages settle
    const before = await sumCounters(mesh, mesh.hosts)
    const t0 = Date.now()
    await sleep(REST_SEC * 1000)
    const after = await sumCounters(mesh, mesh.hosts)
    const seconds = (Date.now() - t0) / 1000
    const inter = (after.inter - before.inter) / seconds
    const intra = (after.intra - before.intra) / seconds
    return {
      hosts: n,
      sitePreference: preference,
      seconds,
      interPerRound: inter,
      intraPerRound: intra,
      interShare: inter / (inter + intra),
    }
  } finally {
    await stopAll(agents)
    await mesh.destroy()
    await removeDir(dir)
  }
}

async function gossipPart(): Promise<Record<string, unknown>> {
  const runs: GossipRun[] = []
  for (const n of SIZES) for (const p of PREFERENCES) runs.push(await gossipOnce(n, p))
  const rows = SIZES.map((n) => {
    const plain = runs.find((r) => r.hosts === n && r.sitePreference === 1)!
    const aware = runs.find((r) => r.hosts === n && r.sitePreference !== 1)!
    return [
      String(n),
      f(plain.interPerRound),
      `${f(plain.interShare * 100)} %`,
      f(aware.interPerRound),
      `${f(aware.interShare * 100)} %`,
      ratio(aware.interPerRound / plain.interPerRound),
    ]
  })
  process.stdout.write(
    `\nbench:sites gossip — 2 sites, at rest, ${REST_SEC} s; bytes on the wire (IP) per gossip round (1 s), whole mesh\n\n` +
      table(
        [
          'hosts',
          'inter-site B, plain SWIM',
          'share',
          'inter-site B, site preference 8',
          'share',
          'site pref / plain',
        ],
        rows,
      ) +
      '\n',
  )
  return { restSec: REST_SEC, runs }
}

async function main(): Promise<void> {
  const why = await netnsUnavailable()
  if (why) throw new Error(`bench:sites needs network namespaces: ${why}`)
  // tc must exist in the namespaces too (tbf).
  await run('tc', ['-V']).catch(() => {
    throw new Error('tc (iproute2) is missing')
  })
  const prev = await readFile(RESULTS, 'utf8')
    .then((s) => JSON.parse(s) as Record<string, unknown>)
    .catch(() => ({}))
  const result: Record<string, unknown> = { ...prev, bench: 'sites', date: new Date().toISOString() }
  if (PART === 'transfer' || PART === 'all') result.transfer = await transferPart()
  if (PART === 'gossip' || PART === 'all') result.gossip = await gossipPart()
  await mkdir(join(process.cwd(), 'bench/results'), { recursive: true })
  await writeFile(RESULTS, `${JSON.stringify(result, null, 2)}\n`)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
