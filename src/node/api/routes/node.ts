// Node-level routes: health, node info, peers, Prometheus metrics.
import type { FastifyInstance } from 'fastify'
import type { AgentService } from '../../types.js'

export function nodeRoutes(app: FastifyInstance, agent: AgentService): void {
  // Open for container health checks: says only that the process serves HTTP.
  app.get('/healthz', { config: { public: true } }, async () => ({ ok: true }))

  app.get('/v1/node', async () => agent.nodeInfo())

  app.get('/v1/peers', async () => ({ peers: agent.peers() }))

  app.get('/metrics', async (_request, reply) => {
    const text = await agent.metrics.metrics()
    return reply.type(agent.metrics.contentType).send(text)
  })
}
