// The agent's reservation for an incoming VM: the NICs its offer carries are checked first; a bad one
// refuses the offer (BAD_OFFER, with the reason) before anything is reserved or journaled, and good
// ones are handed to adoptIncoming at the commit.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { Store } from '../../src/node/store.js'
import type { MigrationNic } from '../../src/transfer/index.js'
import { agentMigrations, offer } from './fixtures/migration-nics.js'

function setup() {
  const journal: unknown[] = []
  const store = {
    appendJournal: async (e: unknown) => {
      journal.push(e)
      return { id: `j${journal.length}` }
    },
    updateJournal: async () => {},
  } as unknown as Store
  const { m, reserve } = agentMigrations(store, {
    checkNics: (_id: string, nics: readonly MigrationNic[]) => {
      if (nics.some((n) => n.network !== 'red')) throw new Error(`nics[0]: no network "${nics[0]?.network}"`)
      return nics
    },
  })
  return { m, reserve, journal }
}

/** An offer with one NIC on `network` (only 'red' exists here). */
const offerOn = (migrationId: string, network: string) =>
  offer(migrationId, [{ network, mac: '02:00:00:00:00:01', ip: '10.0.0.2' }])

describe('agent migrations: NICs in the offer', () => {
  it('a bad NIC refuses the offer with its reason; nothing is reserved or journaled', async () => {
    const { m, reserve, journal } = setup()
    const r = await reserve(offerOn('m1', 'green'))
    assert.equal(r.ok, false)
    assert.ok(!r.ok)
    assert.equal(r.code, 'BAD_OFFER')
    assert.match(r.message, /VM vm-1: nics\[0\]: no network "green"/)
    assert.deepEqual(m.reserved(), { vcpus: 0, memoryMiB: 0, diskMiB: 0 })
    assert.equal(journal.length, 0)
  })

  it('good NICs reserve as before', async () => {
    const { m, reserve, journal } = setup()
    const r = await reserve(offerOn('m2', 'red'))
    assert.equal(r.ok, true)
    assert.equal(m.reserved().memoryMiB, 16)
    assert.equal(journal.length, 1)
    if (r.ok) r.release()
    assert.equal(m.reserved().memoryMiB, 0)
  })
})
