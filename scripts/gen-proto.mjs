// Generates the protobufjs static code and its TypeScript types from proto/*.proto into src/proto/gen/.
// Generated code is never hand-edited; run `npm run proto` after changing a .proto file.
import { execFileSync } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const outDir = join(root, 'src/proto/gen')
const protos = readdirSync(join(root, 'proto'))
  .filter((f) => f.endsWith('.proto'))
  .sort()
  .map((f) => join('proto', f))
mkdirSync(outDir, { recursive: true })
const bin = (name) => join(root, 'node_modules/.bin', name)
const js = join(outDir, 'skymesh.js')
execFileSync(
  bin('pbjs'),
  ['-t', 'static-module', '-w', 'es6', '--no-beautify', '--force-number', '-o', js, ...protos],
  {
    cwd: root,
    stdio: 'inherit',
  },
)
// protobufjs/minimal has no "exports" entry for ESM resolution under NodeNext; name the file itself.
const src = readFileSync(js, 'utf8').replace(/from "protobufjs\/minimal"/g, 'from "protobufjs/minimal.js"')
writeFileSync(js, src)
execFileSync(bin('pbts'), ['--no-comments', '-o', join(outDir, 'skymesh.d.ts'), js], {
  cwd: root,
  stdio: 'inherit',
})
process.stdout.write(`proto: generated ${protos.length} file(s) into src/proto/gen\n`)
