// Placing the VMs of a virtual cluster (src/images placeVms over the placement core's arithmetic):
// spread over as many hosts as fit, packed on as few as fit, only in one site when asked, and all or
// nothing — a cluster that does not fit is refused with how many would have.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ImagesError, type PlacementHost, placeVms } from '../../src/images/index.js'

const host = (peerId: string, site = 'a', usedMem = 0): PlacementHost => ({
  peerId,
  site,
  capacity: { cpu: 8, mem: 1024, disk: 10_000 },
  used: { cpu: 0, mem: usedMem, disk: 0 },
})
const vm = { vcpus: 1, memoryMiB: 256, diskMiB: 100 }

describe('placeVms', () => {
  it('spread: one VM per host before any host gets a second, least loaded first', () => {
    const hosts = [host('h1', 'a', 512), host('h2'), host('h3')]
    const p = placeVms(hosts, 4, vm, { mode: 'spread' })
    assert.deepEqual(p.slice(0, 3).sort(), ['h1', 'h2', 'h3'])
    assert.equal(p[0], 'h2', 'the least loaded host first')
    assert.notEqual(p[3], 'h1', 'the loaded host does not get the second round first')
  })

  it('pack: fills the fullest host that fits before opening another', () => {
    const hosts = [host('h1'), host('h2', 'a', 256), host('h3')]
    const p = placeVms(hosts, 4, vm, { mode: 'pack' })
    assert.deepEqual(p, ['h2', 'h2', 'h2', 'h1'])
  })

  it('scaling counts the VMs the cluster already has on each host', () => {
    const hosts = [{ ...host('h1'), clusterVms: 2 }, { ...host('h2'), clusterVms: 0 }, host('h3')]
    assert.deepEqual(placeVms(hosts, 2, vm, { mode: 'spread' }).sort(), ['h2', 'h3'])
    assert.deepEqual(placeVms(hosts, 1, vm, { mode: 'pack' }), ['h1'])
  })

  it('site: only hosts of that site; a site without live hosts is a bad request', () => {
    const hosts = [host('h1', 'eu'), host('h2', 'us'), host('h3', 'us')]
    assert.deepEqual(placeVms(hosts, 2, vm, { mode: 'spread', site: 'us' }).sort(), ['h2', 'h3'])
    assert.throws(
      () => placeVms(hosts, 1, vm, { mode: 'spread', site: 'asia' }),
      (e: unknown) => e instanceof ImagesError && e.code === 'BAD_REQUEST' && /site/.test(e.message),
    )
  })

  it('all or nothing: refused with how many would fit, counting every resource', () => {
    const hosts = [host('h1'), host('h2')]
    assert.throws(
      () => placeVms(hosts, 9, vm, { mode: 'spread' }),
      (e: unknown) => e instanceof ImagesError && e.code === 'INSUFFICIENT_CAPACITY' && e.details?.fits === 8,
    )
    assert.throws(
      () => placeVms(hosts, 3, { vcpus: 5, memoryMiB: 1, diskMiB: 1 }, { mode: 'pack' }),
      (e: unknown) => e instanceof ImagesError && e.details?.fits === 2,
    )
  })
})
