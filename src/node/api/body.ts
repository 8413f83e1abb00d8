// Body parsing: JSON only. Our own JSON parser so a syntax error says where it is, an empty body
// counts as no body (clients that always send `content-type: application/json`), and keys that
// could poison prototypes are refused.
import type { FastifyInstance } from 'fastify'
import { AgentError } from '../errors.js'

function noPoison(key: string, value: unknown): unknown {
  if (key === '__proto__' || (key === 'constructor' && value !== null && typeof value === 'object')) {
    throw new AgentError('BAD_REQUEST', `body: forbidden key '${key}'`, { field: key })
  }
  return value
}

export function parseJsonBody(text: string): unknown {
  if (text.trim() === '') return undefined
  try {
    return JSON.parse(text, noPoison)
  } catch (err) {
    if (err instanceof AgentError) throw err
    const why = err instanceof Error ? err.message : String(err)
    throw new AgentError('BAD_REQUEST', `body: malformed JSON: ${why}`, { field: 'body' })
  }
}

export function installBodyParsers(app: FastifyInstance): void {
  // Without a text/plain parser, anything but JSON gets 415.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, parseJsonBody(body as string))
    } catch (err) {
      done(err as Error, undefined)
    }
  })
}
