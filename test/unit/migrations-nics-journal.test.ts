// The NICs of an incoming VM go with its migration journal: held with the capacity at the reservation
// (checked again then), written into the journal entry, released when the migration fails or the VM
// arrives; after a restart an open entry rolls back (the hold lived in memory), and a committed one
// gives the VM back NICs the overlay lost (the agent died between the journal and the overlay's save).
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { MigrationOwner } from '../../src/node/migrations.js'
import { Store } from '../../src/node/store.js'
import type { VmRecord } from '../../src/node/types.js'
import type { MigrationNic } from '../../src/transfer/index.js'
import { agentMigrations, offer, spec } from './fixtures/migration-nics.js'

let dir: string
let store: Store

before(async () => {
  dir = await mkdtemp(join(os.tmpdir(), 'skymesh-nicjournal-'))
  store = await Store.open(join(dir, 'store'))
})

after(async () => {
  await store.close()
  await rm(dir, { recursive: true, force: true })
})

const def = { subnet: '10.9.0.0/24', mtu: 1500, createdMs: 5, creator: 'peer-a' }
const nic: MigrationNic = { network: 'purple', mac: '02:00:00:00:00:21', ip: '10.9.0.21', networkDef: def }

function setup(over: Partial<MigrationOwner> = {}) {
  const calls: string[] = []
  const held = new Map<string, readonly MigrationNic[]>()
  const restored: [string, readonly MigrationNic[]][] = []
  const records = new Map<string, VmRecord>()
  const t = agentMigrations(store, {
    record: (id) => records.get(id),
    checkNics: (_id, nics) => nics,
    holdNics: (mid, _id, nics) => {
      calls.push(`hold ${mid}`)
      held.set(mid, nics)
      return nics
    },
    releaseNics: (mid) => {
      calls.push(`release ${mid}`)
      held.delete(mid)
    },
    hasNics: () => false,
    restoreNics: (id, nics) => {
      restored.push([id, nics])
    },
    hasVmDir: async () => true,
    discardIncomingDir: async () => {},
    restoreRecord: async (rec) => {
      records.set(rec.id, rec)
    },
    ...over,
  })
  return { ...t, calls, held, restored, records }
}

const entryOf = async (migrationId: string) =>
  (await store.listJournal({ kind: 'migration-in' })).find((e) => e.data.migrationId === migrationId)

describe('agent migrations: NICs in the journal', () => {
  it('the reservation holds the NICs and journals them; a failed migration releases them', async () => {
    const t = setup()
    const r = await t.reserve(offer('m1', [nic]))
    assert.ok(r.ok)
    assert.deepEqual(t.calls, ['hold m1'])
    const e = await entryOf('m1')
    assert.equal(e?.state, 'open')
    assert.deepEqual(e?.data.nics, [nic], 'the journal has the NICs with their network')
    r.release()
    assert.deepEqual(t.calls, ['hold m1', 'release m1'])
    assert.equal(t.held.size, 0)
    await new Promise((res) => setTimeout(res, 50))
    assert.equal((await entryOf('m1'))?.state, 'aborted')
  })

  it('a NIC taken since the first check refuses the offer (BAD_OFFER) and reserves nothing', async () => {
    const t = setup({
      holdNics: () => {
        throw new Error("nics[0]: IP 10.9.0.21 on 'purple' belongs to VM vm-2")
      },
    })
    const r = await t.reserve(offer('m2', [nic]))
    assert.ok(!r.ok)
    assert.equal(r.code, 'BAD_OFFER')
    assert.match(r.message, /belongs to VM vm-2/)
    assert.deepEqual(t.m.reserved(), { vcpus: 0, memoryMiB: 0, diskMiB: 0 })
    assert.equal(await entryOf('m2'), undefined, 'nothing journaled')
  })

  it('after a restart: an open entry rolls back, a committed one restores the NICs the overlay lost', async () => {
    const open = await store.appendJournal({
      kind: 'migration-in',
      vmId: 'vm-open',
      data: { migrationId: 'm3', from: 'peer-a', nics: [nic] },
    })
    await store.appendJournal({
      kind: 'migration-in',
      vmId: 'vm-1',
      state: 'committed',
      data: { migrationId: 'm4', from: 'peer-a', epoch: 2, spec, nics: [nic] },
    })
    const t = setup()
    await t.rollBack()
    assert.equal((await store.listJournal()).find((e) => e.id === open.id)?.state, 'aborted')
    assert.equal(t.records.get('vm-1')?.state, 'crashed', 'the record came back from the journal')
    assert.deepEqual(t.restored, [['vm-1', [nic]]], 'and its NICs, the open entry none')

    // an overlay that kept them is left alone
    const kept = setup({ hasNics: () => true })
    kept.records.set('vm-1', t.records.get('vm-1')!)
    await kept.rollBack()
    assert.deepEqual(kept.restored, [])
  })
})
