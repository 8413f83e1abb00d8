// The agent's durable state in DATA_DIR/store (level): the registry of its VMs, a journal of
// multi-step operations (migrations) that a restarted agent finishes or rolls back, and metadata.
import { Level } from 'level'
import type { VmRecord } from './types.js'

export type JournalState = 'open' | 'committed' | 'aborted'

export interface JournalEntry {
  /** Sortable id: zero-padded sequence number. */
  id: string
  kind: string
  vmId?: string
  state: JournalState
  /** Free-form step and details of the operation (JSON-safe). */
  data: Record<string, unknown>
  createdAt: string
  updatedAt: string
}

type Json = Record<string, unknown>
type Sub = ReturnType<typeof subOf>

function subOf(db: Level<string, Json>, name: string) {
  return db.sublevel<string, Json>(name, { valueEncoding: 'json' })
}

export class Store {
  private constructor(
    private readonly db: Level<string, Json>,
    private readonly vms: Sub,
    private readonly journal: Sub,
    private readonly meta: Sub,
    private seq: number,
  ) {}

  static async open(location: string): Promise<Store> {
    const db = new Level<string, Json>(location, { valueEncoding: 'json' })
    await db.open()
    const sub = (name: string) => subOf(db, name)
    const journal = sub('journal')
    let seq = 0
    for await (const key of journal.keys({ reverse: true, limit: 1 })) seq = Number(key)
    return new Store(db, sub('vms'), journal, sub('meta'), seq)
  }

  async close(): Promise<void> {
    await this.db.close()
  }

  // --- VM registry ---

  async putVm(vm: VmRecord): Promise<void> {
    await this.vms.put(vm.id, vm as unknown as Json)
  }

  async getVm(id: string): Promise<VmRecord | undefined> {
    return (await this.vms.get(id)) as VmRecord | undefined
  }

  async deleteVm(id: string): Promise<void> {
    await this.vms.del(id)
  }

  async listVms(): Promise<VmRecord[]> {
    const out: VmRecord[] = []
    for await (const value of this.vms.values()) out.push(value as unknown as VmRecord)
    return out
  }

  // --- journal ---

  async appendJournal(
    entry: Omit<JournalEntry, 'id' | 'createdAt' | 'updatedAt' | 'state'> & { state?: JournalState },
  ): Promise<JournalEntry> {
    this.seq += 1
    const now = new Date().toISOString()
    const full: JournalEntry = {
      state: 'open',
      ...entry,
      id: String(this.seq).padStart(12, '0'),
      createdAt: now,
      updatedAt: now,
    }
    await this.journal.put(full.id, full as unknown as Json)
    return full
  }

  async updateJournal(
    id: string,
    patch: Partial<Pick<JournalEntry, 'state' | 'data'>>,
  ): Promise<JournalEntry> {
    const current = (await this.journal.get(id)) as JournalEntry | undefined
    if (!current) throw new Error(`journal entry ${id} not found`)
    const next: JournalEntry = { ...current, ...patch, updatedAt: new Date().toISOString() }
    await this.journal.put(id, next as unknown as Json)
    return next
  }

  async listJournal(filter: { state?: JournalState; kind?: string } = {}): Promise<JournalEntry[]> {
    const out: JournalEntry[] = []
    for await (const value of this.journal.values()) {
      const e = value as unknown as JournalEntry
      if (filter.state && e.state !== filter.state) continue
      if (filter.kind && e.kind !== filter.kind) continue
      out.push(e)
    }
    return out
  }

  // --- metadata ---

  async getMeta<T>(key: string): Promise<T | undefined> {
    const v = await this.meta.get(key)
    return v == null ? undefined : (v.value as T)
  }

  async putMeta(key: string, value: unknown): Promise<void> {
    await this.meta.put(key, { value })
  }
}
