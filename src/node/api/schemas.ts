// Request validation: zod schemas whose failures become one AgentError BAD_REQUEST that names
// each bad field (`memoryMiB: expected an integer from 1 to 1048576, got 0`).
import { type ZodType, z } from 'zod'
import { AgentError } from '../errors.js'
import type { CreateVmRequest } from '../types.js'

export const LIMITS = {
  nameMaxLength: 63,
  vcpus: { min: 1, max: 256 },
  memoryMiB: { min: 1, max: 1_048_576 },
  diskMiB: { min: 1, max: 16_777_216 },
  idMaxLength: 128,
} as const

const NAME_RE = /^[a-z0-9][a-z0-9._-]*$/i
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/

/** A short description of a bad value for a message; long strings are cut. */
function got(input: unknown): string {
  if (input === undefined) return 'missing'
  if (input === null) return 'got null'
  if (typeof input === 'number' || typeof input === 'boolean') return `got ${input}`
  if (typeof input === 'string')
    return `got ${JSON.stringify(input.length > 40 ? `${input.slice(0, 40)}...` : input)}`
  if (Array.isArray(input)) return 'got an array'
  return `got ${typeof input === 'object' ? 'an object' : typeof input}`
}

/** Zod's `error` option: one message for every way a field can fail. */
const expect = (what: string) => ({
  error: (iss: { input?: unknown }) =>
    iss.input === undefined ? 'required' : `expected ${what}, ${got(iss.input)}`,
})

function intIn(min: number, max: number) {
  const e = expect(`an integer from ${min} to ${max}`)
  return z.number(e).int(e).min(min, e).max(max, e)
}

const rate = () => {
  const e = expect('a finite number >= 0')
  return z.number(e).min(0, e)
}

const nameSchema = (() => {
  const e = expect(
    `1 to ${LIMITS.nameMaxLength} characters of letters, digits, '-', '_' or '.', starting with a letter or digit`,
  )
  return z.string(e).min(1, e).max(LIMITS.nameMaxLength, e).regex(NAME_RE, e)
})()

export const workloadSchema = z.strictObject(
  {
    dirtyMiBps: rate().optional(),
    hotSetMiB: rate().optional(),
    cpu: rate().optional(),
    diskWriteMiBps: rate().optional(),
  },
  expect('an object'),
)

export const createVmSchema = z
  .strictObject(
    {
      name: nameSchema,
      vcpus: intIn(LIMITS.vcpus.min, LIMITS.vcpus.max),
      memoryMiB: intIn(LIMITS.memoryMiB.min, LIMITS.memoryMiB.max),
      diskMiB: intIn(LIMITS.diskMiB.min, LIMITS.diskMiB.max),
      workload: workloadSchema.optional(),
      networks: z
        .array(nameSchema, expect('an array of network names'))
        .max(16, expect('at most 16 networks'))
        .optional(),
      nicAttach: z.literal('tap', expect("'tap'")).optional(),
      image: (() => {
        const e = expect('an image id, a unique prefix of 6+ hex digits, or a name')
        return z.string(e).min(1, e).max(128, e)
      })().optional(),
      // qemu driver: `skymesh.KEY=VALUE` words on the guest's kernel command line
      guestArgs: z
        .record(
          z.string().regex(/^[a-z][a-z0-9]{0,15}$/, expect('keys of 1-16 a-z0-9, starting with a letter')),
          z.string().regex(/^[A-Za-z0-9.:/_-]{1,64}$/, expect('values of 1-64 A-Z a-z 0-9 . : / _ -')),
          expect('an object of guest settings'),
        )
        .refine((r) => Object.keys(r).length <= 8, expect('at most 8 guest settings'))
        .optional(),
    },
    expect('a JSON object'),
  )
  // Cross-field limits; zod runs these only once every field above is valid.
  .superRefine((req, ctx) => {
    const w = req.workload
    if (w?.cpu !== undefined && w.cpu > req.vcpus) {
      ctx.addIssue({
        code: 'custom',
        path: ['workload', 'cpu'],
        input: w.cpu,
        message: `must be <= vcpus (${req.vcpus}): a workload cannot use more CPUs than the VM has, got ${w.cpu}`,
      })
    }
    if (w?.hotSetMiB !== undefined && w.hotSetMiB > req.memoryMiB) {
      ctx.addIssue({
        code: 'custom',
        path: ['workload', 'hotSetMiB'],
        input: w.hotSetMiB,
        message: `must be <= memoryMiB (${req.memoryMiB}): the pages a workload writes lie inside the VM's memory, got ${w.hotSetMiB}`,
      })
    }
  })

