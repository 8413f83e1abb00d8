// Placement routes: open and recent events, dry-run plans and running one of them, drain a host and
// end a drain.
import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import { POLICIES, type PolicyName } from '../../../placement/index.js'
import { AgentError } from '../../errors.js'
import {
  PlacementConflictError,
  PlacementDisabledError,
  PlacementLookupError,
  type PlacementService,
} from '../../placement/index.js'
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
    dryRun: z.boolean({ error: 'expected true (show the plan) or false (run the plan planId names)' }),
    /** With dryRun false: the plan id a dry run returned (one event's plan, run on its leader's agent). */
    planId: z
      .string({ error: 'expected a plan id' })
      .regex(/^[0-9a-f]{16}$/, 'expected a plan id (16 hex digits, as a dry run returns)')
      .optional(),
    hosts: z.array(idString('a peer id')).min(1).max(1024).optional(),
    vms: z.array(idString('a VM id')).min(1).max(4096).optional(),
  },
  { error: 'expected a JSON object' },
)

const peerParams = z.strictObject({ peerId: idString('a peer id') })

export function placementRoutes(app: FastifyInstance, placement: PlacementService): void {
  app.get('/v1/placement/events', async () => placement.status())

  app.post('/v1/placement/plan', async (request, reply) => {
    const req = parseOrThrow(planRequestSchema, request.body)
    if (!req.dryRun) {
      if (!req.planId)
        throw new AgentError(
          'BAD_REQUEST',
          'body.dryRun: false runs a plan a dry run showed: give its planId (placement runs by itself otherwise)',
          { field: 'body.planId' },
        )
      if (req.hosts || req.vms || req.policy)
        throw new AgentError('BAD_REQUEST', 'body: a planId names the whole plan: no policy, hosts or vms', {
          field: 'body',
        })
      const planId = req.planId
      const applied = await mapErrorsAsync(() => placement.applyPlan(planId))
      return reply.code(202).send({ dryRun: false, ...applied })
    }
    if (req.planId)
      throw new AgentError('BAD_REQUEST', 'body.planId: only with dryRun: false', { field: 'body.planId' })
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

  app.delete('/v1/hosts/:peerId/drain', async (request) => {
    const { peerId } = parseOrThrow(peerParams, request.params, 'params')
    const r = await mapErrorsAsync(async () => placement.undrain(peerId))
    return { ...r, draining: false }
  })
}

async function mapErrorsAsync<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    return mapErrors(() => {
      throw err
    })
  }
}

function mapErrors<T>(fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (err instanceof PlacementLookupError)
      throw new AgentError(err.what === 'vm' ? 'VM_NOT_FOUND' : 'NOT_FOUND', err.message)
    if (err instanceof PlacementDisabledError || err instanceof PlacementConflictError)
      throw new AgentError('INVALID_STATE', err.message)
    throw err
  }
}
