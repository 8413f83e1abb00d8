// A bench runs as an agent does (src/node/node-flags.ts: V8 flags and the glibc huge-page tunable), so
// its figures are the product's: started without them (`node dist/bench/x.js`), it runs itself again
// with them and exits with that run's status. Its children (fork) inherit both.
import { spawnSync } from 'node:child_process'
import { AGENT_NODE_FLAGS, agentEnv } from '../../src/node/node-flags.js'

export function runAsAgent(): void {
  const missing = AGENT_NODE_FLAGS.filter((f) => !process.execArgv.includes(f))
  const env = agentEnv()
  if (missing.length === 0 && env.GLIBC_TUNABLES === process.env.GLIBC_TUNABLES) return
  const r = spawnSync(
    process.execPath,
    [...missing, ...process.execArgv, process.argv[1]!, ...process.argv.slice(2)],
    {
      stdio: 'inherit',
      env,
    },
  )
  process.exit(r.status ?? 1)
}