/** `POST /v1/vms/:id/migrate`: where to, and how. */
export const migrateVmSchema = z.strictObject(
  {
    to: (() => {
      const e = expect('the peer id of the destination host')
      return z.string(e).min(1, e).max(LIMITS.idMaxLength, e).regex(ID_RE, e)
    })(),
    mode: z.enum(['precopy', 'postcopy', 'auto'], expect("'precopy', 'postcopy' or 'auto'")).optional(),
    downtimeMs: intIn(1, 60_000).optional(),
    bandwidthMiBps: (() => {
      const e = expect('a number > 0 (MiB/s)')
      return z.number(e).positive(e).max(1_000_000, e)
    })().optional(),
    maxRounds: intIn(1, 1000).optional(),
    streams: intIn(1, 16).optional(),
    compression: z.enum(['auto', 'on', 'off'], expect("'auto', 'on' or 'off'")).optional(),
    autoConverge: z.boolean(expect('true or false')).optional(),
    channel: z.enum(['auto', 'libp2p'], expect("'auto' or 'libp2p'")).optional(),
  },
  expect('a JSON object'),
)

/** `POST /v1/networks`. */
export const createNetworkSchema = z.strictObject(
  {
    name: nameSchema,
    subnet: (() => {
      const e = expect('an IPv4 CIDR like 10.10.0.0/24')
      return z
        .string(e)
        .max(18, e)
        .regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, e)
    })(),
    mtu: intIn(576, 9000).optional(),
  },
  expect('a JSON object'),
)

export const networkParamsSchema = z.strictObject({ name: nameSchema })

/** `POST /v1/vms/:id/ping`: echoes from the VM's synthetic NIC. */
export const pingSchema = z.strictObject(
  {
    ip: (() => {
      const e = expect('an IPv4 address')
      return z.string(e).regex(/^\d{1,3}(\.\d{1,3}){3}$/, e)
    })(),
    network: nameSchema.optional(),
    count: intIn(1, 10_000).optional(),
    intervalMs: intIn(1, 10_000).optional(),
    timeoutMs: intIn(1, 60_000).optional(),
    size: intIn(0, 9000).optional(),
  },
  expect('a JSON object'),
)

export const idParamsSchema = z.strictObject({
  id: (() => {
    const e = expect(`1 to ${LIMITS.idMaxLength} characters of letters, digits, '.', '_', ':' or '-'`)
    return z.string(e).min(1, e).max(LIMITS.idMaxLength, e).regex(ID_RE, e)
  })(),
})

/** Routes that take no input accept no body or `{}`. */
export const emptyBodySchema = z.strictObject({}, expect('no body or an empty JSON object')).optional()

export interface FieldIssue {
  field: string
  message: string
}

/** Flattens zod issues to one entry per field; an unknown key is its own field. */
export function fieldIssues(error: z.ZodError, root = 'body'): FieldIssue[] {
  const out: FieldIssue[] = []
  for (const iss of error.issues) {
    const path = iss.path.map(String).join('.')
    if (iss.code === 'unrecognized_keys') {
      for (const key of iss.keys) out.push({ field: path ? `${path}.${key}` : key, message: 'unknown field' })
    } else {
      out.push({ field: path || root, message: iss.message })
    }
  }
  return out
}

/** Parses `input` or throws AgentError BAD_REQUEST with `details: { field, issues }`. */
export function parseOrThrow<T>(schema: ZodType<T>, input: unknown, root = 'body'): T {
  const res = schema.safeParse(input)
  if (res.success) return res.data
  const issues = fieldIssues(res.error, root)
  const message = issues.map((i) => `${i.field}: ${i.message}`).join('; ')
  return throwBadRequest(message, { field: issues[0]?.field ?? root, issues })
}

function throwBadRequest(message: string, details: Record<string, unknown>): never {
  throw new AgentError('BAD_REQUEST', message, details)
}

export const parseCreateVmRequest = (body: unknown): CreateVmRequest => parseOrThrow(createVmSchema, body)
