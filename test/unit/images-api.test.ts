// The image and virtual-cluster routes: bodies validated before the image service sees them, its
// errors mapped to the API's codes and statuses.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import pino from 'pino'
import { ImagesError } from '../../src/images/index.js'
import { createApiServer } from '../../src/node/api/index.js'
import type { ImagesApi } from '../../src/node/api/routes/images.js'
import type { AgentService } from '../../src/node/types.js'

const TOKEN = 'test-token'
const AUTH = { authorization: `Bearer ${TOKEN}` }

function setup() {
  const calls: string[] = []
  const images: ImagesApi = {
    listImages: () => [],
    addImage: async (req) => {
      calls.push(`add ${req.path}`)
      return { id: 'ab'.repeat(32), name: req.name ?? 'x' }
    },
    getImage: (ref) => {
      throw new ImagesError('NOT_FOUND', `no image '${ref}' on this host`)
    },
    removeImage: async () => {
      throw new ImagesError('INVALID_STATE', 'image is the base of a VM on this host')
    },
    verifyImage: async (ref) => ({ id: ref, ok: true, bad: [] }),
    distributeImage: (ref, req) => {
      calls.push(`push ${ref} ${JSON.stringify(req.to)}`)
      return { id: 'push-1', state: 'running' }
    },
    imagePush: () => ({}),
    createVcluster: (req) => {
      if (req.count > 4)
        throw new ImagesError('INSUFFICIENT_CAPACITY', 'count: only 2 of 5 VMs fit; nothing was started')
      calls.push(`vcluster ${req.name} ${req.placement ?? '-'} ${req.site ?? '-'}`)
      return { name: req.name, state: 'creating' }
    },
    scaleVcluster: (name, count) => {
      calls.push(`scale ${name} ${count}`)
      return { name, state: 'scaling' }
    },
    listVclusters: () => [],
    getVcluster: () => ({}),
    vclusterContext: (name, vm) => ({ cluster: name, vm }),
    deleteVcluster: async () => {},
  }
  const server = createApiServer({
    agent: {} as unknown as AgentService,
    images,
    token: TOKEN,
    logger: pino({ level: 'silent' }),
  })
  return { app: server.app, calls }
}

describe('api: images', () => {
  it('adds an image from an absolute path; refuses a relative path, a bad name and unknown fields', async () => {
    const { app, calls } = setup()
    let res = await app.inject({
      method: 'POST',
      url: '/v1/images',
      headers: AUTH,
      payload: { path: '/srv/base.img', name: 'base' },
    })
    assert.equal(res.statusCode, 201, res.body)
    for (const payload of [
      { path: 'base.img' },
      { path: '/x', name: '../etc' },
      { path: '/x', extra: 1 },
      {},
    ]) {
      res = await app.inject({ method: 'POST', url: '/v1/images', headers: AUTH, payload })
      assert.equal(res.statusCode, 400, JSON.stringify(payload))
      assert.equal(res.json().error.code, 'BAD_REQUEST')
    }
    assert.deepEqual(calls, ['add /srv/base.img'])
  })

  it('maps image errors to the API codes', async () => {
    const { app } = setup()
    let res = await app.inject({ url: '/v1/images/abcdef', headers: AUTH })
    assert.equal(res.statusCode, 404)
    assert.equal(res.json().error.code, 'NOT_FOUND')
    res = await app.inject({ method: 'DELETE', url: '/v1/images/abcdef', headers: AUTH })
    assert.equal(res.statusCode, 409)
    res = await app.inject({
      method: 'POST',
      url: '/v1/vclusters',
      headers: AUTH,
      payload: { name: 'web', image: 'abcdef', count: 5 },
    })
    assert.equal(res.statusCode, 409)
    assert.equal(res.json().error.code, 'INSUFFICIENT_CAPACITY')
  })

  it("distribute takes 'all' or a list of hosts and a fanout of 1..16", async () => {
    const { app, calls } = setup()
    let res = await app.inject({
      method: 'POST',
      url: '/v1/images/abcdef/distribute',
      headers: AUTH,
      payload: { to: 'all' },
    })
    assert.equal(res.statusCode, 202)
    res = await app.inject({
      method: 'POST',
      url: '/v1/images/abcdef/distribute',
      headers: AUTH,
      payload: { to: ['12D3KooWx'], fanout: 1 },
    })
    assert.equal(res.statusCode, 202)
    for (const payload of [{ to: 'some' }, { to: [] }, { to: 'all', fanout: 0 }, { to: 'all', fanout: 17 }]) {
      res = await app.inject({ method: 'POST', url: '/v1/images/abcdef/distribute', headers: AUTH, payload })
      assert.equal(res.statusCode, 400, JSON.stringify(payload))
    }
    assert.equal(calls.length, 2)
  })

  it('virtual clusters: a bad spec is refused with the field named; the context query is checked', async () => {
    const { app, calls } = setup()
    for (const payload of [
      { name: 'bad name', image: 'abcdef', count: 1 },
      { name: 'web', image: 'abcdef', count: 0 },
      { name: 'web', image: 'ab', count: 1 },
      { name: 'web', image: 'abcdef', count: 1, placement: 'scatter' },
      { name: 'web', image: 'abcdef', count: 1, site: 'a b' },
      { name: 'web', image: 'abcdef', count: 1, userData: 'x'.repeat(16385) },
    ]) {
      const res = await app.inject({ method: 'POST', url: '/v1/vclusters', headers: AUTH, payload })
      assert.equal(res.statusCode, 400, JSON.stringify(payload))
    }
    // Accepted once placed: built in the background (202), progress at GET /v1/vclusters/:name.
    let res = await app.inject({
      method: 'POST',
      url: '/v1/vclusters',
      headers: AUTH,
      payload: { name: 'web', image: 'abcdef', count: 2, placement: 'pack', site: 'eu-1', userData: 'k=v' },
    })
    assert.equal(res.statusCode, 202, res.body)
    for (const payload of [{ count: 0 }, { count: 257 }, { count: 2, extra: 1 }, {}]) {
      res = await app.inject({ method: 'POST', url: '/v1/vclusters/web/scale', headers: AUTH, payload })
      assert.equal(res.statusCode, 400, JSON.stringify(payload))
    }
    res = await app.inject({
      method: 'POST',
      url: '/v1/vclusters/web/scale',
      headers: AUTH,
      payload: { count: 3 },
    })
    assert.equal(res.statusCode, 202, res.body)
    assert.deepEqual(calls, ['vcluster web pack eu-1', 'scale web 3'])
    res = await app.inject({ url: '/v1/vclusters/web/context?vm=web-1', headers: AUTH })
    assert.deepEqual(res.json(), { cluster: 'web', vm: 'web-1' })
    res = await app.inject({ url: '/v1/vclusters/web/context?other=1', headers: AUTH })
    assert.equal(res.statusCode, 400)
  })
})
