// bench:throughput — loopback transfer throughput of the transports a migration could use (raw TCP =
// 1.0, node TLS, TLS-PSK, skymesh's direct sealed data channel, libp2p streams), as ratios measured in one run;
// see bench/lib/throughput-section.ts. bench:migrate prints the same rows as its section 1.
// Prints a table and writes bench/results/throughput.json.
import { mkdir, writeFile } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { dirname, resolve } from 'node:path'
import { runAsAgent } from './lib/agent-runtime.js'
import { measureThroughput, printThroughput, type TpSection } from './lib/throughput-section.js'

runAsAgent()

const args = {
  payloadMiB: 256,
  reps: 7,
  sameProcess: false,
  out: 'bench/results/throughput.json',
  only: [] as string[],
}
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  const v = argv[i + 1]
  if (a === '--same-process') {
    args.sameProcess = true
    continue
  }
  if (a === '--help') {
    console.log(
      [
        'usage: npm run bench:throughput -- [options]',
        '  --payload-mib N   bytes moved per sample (default 256)',
        '  --reps N          samples per transport, interleaved; median and min–max reported (default 7)',
        '  --only a,b        only the rows whose name contains one of these (raw TCP and TLS always run)',
        '  --same-process    also with both ends in this process',
        '  --out FILE        JSON results (default bench/results/throughput.json)',
      ].join('\n'),
    )
    process.exit(0)
  }
  if (v === undefined) throw new Error(`${a} needs a value`)
  if (a === '--payload-mib') args.payloadMiB = Number(v)
  else if (a === '--reps') args.reps = Number(v)
  else if (a === '--only') args.only = v.split(',').filter(Boolean)
  else if (a === '--out') args.out = v
  else throw new Error(`unknown option ${a} (try --help)`)
  i++
}

const t0 = performance.now()
const log = (msg: string) =>
  console.error(`[${((performance.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${msg}`)
const startedAt = new Date().toISOString()
const common = {
  payloadMiB: args.payloadMiB,
  reps: args.reps,
  log,
  ...(args.only.length ? { only: args.only } : {}),
}
const sections: TpSection[] = []
for (const topology of args.sameProcess
  ? (['child-process', 'same-process'] as const)
  : (['child-process'] as const)) {
  sections.push(await measureThroughput({ ...common, topology }))
  printThroughput(sections[sections.length - 1]!)
}
console.log(`\nmachine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, Node ${process.version}`)
const file = resolve(process.cwd(), args.out)
await mkdir(dirname(file), { recursive: true })
await writeFile(
  file,
  `${JSON.stringify(
    {
      startedAt,
      args,
      machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version, loadavgEnd: loadavg() },
      throughput: sections,
    },
    null,
    2,
  )}\n`,
)
log(`wrote ${file}`)
process.exit(0)
