// Public surface of the agent's local HTTP API.
export { type ApiErrorBody, errorBody } from './errors.js'
export { createVmSchema, type FieldIssue, LIMITS, parseCreateVmRequest } from './schemas.js'
export {
  type ApiServer,
  type ApiServerInit,
  createApiServer,
  DEFAULT_API_HOST,
  DEFAULT_API_PORT,
  DEFAULT_BODY_LIMIT,
} from './server.js'
