// Builds skymesh's optional native addon (native/gcm.c: AES-GCM records into caller-owned buffers)
// with node-gyp, against the headers of the node that runs this (its OpenSSL included).
//
// Optional: when it cannot be built (no compiler, no headers, no node-gyp) this says why and exits 0,
// and the data channel uses node:crypto (the same bytes on the wire, more CPU per byte).
// SKYMESH_NATIVE=require makes that an error (CI, to be sure what it measures); SKYMESH_NATIVE=skip
// does not build it. Nothing is rebuilt when the addon is newer than its source.
import { spawnSync } from 'node:child_process'
import { existsSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const dir = join(root, 'native')
const addon = join(dir, 'build/Release/gcm.node')
const sources = ['gcm.c', 'binding.gyp'].map((f) => join(dir, f))
const mode = process.env.SKYMESH_NATIVE ?? 'auto'

if (mode === 'skip') {
  console.log('native addon: skipped (SKYMESH_NATIVE=skip); the data channel uses node:crypto')
  process.exit(0)
}
if (existsSync(addon) && sources.every((s) => statSync(s).mtimeMs <= statSync(addon).mtimeMs)) process.exit(0)

const failure = build()
if (failure === null) {
  console.log(`native addon: built ${addon}`)
  process.exit(0)
}
const message = `native addon: not built (${failure}); the data channel will use node:crypto (more CPU per byte)`
if (mode === 'require') {
  console.error(`${message}\nSKYMESH_NATIVE=require: failing`)
  process.exit(1)
}
console.warn(message)

/** Runs node-gyp; null on success, else why not. */
function build() {
  const gyp = findNodeGyp()
  if (!gyp) return 'node-gyp not found (it comes with npm; set npm_config_node_gyp to its node-gyp.js)'
  const args = [gyp, 'rebuild', '--directory', dir]
  // Headers: the node install's own (a prefix with include/node), so nothing is downloaded
  const prefix = join(dirname(process.execPath), '..')
  if (existsSync(join(prefix, 'include/node/node_api.h'))) args.push(`--nodedir=${prefix}`)
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  if (r.error) return r.error.message
  if (r.status === 0 && existsSync(addon)) return null
  const tail = `${r.stdout}\n${r.stderr}`
    .trim()
    .split('\n')
    .filter((l) => /err|not found|No such|^gyp: /i.test(l))
  return tail.slice(-3).join(' | ') || `node-gyp exited with ${r.status}`
}

function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), '../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'),
    join(root, 'node_modules/node-gyp/bin/node-gyp.js'),
  ]
  return candidates.find((c) => c && existsSync(c))
}
