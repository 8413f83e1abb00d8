// Public surface of the CLI.
export { ApiClient, type ApiClientInit } from './client.js'
export { agentFlags, type RunAgent } from './commands/agent.js'
export { newSwarmKey, SWARM_KEY_LENGTH } from './commands/mesh-key.js'
export { findMigration, findPeer, type MigrateDeps, migrateRequest } from './commands/migrate.js'
export { createRequest, findVm } from './commands/vm.js'
export {
  type AgentFile,
  type Connection,
  type ConnectionOptions,
  normalizeApi,
  readAgentFile,
  resolveConnection,
} from './connection.js'
export { type DemoOptions, type DemoSummary, runDemo } from './demo.js'
export { ApiError, CliError, ExitCode, reportError, UsageError } from './errors.js'
export { formatAge, formatDuration, formatMiB, formatRate, keyValues, shortId, table } from './format.js'
export { type CliIo, type OutStream, processIo } from './io.js'
export { createProgram, type ProgramDeps, runCli } from './program.js'
