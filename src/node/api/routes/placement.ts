// Placement routes: open and recent events, dry-run plans, drain a host.
import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import { POLICIES, type PolicyName } from '../../../placement/index.js'
import { AgentError } from '../../errors.js'
import { PlacementDisabledError, PlacementLookupError, type PlacementService } from '../../placement/index.js'
import { parseOrThrow } from '../schemas.js'

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/
const POLICY_NAMES = [...POLICIES, 'all'] as const

const idString = (what: string) =>
  z
    .string({ error: `expected ${what}` })
    .min(1, `expected ${what}`)
    .max(128, `expected ${what}`)
    .regex(ID_RE, `expected ${what}`)

const policy = z.enum(POLICY_NAMES, {
  error: (iss) =>
    iss.input === undefined
      ? 'required'
      : `unknown policy ${JSON.stringify(iss.input)} (known: ${POLICY_NAMES.join(', ')})`,
})

export const planRequestSchema = z.strictObject(
  {
    /** One policy or several. */
    policy: z
      .preprocess((v) => (typeof v === 'string' ? [v] : v), z.array(policy).min(1).max(POLICY_NAMES.length))
      .optional(),
    dryRun: z.literal(true, {
      error: 'must be true: placement runs by itself; this route only shows what it would do',
    }),
    hosts: z.array(idString('a peer id')).min(1).max(1024).optional(),
    vms: z.array(idString('a VM id')).min(1).max(4096).optional(),
  },
  { error: 'expected a JSON object' },
)

const peerParams = z.strictObject({ peerId: idString('a peer id') })

export function placementRoutes(app: FastifyInstance, placement: PlacementService): void {
  app.get('/v1/placement/events', async () => placement.status())

  app.post('/v1/placement/plan', async (request) => {
    const req = parseOrThrow(planRequestSchema, request.body)
    const given: string[] = req.policy ?? ['all']
    const policies: PolicyName[] = given.includes('all')
      ? [...POLICIES]
      : POLICIES.filter((p) => given.includes(p))
    return mapErrors(() => placement.dryRun({ policies, hosts: req.hosts, vms: req.vms }))
  })

  app.post('/v1/hosts/:peerId/drain', async (request, reply) => {
    const { peerId } = parseOrThrow(peerParams, request.params, 'params')
    const r = mapErrors(() => placement.drain(peerId))
    return reply.code(202).send({ ...r, draining: true })
  })
}

function mapErrors<T>(fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof PlacementLookupError)
      throw new AgentError(err.what === 'vm' ? 'VM_NOT_FOUND' : 'NOT_FOUND', err.message)
    if (err instanceof PlacementDisabledError) throw new AgentError('INVALID_STATE', err.message)
    throw err
  }
}
