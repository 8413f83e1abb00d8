// Runs the compiled tests with node's test runner. Node 20 has no globs in --test, so list the files here.
// Usage: node scripts/run-tests.mjs [unit|integration|cluster ...]  (default: all three)
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

const suites = process.argv.slice(2).length ? process.argv.slice(2) : ['unit', 'integration', 'cluster']
const files = []
const walk = (dir) => {
  if (!existsSync(dir)) return
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name)
    if (statSync(p).isDirectory()) walk(p)
    else if (name.endsWith('.test.js')) files.push(p)
  }
}
for (const s of suites) walk(join('dist/test', s))
if (files.length === 0) {
  console.error(`no compiled tests found for ${suites.join(', ')} (run npm run build first)`)
  process.exit(1)
}
const args = ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files]
const r = spawnSync(process.execPath, args, { stdio: 'inherit' })
process.exit(r.status ?? 1)
