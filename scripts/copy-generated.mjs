// tsc does not copy plain .js sources: put the generated protobuf module beside the compiled code.
import { cpSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
mkdirSync(join(root, 'dist/src/proto/gen'), { recursive: true })
cpSync(join(root, 'src/proto/gen/skymesh.js'), join(root, 'dist/src/proto/gen/skymesh.js'))
// The web dashboard's page, script and style files (served as they are: no bundler).
cpSync(join(root, 'src/dashboard/static'), join(root, 'dist/src/dashboard/static'), { recursive: true })
