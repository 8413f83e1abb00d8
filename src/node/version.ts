// The package version, read once from package.json (found by walking up from this file, so it works
// from src/ under tsx and from dist/src/ after a build).
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

function findVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 6; i++) {
    const file = join(dir, 'package.json')
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string }
      if (pkg.name === 'skymesh' && pkg.version) return pkg.version
    }
    dir = dirname(dir)
  }
  return '0.0.0-unknown'
}

export const VERSION = findVersion()
