// The local API of a real agent process: auth, validation, not-found and capacity errors change nothing.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { type RunningAgent, removeDir, startAgent, tempDir } from '../helpers/agent-process.js'

let agent: RunningAgent
let dir: string

before(async () => {
  dir = await tempDir()
  const config = join(dir, 'agent.yaml')
  await writeFile(config, 'capacity:\n  memoryMiB: 256\n  vcpus: 4\n')
  agent = await startAgent({ dataDir: join(dir, 'data'), args: ['--config', config] })
})

after(async () => {
  await agent?.stop()
  await removeDir(dir)
})

async function vmCount(): Promise<number> {
  return ((await agent.request('GET', '/v1/vms')).body.vms as unknown[]).length
}

describe('agent API', () => {
  it('answers 401 without the token or with a wrong one', async () => {
    for (const headers of [
      { authorization: '' },
      { authorization: 'Bearer nope' },
      { authorization: `Basic ${agent.token}` },
    ]) {
      const res = await agent.request('GET', '/v1/node', undefined, headers)
      assert.equal(res.status, 401, JSON.stringify(headers))
      assert.equal(res.body.error.code, 'UNAUTHORIZED')
    }
    const res = await agent.request(
      'POST',
      '/v1/vms',
      { name: 'x', vcpus: 1, memoryMiB: 16, diskMiB: 64 },
      { authorization: 'Bearer nope' },
    )
    assert.equal(res.status, 401)
    assert.equal(await vmCount(), 0)
  })

  it('keeps the token in a 0600 file', async () => {
    const { stat } = await import('node:fs/promises')
    const st = await stat(join(agent.dataDir, 'api-token'))
    assert.equal(st.mode & 0o777, 0o600)
  })

  it('answers 400 naming the field for bad bodies, and changes nothing', async () => {
    const cases: [unknown, RegExp][] = [
      ['{"name": ', /json/i],
      [{ name: 'a', vcpus: 1, memoryMiB: -5, diskMiB: 64 }, /memoryMiB/],
      [{ name: 'a', vcpus: 1.5, memoryMiB: 16, diskMiB: 64 }, /vcpus/],
      [{ name: '', vcpus: 1, memoryMiB: 16, diskMiB: 64 }, /name/],
      [{ name: 'a', vcpus: 1, memoryMiB: 16 }, /diskMiB/],
      [{ name: 'a', vcpus: 1, memoryMiB: 16, diskMiB: 64, colour: 'red' }, /colour/],
      [{ name: 'a', vcpus: 1, memoryMiB: 16, diskMiB: 64, workload: { hotSetMiB: 64 } }, /hotSetMiB/],
      [{ name: 'a', vcpus: 1, memoryMiB: 16, diskMiB: 64, workload: { dirtyMiBps: 'fast' } }, /dirtyMiBps/],
    ]
    for (const [body, pattern] of cases) {
      const res = await agent.request('POST', '/v1/vms', body)
      assert.equal(res.status, 400, JSON.stringify(body))
      assert.match(res.body.error.message, pattern, JSON.stringify(body))
    }
    assert.equal(await vmCount(), 0)
  })

  it('answers 404 for unknown ids and routes', async () => {
    assert.equal((await agent.request('GET', '/v1/vms/vm-nope')).status, 404)
    assert.equal((await agent.request('DELETE', '/v1/vms/vm-nope')).status, 404)
    assert.equal((await agent.request('GET', '/v1/nothing-here')).status, 404)
  })

  it('creates, lists, shows and deletes a VM; 409 when it does not fit', async () => {
    const created = await agent.request('POST', '/v1/vms', {
      name: 'web-1',
      vcpus: 2,
      memoryMiB: 128,
      diskMiB: 128,
    })
    assert.equal(created.status, 201)
    assert.match(created.body.id, /^vm-/)
    assert.equal(created.body.state, 'running')
    const node = (await agent.request('GET', '/v1/node')).body
    assert.equal(created.body.host, node.peerId)
    assert.equal(created.body.epoch, 1)
    assert.equal(node.used.memoryMiB, 128)
    // Which code seals the direct data channel (the native addon wherever the build made it; CI requires it)
    assert.match(node.dataChannel, process.env.SKYMESH_NATIVE === 'require' ? /native addon/ : /^AES-GCM by /)

    const tooBig = await agent.request('POST', '/v1/vms', {
      name: 'web-2',
      vcpus: 1,
      memoryMiB: 200,
      diskMiB: 64,
    })
    assert.equal(tooBig.status, 409)
    assert.equal(tooBig.body.error.code, 'INSUFFICIENT_CAPACITY')
    const dup = await agent.request('POST', '/v1/vms', {
      name: 'web-1',
      vcpus: 1,
      memoryMiB: 16,
      diskMiB: 64,
    })
    assert.equal(dup.status, 409)
    assert.equal(await vmCount(), 1)

    const shown = await agent.request('GET', `/v1/vms/${created.body.id}`)
    assert.equal(shown.body.name, 'web-1')
    assert.equal((await agent.request('DELETE', `/v1/vms/${created.body.id}`)).status, 204)
    assert.equal(await vmCount(), 0)
    assert.equal((await agent.request('GET', '/v1/node')).body.used.memoryMiB, 0)
  })

  it('serves Prometheus metrics', async () => {
    const res = await agent.request('GET', '/metrics')
    assert.equal(res.status, 200)
    assert.match(res.body, /skymesh_libp2p_connections \d+/)
    assert.match(res.body, /skymesh_vms\{state="running"\} \d+/)
    assert.match(res.body, /skymesh_process_resident_memory_bytes/)
  })
})
