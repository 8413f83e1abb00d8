// Fastify logs every request at info; an agent API polled by the CLI would flood the log, so
// requests go to debug. Errors keep their levels (our error handler logs 5xx at error).
import { type FastifyReply, type FastifyRequest, LogController } from 'fastify'

export class DebugRequestLog extends LogController {
  override incomingRequest(): void {}

  override requestCompleted(
    error: Error | null | undefined,
    request: FastifyRequest,
    reply: FastifyReply,
  ): void {
    const entry = {
      method: request.method,
      url: request.url,
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime),
    }
    if (error) reply.log.warn({ ...entry, err: error }, 'request errored')
    else reply.log.debug(entry, 'request')
  }

  override routeNotFound(): void {}
}
