// VMs and migrations through a running agent's API, for cluster tests: each call asserts that the
// agent accepted it, so a test reads as the steps it takes.
import assert from 'node:assert/strict'
import { type RunningAgent, waitFor } from './agent-process.js'

export interface Nic {
  network: string
  mac: string
  ip: string
}

export interface Vm {
  id: string
  name: string
  nics?: Nic[]
}

/** POST /v1/vms of a small VM (1 vCPU, 16 MiB memory and disk unless `fields` say otherwise); asserts 201. */
export async function createVm(agent: RunningAgent, name: string, fields: object = {}): Promise<Vm> {
  const r = await agent.request('POST', '/v1/vms', { name, vcpus: 1, memoryMiB: 16, diskMiB: 16, ...fields })
  assert.equal(r.status, 201, JSON.stringify(r.body))
  return r.body as Vm
}

/**
 * Migrates `vmId` from `source` to `dest` (pre-copy) and waits for it to end; asserts the request
 * was accepted and the migration is done. Returns the source's final view of the migration.
 */
export async function migrateAndWait(
  source: RunningAgent,
  vmId: string,
  dest: RunningAgent,
  timeoutMs: number,
) {
  const started = await source.request('POST', `/v1/vms/${vmId}/migrate`, {
    to: dest.peerId,
    mode: 'precopy',
  })
  assert.equal(started.status, 202, JSON.stringify(started.body))
  const m = await waitFor(
    'the migration to end',
    async () => {
      const r = await source.request('GET', `/v1/migrations/${started.body.id}`)
      return ['done', 'failed', 'cancelled'].includes(r.body.phase) ? r.body : undefined
    },
    timeoutMs,
  )
  assert.equal(m.phase, 'done', JSON.stringify(m.error))
  return m
}
