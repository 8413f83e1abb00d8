#!/usr/bin/env -S GLIBC_TUNABLES=${GLIBC_TUNABLES}:glibc.malloc.hugetlb=1 node --initial-heap-size=128
// (The tunable and the flag: src/node/node-flags.ts, AGENT_SHEBANG; keep the two the same.)
// The CLI entry point: the compiled program lives in dist/ (built by `npm run build`, run on install).
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const main = new URL('../dist/src/cli/main.js', import.meta.url)
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('skymesh: not built yet; run `npm run build` (or `npm install`) in the skymesh folder first\n')
  process.exit(1)
}
await import(main.href)
