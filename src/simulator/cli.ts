// npm run simulate -- --hosts 10000 --vms 100000 [--trace FILE] [--seed N] [--minutes M]
//   [--modes cooperative,central,none] [--out bench/results/simulate.json] [--compute measured|none]
// Runs the same trace under each scheduler, prints a table, writes JSON and an SVG plot.
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { parseArgs } from 'node:util'
import { svg, table } from './report.js'
import { type Mode, type ModeResult, simulate } from './simulate.js'
import { readCsvTrace, syntheticTrace, type Trace } from './trace.js'

const { values } = parseArgs({
  options: {
    hosts: { type: 'string', default: '200' },
    vms: { type: 'string' },
    trace: { type: 'string' },
    seed: { type: 'string', default: '1' },
    minutes: { type: 'string', default: '60' },
    modes: { type: 'string', default: 'cooperative,central,none' },
    out: { type: 'string', default: 'bench/results/simulate.json' },
    compute: { type: 'string', default: 'measured' },
    help: { type: 'boolean', default: false },
  },
})
if (values.help) {
  process.stdout.write(
    'usage: npm run simulate -- [--hosts N] [--vms M] [--trace FILE.csv] [--seed N] [--minutes M] [--modes cooperative,central,none] [--out FILE.json] [--compute measured|none]\n',
  )
  process.exit(0)
}
const int = (s: string | undefined, name: string, min: number): number => {
  const v = Number(s)
  if (!Number.isInteger(v) || v < min) {
    process.stderr.write(`--${name} must be an integer >= ${min}\n`)
    process.exit(2)
  }
  return v
}
const hosts = int(values.hosts, 'hosts', 2)
const vms = values.vms === undefined ? hosts * 10 : int(values.vms, 'vms', 1)
const seed = int(values.seed, 'seed', 0)
const minutes = int(values.minutes, 'minutes', 1)
const modes = values.modes.split(',').map((m) => m.trim()) as Mode[]
for (const m of modes)
  if (!['cooperative', 'central', 'none'].includes(m)) {
    process.stderr.write(`unknown mode ${m} (cooperative, central, none)\n`)
    process.exit(2)
  }
if (values.compute !== 'measured' && values.compute !== 'none') {
  process.stderr.write('--compute must be measured or none\n')
  process.exit(2)
}
const makeTrace = (): Trace =>
  values.trace
    ? readCsvTrace(values.trace, { hosts, durationMs: minutes * 60_000 })
    : syntheticTrace({ hosts, vms, seed, durationMs: minutes * 60_000 })

const results: ModeResult[] = []
let shape = ''
for (const mode of modes) {
  const trace = makeTrace()
  shape = `${trace.hosts.length} hosts, ${trace.vms.length} VMs, ${minutes} min`
  process.stdout.write(`simulate: ${mode}, ${shape}, seed ${seed} ...\n`)
  const r = simulate(trace, { mode, seed, computeDelay: values.compute })
  process.stdout.write(`  done in ${(r.wallMs / 1000).toFixed(1)} s wall\n`)
  results.push(r)
}
process.stdout.write(`\n${table(results)}\n`)
const coop = results.find((r) => r.mode === 'cooperative')
const central = results.find((r) => r.mode === 'central')
const ratios =
  coop && central
    ? {
        cumulatedOverloadCoopVsCentral: central.overload.cumulativeS
          ? coop.overload.cumulativeS / central.overload.cumulativeS
          : null,
        migrationsCoopVsCentral: central.migrations ? coop.migrations / central.migrations : null,
        activeHostsCoopVsCentral: central.activeHosts.end
          ? coop.activeHosts.end / central.activeHosts.end
          : null,
        activeHostsCoopVsFfd: coop.ffdEnd ? coop.activeHosts.end / coop.ffdEnd : null,
        activeHostsCoopVsLowerBound: coop.lowerBoundEnd ? coop.activeHosts.end / coop.lowerBoundEnd : null,
      }
    : {}
mkdirSync(dirname(values.out), { recursive: true })
writeFileSync(
  values.out,
  `${JSON.stringify(
    {
      command: `npm run simulate -- ${process.argv.slice(2).join(' ')}`.trim(),
      date: new Date().toISOString(),
      seed,
      trace: values.trace ?? 'synthetic',
      computeDelay: values.compute,
      ratios,
      results,
    },
    null,
    1,
  )}\n`,
)
const svgPath = `${values.out.replace(/\.json$/, '')}.svg`
writeFileSync(svgPath, svg(results, `skymesh simulator: ${shape}, seed ${seed}`))
process.stdout.write(`\nwrote ${values.out} and ${svgPath}\n`)
