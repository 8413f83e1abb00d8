// Test support (not part of the public surface): a node = a real libp2p host, a synthetic driver, a
// VM table, and a MigrationService with hooks that do what the agent would (register on commit,
// destroy on release) and record when each ran.
import '../node/polyfill.js'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { pino } from 'pino'
import { createHost, type Host } from '../node/p2p.js'
import { createDriver, type VmDriver, type VmInstance, type VmSpec, type WorkloadSpec } from '../vm/index.js'
import { MigrationService, type MigrationServiceInit } from './service.js'
import type { DestinationHooks, LocalVm, SourceHooks } from './types.js'

export interface HookCall {
  hook: string
  migrationId: string
  vmId: string
  at: number
  epoch?: number
  digest?: string
}

export interface TestNode {
  host: Host
  driver: VmDriver
  vms: Map<string, LocalVm>
  service: MigrationService
  calls: HookCall[]
  dir: string
  /** Extra behaviour for tests (e.g. a refusing reserve). */
  overrides: Partial<SourceHooks & DestinationHooks>
  createVm(
    id: string,
    opts?: Partial<Omit<VmSpec, 'workload'>> & { workload?: Partial<WorkloadSpec> },
  ): Promise<VmInstance>
  stop(): Promise<void>
}

export async function createTestNode(init: MigrationServiceInit = {}): Promise<TestNode> {
  const host = await createHost({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
  })
  const dir = await mkdtemp(join(tmpdir(), 'skymesh-transfer-'))
  const driver = createDriver('synthetic', { tickMs: 20 })
  const vms = new Map<string, LocalVm>()
  const calls: HookCall[] = []
  const overrides: TestNode['overrides'] = {}
  const logger = pino({ level: process.env.SKYMESH_TEST_LOG ?? 'silent' })
  const record = (hook: string, m: { id: string; vmId: string }, extra: Partial<HookCall> = {}) =>
    calls.push({ hook, migrationId: m.id, vmId: m.vmId, at: performance.now(), ...extra })
  const service = new MigrationService(
    {
      host,
      logger,
      driver,
      vmDir: (vmId) => join(dir, vmId),
      lookupVm: (vmId) => vms.get(vmId),
      hooks: {
        reserve: async (offer, opts) =>
          overrides.reserve ? overrides.reserve(offer, opts) : { ok: true, release: () => undefined },
        onHandover: async (m, opts) => {
          const vm = vms.get(m.vmId)
          record('onHandover', m, { digest: vm ? (await vm.instance.digest()).combined : undefined })
          await overrides.onHandover?.(m, opts)
        },
        onCommit: async (m, instance, epoch, opts) => {
          // Before the resume: a pre-copy copy is complete here and must equal the source at the pause
          const digest = m.postcopy ? undefined : (await instance.digest()).combined
          record('onCommit', m, { epoch, digest })
          await overrides.onCommit?.(m, instance, epoch, opts)
          vms.set(m.vmId, { instance, spec: instance.spec, epoch })
        },
        onReleased: async (m, instance) => {
          record('onReleased', m)
          vms.delete(m.vmId)
          await instance.destroy()
        },
        onAborted: async (m) => {
          record('onAborted', m)
        },
        onInDoubt: async (m) => {
          record('onInDoubt', m)
        },
      },
    },
    init,
  )
  await service.start()
  return {
    host,
    driver,
    vms,
    service,
    calls,
    dir,
    overrides,
    async createVm(id, opts = {}) {
      const spec: VmSpec = {
        id,
        name: opts.name ?? id,
        vcpus: opts.vcpus ?? 1,
        memoryMiB: opts.memoryMiB ?? 32,
        diskMiB: opts.diskMiB ?? 64,
        workload: { dirtyMiBps: 0, hotSetMiB: 4, cpu: 0, diskWriteMiBps: 0, ...opts.workload },
      }
      const instance = await driver.create(spec, { dir: join(dir, id) })
      vms.set(id, { instance, spec, epoch: 1 })
      return instance
    },
    async stop() {
      await service.stop().catch(() => undefined)
      await Promise.resolve(host.stop()).catch(() => undefined)
      await Promise.resolve(driver.close()).catch(() => undefined)
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/** Writes recognisable content into `pages` pages and `blocks` blocks (some repeated, for dedup). */
export async function fillVm(vm: VmInstance, pages: number, blocks: number, seed = 1): Promise<void> {
  const mem = vm.memory
  const page = Buffer.alloc(mem.pageSize)
  for (let k = 0; k < pages; k++) {
    const i = (k * 7 + seed) % mem.pageCount
    // Every fourth page repeats content: dedup has something to find; text-like bytes compress
    const tag = k % 4 === 0 ? 0 : k
    page.fill(`page ${tag} of ${seed} `)
    page.writeUInt32LE(tag, 0)
    mem.writePage(i, page)
  }
  const block = Buffer.alloc(vm.disk.blockSize)
  for (let k = 0; k < blocks; k++) {
    block.fill(`block ${k} seed ${seed} `)
    await vm.disk.writeBlock((k * 3 + seed) % vm.disk.blockCount, block)
  }
}

/** Connects a to b (so b's peer id can be dialed). */
export async function connect(a: TestNode, b: TestNode): Promise<void> {
  await a.host.dial(b.host.getMultiaddrs()[0]!, { signal: AbortSignal.timeout(5000) })
}
