// Image routes (src/images): the content-addressed store of this host, pushes to many hosts, and
// virtual clusters with their context broker. `POST /v1/images` takes a path on the agent's own host:
// the API listens on loopback, so the agent reads the file where it lies (no upload through JSON).
import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import { ImagesError } from '../../../images/index.js'
import { AgentError } from '../../errors.js'
import { idParamsSchema, parseOrThrow } from '../schemas.js'

export interface AddImageRequest {
  path: string
  name?: string
}

export interface DistributeRequest {
  to: 'all' | string[]
  fanout?: number
}

export interface CreateVclusterRequest {
  name: string
  image: string
  count: number
  vcpus?: number
  memoryMiB?: number
  diskMiB?: number
  network?: string
  /** spread (default): over as many hosts as fit; pack: on as few as possible. */
  placement?: 'spread' | 'pack'
  /** Only hosts of this site. */
  site?: string
  /** Handed to every VM in its context (at most 16 KiB). */
  userData?: string
}

/** What the routes call; the agent implements it (src/node/images.ts). */
export interface ImagesApi {
  listImages(): unknown[]
  addImage(req: AddImageRequest): Promise<unknown>
  getImage(ref: string): unknown
  removeImage(ref: string): Promise<void>
  verifyImage(ref: string): Promise<unknown>
  distributeImage(ref: string, req: DistributeRequest): unknown
  imagePush(ref: string): unknown
  createVcluster(req: CreateVclusterRequest): unknown
  scaleVcluster(name: string, count: number): unknown
  listVclusters(): unknown[]
  getVcluster(name: string): unknown
  vclusterContext(name: string, vm?: string): unknown
  deleteVcluster(name: string): Promise<void>
}

const msg = (what: string) => ({ error: () => `expected ${what}` })
const nameRe = /^[a-z0-9][a-z0-9._-]{0,62}$/i

const addSchema = z.strictObject(
  {
    path: z
      .string(msg('an absolute path on the agent host'))
      .min(1, msg('a path'))
      .max(4096, msg('a shorter path'))
      .startsWith('/', msg('an absolute path (the CLI resolves relative ones)')),
    name: z
      .string(msg('an image name'))
      .regex(/^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/, msg("1 to 128 letters, digits, '.', '_', '+' or '-'"))
      .optional(),
  },
  msg('a JSON object'),
)

const distributeSchema = z.strictObject(
  {
    to: z.union(
      [z.literal('all'), z.array(z.string().min(1).max(128)).min(1).max(4096)],
      msg("'all' or an array of peer ids"),
    ),
    fanout: z
      .number(msg('an integer from 1 to 16'))
      .int(msg('an integer'))
      .min(1, msg('>= 1'))
      .max(16, msg('<= 16'))
      .optional(),
  },
  msg('a JSON object'),
)

const vclusterSchema = z.strictObject(
  {
    name: z.string(msg('a cluster name')).regex(nameRe, msg("1 to 63 letters, digits, '.', '_' or '-'")),
    image: z
      .string(msg('an image id'))
      .min(6, msg('an image id (or a unique prefix of 6+ hex digits)'))
      .max(128),
    count: z
      .number(msg('an integer from 1 to 256'))
      .int(msg('an integer'))
      .min(1, msg('>= 1'))
      .max(256, msg('<= 256')),
    vcpus: z.number(msg('an integer from 1 to 256')).int().min(1).max(256).optional(),
    memoryMiB: z.number(msg('an integer from 1 to 1048576')).int().min(1).max(1_048_576).optional(),
    diskMiB: z.number(msg('an integer from 1 to 16777216')).int().min(1).max(16_777_216).optional(),
    network: z.string(msg('a network name')).regex(nameRe, msg('a network name')).optional(),
    placement: z.enum(['spread', 'pack'], msg("'spread' or 'pack'")).optional(),
    site: z
      .string(msg('a site name'))
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, msg("1 to 63 letters, digits, '.', '_' or '-'"))
      .optional(),
    userData: z.string(msg('a string')).max(16384, msg('at most 16 KiB of user data')).optional(),
  },
  msg('a JSON object'),
)

const scaleSchema = z.strictObject(
  {
    count: z
      .number(msg('an integer from 1 to 256'))
      .int(msg('an integer'))
      .min(1, msg('>= 1'))
      .max(256, msg('<= 256')),
  },
  msg('a JSON object'),
)

const nameParams = z.strictObject({ name: z.string().regex(nameRe, msg('a cluster name')) })
const contextQuery = z.strictObject({ vm: z.string().min(1).max(128).optional() })

/** ImagesError -> AgentError with the same code (and so the same HTTP status as the rest of the API). */
async function call<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    if (err instanceof ImagesError) throw new AgentError(err.code, err.message, err.details)
    throw err
  }
}

export function imageRoutes(app: FastifyInstance, api: ImagesApi): void {
  const ref = (params: unknown) => parseOrThrow(idParamsSchema, params, 'id').id

  app.get('/v1/images', async () => ({ images: api.listImages() }))

  app.post('/v1/images', async (request, reply) => {
    const req = parseOrThrow(addSchema, request.body)
    return reply.code(201).send(await call(() => api.addImage(req)))
  })

  app.get('/v1/images/:id', async (request) => call(() => api.getImage(ref(request.params))))

  app.delete('/v1/images/:id', async (request, reply) => {
    const id = ref(request.params)
    await call(() => api.removeImage(id))
    return reply.code(204).send()
  })

  app.post('/v1/images/:id/verify', async (request) => call(() => api.verifyImage(ref(request.params))))

  app.post('/v1/images/:id/distribute', async (request, reply) => {
    const id = ref(request.params)
    const req = parseOrThrow(distributeSchema, request.body)
    return reply.code(202).send(await call(() => api.distributeImage(id, req)))
  })

  app.get('/v1/images/:id/distribute', async (request) => call(() => api.imagePush(ref(request.params))))

  app.get('/v1/vclusters', async () => ({ vclusters: api.listVclusters() }))

  app.post('/v1/vclusters', async (request, reply) => {
    const req = parseOrThrow(vclusterSchema, request.body)
    // Placed and checked now (a cluster that does not fit is refused here); built in the background:
    // GET /v1/vclusters/:name shows the progress until its state is 'running'.
    return reply.code(202).send(await call(() => api.createVcluster(req)))
  })

  app.post('/v1/vclusters/:name/scale', async (request, reply) => {
    const name = parseOrThrow(nameParams, request.params, 'name').name
    const req = parseOrThrow(scaleSchema, request.body)
    return reply.code(202).send(await call(() => api.scaleVcluster(name, req.count)))
  })

  app.get('/v1/vclusters/:name', async (request) =>
    call(() => api.getVcluster(parseOrThrow(nameParams, request.params, 'name').name)),
  )

  app.get('/v1/vclusters/:name/context', async (request) => {
    const name = parseOrThrow(nameParams, request.params, 'name').name
    const q = parseOrThrow(contextQuery, request.query ?? {}, 'query')
    return call(() => api.vclusterContext(name, q.vm))
  })

  app.delete('/v1/vclusters/:name', async (request, reply) => {
    const name = parseOrThrow(nameParams, request.params, 'name').name
    await call(() => api.deleteVcluster(name))
    return reply.code(204).send()
  })
}
