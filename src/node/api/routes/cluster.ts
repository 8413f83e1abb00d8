// Mesh-wide routes: every host (membership + gossiped state) and every VM with its location.
import type { FastifyInstance } from 'fastify'
import { AgentError } from '../../errors.js'
import type { AgentService } from '../../types.js'
import { idParamsSchema, parseOrThrow } from '../schemas.js'

export function clusterRoutes(app: FastifyInstance, agent: AgentService): void {
  app.get('/v1/cluster', async () => agent.cluster())

  app.get('/v1/cluster/vms', async () => ({ vms: agent.clusterVms() }))

  app.get('/v1/sites', async () => {
    if (!agent.sites) throw new AgentError('NOT_RUNNING', 'this agent does not track sites')
    return agent.sites()
  })

  app.get('/v1/cluster/vms/:id', async (request) =>
    agent.where(parseOrThrow(idParamsSchema, request.params, 'id').id),
  )
}
