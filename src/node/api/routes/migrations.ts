// Live migration routes: start one (202), follow them, cancel one.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { AgentService } from '../../types.js'
import { idParamsSchema, migrateVmSchema, parseOrThrow } from '../schemas.js'

const idOf = (request: FastifyRequest): string => parseOrThrow(idParamsSchema, request.params, 'id').id

export function migrationRoutes(app: FastifyInstance, agent: AgentService): void {
  app.post('/v1/vms/:id/migrate', async (request, reply) => {
    const id = idOf(request)
    const req = parseOrThrow(migrateVmSchema, request.body)
    return reply.code(202).send(agent.migrateVm(id, req))
  })

  app.get('/v1/migrations', async () => ({ migrations: agent.listMigrations() }))

  app.get('/v1/migrations/:id', async (request) => agent.getMigration(idOf(request)))

  app.delete('/v1/migrations/:id', async (request) => agent.cancelMigration(idOf(request)))
}
