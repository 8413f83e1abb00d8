// Virtual network routes (the overlay): networks of the mesh, a VM's NICs, and a ping hook that
// sends ICMP echoes from a VM's synthetic NIC (tests and diagnosis), and what the metadata service
// answers a VM.
import type { FastifyInstance } from 'fastify'
import { AgentError } from '../../errors.js'
import type { NetworkApi } from '../../types.js'
import {
  createNetworkSchema,
  idParamsSchema,
  networkParamsSchema,
  parseOrThrow,
  pingSchema,
} from '../schemas.js'

export function networkRoutes(app: FastifyInstance, api: NetworkApi): void {
  app.get('/v1/networks', async () => ({ networks: api.listNetworks() }))

  app.post('/v1/networks', async (request, reply) => {
    const req = parseOrThrow(createNetworkSchema, request.body)
    return reply.code(201).send(api.createNetwork(req))
  })

  app.get('/v1/networks/:name', async (request) =>
    api.getNetwork(parseOrThrow(networkParamsSchema, request.params, 'name').name),
  )

  app.get('/v1/vms/:id/nics', async (request) => ({
    nics: api.vmNics(parseOrThrow(idParamsSchema, request.params, 'id').id),
  }))

  // What the metadata service answers this VM (its context when in a virtual cluster), as it is served now.
  app.get('/v1/vms/:id/metadata', async (request) => {
    const id = parseOrThrow(idParamsSchema, request.params, 'id').id
    if (!api.vmMetadataOf) throw new AgentError('NOT_RUNNING', 'no metadata service here')
    return api.vmMetadataOf(id)
  })

  app.post('/v1/vms/:id/ping', async (request) => {
    const id = parseOrThrow(idParamsSchema, request.params, 'id').id
    return api.pingFromVm(id, parseOrThrow(pingSchema, request.body))
  })
}
