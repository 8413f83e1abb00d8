// The tiny test guest (kernel + initramfs) built by scripts/build-guest.sh and cached by it.

import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface GuestImage {
  dir: string
  kernel: string
  initrd: string
  manifest: Record<string, string>
}

/** The repository root: the nearest parent directory holding scripts/build-guest.sh. */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    if (existsSync(join(dir, 'scripts', 'build-guest.sh'))) return dir
    const up = dirname(dir)
    if (up === dir) throw new Error('qemu driver: scripts/build-guest.sh not found above this module')
    dir = up
  }
}

let cached: Promise<GuestImage> | undefined

/** Builds the guest if it is not in the cache yet (seconds), else just locates it. */
export function ensureGuest(): Promise<GuestImage> {
  cached ??= (async () => {
    const script = join(repoRoot(), 'scripts', 'build-guest.sh')
    let out: string
    try {
      out = (await run('bash', [script], { maxBuffer: 1 << 20 })).stdout
    } catch (err) {
      cached = undefined
      const e = err as { stderr?: string; message: string }
      throw new Error(`building the test guest failed: ${(e.stderr ?? e.message).trim()}`)
    }
    const dir = out.trim().split('\n').pop() ?? ''
    return {
      dir,
      kernel: join(dir, 'vmlinuz'),
      initrd: join(dir, 'initrd.img'),
      manifest: JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Record<string, string>,
    }
  })()
  return cached
}
