// `skymesh demo`: flags only; the work is in ../demo.ts (loaded on use).
import type { Command } from 'commander'
import { ExitCode, UsageError } from '../errors.js'
import type { CliIo } from '../io.js'
import { parseNonNegative, parseNonNegativeInt, parsePositiveInt } from '../parse.js'

const MAX_AGENTS = 32

interface DemoFlags {
  agents: number
  vms: number
  duration?: number
  killAfter?: number
  restartAfter?: number
  migrateEvery?: number
  json?: boolean
  placement?: boolean
}

export function registerDemoCommand(program: Command, io: CliIo): void {
  program
    .command('demo')
    .description('start a throwaway local mesh (agents in temp dirs, a few VMs) and watch it live')
    .option('--agents <n>', 'agents to start (two sites)', parsePositiveInt, 4)
    .option('--vms <n>', 'small VMs to create, spread over the agents', parseNonNegativeInt, 6)
    .option('--duration <seconds>', 'stop after this many seconds (default: at Ctrl-C)', parseNonNegative)
    .option(
      '--kill-after <seconds>',
      'SIGKILL the last agent this long after the VMs exist, to watch the others detect it ' +
        '(default: 20 if the run lasts at least 35 s or has no --duration; 0: never)',
      parseNonNegative,
    )
    .option(
      '--restart-after <seconds>',
      'restart the killed agent (same data dir, same identity) this long after the kill ' +
        '(default: 15; 0: never)',
      parseNonNegative,
    )
    .option(
      '--migrate-every <seconds>',
      'live-migrate a busy VM to another agent this often, pre-copy, auto and post-copy in turn ' +
        '(default: 8 if the run lasts at least 20 s or has no --duration; 0: never)',
      parseNonNegative,
    )
    .option('--json', 'print one JSON summary at the end instead of the live view')
    .option(
      '--placement',
      'instead: 4 small agents where placement relieves an overloaded host and empties an underloaded one',
    )
    .action(async (opts: DemoFlags) => {
      if (opts.placement) {
        const { runPlacementDemo } = await import('../demo-placement.js')
        const { defaultBinPath } = await import('../demo.js')
        const code = await runPlacementDemo({ binPath: defaultBinPath(), json: opts.json }, io)
        if (code !== 0) throw new ExitCode(code)
        return
      }
      if (opts.agents > MAX_AGENTS) throw new UsageError(`--agents: at most ${MAX_AGENTS} on one machine`)
      const { runDemo } = await import('../demo.js')
      const code = await runDemo(
        {
          agents: opts.agents,
          vms: opts.vms,
          durationS: opts.duration,
          killAfterS: opts.killAfter,
          restartAfterS: opts.restartAfter,
          migrateEveryS: opts.migrateEvery,
          json: opts.json,
        },
        io,
      )
      if (code !== 0) throw new ExitCode(code)
    })
}
