// The dashboard's files: its own (src/dashboard/static, copied beside the compiled code) and the few
// vendor modules it imports (preact, its hooks, htm) straight from node_modules. No bundler: the
// browser loads ES modules; vendor imports of bare names are pointed at our URLs, because the page's
// Content-Security-Policy allows no inline script (so no import map).
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export interface Asset {
  body: Buffer
  type: string
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
}

/** The compiled module sits in dist/src/dashboard; the build copies static/ beside it. */
export function staticDir(): string {
  return fileURLToPath(new URL('./static/', import.meta.url))
}

/** Bare module names the vendor files import, and the URL each is served at. */
const VENDOR: { name: string; pkg: string; file: string }[] = [
  { name: 'preact', pkg: 'preact', file: 'dist/preact.mjs' },
  { name: 'preact/hooks', pkg: 'preact', file: 'hooks/dist/hooks.mjs' },
  { name: 'htm', pkg: 'htm', file: 'dist/htm.module.js' },
]

export function vendorUrl(name: string): string {
  return `/dashboard/vendor/${name.replace('/', '-')}.js`
}

/** Points `from "preact"` and friends at the served vendor URLs. */
export function rewriteBareImports(code: string): string {
  return code.replace(/(\bfrom\s*|\bimport\s*)(["'])(preact\/hooks|preact|htm)\2/g, (_m, kw, q, name) => {
    return `${kw}${q}${vendorUrl(name)}${q}`
  })
}

/** The folder of the package `name` that holds `entry` (walks up to its package.json). */
function packageRoot(entry: string, name: string): string {
  let dir = dirname(entry)
  while (dir !== dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && dir.endsWith(join('node_modules', name))) return dir
    dir = dirname(dir)
  }
  throw new Error(`dashboard: cannot find the ${name} package`)
}

export function loadAssets(dir = staticDir()): Map<string, Asset> {
  const assets = new Map<string, Asset>()
  for (const name of readdirSync(dir)) {
    const type = TYPES[extname(name)]
    if (!type) continue
    let body = readFileSync(join(dir, name))
    if (name.endsWith('.js')) body = Buffer.from(rewriteBareImports(body.toString('utf8')))
    assets.set(`/dashboard/static/${name}`, { body, type })
  }
  const require = createRequire(import.meta.url)
  for (const v of VENDOR) {
    const root = packageRoot(require.resolve(v.pkg), v.pkg)
    // Their source maps are not served: drop the comment that would ask for them.
    const code = readFileSync(join(root, v.file), 'utf8').replace(/\n\/\/# sourceMappingURL=\S*\s*$/, '\n')
    assets.set(vendorUrl(v.name), { body: Buffer.from(rewriteBareImports(code)), type: TYPES['.js']! })
  }
  return assets
}
