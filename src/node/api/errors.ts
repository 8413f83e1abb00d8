// One error shape for every failure: `{ error: { code, message, details? } }`. Fastify's own
// errors (body parsing, size, media type) are mapped to it; unknown errors become a generic 500.
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { AgentError, type AgentErrorCode } from '../errors.js'

export interface ApiErrorBody {
  error: { code: AgentErrorCode; message: string; details?: Record<string, unknown> }
}

export function errorBody(
  code: AgentErrorCode,
  message: string,
  details?: Record<string, unknown>,
): ApiErrorBody {
  return { error: details === undefined ? { code, message } : { code, message, details } }
}

/** Maps a fastify-raised error (it carries `statusCode` and an `FST_*` code) to our shape. */
function fromFastify(
  err: FastifyError,
  bodyLimit: number,
): { status: number; body: ApiErrorBody } | undefined {
  const status = err.statusCode
  // Only fastify's own errors: a 4xx-looking error from elsewhere is still a 500 here.
  if (typeof err.code !== 'string' || !err.code.startsWith('FST_')) return undefined
  if (status === undefined || status < 400 || status >= 500) return undefined
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return {
        status: 413,
        body: errorBody('BAD_REQUEST', `body: larger than the limit of ${bodyLimit} bytes`),
      }
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return {
        status: 415,
        body: errorBody('BAD_REQUEST', 'content-type: unsupported media type; send application/json'),
      }
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { status: 400, body: errorBody('BAD_REQUEST', 'body: size does not match content-length') }
    default:
      return {
        status: status === 404 ? 404 : 400,
        body: errorBody(status === 404 ? 'NOT_FOUND' : 'BAD_REQUEST', err.message),
      }
  }
}

/**
 * For `frameworkErrors`: failures of the router itself (bad URL encoding, over-long path
 * parameter) that fastify answers before any hook or error handler runs.
 */
export function frameworkErrorReply(err: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  request.log.debug({ code: err.code }, 'bad request url')
  if (err.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    return reply.code(414).send(errorBody('BAD_REQUEST', 'url: a path parameter is too long'))
  }
  if (err.code === 'FST_ERR_BAD_URL') {
    return reply.code(400).send(errorBody('BAD_REQUEST', 'url: malformed path (bad percent-encoding?)'))
  }
  return reply.code(400).send(errorBody('BAD_REQUEST', `url: ${err.message}`))
}

export function installErrorHandlers(app: FastifyInstance, bodyLimit: number): void {
  app.setErrorHandler((err: unknown, request: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof AgentError) {
      if (err.status >= 500) request.log.error({ err }, 'agent error')
      else request.log.debug({ code: err.code, reason: err.message }, 'request refused')
      return reply.code(err.status).send(errorBody(err.code, err.message, err.details))
    }
    const mapped = err instanceof Error ? fromFastify(err as FastifyError, bodyLimit) : undefined
    if (mapped) {
      request.log.debug({ code: (err as FastifyError).code }, 'bad request')
      return reply.code(mapped.status).send(mapped.body)
    }
    // Anything else is a bug or an unexpected failure: log it whole, tell the client little.
    request.log.error({ err }, 'request failed')
    return reply.code(500).send(errorBody('INTERNAL', 'internal error; see the agent log'))
  })

  app.setNotFoundHandler((request, reply) => {
    const url = request.url.length > 200 ? `${request.url.slice(0, 200)}...` : request.url
    return reply.code(404).send(errorBody('NOT_FOUND', `no route ${request.method} ${url}`))
  })
}
