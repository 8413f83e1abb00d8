// The commander program, built by a factory so tests run it in-process with captured output.
import { Command } from 'commander'
import { VERSION } from '../node/version.js'
import { type RunAgent, registerAgentCommand } from './commands/agent.js'
import { registerClusterCommands } from './commands/cluster.js'
import { registerDashboardCommand } from './commands/dashboard.js'
import { registerDemoCommand } from './commands/demo.js'
import { registerImageCommands } from './commands/image.js'
import { registerMeshKeyCommand } from './commands/mesh-key.js'
import { type MigrateDeps, registerMigrationsCommands } from './commands/migrate.js'
import { registerNetCommands } from './commands/net.js'
import { registerNodeCommands } from './commands/node.js'
import { registerPlacementCommands } from './commands/placement.js'
import { registerSitesCommand } from './commands/sites.js'
import { registerVclusterCommands } from './commands/vcluster.js'
import { registerVmCommands } from './commands/vm.js'
import { reportError } from './errors.js'
import type { CliIo } from './io.js'

export interface ProgramDeps {
  /** Defaults to `runAgent` from src/node/run.ts, loaded when `agent` runs. */
  runAgent?: RunAgent
  /** `vm migrate --wait`: poll interval and Ctrl-C source (tests make them fast and scripted). */
  migrate?: MigrateDeps
}

export function createProgram(io: CliIo, deps: ProgramDeps = {}): Command {
  const program = new Command('skymesh')
  // set before any .command(): subcommands copy these settings when they are created
  program
    .exitOverride()
    .configureOutput({
      writeOut: (s) => void io.stdout.write(s),
      writeErr: (s) => void io.stderr.write(s),
      getOutHelpWidth: () => io.stdout.columns ?? 100,
      getErrHelpWidth: () => io.stderr.columns ?? 100,
    })
    .showHelpAfterError('(add --help for usage)')
    .description('a peer-to-peer mesh of hosts that runs and live-migrates VMs as one sky')
    .version(VERSION, '-V, --version', 'print the version')
    .helpCommand(true)

  registerAgentCommand(program, deps.runAgent)
  registerNodeCommands(program, io)
  registerVmCommands(program, io, deps.migrate)
  registerMigrationsCommands(program, io)
  registerClusterCommands(program, io)
  registerSitesCommand(program, io)
  registerNetCommands(program, io)
  registerPlacementCommands(program, io)
  registerImageCommands(program, io)
  registerVclusterCommands(program, io)
  registerMeshKeyCommand(program, io)
  registerDashboardCommand(program, io)
  registerDemoCommand(program, io)
  return program
}

/** Runs one command line (`argv` without node and script) and returns its exit code. */
export async function runCli(argv: string[], io: CliIo, deps: ProgramDeps = {}): Promise<number> {
  try {
    await createProgram(io, deps).parseAsync(argv, { from: 'user' })
    return 0
  } catch (err) {
    return reportError(err, io)
  }
}
