// The dashboard's HTTP side, on the agent's own fastify server (same port, same token):
//   /dashboard/            the page (a signed-in browser only; others go to the login page)
//   /dashboard/login       the login page; `?code=` trades a one-time code for a session cookie
//   /dashboard/events      the server-sent event stream (snapshot, then deltas)
//   /dashboard/api/v1/...  the agent's own REST API, for the page's actions (same routes as the CLI)
//   POST /v1/dashboard/codes  (bearer token) a one-time code, for `skymesh dashboard`
// Only the login page and its script and style are served without a session; they hold no data.
import type { FastifyInstance, FastifyReply, FastifyRequest, HTTPMethods } from 'fastify'
import type { Logger } from 'pino'
import { AgentError } from '../node/errors.js'
import { type Asset, loadAssets } from './assets.js'
import { DashboardHub, type HubInit } from './hub.js'
import { Sessions } from './sessions.js'
import type { DashboardSource } from './types.js'

export interface DashboardInit {
  source: DashboardSource
  token: string
  logger?: Logger
  /** Hub settings (tests shorten the intervals). */
  hub?: Omit<HubInit, 'source' | 'logger'>
}

export interface Dashboard {
  hub: DashboardHub
  sessions: Sessions
}

/** The header the page's own requests carry: a cross-site form or image cannot set it. */
export const DASHBOARD_HEADER = 'x-skymesh-dashboard'
const PUBLIC_FILES = new Set([
  '/dashboard/static/login.html',
  '/dashboard/static/login.js',
  '/dashboard/static/style.css',
])
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

export function dashboardRoutes(app: FastifyInstance, init: DashboardInit): Dashboard {
  const assets = loadAssets()
  const sessions = new Sessions({ token: init.token })
  const hub = new DashboardHub({ ...init.hub, source: init.source, logger: init.logger })
  const open = { config: { public: true } }
  const signedIn = (request: FastifyRequest): boolean =>
    sessions.check(sessions.fromCookieHeader(request.headers.cookie))

  hub.start()
  // Streams are hijacked replies: end them before the server waits for its connections to close.
  app.addHook('preClose', (done) => {
    hub.stop()
    done()
  })

  const sendAsset = (reply: FastifyReply, asset: Asset) =>
    reply
      .header('content-type', asset.type)
      .header('cache-control', 'no-store')
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('content-security-policy', CSP)
      .send(asset.body)

  const page = (name: string): Asset => {
    const a = assets.get(`/dashboard/static/${name}`)
    if (!a) throw new AgentError('INTERNAL', `dashboard: ${name} is missing from the build`)
    return a
  }

  app.get('/dashboard', open, async (_request, reply) => reply.redirect('/dashboard/', 303))

  app.get('/dashboard/', open, async (request, reply) => {
    if (!signedIn(request)) return reply.redirect('/dashboard/login', 303)
    return sendAsset(reply, page('index.html'))
  })

  app.get('/dashboard/login', open, async (request, reply) => {
    const code = (request.query as Record<string, unknown> | undefined)?.code
    if (code !== undefined) {
      const id = sessions.redeemCode(code)
      if (!id) return reply.redirect('/dashboard/login?expired=1', 303)
      return reply.header('set-cookie', sessions.setCookie(id)).redirect('/dashboard/', 303)
    }
    return sendAsset(reply, page('login.html'))
  })

  app.post('/dashboard/login', open, async (request, reply) => {
    sameOrigin(request)
    const token = (request.body as { token?: unknown } | undefined)?.token
    if (!sessions.tokenMatches(token))
      throw new AgentError('UNAUTHORIZED', 'that is not this agent’s API token')
    return reply.header('set-cookie', sessions.setCookie(sessions.open())).code(204).send()
  })

  app.post('/dashboard/logout', open, async (request, reply) => {
    sameOrigin(request)
    sessions.close(sessions.fromCookieHeader(request.headers.cookie))
    return reply.header('set-cookie', sessions.clearCookie()).code(204).send()
  })

  const serveFile = (request: FastifyRequest, reply: FastifyReply) => {
    const path = request.url.split('?')[0] ?? ''
    const asset = assets.get(path)
    if (!asset) throw new AgentError('NOT_FOUND', `no dashboard file ${path}`)
    if (!PUBLIC_FILES.has(path) && !signedIn(request)) throw unauthorized()
    return sendAsset(reply, asset)
  }
  app.get('/dashboard/static/*', open, async (request, reply) => serveFile(request, reply))
  app.get('/dashboard/vendor/*', open, async (request, reply) => serveFile(request, reply))

  app.get('/dashboard/events', open, async (request, reply) => {
    if (!signedIn(request)) throw unauthorized()
    if (hub.clientCount >= (init.hub?.maxClients ?? 16))
      throw new AgentError('NOT_RUNNING', 'too many dashboard streams are open on this agent')
    reply.hijack()
    const res = reply.raw
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      connection: 'keep-alive',
    })
    const remove = hub.addClient(res)
    res.on('close', remove)
  })

  // The page's actions: the very routes the CLI calls, with this agent's token added here.
  app.route({
    method: ['GET', 'POST', 'DELETE'],
    url: '/dashboard/api/*',
    config: { public: true },
    handler: async (request, reply) => {
      if (!signedIn(request)) throw unauthorized()
      if (request.headers[DASHBOARD_HEADER] !== '1')
        throw new AgentError('BAD_REQUEST', `the dashboard's API calls carry the ${DASHBOARD_HEADER} header`)
      sameOrigin(request)
      const url = request.url.slice('/dashboard/api'.length)
      if (!url.startsWith('/v1/') || url.startsWith('/v1/dashboard/'))
        throw new AgentError('NOT_FOUND', `no API route ${url}`)
      const res = await app.inject({
        method: request.method as HTTPMethods,
        url,
        headers: {
          authorization: `Bearer ${init.token}`,
          ...(request.body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        ...(request.body !== undefined ? { payload: JSON.stringify(request.body) } : {}),
      })
      if (res.statusCode === 204) return reply.code(204).send()
      const type = res.headers['content-type']
      if (type) reply.header('content-type', type)
      return reply.code(res.statusCode).send(res.rawPayload)
    },
  })

  app.post('/v1/dashboard/codes', async (_request, reply) => {
    const { code, expiresAt } = sessions.issueCode()
    return reply.code(201).send({
      code,
      path: `/dashboard/login?code=${code}`,
      expiresAt: new Date(expiresAt).toISOString(),
    })
  })

  return { hub, sessions }
}

function unauthorized(): AgentError {
  return new AgentError('UNAUTHORIZED', 'sign in to the dashboard first (/dashboard/login)')
}

/** A browser's request from another origin (it names its Origin) is refused. */
function sameOrigin(request: FastifyRequest): void {
  const origin = request.headers.origin
  if (origin === undefined) return
  const host = request.headers.host
  if (!host || (origin !== `http://${host}` && origin !== `https://${host}`))
    throw new AgentError('BAD_REQUEST', 'cross-origin request refused')
}
