// CLI error classes and the one place that turns an error into a message and an exit code:
// 0 ok, 1 runtime/API error, 2 usage/config error.
import { CommanderError } from 'commander'
import type { CliIo } from './io.js'

/** Bad flags or configuration: exit 2. */
export class UsageError extends Error {
  override name = 'UsageError'
}

/** Something failed at run time (agent unreachable, file exists, ...): exit 1. */
export class CliError extends Error {
  override name = 'CliError'
}

/** An error answer from the agent's API: `{ error: { code, message, details? } }`. */
export class ApiError extends Error {
  override name = 'ApiError'
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message)
  }
}

/** Ends the command with this exit code and prints nothing (the command already said why). */
export class ExitCode extends Error {
  override name = 'ExitCode'
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`)
  }
}

/** Prints `err` to stderr (unless commander already did) and returns the exit code for it. */
export function reportError(err: unknown, io: CliIo): number {
  if (err instanceof ExitCode) return err.exitCode
  if (err instanceof CommanderError) {
    // commander printed the help, the version or its usage message already; a group without its
    // subcommand (`skymesh vm`) prints help with exit code 1: a usage error too
    return err.exitCode === 0 ? 0 : 2
  }
  if (err instanceof ApiError) {
    io.stderr.write(`error: ${err.code}: ${err.message}\n`)
    return 1
  }
  if (err instanceof UsageError) {
    io.stderr.write(`error: ${err.message}\n`)
    return 2
  }
  const message = err instanceof Error ? err.message : String(err)
  io.stderr.write(`error: ${message}\n`)
  return 1
}
