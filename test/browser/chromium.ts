// Debian's chromium driven by playwright-core (no browser download): the flags this machine needs, and
// where screenshots go (a gitignored folder of test artifacts).
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type Browser, chromium } from 'playwright-core'

export const CHROMIUM = process.env.SKYMESH_CHROMIUM ?? '/usr/bin/chromium'

/** Headless, no GPU, and nothing that phones home (this machine's network is closed to it). */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

/** playwright gives every launch a fresh, empty profile (its own --user-data-dir in a temp dir). */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 })
}

/** `.tmp/screenshots` at the repository root (from dist/test/browser or test/browser). */
export function screenshotDir(): string {
  const here = fileURLToPath(new URL('.', import.meta.url))
  const root = join(here, here.includes('/dist/') ? '../../..' : '../..')
  const dir = join(root, '.tmp', 'screenshots')
  mkdirSync(dir, { recursive: true })
  return dir
}
