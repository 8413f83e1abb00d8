// What the host offers QEMU: where the binaries are and whether KVM really works. /dev/kvm can
// exist, open fine and still fail (nested or sandboxed hosts: QEMU aborts setting MSRs or never
// runs a vCPU), so KVM counts only after a probe guest actually ran an instruction under it.

import { spawn } from 'node:child_process'
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

export type Accel = 'kvm' | 'tcg'

/** Full path of `name` on PATH, or undefined. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue
    const p = join(dir, name)
    try {
      accessSync(p, constants.X_OK)
      return p
    } catch {}
  }
  return undefined
}

export interface QemuBinaries {
  system: string
  img: string
}

/** The QEMU binaries (SKYMESH_QEMU / SKYMESH_QEMU_IMG override), or an Error that says what to install. */
export function findQemu(): QemuBinaries {
  const system = process.env.SKYMESH_QEMU ?? which('qemu-system-x86_64')
  const img = process.env.SKYMESH_QEMU_IMG ?? which('qemu-img')
  if (!system)
    throw new Error('qemu driver: qemu-system-x86_64 not found on PATH (apt-get install qemu-system-x86)')
  if (!img) throw new Error('qemu driver: qemu-img not found on PATH (apt-get install qemu-utils)')
  return { system, img }
}

/** True if both QEMU binaries are installed. */
export function qemuAvailable(): boolean {
  try {
    findQemu()
    return true
  } catch {
    return false
  }
}

const probes = new Map<string, Promise<Accel>>()

/**
 * KVM if it works, else TCG; probed once per binary. SKYMESH_QEMU_ACCEL=kvm|tcg forces a choice.
 */
export function detectAccel(qemu: string): Promise<Accel> {
  const forced = process.env.SKYMESH_QEMU_ACCEL
  if (forced === 'kvm' || forced === 'tcg') return Promise.resolve(forced)
  let p = probes.get(qemu)
  if (!p) {
    p = probeKvm(qemu).then((ok) => (ok ? 'kvm' : 'tcg'))
    probes.set(qemu, p)
  }
  return p
}

/**
 * A 64 KiB firmware whose reset vector writes 'K' to COM1 and halts: if that byte reaches the
 * serial file with accel=kvm and `-cpu host` (what the driver uses with KVM), KVM works.
 */
export async function probeKvm(qemu: string, accel: Accel = 'kvm', timeoutMs = 3000): Promise<boolean> {
  if (accel === 'kvm') {
    try {
      accessSync('/dev/kvm', constants.R_OK | constants.W_OK)
    } catch {
      return false
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'skymesh-kvm-probe-'))
  try {
    const bios = Buffer.alloc(65536, 0)
    // mov dx,0x3f8; mov al,'K'; out dx,al; hlt; jmp $-1 — at the reset vector (top 16 bytes)
    Buffer.from([0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xf4, 0xeb, 0xfd]).copy(bios, 0xfff0)
    writeFileSync(join(dir, 'probe.bin'), bios)
    const out = join(dir, 'serial.out')
    const args = ['-machine', `pc,accel=${accel}`, '-nodefaults', '-no-user-config', '-display', 'none']
    if (accel === 'kvm') args.push('-cpu', 'host')
    args.push('-bios', join(dir, 'probe.bin'), '-serial', `file:${out}`)
    const child = spawn(qemu, args, { stdio: 'ignore' })
    let exited = false
    const exit = new Promise<void>((resolve) => {
      child.once('exit', () => {
        exited = true
        resolve()
      })
      child.once('error', () => {
        exited = true
        resolve()
      })
    })
    const deadline = Date.now() + timeoutMs
    let ok = false
    while (!ok && !exited && Date.now() < deadline) {
      await sleep(50)
      try {
        ok = readFileSync(out, 'latin1').includes('K')
      } catch {}
    }
    if (!exited) child.kill('SIGKILL')
    await exit
    return ok
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
