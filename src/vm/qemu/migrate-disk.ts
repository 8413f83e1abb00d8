// The disk half of a migration without shared storage: the destination QEMU serves its new qcow2
// layer (same base) over its built-in NBD server; the source QEMU mirrors its writable layer into it
// (`blockdev-mirror`, sync=top: only what the layer holds, the base is the same on both sides),
// waits until the mirror is ready (in sync, following every guest write), and completes it while
// the guest is paused at switchover (`block-job-cancel` on a ready job = complete without pivot).

import { setTimeout as sleep } from 'node:timers/promises'
import { VmError } from '../types.js'
import type { QemuVm } from './qemu-vm.js'
import type { QmpEvent } from './qmp.js'

/** Node name of every guest's disk (qemu-driver.ts) and the name of its NBD export. */
export const DISK_NODE = 'disk0'
const EXPORT_ID = 'skymesh-mig-export'
const MIRROR_JOB = 'skymesh-mirror'
const MIRROR_TARGET = 'skymesh-mirror-target'

/** Where an NBD server listens: a unix socket path, or a TCP address (then with QEMU's TLS). */
export type NbdAddress = string | { host: string; port: number; tlsCreds?: string }

/** Destination: serves the (inactive, incoming) disk writable over NBD at `addr`. */
export async function exportDisk(vm: QemuVm, addr: NbdAddress): Promise<void> {
  await vm.qmp.execute(
    'nbd-server-start',
    typeof addr === 'string'
      ? { addr: { type: 'unix', data: { path: addr } } }
      : {
          addr: { type: 'inet', data: { host: addr.host, port: String(addr.port) } },
          ...(addr.tlsCreds ? { 'tls-creds': addr.tlsCreds } : {}),
        },
  )
  await vm.qmp.execute('block-export-add', {
    type: 'nbd',
    id: EXPORT_ID,
    'node-name': DISK_NODE,
    name: DISK_NODE,
    writable: true,
  })
}

/** Destination: ends the export and the NBD server (before the guest runs; errors ignored). */
export async function unexportDisk(vm: QemuVm): Promise<void> {
  await vm.qmp.execute('block-export-del', { id: EXPORT_ID, mode: 'hard' }).catch(() => undefined)
  await vm.qmp.execute('nbd-server-stop').catch(() => undefined)
}

export interface MirrorProgress {
  offset: number
  len: number
  ready: boolean
}

/** Source: starts mirroring the disk's top layer to the NBD export reachable at `addr`. */
export async function startMirror(vm: QemuVm, addr: NbdAddress, maxBytesPerSec?: number): Promise<void> {
  await vm.qmp.execute('blockdev-add', {
    driver: 'nbd',
    'node-name': MIRROR_TARGET,
    server:
      typeof addr === 'string'
        ? { type: 'unix', path: addr }
        : { type: 'inet', host: addr.host, port: String(addr.port) },
    export: DISK_NODE,
    ...(typeof addr !== 'string' && addr.tlsCreds ? { 'tls-creds': addr.tlsCreds } : {}),
  })
  try {
    await vm.qmp.execute('blockdev-mirror', {
      'job-id': MIRROR_JOB,
      device: DISK_NODE,
      target: MIRROR_TARGET,
      sync: 'top',
      ...(maxBytesPerSec ? { speed: Math.round(maxBytesPerSec) } : {}),
    })
  } catch (err) {
    await vm.qmp.execute('blockdev-del', { 'node-name': MIRROR_TARGET }).catch(() => undefined)
    throw err
  }
}

/** The mirror job's progress, or undefined if it is gone (completed, cancelled or failed). */
export async function mirrorProgress(vm: QemuVm): Promise<MirrorProgress | undefined> {
  const jobs =
    await vm.qmp.execute<
      Array<{ device: string; offset: number; len: number; ready: boolean; status?: string }>
    >('query-block-jobs')
  const j = jobs.find((x) => x.device === MIRROR_JOB)
  return j ? { offset: j.offset, len: j.len, ready: j.ready } : undefined
}

/**
 * Waits until the mirror is ready (in sync): at QEMU's BLOCK_JOB_READY event, with a poll every
 * `pollMs` for the progress (and in case the event was missed); throws if the job disappears (it
 * failed).
 */
export async function waitMirrorReady(
  vm: QemuVm,
  signal: AbortSignal,
  onProgress: (p: MirrorProgress) => void,
  pollMs = 250,
): Promise<void> {
  const wake = new AbortController()
  const onEvent = (e: QmpEvent) => {
    if (e.event.startsWith('BLOCK_JOB_') && e.data?.device === MIRROR_JOB) wake.abort()
  }
  vm.qmp.on('event', onEvent)
  try {
    for (;;) {
      signal.throwIfAborted()
      const p = await mirrorProgress(vm)
      if (!p) throw new VmError('VM_IO', 'the disk mirror job ended before it was in sync (see the QEMU log)')
      onProgress(p)
      if (p.ready) return
      await sleep(pollMs, undefined, { signal: AbortSignal.any([wake.signal, signal]) }).catch(
        () => undefined,
      )
    }
  } finally {
    vm.qmp.off('event', onEvent)
  }
}

/**
 * Source, guest paused: completes the ready mirror without switching the guest to it (every write
 * is on the destination) and waits until the job is gone; throws if it did not complete cleanly.
 */
export async function completeMirror(vm: QemuVm, timeoutMs: number): Promise<void> {
  const done = vm.qmp.waitEvent('BLOCK_JOB_COMPLETED', timeoutMs, (e) => e.data?.device === MIRROR_JOB)
  done.catch(() => undefined)
  await vm.qmp.execute('block-job-cancel', { device: MIRROR_JOB })
  const e = await done
  if (e.data?.error) throw new VmError('VM_IO', `disk mirror failed: ${String(e.data.error)}`)
  const len = Number(e.data?.len ?? 0)
  const offset = Number(e.data?.offset ?? 0)
  if (offset !== len) throw new VmError('VM_IO', `disk mirror stopped at ${offset} of ${len} bytes`)
  await vm.qmp.execute('blockdev-del', { 'node-name': MIRROR_TARGET }).catch(() => undefined)
}

/** Source, after a failure: drops the mirror job and its target (errors ignored). */
export async function abandonMirror(vm: QemuVm): Promise<void> {
  if (vm.qmp.isClosed) return
  if (await mirrorProgress(vm).catch(() => undefined)) {
    const gone = vm.qmp.waitEvent('BLOCK_JOB_CANCELLED', 5000, (e) => e.data?.device === MIRROR_JOB)
    gone.catch(() => undefined)
    await vm.qmp.execute('block-job-cancel', { device: MIRROR_JOB, force: true }).catch(() => undefined)
    await gone.catch(() => undefined)
  }
  await vm.qmp.execute('blockdev-del', { 'node-name': MIRROR_TARGET }).catch(() => undefined)
}
