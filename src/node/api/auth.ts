// Bearer-token check for every route except those marked `config: { public: true }`.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { AgentError } from '../errors.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Served without a token (only the health check). */
    public?: boolean
  }
}

// Hashing both sides gives equal-length buffers, so timingSafeEqual never leaks the token length.
const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest()

/** The token from `Authorization: Bearer <token>`, or undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header)
  return m?.[1]
}

export function tokenMatches(expected: Buffer, given: string | undefined): boolean {
  return given !== undefined && timingSafeEqual(expected, digest(given))
}

export function installAuth(app: FastifyInstance, token: string): void {
  const expected = digest(token)
  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.config.public === true) return
    const given = bearerToken(request.headers.authorization)
    if (!tokenMatches(expected, given)) {
      throw new AgentError(
        'UNAUTHORIZED',
        given === undefined ? 'missing bearer token (Authorization: Bearer <token>)' : 'invalid bearer token',
      )
    }
  })
}
