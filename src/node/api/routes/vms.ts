// VM routes. Bodies and params are validated here; the agent fills workload defaults.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { AgentService } from '../../types.js'
import { createVmSchema, emptyBodySchema, idParamsSchema, parseOrThrow } from '../schemas.js'

const vmId = (request: FastifyRequest): string => parseOrThrow(idParamsSchema, request.params, 'id').id

export function vmRoutes(app: FastifyInstance, agent: AgentService): void {
  app.get('/v1/vms', async () => ({ vms: agent.listVms() }))

  app.post('/v1/vms', async (request, reply) => {
    const req = parseOrThrow(createVmSchema, request.body)
    const vm = await agent.createVm(req)
    return reply.code(201).send(vm)
  })

  app.get('/v1/vms/:id', async (request) => agent.getVm(vmId(request)))

  app.delete('/v1/vms/:id', async (request, reply) => {
    const id = vmId(request)
    await agent.deleteVm(id)
    return reply.code(204).send()
  })

  app.post('/v1/vms/:id/pause', async (request) => {
    const id = vmId(request)
    parseOrThrow(emptyBodySchema, request.body)
    return agent.pauseVm(id)
  })

  app.post('/v1/vms/:id/resume', async (request) => {
    const id = vmId(request)
    parseOrThrow(emptyBodySchema, request.body)
    return agent.resumeVm(id)
  })

  app.get('/v1/vms/:id/digest', async (request) => agent.vmDigest(vmId(request)))
}
