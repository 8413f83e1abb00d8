// Structured logs: JSON lines (pino), pretty-printed when stderr is a terminal.
import { type Logger, pino } from 'pino'

export type { Logger }

export function createLogger(opts: { level: string; pretty?: boolean; name?: string }): Logger {
  const pretty = opts.pretty ?? (process.stderr.isTTY === true && process.env.SKYMESH_LOG_FORMAT !== 'json')
  if (pretty) {
    return pino({
      level: opts.level,
      name: opts.name,
      transport: {
        target: 'pino-pretty',
        options: { destination: 2, colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' },
      },
    })
  }
  return pino(
    { level: opts.level, name: opts.name, base: { pid: process.pid } },
    pino.destination({ fd: 2, sync: true }),
  )
}
