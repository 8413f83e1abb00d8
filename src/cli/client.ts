// A small client for the agent's local HTTP API (bearer token, JSON, `{ error: { code, message } }`).

import type { AppliedPlan, DryRunResult, PlacementStatus } from '../node/placement/index.js'
import type { SitesView } from '../node/sites.js'
import type {
  ClusterView,
  ClusterVm,
  CreateVmRequest,
  MigrateVmRequest,
  MigrationView,
  NodeInfo,
  PeerInfo,
  VmDigest,
  VmRecord,
} from '../node/types.js'
import { ApiError, CliError } from './errors.js'

export interface ApiClientInit {
  /** Per request; the agent answers from memory, so a slow answer means trouble. */
  timeoutMs?: number
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN'])

export class ApiClient {
  readonly baseUrl: string
  private readonly timeoutMs: number

  constructor(
    baseUrl: string,
    private readonly token: string,
    init: ApiClientInit = {},
  ) {
    this.baseUrl = baseUrl.replace(/\/+$/, '')
    this.timeoutMs = init.timeoutMs ?? 15_000
  }

  node(): Promise<NodeInfo> {
    return this.request('GET', '/v1/node')
  }

  peers(): Promise<{ peers: PeerInfo[] }> {
    return this.request('GET', '/v1/peers')
  }

  sites(): Promise<SitesView> {
    return this.request('GET', '/v1/sites')
  }

  listVms(): Promise<{ vms: VmRecord[] }> {
    return this.request('GET', '/v1/vms')
  }

  getVm(id: string): Promise<VmRecord> {
    return this.request('GET', `/v1/vms/${encodeURIComponent(id)}`)
  }

  createVm(req: CreateVmRequest): Promise<VmRecord> {
    return this.request('POST', '/v1/vms', req)
  }

  async deleteVm(id: string): Promise<void> {
    await this.request('DELETE', `/v1/vms/${encodeURIComponent(id)}`)
  }

  pauseVm(id: string): Promise<VmRecord> {
    return this.request('POST', `/v1/vms/${encodeURIComponent(id)}/pause`)
  }

  resumeVm(id: string): Promise<VmRecord> {
    return this.request('POST', `/v1/vms/${encodeURIComponent(id)}/resume`)
  }

  vmDigest(id: string): Promise<VmDigest> {
    return this.request('GET', `/v1/vms/${encodeURIComponent(id)}/digest`)
  }

  /** Starts a live migration (202); the answer is its first view. */
  migrateVm(id: string, req: MigrateVmRequest): Promise<MigrationView> {
    return this.request('POST', `/v1/vms/${encodeURIComponent(id)}/migrate`, req)
  }

  listMigrations(): Promise<{ migrations: MigrationView[] }> {
    return this.request('GET', '/v1/migrations')
  }

  getMigration(id: string): Promise<MigrationView> {
    return this.request('GET', `/v1/migrations/${encodeURIComponent(id)}`)
  }

  /** Asks to cancel; 409 INVALID_STATE once it is past its handover. */
  cancelMigration(id: string): Promise<MigrationView> {
    return this.request('DELETE', `/v1/migrations/${encodeURIComponent(id)}`)
  }

  cluster(): Promise<ClusterView> {
    return this.request('GET', '/v1/cluster')
  }

  placementEvents(): Promise<PlacementStatus> {
    return this.request('GET', '/v1/placement/events')
  }

  placementPlan(req: {
    policy?: string | string[]
    dryRun: true
    hosts?: string[]
    vms?: string[]
  }): Promise<DryRunResult> {
    return this.request('POST', '/v1/placement/plan', req)
  }

  drainHost(peerId: string): Promise<{ host: string; self: boolean; vms: number; draining: true }> {
    return this.request('POST', `/v1/hosts/${encodeURIComponent(peerId)}/drain`)
  }

  /** Runs the plan a dry run showed (on its leader's agent); 409 if the mesh changed since. */
  placementApply(planId: string): Promise<AppliedPlan & { dryRun: false }> {
    return this.request('POST', '/v1/placement/plan', { dryRun: false, planId })
  }

  undrainHost(peerId: string): Promise<{ host: string; self: boolean; draining: false }> {
    return this.request('DELETE', `/v1/hosts/${encodeURIComponent(peerId)}/drain`)
  }

  clusterVms(): Promise<{ vms: ClusterVm[] }> {
    return this.request('GET', '/v1/cluster/vms')
  }

  where(idOrName: string): Promise<ClusterVm> {
    return this.request('GET', `/v1/cluster/vms/${encodeURIComponent(idOrName)}`)
  }

  /** Parsed JSON body of a 2xx answer (undefined for an empty one); ApiError otherwise. */
  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const url = `${this.baseUrl}${path}`
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` }
    if (body !== undefined) headers['content-type'] = 'application/json'
    let res: Response
    try {
      res = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      })
    } catch (err) {
      throw this.networkError(err)
    }
    const text = await res.text()
    if (!res.ok) throw toApiError(res.status, text)
    if (text === '') return undefined as T
    try {
      return JSON.parse(text) as T
    } catch {
      throw new CliError(`agent at ${this.baseUrl} answered ${method} ${path} with a body that is not JSON`)
    }
  }

  private networkError(err: unknown): Error {
    const e = err as { name?: string; cause?: { code?: string; message?: string }; message?: string }
    if (e.name === 'TimeoutError' || e.name === 'AbortError') {
      return new CliError(`agent at ${this.baseUrl} did not answer within ${this.timeoutMs / 1000} s`)
    }
    const code = e.cause?.code
    if (code && UNREACHABLE.has(code)) {
      return new CliError(`no agent listening at ${this.baseUrl} (is \`skymesh agent\` running?)`)
    }
    return new CliError(
      `cannot reach agent at ${this.baseUrl}: ${e.cause?.message ?? e.message ?? String(err)}`,
    )
  }
}

function toApiError(status: number, text: string): ApiError {
  try {
    const parsed = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; details?: unknown } }
    const e = parsed.error
    if (e && typeof e.code === 'string') {
      return new ApiError(status, e.code, typeof e.message === 'string' ? e.message : '', e.details)
    }
  } catch {
    // not JSON: fall through
  }
  return new ApiError(status, `HTTP_${status}`, text.trim().slice(0, 200) || 'no message')
}
