// The agent's local HTTP API: fastify with bearer auth, JSON bodies validated by zod, and one
// error shape. Serve it on loopback only; the token lives in DIR/api-token.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { type DashboardInit, dashboardRoutes } from '../../dashboard/index.js'
import type { PlacementService } from '../placement/index.js'
import type { AgentService, NetworkApi } from '../types.js'
import { installAuth } from './auth.js'
import { installBodyParsers } from './body.js'
import { frameworkErrorReply, installErrorHandlers } from './errors.js'
import { DebugRequestLog } from './log.js'
import { clusterRoutes } from './routes/cluster.js'
import { type ImagesApi, imageRoutes } from './routes/images.js'
import { migrationRoutes } from './routes/migrations.js'
import { networkRoutes } from './routes/networks.js'
import { nodeRoutes } from './routes/node.js'
import { placementRoutes } from './routes/placement.js'
import { vmRoutes } from './routes/vms.js'
import { LIMITS } from './schemas.js'

export const DEFAULT_API_HOST = '127.0.0.1'
export const DEFAULT_API_PORT = 4711
export const DEFAULT_BODY_LIMIT = 64 * 1024

export interface ApiServerInit {
  agent: AgentService
  /** The virtual networks (overlay); their routes exist only when given. */
  networks?: NetworkApi
  /** Placement (events, dry-run plans, drain); its routes exist only when given. */
  placement?: PlacementService
  /** Images and virtual clusters (src/images); their routes exist only when given. */
  images?: ImagesApi
  /** The bearer token every route but /healthz requires. Must not be empty. */
  token: string
  logger: Logger
  /** Default 127.0.0.1. Anything but loopback is logged as a warning. */
  host?: string
  /** Default 4711; 0 picks a free port (see the URL `listen()` returns). */
  port?: number
  /** Largest accepted request body in bytes; default 64 KiB. */
  bodyLimit?: number
  /** The web dashboard under /dashboard/ (src/dashboard); on unless false. */
  dashboard?: false | { hub?: DashboardInit['hub'] }
}

export interface ApiServer {
  /** For `inject()` in tests. */
  readonly app: FastifyInstance
  /** Starts listening; resolves to the base URL, e.g. `http://127.0.0.1:4711`. */
  listen(): Promise<string>
  /** Stops accepting requests and closes the server; safe to call twice. */
  close(): Promise<void>
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost'])

export function createApiServer(init: ApiServerInit): ApiServer {
  if (init.token.length === 0) throw new TypeError('createApiServer: token must not be empty')
  const host = init.host ?? DEFAULT_API_HOST
  const port = init.port ?? DEFAULT_API_PORT
  const bodyLimit = init.bodyLimit ?? DEFAULT_BODY_LIMIT
  const log = init.logger.child({ component: 'api' })

  const app = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    logController: new DebugRequestLog(),
    bodyLimit,
    // Above the longest valid id, so a slightly too long id gets the id's 400 message.
    routerOptions: { maxParamLength: LIMITS.idMaxLength * 2 },
    frameworkErrors: frameworkErrorReply,
  })

  installErrorHandlers(app, bodyLimit)
  installAuth(app, init.token)
  installBodyParsers(app)
  nodeRoutes(app, init.agent)
  vmRoutes(app, init.agent)
  clusterRoutes(app, init.agent)
  migrationRoutes(app, init.agent)
  if (init.networks) networkRoutes(app, init.networks)
  if (init.placement) placementRoutes(app, init.placement)
  if (init.images) imageRoutes(app, init.images)
  if (init.dashboard !== false) {
    const { agent, placement, images, networks } = init
    dashboardRoutes(app, {
      source: { agent, placement, images, networks },
      token: init.token,
      logger: log.child({ component: 'dashboard' }),
      hub: init.dashboard?.hub,
    })
  }

  let closing: Promise<void> | undefined
  return {
    app,
    async listen() {
      if (!LOOPBACK.has(host)) log.warn({ host }, 'API listens beyond loopback; the token is its only guard')
      return app.listen({ host, port })
    },
    close() {
      closing ??= app.close()
      return closing
    },
  }
}
