// The agent's reservation for an incoming VM: the NICs its offer carries are checked first; a bad one
// refuses the offer (BAD_OFFER, with the reason) before anything is reserved or journaled, and good
// ones are handed to adoptIncoming at the commit.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import pino from 'pino'
import { Registry } from 'prom-client'
import { AgentMigrations, type MigrationOwner } from '../../src/node/migrations.js'
import type { Host } from '../../src/node/p2p.js'
import type { Store } from '../../src/node/store.js'
import type { IncomingOffer, MigrationNic, Reservation } from '../../src/transfer/index.js'
import type { VmDriver } from '../../src/vm/types.js'

function setup() {
  const journal: unknown[] = []
  const owner: Partial<MigrationOwner> = {
    peerId: 'self',
    record: () => undefined,
    free: () => ({ vcpus: 8, memoryMiB: 4096, diskMiB: 4096 }),
    checkNics: (_id: string, nics: readonly MigrationNic[]) => {
      if (nics.some((n) => n.network !== 'red')) throw new Error(`nics[0]: no network "${nics[0]?.network}"`)
      return nics
    },
  }
  const store = {
    appendJournal: async (e: unknown) => {
      journal.push(e)
      return { id: `j${journal.length}` }
    },
    updateJournal: async () => {},
  } as unknown as Store
  const m = new AgentMigrations({
    host: {} as Host,
    logger: pino({ level: 'silent' }),
    driver: { name: 'synthetic' } as unknown as VmDriver,
    store,
    owner: owner as MigrationOwner,
    metrics: new Registry(),
  })
  const reserve = (offer: IncomingOffer) =>
    (m as unknown as { reserve(o: IncomingOffer, s: AbortSignal): Promise<Reservation> }).reserve(
      offer,
      new AbortController().signal,
    )
  return { m, reserve, journal }
}

const spec = {
  id: 'vm-1',
  name: 'one',
  vcpus: 1,
  memoryMiB: 16,
  diskMiB: 16,
  workload: { dirtyMiBps: 0, hotSetMiB: 0, cpu: 0, diskWriteMiBps: 0 },
}

describe('agent migrations: NICs in the offer', () => {
  it('a bad NIC refuses the offer with its reason; nothing is reserved or journaled', async () => {
    const { m, reserve, journal } = setup()
    const r = await reserve({
      migrationId: 'm1',
      from: 'peer-1',
      spec,
      epoch: 1,
      nics: [{ network: 'green', mac: '02:00:00:00:00:01', ip: '10.0.0.2' }],
    })
    assert.equal(r.ok, false)
    assert.ok(!r.ok)
    assert.equal(r.code, 'BAD_OFFER')
    assert.match(r.message, /VM vm-1: nics\[0\]: no network "green"/)
    assert.deepEqual(m.reserved(), { vcpus: 0, memoryMiB: 0, diskMiB: 0 })
    assert.equal(journal.length, 0)
  })

  it('good NICs reserve as before', async () => {
    const { m, reserve, journal } = setup()
    const r = await reserve({
      migrationId: 'm2',
      from: 'peer-1',
      spec,
      epoch: 1,
      nics: [{ network: 'red', mac: '02:00:00:00:00:01', ip: '10.0.0.2' }],
    })
    assert.equal(r.ok, true)
    assert.equal(m.reserved().memoryMiB, 16)
    assert.equal(journal.length, 1)
    if (r.ok) r.release()
    assert.equal(m.reserved().memoryMiB, 0)
  })
})
