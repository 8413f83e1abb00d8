// `skymesh agent`: gathers the flags as given and hands them to the agent's runner (which validates).
import type { Command } from 'commander'
import type { AgentFlags } from '../../node/run.js'
import { ExitCode } from '../errors.js'
import { collect } from '../parse.js'

type AgentOpts = AgentFlags

export type RunAgent = (flags: AgentFlags) => Promise<number>

/** `runAgent` replaces the agent's runner (tests check the flags without starting an agent). */
export function registerAgentCommand(program: Command, runAgent?: RunAgent): void {
  program
    .command('agent')
    .description('run the agent on this host (until SIGINT/SIGTERM)')
    .option('--data-dir <dir>', 'where the agent keeps its identity, store, API token and VM disks')
    .option('--listen <multiaddr>', 'libp2p listen address (repeatable)', collect)
    .option('--bootstrap <multiaddr>', 'a peer to join the mesh through (repeatable)', collect)
    .option('--api <host:port>', 'where the local HTTP API listens (127.0.0.1 only)')
    .option('--site <name>', 'the site (data centre, cloud region) this host is in')
    .option('--driver <name>', 'VM driver: synthetic or qemu')
    .option('--mesh-key <file>', 'pre-shared key of a private mesh (see `skymesh mesh-key`)')
    .option('--api-token-file <file>', 'use the API token in this file (default: a generated DIR/api-token)')
    .option('--config <file>', 'config file (flags override it)')
    .option('--log-level <level>', 'trace, debug, info, warn, error')
    .action(async (opts: AgentOpts) => {
      const flags = agentFlags(opts)
      // loaded only here: the agent pulls in libp2p, the other commands stay quick to start
      const run = runAgent ?? (await import('../../node/run.js')).runAgent
      const code = await run(flags)
      if (code !== 0) throw new ExitCode(code)
    })
}

/** Exactly what the user gave: absent flags stay undefined. */
export function agentFlags(opts: AgentOpts): AgentFlags {
  return {
    dataDir: opts.dataDir,
    listen: opts.listen,
    bootstrap: opts.bootstrap,
    api: opts.api,
    site: opts.site,
    driver: opts.driver,
    meshKey: opts.meshKey,
    apiTokenFile: opts.apiTokenFile,
    config: opts.config,
    logLevel: opts.logLevel,
  }
}
