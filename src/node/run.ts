// `skymesh agent`: validate the configuration (exit 2 and start nothing if it is wrong), start the
// agent, and stop it cleanly on SIGINT/SIGTERM (a second signal forces the exit).
import { type AgentFlags, loadConfig } from './config.js'
import { AgentError, ConfigError } from './errors.js'
import { createLogger } from './logger.js'

export type { AgentFlags }

export async function runAgent(flags: AgentFlags): Promise<number> {
  let config: ReturnType<typeof loadConfig>
  try {
    config = loadConfig(flags)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`skymesh agent: invalid configuration\n${formatConfigError(err)}\n`)
      return 2
    }
    throw err
  }
  const logger = createLogger({ level: config.logLevel })
  // Loaded only once the configuration is known good: libp2p and friends take a second to import.
  const { Agent } = await import('./agent.js')
  const agent = new Agent({ config, logger })
  let resolveStopped: (code: number) => void = () => {}
  const stopped = new Promise<number>((resolve) => {
    resolveStopped = resolve
  })
  let signals = 0
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1
    if (signals > 1) {
      logger.warn({ signal }, 'second signal: exiting without a clean stop')
      process.exit(1)
    }
    logger.info({ signal }, 'stopping')
    agent.stop().then(
      () => resolveStopped(0),
      (err: unknown) => {
        logger.error({ err }, 'unclean stop')
        resolveStopped(1)
      },
    )
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    await agent.start()
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`skymesh agent: invalid configuration\n${formatConfigError(err)}\n`)
      await agent.stop().catch(() => {})
      return 2
    }
    const message = err instanceof AgentError ? err.message : (err as Error).message
    logger.fatal({ err }, `agent failed to start: ${message}`)
    await agent.stop().catch(() => {})
    return 1
  }
  return stopped
}

function formatConfigError(err: ConfigError): string {
  const lines = err.issues.length ? err.issues : [err.message]
  return lines.map((l) => `  - ${l}`).join('\n')
}
